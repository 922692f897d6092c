package conn

import (
	"net/http"
	"net/netip"
	"testing"
)

func TestClientAddr(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	for _, tc := range []struct {
		remote string
		header map[string][]string
		want   string
	}{
		{"192.0.2.1:5000", nil, "192.0.2.1/32"},
		{"192.0.2.1:5000", map[string][]string{"X-Real-Ip": {"198.51.100.1"}}, "192.0.2.1/32"}, // not trusted
		{"10.1.2.3:5000", map[string][]string{"X-Real-Ip": {"198.51.100.1"}}, "198.51.100.1/32"},
		{"10.1.2.3:5000", map[string][]string{"X-Forwarded-For": {"1.1.1.1, 198.51.100.2"}}, "198.51.100.2/32"},
		{"10.1.2.3:5000", map[string][]string{"X-Real-Ip": {"garbage"}}, "10.1.2.3/32"},
		{"10.1.2.3:5000", map[string][]string{"X-Real-Ip": {"2001:db8:1:2:3:4:5:6"}}, "2001:db8:1:2::/64"},
		{"[::ffff:10.1.2.3]:5000", map[string][]string{"X-Real-Ip": {"::ffff:198.51.100.3"}}, "198.51.100.3/32"},
		{"[2001:db8::1]:5000", nil, "2001:db8::/64"},
	} {
		r := &http.Request{RemoteAddr: tc.remote, Header: tc.header}
		got, ok := clientAddr(r, trusted)
		if !ok || got.String() != tc.want {
			t.Errorf("%s %v: %v %v, want %s", tc.remote, tc.header, got, ok, tc.want)
		}
	}
	if _, ok := clientAddr(&http.Request{RemoteAddr: "pipe"}, trusted); ok {
		t.Error("an address that is none was counted")
	}
}
