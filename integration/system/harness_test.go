// Package system tests the whole system in one process: a relayer and
// several ws-user instances started through their Run functions on
// loopback ports, driven by real WebSocket clients.
package system

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/integration/svctest"
	"github.com/wschat/wschat/services/protocol"
)

type proc = svctest.Service

func startRelayer(t *testing.T, env map[string]string) *proc { return svctest.StartRelayer(t, env) }

func startUser(t *testing.T, id string, r *proc, env map[string]string) *proc {
	t.Helper()
	relayer := ""
	if r != nil {
		relayer = r.Addr
	}
	return svctest.StartUser(t, id, relayer, env)
}

// startUserVia starts a ws-user whose relayer is at relayerAddr, which may
// be a proxy in front of the relayer.
func startUserVia(t *testing.T, id, relayerAddr string, env map[string]string) *proc {
	return svctest.StartUser(t, id, relayerAddr, env)
}

var (
	httpStatus = svctest.HTTPStatus
	waitFor    = svctest.WaitFor
)

// metric returns the value of an unlabelled metric of a ws-user, or -1.
func metric(addr, name string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var v float64
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			if _, err := fmt.Sscan(f[1], &v); err == nil {
				return v
			}
		}
	}
	return -1
}

// frame is any server frame, decoded loosely for assertions.
type frame struct {
	Type      string             `json:"type"`
	ID        string             `json:"id"`
	Room      string             `json:"room"`
	Message   string             `json:"message"`
	Seq       uint64             `json:"seq"`
	From      string             `json:"from"`
	UID       string             `json:"uid"`
	Code      string             `json:"code"`
	Instance  string             `json:"instance"`
	Nick      string             `json:"nick"`
	Members   []protocol.Member  `json:"members"`
	History   []protocol.Message `json:"history"`
	Messages  []protocol.Message `json:"messages"`
	First     uint64             `json:"first"`
	Recovered *bool              `json:"recovered"`
	Event     string             `json:"event"`
	Member    protocol.Member    `json:"member"`
	Raw       string             `json:"-"`
}

// client reads in its own goroutine: coder/websocket closes a connection
// whose Read is cancelled, so a read with a deadline must not be a Read.
type client struct {
	t      *testing.T
	conn   *websocket.Conn
	name   string
	frames chan frame
	err    error // set before frames is closed
}

func dial(t *testing.T, addr, path string) *client {
	t.Helper()
	c := dialNoRead(t, addr, path)
	go c.pump()
	return c
}

// dialNoRead returns a client that reads nothing until pump is started.
func dialNoRead(t *testing.T, addr, path string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws://"+addr+path, nil)
	if err != nil {
		t.Fatalf("dial %s%s: %v", addr, path, err)
	}
	conn.SetReadLimit(8 << 20)
	c := &client{t: t, conn: conn, name: addr, frames: make(chan frame, 4096)}
	t.Cleanup(func() { conn.CloseNow() })
	return c
}

func (c *client) pump() {
	defer close(c.frames)
	for {
		typ, b, err := c.conn.Read(context.Background())
		if err != nil {
			c.err = err
			return
		}
		var f frame
		if typ != websocket.MessageText {
			c.err = fmt.Errorf("got a binary frame")
			return
		}
		if err := json.Unmarshal(b, &f); err != nil {
			c.err = fmt.Errorf("frame %q is not JSON: %w", b, err)
			return
		}
		f.Raw = string(b)
		c.frames <- f
	}
}

// hello dials addr with the extended protocol and returns the welcome.
func hello(t *testing.T, addr, nick string) (*client, frame) {
	t.Helper()
	c := dial(t, addr, "/ws")
	c.name = nick
	c.send(map[string]any{"type": "hello", "nick": nick})
	w := c.expect("welcome")
	return c, w
}

func (c *client) send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(b)
}

func (c *client) sendRaw(b []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, b); err != nil {
		c.t.Fatalf("%s: write: %v", c.name, err)
	}
}

var errNoFrame = errors.New("no frame within the deadline")

// read returns the next frame, or an error when none comes within d or the
// connection ended.
func (c *client) read(d time.Duration) (frame, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case f, ok := <-c.frames:
		if !ok {
			return frame{}, c.err
		}
		return f, nil
	case <-t.C:
		return frame{}, errNoFrame
	}
}

func (c *client) next() frame {
	c.t.Helper()
	f, err := c.read(10 * time.Second)
	if err != nil {
		c.t.Fatalf("%s: read: %v", c.name, err)
	}
	return f
}

// expect skips presence frames and returns the next frame, failing unless
// it has the given type.
func (c *client) expect(typ string) frame {
	c.t.Helper()
	for {
		f := c.next()
		if f.Type == "presence" && typ != "presence" {
			continue
		}
		if f.Type != typ {
			c.t.Fatalf("%s: want a %q frame, got %s", c.name, typ, f.Raw)
		}
		return f
	}
}

// presence returns the next presence frame, skipping chat traffic.
func (c *client) presence() frame {
	c.t.Helper()
	for {
		f := c.next()
		switch f.Type {
		case "presence":
			return f
		case "chat", "ack":
		default:
			c.t.Fatalf("%s: want a presence frame, got %s", c.name, f.Raw)
		}
	}
}

// expectNot returns the next frame not of type skip.
func (c *client) expectNot(skip string) frame {
	c.t.Helper()
	for {
		if f := c.next(); f.Type != skip {
			return f
		}
	}
}

// join joins room and returns the joined frame.
func (c *client) join(room string, extra map[string]any) frame {
	c.t.Helper()
	m := map[string]any{"type": "join", "room": room, "id": "join-" + room}
	for k, v := range extra {
		m[k] = v
	}
	c.send(m)
	return c.expect("joined")
}

// chats reads until it has n chat frames of room, skipping acks and
// presence, and fails on anything else.
func (c *client) chats(room string, n int) []frame {
	c.t.Helper()
	var out []frame
	for len(out) < n {
		f := c.next()
		switch {
		case f.Type == "chat" && f.Room == room:
			out = append(out, f)
		case f.Type == "ack" || f.Type == "presence":
		default:
			c.t.Fatalf("%s: unexpected frame while reading chats: %s", c.name, f.Raw)
		}
	}
	return out
}

// chatsIn reads the given number of chat frames of each room, in whatever
// interleaving the rooms' frames come (rooms are ordered apart), each
// room's in order.
func (c *client) chatsIn(want map[string]int) map[string][]frame {
	c.t.Helper()
	out := map[string][]frame{}
	left := 0
	for _, n := range want {
		left += n
	}
	for left > 0 {
		f := c.next()
		switch {
		case f.Type == "chat" && len(out[f.Room]) < want[f.Room]:
			out[f.Room] = append(out[f.Room], f)
			left--
		case f.Type == "ack" || f.Type == "presence":
		default:
			c.t.Fatalf("%s: unexpected frame while reading chats: %s", c.name, f.Raw)
		}
	}
	return out
}

// closeStatus reads until the connection ends and returns how.
func (c *client) closeStatus(within time.Duration) (websocket.StatusCode, string) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		_, err := c.read(time.Until(deadline))
		if err == nil {
			continue
		}
		if errors.Is(err, errNoFrame) {
			break
		}
		var ce websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code, ce.Reason
		}
		return -1, err.Error()
	}
	c.t.Fatalf("%s: connection still open after %v", c.name, within)
	return 0, ""
}
