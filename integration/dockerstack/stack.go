package dockerstack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	mobynet "github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tcexec "github.com/testcontainers/testcontainers-go/exec"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"
)

const (
	// RelaySecret is the relay secret of every stack.
	RelaySecret = "containers-test-secret"
	// Service names on the private network, as in docker-compose.yml: the
	// nginx config looks ws-user up by this name.
	relayerAlias = "relayer"
	userAlias    = "ws-user"
	// startTimeout bounds one container's start until healthy.
	startTimeout = 60 * time.Second
)

// Options shape a stack beyond its number of replicas.
type Options struct {
	// Split puts the relay link on a network of its own (relayer and
	// replicas), apart from the one nginx reaches the replicas on, so that
	// a replica can be cut off from the relayer while its clients stay.
	Split bool
	// RelayerEnv and UserEnv add to (or override) the services' test
	// environment.
	RelayerEnv, UserEnv map[string]string
	// NATS runs the relay tier on a three-node NATS JetStream cluster
	// (nats-1..3, wschat/nats, a volume each, as docker-compose.yml's nats
	// profile) instead of the relayer: the replicas get BUS=nats, and New
	// returns once each of them is ready (synchronised with the cluster).
	NATS bool
}

// NATSNodes is the size of a NATS stack's cluster (the stream's replicas).
const NATSNodes = 3

// NATSHealthURL is a node's own health endpoint (inside its container):
// up with JetStream enabled, as the image's HEALTHCHECK asks.
const NATSHealthURL = "http://127.0.0.1:8222/healthz?js-enabled-only=true"

// Stack is one test's private deployment: relayer, ws-user replicas and
// nginx on their own network, like docker-compose.yml.
type Stack struct {
	t           *testing.T
	opts        Options
	labels      map[string]string
	net         *testcontainers.DockerNetwork
	back        *testcontainers.DockerNetwork // the relay link's, with Split
	volume      string                        // the relayer's data volume
	natsVolumes []string                      // nats-1..3's, with NATS

	mu      sync.Mutex
	relayer *testcontainers.DockerContainer
	nats    []*testcontainers.DockerContainer          // nats-1..3, with NATS
	users   map[string]*testcontainers.DockerContainer // by INSTANCE_ID
	nginx   *testcontainers.DockerContainer
	all     []*testcontainers.DockerContainer // for cleanup, in start order

	WSURL   string // ws://<docker host>:<nginx port>, 127.0.0.1 locally
	HTTPURL string
}

// New starts relayer, the given ws-user replicas (ws-user-1..n) and
// nginx, each healthy, and registers their removal.
func New(t *testing.T, replicas int) *Stack {
	t.Helper()
	return NewWith(t, replicas, Options{})
}

