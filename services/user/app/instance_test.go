package app

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

func TestInstanceFromPTR(t *testing.T) {
	for _, tc := range []struct{ ptr, want string }{
		// Compose v2 and v1, default network.
		{"wschat-ws-user-2.wschat_default.", "ws-user-2"},
		{"wschat_ws-user_2.wschat_default.", "ws-user-2"},
		// Projects with the separators in their own name.
		{"wt-i18-ws-user-12.wt-i18_default.", "ws-user-12"},
		{"my_chat_ws-user_3.my_chat_default.", "ws-user-3"},
		{"my_chat-ws-user-3.my_chat_front.", "ws-user-3"},
		// A network of the compose file's own.
		{"wschat-relayer-1.wschat_backend.", "relayer-1"},
		// Not Compose: the container's name as it is.
		{"chat-a.mynet.", "chat-a"},
		{"chat_7.mynet.", "chat-7"},
		{"solo.", "solo"},
		// The project alone is no name.
		{"wschat_.wschat_default.", "wschat_"},
	} {
		if got := instanceFromPTR(tc.ptr); got != tc.want {
			t.Errorf("instanceFromPTR(%q) = %q, want %q", tc.ptr, got, tc.want)
		}
	}
}

func TestIsContainerID(t *testing.T) {
	for h, want := range map[string]bool{
		"f5f65c08e049": true, "0123456789ab": true,
		"F5F65C08E049": false, "f5f65c08e04": false, "f5f65c08e0499": false, "ws-user-1": false, "": false,
	} {
		if got := isContainerID(h); got != want {
			t.Errorf("isContainerID(%q) = %v, want %v", h, got, want)
		}
	}
	// Not a container's made-up hostname: no lookup, the hostname stays.
	if got := defaultInstanceID("chat-host"); got != "chat-host" {
		t.Errorf("defaultInstanceID(chat-host) = %q", got)
	}
}

func TestResolvConfServer(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(p, []byte("# Docker\nsearch example\nnameserver 127.0.0.11\nnameserver 10.0.0.1\noptions ndots:0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, ok := resolvConfServer(p); !ok || got != "127.0.0.11:53" {
		t.Errorf("resolvConfServer = %q, %v; want 127.0.0.11:53", got, ok)
	}
	if _, ok := resolvConfServer(filepath.Join(t.TempDir(), "none")); ok {
		t.Error("a missing resolv.conf gave a server")
	}
}

// fakeDNS answers PTR queries over UDP on loopback from names; an address
// it does not know gets NXDOMAIN. It stops with the test.
func fakeDNS(t *testing.T, names map[string]string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var q dnsmessage.Message
			if q.Unpack(buf[:n]) != nil || len(q.Questions) != 1 {
				continue
			}
			r := dnsmessage.Message{
				Header:    dnsmessage.Header{ID: q.ID, Response: true, RCode: dnsmessage.RCodeNameError},
				Questions: q.Questions,
			}
			if name, ok := names[q.Questions[0].Name.String()]; ok && q.Questions[0].Type == dnsmessage.TypePTR {
				r.RCode = dnsmessage.RCodeSuccess
				r.Answers = []dnsmessage.Resource{{
					Header: dnsmessage.ResourceHeader{Name: q.Questions[0].Name, Type: dnsmessage.TypePTR, Class: dnsmessage.ClassINET, TTL: 600},
					Body:   &dnsmessage.PTRResource{PTR: dnsmessage.MustNewName(name)},
				}}
			}
			// A stray answer with another id first: it must be ignored.
			stray := r
			stray.ID++
			for _, m := range []dnsmessage.Message{stray, r} {
				if b, err := m.Pack(); err == nil {
					_, _ = pc.WriteTo(b, from)
				}
			}
		}
	}()
	return pc.LocalAddr().String()
}

func TestLookupPTR(t *testing.T) {
	server := fakeDNS(t, map[string]string{"2.0.18.172.in-addr.arpa.": "wschat-ws-user-2.wschat_default."})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := lookupPTR(ctx, server, netip.MustParseAddr("172.18.0.2"))
	if err != nil || got != "wschat-ws-user-2.wschat_default." {
		t.Fatalf("lookupPTR = %q, %v", got, err)
	}
	if got, err := lookupPTR(ctx, server, netip.MustParseAddr("172.18.0.3")); err == nil {
		t.Errorf("an unknown address answered %q", got)
	}
	if _, err := lookupPTR(ctx, server, netip.MustParseAddr("fd00::1")); err == nil {
		t.Error("an IPv6 address was looked up")
	}
	// A server that never answers: the context bounds the wait.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if got, err := lookupPTR(short, silent.LocalAddr().String(), netip.MustParseAddr("172.18.0.2")); err == nil {
		t.Errorf("a silent server answered %q", got)
	}
}
