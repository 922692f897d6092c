package app

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// lookupBudget bounds how long finding the instance's name may delay the
// start: a container whose DNS does not answer keeps its hostname.
const lookupBudget = 2 * time.Second

// defaultInstanceID names an instance whose INSTANCE_ID is unset: its
// hostname, unless that is the container id Docker made up, which tells
// nothing and changes with every container. Then it is the container's
// name, which Docker's embedded DNS server gives for the container's own
// address (a PTR record "<container>.<network>."), with the Compose
// project taken off: replica 2 of service ws-user is "ws-user-2" under
// Compose v2 (container <project>-ws-user-2) and v1 (<project>_ws-user_2)
// alike. Container names are unique, so the names are; a container with
// no such record (the default bridge network) keeps its hostname.
func defaultInstanceID(hostname string) string {
	if !isContainerID(hostname) {
		return hostname
	}
	server, ok := resolvConfServer("/etc/resolv.conf")
	if !ok {
		return hostname
	}
	ctx, cancel := context.WithTimeout(context.Background(), lookupBudget)
	defer cancel()
	for _, addr := range ownAddrs() {
		if ptr, err := lookupPTR(ctx, server, addr); err == nil {
			if name := instanceFromPTR(ptr); name != "" {
				return name
			}
		}
	}
	return hostname
}

// isContainerID tells whether a hostname is what Docker sets by default:
// the first 12 hex digits of the container id.
func isContainerID(h string) bool {
	if len(h) != 12 {
		return false
	}
	for _, c := range h {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// instanceFromPTR makes an instance name of a PTR answer of Docker's DNS,
// "<container>.<network>.": the container's name less its Compose project
// (networks are named <project>_<network>, containers <project>-<service>-<n>
// or, by Compose v1, <project>_<service>_<n>), its index joined with "-".
// A name with no project prefix is kept whole.
func instanceFromPTR(ptr string) string {
	container, network, _ := strings.Cut(strings.TrimSuffix(ptr, "."), ".")
	name := container
	// The project is a prefix of the network's name ending before a "_";
	// the longest one the container's name starts with.
	for i := strings.LastIndexByte(network, '_'); i > 0; i = strings.LastIndexByte(network[:i], '_') {
		project := network[:i]
		rest, ok := strings.CutPrefix(container, project)
		if ok && len(rest) > 1 && (rest[0] == '-' || rest[0] == '_') {
			name = rest[1:]
			break
		}
	}
	if i := strings.LastIndexByte(name, '_'); i > 0 && i < len(name)-1 && allDigits(name[i+1:]) {
		name = name[:i] + "-" + name[i+1:]
	}
	return name
}

func allDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// resolvConfServer returns the first nameserver of a resolv.conf as
// host:53.
func resolvConfServer(path string) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if a, err := netip.ParseAddr(fields[1]); err == nil {
				return netip.AddrPortFrom(a, 53).String(), true
			}
		}
	}
	return "", false
}

// ownAddrs returns the instance's IPv4 addresses other than loopback.
func ownAddrs() []netip.Addr {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range ifAddrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
			out = append(out, p.Addr())
		}
	}
	return out
}

// lookupPTR asks server for the PTR record of addr (IPv4). It is a query
// of its own rather than net.LookupAddr because the resolver answers from
// /etc/hosts first, where Docker maps the address to the container id.
func lookupPTR(ctx context.Context, server string, addr netip.Addr) (string, error) {
	if !addr.Is4() {
		return "", fmt.Errorf("ptr %s: IPv4 only", addr)
	}
	b := addr.As4()
	name, err := dnsmessage.NewName(fmt.Sprintf("%d.%d.%d.%d.in-addr.arpa.", b[3], b[2], b[1], b[0]))
	if err != nil {
		return "", fmt.Errorf("ptr %s: %w", addr, err)
	}
	id := uint16(time.Now().UnixNano())
	q := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: name, Type: dnsmessage.TypePTR, Class: dnsmessage.ClassINET}},
	}
	packet, err := q.Pack()
	if err != nil {
		return "", fmt.Errorf("ptr %s: %w", addr, err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", server)
	if err != nil {
		return "", fmt.Errorf("ptr %s: %w", addr, err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	if _, err := conn.Write(packet); err != nil {
		return "", fmt.Errorf("ptr %s: %w", addr, err)
	}
	buf := make([]byte, 1500)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return "", fmt.Errorf("ptr %s: %w", addr, err)
		}
		var m dnsmessage.Message
		if m.Unpack(buf[:n]) != nil || m.ID != id || !m.Response {
			continue // not the answer to this query
		}
		for _, a := range m.Answers {
			if ptr, ok := a.Body.(*dnsmessage.PTRResource); ok {
				return ptr.PTR.String(), nil
			}
		}
		return "", fmt.Errorf("ptr %s: no record (%s)", addr, m.RCode)
	}
}