// NewWith is New with Options.
func NewWith(t *testing.T, replicas int, opts Options) *Stack {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := &Stack{t: t, opts: opts, labels: testLabels(), users: map[string]*testcontainers.DockerContainer{}}
	// Registered first, so it runs last: after every container is gone.
	t.Cleanup(s.removeNetworkAndVolume)
	t.Cleanup(s.removeContainers)

	nw, err := network.New(ctx, network.WithLabels(s.labels))
	if err != nil {
		t.Fatalf("network: %v", err)
	}
	s.net = nw
	s.back = nw
	if opts.Split {
		if s.back, err = network.New(ctx, network.WithLabels(s.labels)); err != nil {
			t.Fatalf("relay network: %v", err)
		}
	}
	s.volume = "wschat-itest-" + strings.ReplaceAll(t.Name(), "/", "-") + "-" + nw.ID[:12]
	if _, err := suite.docker.VolumeCreate(ctx, client.VolumeCreateOptions{Name: s.volume, Labels: s.labels}); err != nil {
		t.Fatalf("volume: %v", err)
	}

	if opts.NATS {
		s.startNATS(ctx)
	} else {
		s.startRelayer(ctx)
	}
	var wg sync.WaitGroup
	for i := 1; i <= replicas; i++ {
		wg.Go(func() { s.StartUser(ctx, fmt.Sprintf("ws-user-%d", i)) })
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	s.startNginx(ctx)
	return s
}

// run starts one container of the stack on nets and waits until it is
// healthy. It reports failures with t.Errorf, so it is safe from any
// goroutine.
func (s *Stack) run(ctx context.Context, image, alias string, nets []*testcontainers.DockerNetwork, env map[string]string, strategy wait.Strategy, extra ...testcontainers.ContainerCustomizer) *testcontainers.DockerContainer {
	var opts []testcontainers.ContainerCustomizer
	for _, nw := range nets {
		opts = append(opts, network.WithNetwork([]string{alias}, nw))
	}
	opts = append(opts,
		testcontainers.WithEnv(env),
		testcontainers.WithLabels(s.labels),
		testcontainers.WithLogger(tclog.TestLogger(s.t)),
		testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			if !suite.loopback {
				return
			}
			// testcontainers publishes every exposed port; keep them
			// on loopback, where the tests' traffic belongs.
			hc.PortBindings = mobynet.PortMap{}
			ports := []string{"3001/tcp", "8080/tcp"}
			if strings.HasPrefix(alias, "nats-") {
				ports = []string{"4222/tcp", "6222/tcp", "8222/tcp"}
			}
			for _, p := range ports {
				hc.PortBindings[mobynet.MustParsePort(p)] = []mobynet.PortBinding{{HostIP: netip.MustParseAddr("127.0.0.1")}}
			}
		}),
		testcontainers.WithWaitStrategyAndDeadline(startTimeout, strategy),
	)
	ctr, err := testcontainers.Run(ctx, image, append(opts, extra...)...)
	if ctr != nil {
		s.mu.Lock()
		s.all = append(s.all, ctr)
		s.mu.Unlock()
	}
	if err != nil {
		s.t.Errorf("start %s (%s): %v", alias, image, err)
		return nil
	}
	return ctr
}

// healthEvery replaces the image's HEALTHCHECK timing (5 s, for
// production) with a fast one, still running the image's own command.
func healthEvery(cmd ...string) testcontainers.CustomizeRequestOption {
	return testcontainers.WithConfigModifier(func(c *container.Config) {
		c.Healthcheck = &container.HealthConfig{
			Test:     append([]string{"CMD"}, cmd...),
			Interval: 300 * time.Millisecond,
			Timeout:  3 * time.Second,
			Retries:  3,
		}
	})
}

func (s *Stack) startRelayer(ctx context.Context) {
	s.t.Helper()
	ctr := s.run(ctx, "wschat/ws-relayer:"+imageTag, relayerAlias, []*testcontainers.DockerNetwork{s.back},
		withEnv(map[string]string{
			"RELAY_SECRET":  RelaySecret,
			"HISTORY_LIMIT": "1000",
			"LOG_LEVEL":     "debug",
		}, s.opts.RelayerEnv),
		wait.ForHealthCheck(),
		healthEvery("/ws-relayer", "healthcheck"),
		testcontainers.WithMounts(testcontainers.VolumeMount(s.volume, "/data")),
	)
	if ctr == nil {
		s.t.FailNow()
	}
	s.mu.Lock()
	s.relayer = ctr
	s.mu.Unlock()
}

// withEnv is base with extra on top.
func withEnv(base, extra map[string]string) map[string]string {
	maps.Copy(base, extra)
	return base
}

// StartUser starts one ws-user replica; INSTANCE_ID is its name, so that
// "welcome" tells the tests which replica a connection reached. It
// returns nil, the test marked failed, when the replica did not start.
func (s *Stack) StartUser(ctx context.Context, id string) *testcontainers.DockerContainer {
	nets := []*testcontainers.DockerNetwork{s.net}
	if s.back != s.net {
		nets = append(nets, s.back)
	}
	env := map[string]string{
		"RELAYER_URL":  "ws://" + relayerAlias + ":3001",
		"RELAY_SECRET": RelaySecret,
		"INSTANCE_ID":  id,
		"LOG_LEVEL":    "debug",
	}
	if s.opts.NATS {
		var urls []string
		for i := 1; i <= NATSNodes; i++ {
			urls = append(urls, fmt.Sprintf("nats://nats-%d:4222", i))
		}
		env["BUS"], env["NATS_URL"] = "nats", strings.Join(urls, ",")
	}
	ctr := s.run(ctx, "wschat/ws-user:"+imageTag, userAlias, nets,
		withEnv(env, s.opts.UserEnv),
		wait.ForHealthCheck(),
		healthEvery("/ws-user", "healthcheck"),
	)
	if ctr != nil {
		s.mu.Lock()
		s.users[id] = ctr
		s.mu.Unlock()
		if s.opts.NATS {
			s.waitReady(ctx, id, ctr)
		}
	}
	return ctr
}

