package load

import (
	"maps"
	"strings"
	"testing"
)

func TestParseNetstat(t *testing.T) {
	in := "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPSynRetrans\n" +
		"TcpExt: 0 12 13 40\n" +
		"IpExt: InNoRoutes ListenDrops\n" +
		"IpExt: 5 99\n"
	got := parseNetstat(strings.NewReader(in), tcpDrops)
	want := map[string]int64{"ListenOverflows": 12, "ListenDrops": 13, "TCPSynRetrans": 40}
	if !maps.Equal(got, want) {
		t.Fatalf("parsed %v, want %v", got, want)
	}
	if got := parseNetstat(strings.NewReader("IpExt: A\nIpExt: 1\n"), tcpDrops); got != nil {
		t.Fatalf("no TcpExt: %v, want nil", got)
	}
	after := map[string]int64{"ListenOverflows": 12, "ListenDrops": 20, "TCPSynRetrans": 45}
	if d := tcpDelta(want, after); !maps.Equal(d, map[string]int64{"ListenDrops": 7, "TCPSynRetrans": 5}) {
		t.Fatalf("delta %v", d)
	}
	if d := tcpDelta(want, want); d != nil {
		t.Fatalf("nothing rose: %v, want nil", d)
	}
	if d := tcpDelta(nil, want); d != nil {
		t.Fatalf("missing reading: %v, want nil", d)
	}
}
