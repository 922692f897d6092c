//go:build unix

package wsconn

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// BenchmarkReadFrames is the read path of a client connection, as the
// conn's reader runs it (WaitReadable, then coder/websocket's Read through
// the Conn): 100-byte masked text frames, written by the client `frames`
// at a time in one write, which is how a busy client's frames arrive;
// with the frame read timeout the Conn follows the frame headers.
func BenchmarkReadFrames(b *testing.B) {
	for _, tc := range []struct {
		frames  int
		timeout time.Duration
	}{{1, 0}, {16, 0}, {1, 5 * time.Second}, {16, 5 * time.Second}} {
		frames := tc.frames
		b.Run(fmt.Sprintf("frames=%d/timeout=%s", frames, tc.timeout), func(b *testing.B) {
			payload := bytes.Repeat([]byte("x"), 100)
			var burst []byte
			for range frames {
				burst = append(burst, 0x81, 0x80|byte(len(payload)), 0, 0, 0, 0)
				burst = append(burst, payload...)
			}
			read := make(chan int, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				cw := &ResponseWriter{ResponseWriter: w, Pool: &Pool{}, FrameTimeout: tc.timeout}
				ws, err := websocket.Accept(cw, r, nil)
				if err != nil {
					b.Errorf("accept: %v", err)
					return
				}
				defer ws.CloseNow()
				n := 0
				for {
					cw.Conn.WaitReadable(0)
					if _, _, err := ws.Read(context.Background()); err != nil {
						read <- n
						return
					}
					n++
				}
			}))
			defer srv.Close()
			conn, err := net.Dial("tcp", srv.Listener.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			hs := "GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
				"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
			if _, err := conn.Write([]byte(hs)); err != nil {
				b.Fatal(err)
			}
			if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				b.Fatalf("upgrade: %v %v", resp, err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(burst)))
			b.ResetTimer()
			for range b.N {
				if _, err := conn.Write(burst); err != nil {
					b.Fatal(err)
				}
			}
			conn.Close()
			// Timed until the server has read everything.
			if n := <-read; n != b.N*frames {
				b.Fatalf("the server read %d frames, want %d", n, b.N*frames)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*frames), "ns/frame")
		})
	}
}
