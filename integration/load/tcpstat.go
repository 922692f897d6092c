package load

import (
	"bufio"
	"io"
	"os"
	"strconv"
	"strings"
)

// tcpDrops are the kernel's counters (/proc/net/netstat, TcpExt) that tell
// a connection storm slowed by the kernel rather than by the servers: a
// full accept queue or SYN queue drops a handshake, and the client only
// tries again after its SYN retransmission timeout (1 s first), which
// shows as setup latencies of a second and more.
var tcpDrops = []string{"ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "TCPReqQFullDoCookies", "TCPSynRetrans"}

// readTCPDrops reads tcpDrops from /proc/net/netstat of the generator's
// network namespace (the servers' too when they run on loopback beside
// it); nil where there is no such file.
func readTCPDrops() map[string]int64 {
	f, err := os.Open("/proc/net/netstat")
	if err != nil {
		return nil
	}
	defer f.Close()
	return parseNetstat(f, tcpDrops)
}

// parseNetstat reads the TcpExt counters named in want from netstat's
// format: a line of names, then a line of values, each line starting with
// the group's name.
func parseNetstat(r io.Reader, want []string) map[string]int64 {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 16<<10), 1<<20)
	var names []string
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) == 0 || f[0] != "TcpExt:" {
			continue
		}
		if names == nil {
			names = f[1:]
			continue
		}
		out := map[string]int64{}
		for i, v := range f[1:] {
			if i >= len(names) {
				break
			}
			for _, w := range want {
				if names[i] == w {
					if n, err := strconv.ParseInt(v, 10, 64); err == nil {
						out[w] = n
					}
				}
			}
		}
		return out
	}
	return nil
}

// tcpDelta is what the counters rose by from a to b, only those that did;
// nil when nothing rose or either reading is missing.
func tcpDelta(a, b map[string]int64) map[string]int64 {
	if a == nil || b == nil {
		return nil
	}
	var out map[string]int64
	for k, v := range b {
		if d := v - a[k]; d > 0 {
			if out == nil {
				out = map[string]int64{}
			}
			out[k] = d
		}
	}
	return out
}
