package load

// The peer's protocol: Centrifugo's bidirectional JSON protocol over
// WebSocket, so that the same workloads run against it side by side
// (bench-peers.sh). A room is a channel; a chat is a publish command whose
// data is {"message": <the load text>}; a delivery is a push of that
// publication. Replies and pushes may share a WebSocket message, one JSON
// object per line.

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/wschat/wschat/services/protocol"
)

// centrifugoSetup connects and subscribes ws to channel room, waiting for
// both replies.
func centrifugoSetup(ws *wsConn, i int, room string) error {
	if err := ws.writeFrame(opText, fmt.Appendf(nil, `{"id":1,"connect":{"name":"wsload%d"}}`, i)); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	if err := awaitCentrifugoReply(ws, 1); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	sub := append([]byte(`{"id":2,"subscribe":{"channel":`), protocol.AppendString(nil, room)...)
	if err := ws.writeFrame(opText, append(sub, `}}`...)); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	if err := awaitCentrifugoReply(ws, 2); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	return nil
}

// awaitCentrifugoReply reads until the reply to command id, failing on an
// error reply.
func awaitCentrifugoReply(ws *wsConn, id int) error {
	want := fmt.Appendf(nil, `{"id":%d,`, id)
	for {
		_, p, err := ws.readMessage()
		if err != nil {
			return err
		}
		for line := range bytes.Lines(p) {
			line = bytes.TrimSpace(line)
			if !bytes.HasPrefix(line, want) {
				continue
			}
			if bytes.Contains(line, []byte(`"error":`)) {
				return errors.New("centrifugo error reply " + string(line))
			}
			return nil
		}
	}
}

// appendCentrifugoPublish encodes a publish command of text (the
// generator's own ASCII: no escaping) to channel room.
func appendCentrifugoPublish(dst []byte, room string, text []byte, counter int) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendInt(dst, int64(counter)+10) // 1 and 2 are the setup's
	dst = append(dst, `,"publish":{"channel":`...)
	dst = protocol.AppendString(dst, room)
	dst = append(dst, `,"data":{"message":"`...)
	dst = append(dst, text...)
	return append(dst, `"}}}`...)
}

// onCentrifugo handles a Centrifugo WebSocket message: pushes of
// publications become chats, replies to publishes acks; a server ping
// (an empty object) is answered.
func (c *conn) onCentrifugo(p []byte, f *serverFrame) {
	for line := range bytes.Lines(p) {
		line = bytes.TrimSpace(line)
		switch {
		case len(line) == 0:
		case string(line) == "{}":
			_ = c.ws.writeFrame(opText, line) // pong
		case bytes.HasPrefix(line, []byte(`{"push":`)):
			if !scanCentrifugoPush(line, f) {
				c.r.errs.add("bad_frame", 1)
				continue
			}
			if c.room != nil {
				c.onChat(f)
			}
		case bytes.Contains(line, []byte(`"error":`)):
			c.r.errs.add("server_centrifugo", 1)
		default:
			c.acks++
		}
	}
}

// scanCentrifugoPush reads {"push":{"channel":…,"pub":{"data":{"message":…}}}}
// into f as a chat of room channel.
func scanCentrifugoPush(line []byte, f *serverFrame) bool {
	*f = serverFrame{typ: []byte(protocol.TypeChat)}
	var top, push, pub, data jsonIter
	if !top.reset(line) {
		return false
	}
	for top.next() {
		if string(top.key) != "push" || !push.reset(top.val) {
			continue
		}
		for push.next() {
			switch string(push.key) {
			case "channel":
				f.room = push.val
			case "pub":
				if !pub.reset(push.val) {
					return false
				}
				for pub.next() {
					if string(pub.key) == "data" && data.reset(pub.val) {
						for data.next() {
							if string(data.key) == "message" {
								f.message = data.val
							}
						}
					}
				}
			}
		}
	}
	return f.room != nil && f.message != nil
}