// startNATS starts nats-1..3 on the relay network, each with a volume of
// its own, and waits until each is healthy.
func (s *Stack) startNATS(ctx context.Context) {
	s.t.Helper()
	s.nats = make([]*testcontainers.DockerContainer, NATSNodes)
	var wg sync.WaitGroup
	for i := 1; i <= NATSNodes; i++ {
		name := fmt.Sprintf("nats-%d", i)
		vol := s.volume + "-" + name
		if _, err := suite.docker.VolumeCreate(ctx, client.VolumeCreateOptions{Name: vol, Labels: s.labels}); err != nil {
			s.t.Fatalf("volume: %v", err)
		}
		s.natsVolumes = append(s.natsVolumes, vol)
		wg.Go(func() {
			ctr := s.run(ctx, "wschat/nats:"+imageTag, name, []*testcontainers.DockerNetwork{s.back}, nil,
				wait.ForHealthCheck(),
				healthEvery("wget", "-q", "-O", "/dev/null", NATSHealthURL),
				testcontainers.WithCmd("--name", name),
				testcontainers.WithMounts(testcontainers.VolumeMount(vol, "/data")),
			)
			s.mu.Lock()
			s.nats[i-1] = ctr
			s.mu.Unlock()
		})
	}
	wg.Wait()
	if s.t.Failed() {
		s.t.FailNow()
	}
}

// NATS is node i (1..NATSNodes) of a NATS stack's cluster.
func (s *Stack) NATS(i int) *testcontainers.DockerContainer {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i < 1 || i > len(s.nats) {
		s.t.Fatalf("no NATS node %d", i)
	}
	return s.nats[i-1]
}

// Exec runs cmd in a container and returns its exit code and output.
func Exec(ctx context.Context, ctr *testcontainers.DockerContainer, cmd ...string) (int, string, error) {
	code, r, err := ctr.Exec(ctx, cmd, tcexec.Multiplexed())
	if err != nil {
		return code, "", err
	}
	b, err := io.ReadAll(r)
	return code, string(b), err
}

// readyTimeout bounds a NATS stack's replica's first synchronisation
// with the cluster (the stream's creation waits for a JetStream leader).
const readyTimeout = 60 * time.Second

// waitReady polls replica id's /readyz, from inside a running NATS node
// (its wget; the replica's image has no client), until it answers 200.
func (s *Stack) waitReady(ctx context.Context, id string, ctr *testcontainers.DockerContainer) {
	ip, err := ctr.ContainerIP(ctx)
	if err != nil {
		s.t.Errorf("%s: address: %v", id, err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		for i := 1; i <= NATSNodes; i++ {
			code, out, err := Exec(ctx, s.NATS(i), "wget", "-q", "-O", "-", "http://"+ip+":8080/readyz")
			if err == nil && code == 0 {
				return
			}
			if err == nil {
				last = fmt.Sprintf("exit %d: %s", code, strings.TrimSpace(out))
				break // that node answered: the replica is not ready
			}
			last = err.Error()
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			s.t.Errorf("%s not ready within %s: %s", id, readyTimeout, last)
			return
		}
	}
}

func (s *Stack) startNginx(ctx context.Context) {
	s.t.Helper()
	ctr := s.run(ctx, "wschat/nginx:"+imageTag, "nginx", []*testcontainers.DockerNetwork{s.net}, nil,
		wait.ForHTTP("/nginx-health").WithPort("8080/tcp"),
		testcontainers.WithExposedPorts("8080/tcp"),
	)
	if ctr == nil {
		s.t.FailNow()
	}
	endpoint, err := ctr.PortEndpoint(ctx, "8080/tcp", "")
	if err != nil {
		s.t.Fatalf("nginx port: %v", err)
	}
	s.nginx = ctr
	s.WSURL = "ws://" + endpoint
	s.HTTPURL = "http://" + endpoint
}

// User is replica id's container.
func (s *Stack) User(id string) *testcontainers.DockerContainer {
	s.mu.Lock()
	defer s.mu.Unlock()
	ctr := s.users[id]
	if ctr == nil {
		s.t.Fatalf("no replica %s", id)
	}
	return ctr
}

// Relayer is the relayer's current container.
func (s *Stack) Relayer() *testcontainers.DockerContainer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.relayer
}

