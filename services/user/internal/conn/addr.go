package conn

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// clientAddr is what the per-address connection limit counts a connection
// under: the peer's address or, when the peer is a trusted proxy, the
// client address the proxy names in X-Real-IP (nginx sets it; else the
// last X-Forwarded-For entry, the one the proxy appended). An IPv6
// address counts by its /64, which one host usually holds whole. ok is
// false when no address is known (the limit then does not apply).
func clientAddr(r *http.Request, trusted []netip.Prefix) (key netip.Prefix, ok bool) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Prefix{}, false
	}
	addr = addr.Unmap()
	if isTrusted(addr, trusted) {
		if named, ok := forwardedFor(r); ok {
			addr = named
		}
	}
	bits := 32
	if addr.Is6() {
		bits = 64
	}
	p, err := addr.Prefix(bits)
	return p, err == nil
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// forwardedFor is the client address a proxy put in the request.
func forwardedFor(r *http.Request) (netip.Addr, bool) {
	v := strings.TrimSpace(r.Header.Get("X-Real-IP"))
	if v == "" {
		xff := r.Header.Values("X-Forwarded-For")
		if len(xff) == 0 {
			return netip.Addr{}, false
		}
		last := xff[len(xff)-1]
		v = strings.TrimSpace(last[strings.LastIndexByte(last, ',')+1:])
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}
