package load

import (
	"fmt"
	"testing"

	"github.com/wschat/wschat/integration/svctest"
)

// startCluster starts a relayer and n ws-users linked to it, ready, with
// rate limits raised for load.
func startCluster(t *testing.T, n int) []*svctest.Service {
	t.Helper()
	rl := svctest.StartRelayer(t, map[string]string{"RELAY_FSYNC": "false", "LOG_LEVEL": "info"})
	var users []*svctest.Service
	for i := range n {
		users = append(users, svctest.StartUser(t, fmt.Sprintf("load-user-%c", 'a'+i), rl.Addr,
			map[string]string{"RATE_PER_SEC": "10000", "RATE_BURST": "10000", "MAX_CONNS_PER_ADDR": "0", "LOG_LEVEL": "info"}))
	}
	return users
}
