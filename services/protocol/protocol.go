// Package protocol defines the wire protocol between chat clients and ws-user.
//
// It is the only place where client frames are declared: ws-user decodes
// every untrusted client frame with Decode and encodes every outbound frame
// with the Append* functions or Encode, and the relay link (package link)
// reuses Message and Member, so no message type is declared twice.
//
// Two dialects share one decoder. Seed clients (the original proof of
// concept) only send "join-room" and "chat" and must only ever receive
// "chat" and "error" frames. Extended clients opt in by sending "hello" as
// their first frame and then get the whole protocol (docs/protocol.md).
package protocol

// Version is the extended protocol version announced in "welcome".
const Version = 1

// Frame types, client to server.
const (
	TypeHello    = "hello"
	TypeJoinRoom = "join-room" // seed protocol; an alias of TypeJoin
	TypeJoin     = "join"
	TypeLeave    = "leave"
	TypeChat     = "chat"
	TypeHistory  = "history"
	TypePing     = "ping"
	// TypeRefresh replaces the connection's token with a fresh one (Token)
	// before the current one expires.
	TypeRefresh = "refresh"
)

// Frame types, server to client. TypeChat and TypeHistory are used in both
// directions.
const (
	TypeWelcome  = "welcome"
	TypeJoined   = "joined"
	TypeLeft     = "left"
	TypeAck      = "ack"
	TypePresence = "presence"
	TypeError    = "error"
	TypePong     = "pong"
	// TypeExpiring tells an authenticated extended client that its token
	// expires soon (Expiring); TypeRefreshed answers refresh.
	TypeExpiring  = "expiring"
	TypeRefreshed = "refreshed"
)

// Close codes of connections ended for authentication (RFC 6455 leaves
// 4000–4999 to applications). The close reason starts with the error code
// of the same name, and an error frame with it precedes the close.
const (
	CloseAuthRequired = 4001 // no token where one is required
	CloseTokenInvalid = 4002 // malformed, badly signed, or not yet valid
	CloseTokenExpired = 4003 // expired, at connect or later without a refresh
	CloseTokenWrong   = 4004 // for another audience or from another issuer
	CloseDisconnected = 4005 // disconnected by the server API
)

// Presence events.
const (
	PresenceJoin  = "join"
	PresenceLeave = "leave"
)

// Message is one sequenced chat message of a room. Its JSON form is the
// body of the "chat" frame every member receives (see AppendChat).
type Message struct {
	Room string `json:"room"`
	Seq  uint64 `json:"seq"`
	// ID is the sender's own client message id, echoed so that the sender
	// can match its message; empty when the client gave none.
	ID   string `json:"id,omitempty"`
	From string `json:"from,omitempty"` // sender's nickname
	UID  string `json:"uid,omitempty"`  // sender's member id
	// User is the sender's authenticated identity (its token's subject),
	// empty for anonymous senders: unlike From, no client can choose it.
	User string `json:"user,omitempty"`
	Text string `json:"message"`
	TS   int64  `json:"ts"` // sequencing time, Unix milliseconds
}

// Member is one connection present in a room.
type Member struct {
	ID       string `json:"id"`
	Nick     string `json:"nick"`
	Instance string `json:"instance,omitempty"`
	// User is the member's authenticated identity, empty when anonymous.
	User string `json:"user,omitempty"`
}

