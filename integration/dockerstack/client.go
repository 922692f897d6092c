package dockerstack

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/services/protocol"
)

// DialTimeout bounds one WebSocket handshake through nginx, including
// nginx's own retries towards a replica that just went away.
const DialTimeout = 10 * time.Second

// Dial opens a WebSocket through nginx; path is "/ws" or "/".
func Dial(ctx context.Context, base, path string) (*websocket.Conn, *http.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, base+path, nil)
	if err != nil {
		return nil, resp, fmt.Errorf("dial %s%s: %w", base, path, err)
	}
	c.SetReadLimit(1 << 20)
	return c, resp, nil
}

// Send writes one client frame.
func Send(ctx context.Context, c *websocket.Conn, in protocol.Inbound) error {
	return SendJSON(ctx, c, in)
}

// SendJSON writes v as one frame, for frames protocol.Inbound cannot say.
func SendJSON(ctx context.Context, c *websocket.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return c.Write(ctx, websocket.MessageText, b)
}

// FrameType is the "type" every server frame has.
func FrameType(b []byte) string {
	var f struct{ Type string }
	_ = json.Unmarshal(b, &f)
	return f.Type
}

// ReadType reads frames until one of type typ, failing on an error frame.
func ReadType(ctx context.Context, c *websocket.Conn, typ string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			return fmt.Errorf("waiting for %q: %w", typ, err)
		}
		switch FrameType(b) {
		case typ:
			return json.Unmarshal(b, v)
		case protocol.TypeError:
			return fmt.Errorf("waiting for %q: got %s", typ, b)
		}
	}
}

// Hello dials through nginx and completes the extended handshake.
func Hello(ctx context.Context, base, nick string) (*websocket.Conn, protocol.Welcome, error) {
	return HelloWith(ctx, base, protocol.Inbound{Type: protocol.TypeHello, Nick: nick})
}

// HelloWith is Hello with a hello frame of the caller's.
func HelloWith(ctx context.Context, base string, hello any) (*websocket.Conn, protocol.Welcome, error) {
	var w protocol.Welcome
	c, _, err := Dial(ctx, base, "/ws")
	if err != nil {
		return nil, w, err
	}
	if err := SendJSON(ctx, c, hello); err != nil {
		c.CloseNow()
		return nil, w, fmt.Errorf("hello: %w", err)
	}
	if err := ReadType(ctx, c, protocol.TypeWelcome, &w); err != nil {
		c.CloseNow()
		return nil, w, err
	}
	return c, w, nil
}