// Containers are every container the stack started (replaced ones
// included), in start order: for a test that reads all their logs.
func (s *Stack) Containers() []*testcontainers.DockerContainer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.all)
}

// Volume is the name of the relayer's data volume (mounted on /data).
func (s *Stack) Volume() string { return s.volume }

// RelayNetwork is the ID of the network the relay link runs on (the only
// one without Split).
func (s *Stack) RelayNetwork() string { return s.back.ID }

// Labels are the labels of everything the stack created, for containers
// a test starts beside it (they are swept with it).
func (s *Stack) Labels() map[string]string { return maps.Clone(s.labels) }

// Kill SIGKILLs a container: a crash, no goodbye to anyone.
func (s *Stack) Kill(ctx context.Context, ctr *testcontainers.DockerContainer) {
	s.t.Helper()
	if _, err := suite.docker.ContainerKill(ctx, ctr.GetContainerID(), client.ContainerKillOptions{Signal: "KILL"}); err != nil {
		s.t.Fatalf("kill: %v", err)
	}
}

// Stop stops a container the way docker stop / compose down do: SIGTERM,
// then SIGKILL after the grace period.
func (s *Stack) Stop(ctx context.Context, ctr *testcontainers.DockerContainer) {
	s.t.Helper()
	grace := 15 * time.Second
	if err := ctr.Stop(ctx, &grace); err != nil {
		s.t.Fatalf("stop: %v", err)
	}
}

// RestartRelayer replaces the relayer container by a new one on the same
// data volume: only what the volume holds can survive.
func (s *Stack) RestartRelayer(ctx context.Context) {
	s.t.Helper()
	s.mu.Lock()
	old := s.relayer
	s.mu.Unlock()
	s.Stop(ctx, old)
	if err := old.Terminate(ctx); err != nil {
		s.t.Fatalf("remove relayer: %v", err)
	}
	s.startRelayer(ctx)
}

// removeContainers runs at the end of the test; a failed test first gets
// the tail of every container's log.
func (s *Stack) removeContainers() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s.mu.Lock()
	all := slices.Clone(s.all)
	s.mu.Unlock()
	if s.t.Failed() {
		for _, ctr := range all {
			s.t.Logf("---- logs of %s (%s):\n%s", ctr.GetContainerID()[:12], ctr.Image, LogTail(ctx, ctr, 60))
		}
	}
	for _, ctr := range all {
		if err := ctr.Terminate(ctx, testcontainers.StopTimeout(0)); err != nil && IgnoreNotFound(err) != nil {
			s.t.Errorf("remove container %s: %v", ctr.GetContainerID()[:12], err)
		}
	}
}

func (s *Stack) removeNetworkAndVolume() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var errs []error
	if s.net != nil {
		errs = append(errs, IgnoreNotFound(s.net.Remove(ctx)))
	}
	for _, v := range append([]string{s.volume}, s.natsVolumes...) {
		if v == "" {
			continue
		}
		_, err := suite.docker.VolumeRemove(ctx, v, client.VolumeRemoveOptions{Force: true})
		errs = append(errs, IgnoreNotFound(err))
	}
	if err := errors.Join(errs...); err != nil {
		s.t.Errorf("cleanup: %v", err)
	}
}

// LogTail is the last n lines of a container's log.
func LogTail(ctx context.Context, ctr *testcontainers.DockerContainer, n int) string {
	rc, err := ctr.Logs(ctx)
	if err != nil {
		return fmt.Sprintf("(no logs: %v)", err)
	}
	defer rc.Close()
	var lines []string
	sc := bufio.NewScanner(rc)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