// Inbound is any frame a client sends. It is one flat struct, decoded once
// by Decode, because a single decoder is the single place to get untrusted
// input right.
type Inbound struct {
	Type    string `json:"type"`
	ID      string `json:"id,omitempty"`
	Room    string `json:"room,omitempty"`
	Message string `json:"message,omitempty"`
	Nick    string `json:"nick,omitempty"`
	// Session (hello only) is the client's own opaque token, the same on
	// every connection of one client (a browser tab): with it, a chat
	// re-sent with the same id after a reconnect is recognised and
	// answered with its original seq instead of being sequenced twice.
	// It must stay secret to the client: whoever knows it can make that
	// client's chats look like re-sends. It is never sent to anyone else.
	Session string `json:"session,omitempty"`
	// Since asks join to recover every message after this sequence number.
	Since *uint64 `json:"since,omitempty"`
	// Epoch (join, with Since) is the joined.epoch Since counts in: when
	// the room's numbering has started over since, Since means nothing and
	// the join recovers the new numbering from its start.
	Epoch string `json:"epoch,omitempty"`
	// Before pages history backwards: messages with seq < Before.
	Before uint64 `json:"before,omitempty"`
	Limit  int    `json:"limit,omitempty"`
	// Token (hello, refresh) is a signed connection token (JWT). It is a
	// credential: never logged, never echoed.
	Token string `json:"token,omitempty"`
}

// Welcome answers hello.
type Welcome struct {
	Type     string `json:"type"`
	Version  int    `json:"version"`
	Instance string `json:"instance"`
	ID       string `json:"id"` // this connection's member id
	Nick     string `json:"nick"`
	// User and Expires (Unix milliseconds) are set for an authenticated
	// connection: its identity and when its token expires.
	User    string `json:"user,omitempty"`
	Expires int64  `json:"expires,omitempty"`
	Limits  Limits `json:"limits"`
}

// Expiring warns that the connection's token expires at Expires (Unix
// milliseconds): send refresh before, or the connection is closed then.
type Expiring struct {
	Type    string `json:"type"`
	Expires int64  `json:"expires"`
}

// Refreshed answers refresh: the connection's token now expires at
// Expires.
type Refreshed struct {
	Type    string `json:"type"`
	ID      string `json:"id,omitempty"`
	Expires int64  `json:"expires"`
}

// Limits tells an extended client what the server enforces, so a good client
// never hits them by surprise.
type Limits struct {
	MaxFrameBytes   int     `json:"max_frame_bytes"`
	MaxMessageBytes int     `json:"max_message_bytes"`
	MaxRooms        int     `json:"max_rooms"`
	RatePerSecond   float64 `json:"rate_per_second"`
	RateBurst       int     `json:"rate_burst"`
	History         int     `json:"history"`
}

// Joined answers join for extended clients.
type Joined struct {
	Type    string    `json:"type"`
	ID      string    `json:"id,omitempty"`
	Room    string    `json:"room"`
	Seq     uint64    `json:"seq"` // last sequence number of the room
	Members []Member  `json:"members"`
	History []Message `json:"history"`
	// Recovered is set only when the join asked for recovery (since): true
	// when History holds every message after since, false when some were
	// too old to recover and History holds only the most recent ones.
	Recovered *bool `json:"recovered,omitempty"`
	// Epoch names the room's numbering: a joined with another epoch than
	// the client last saw for the room means its sequence numbers started
	// over (a relayer with a new, lost or salvaged log; a standalone
	// restart), and the client's since and held seqs mean nothing in it.
	Epoch string `json:"epoch,omitempty"`
}

// Left answers leave.
type Left struct {
	Type string `json:"type"`
	ID   string `json:"id,omitempty"`
	Room string `json:"room"`
}

// Ack tells the sender that its chat message was sequenced.
type Ack struct {
	Type string `json:"type"`
	ID   string `json:"id,omitempty"`
	Room string `json:"room"`
	Seq  uint64 `json:"seq"`
}

// History answers a history request: Messages in ascending seq order, and
// First, the oldest sequence number still kept for the room.
type History struct {
	Type     string    `json:"type"`
	ID       string    `json:"id,omitempty"`
	Room     string    `json:"room"`
	Messages []Message `json:"messages"`
	First    uint64    `json:"first"`
}

// Presence is a live change of a room's members.
type Presence struct {
	Type   string `json:"type"`
	Room   string `json:"room"`
	Event  string `json:"event"` // PresenceJoin or PresenceLeave
	Member Member `json:"member"`
}

// Pong answers ping.
type Pong struct {
	Type string `json:"type"`
	ID   string `json:"id,omitempty"`
}
