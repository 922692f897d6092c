// Package dockerstack starts the images of docker-compose.yml for tests:
// a relayer, ws-user replicas and nginx in containers on private Docker
// networks, reached through nginx's published port. The container tests
// (integration/containers) and the fault suite (integration/fault) share it.
//
// Main builds the images with deploy/images.sh (which falls back to
// deploy/offline-images.sh where no registry answers), so the first run
// on a machine takes minutes; later runs reuse Docker's cache. Every test
// starts its own stack, because most of them break it on purpose.
//
// Tests skip only when no Docker daemon is reachable. They do not rely on
// Ryuk (it cannot be pulled without a registry): everything they create
// carries the label org.wschat.test, is removed by t.Cleanup and by Main,
// and leftovers of runs that died are swept at start.
package dockerstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
)

const (
	// labelTest marks everything the tests create; its value is always "1".
	labelTest = "org.wschat.test"
	// labelOwner is "<hostname>:<pid>" of the test process that created it,
	// so a sweep can tell a dead run's leftovers from a live run's stack.
	labelOwner = "org.wschat.test.owner"
	// labelStarted is the creation time in Unix seconds.
	labelStarted = "org.wschat.test.started"

	// imageTag is the tag deploy/images.sh builds for the tests, apart
	// from the "dev" tag of `make up`.
	imageTag = "itest"

	// staleAfter is when another live run's resources count as leftovers
	// anyway: longer than any test run may last.
	staleAfter = 3 * time.Hour
)

// suite is what TestMain found out, read-only once the tests run.
var suite struct {
	skip     string         // why the tests cannot run here, if they cannot
	buildErr error          // images could not be built: every test fails
	docker   *client.Client // the daemon the containers run on
	owner    string
	root     string // the repository root
	loopback bool   // published ports are bound to 127.0.0.1 only
}

// Main is the body of a test package's TestMain: it connects to Docker,
// sweeps dead runs' leftovers, builds the images, runs the tests and
// removes whatever they left. name prefixes its messages.
//
//	func TestMain(m *testing.M) { os.Exit(dockerstack.Main(m, "containers")) }
func Main(m *testing.M, name string) int {
	// Ryuk, testcontainers' reaper, is an image to pull: impossible without
	// a registry. Cleanup is ours instead (labels, t.Cleanup, sweeps).
	os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
	// Inside a container (/.dockerenv, as on some CI runners and dev
	// machines) testcontainers reaches published ports through the bridge
	// gateway. With a local daemon they are on loopback: test traffic
	// stays on this machine's loopback, and ports are published there only.
	if os.Getenv("TESTCONTAINERS_HOST_OVERRIDE") == "" && localDaemon() {
		os.Setenv("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
		suite.loopback = true
	}

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	cli, err := dockerClient(ctx)
	if err != nil {
		suite.skip = fmt.Sprintf("no Docker daemon reachable: %v", err)
		return m.Run()
	}
	suite.docker = cli
	host, _ := os.Hostname()
	suite.owner = fmt.Sprintf("%s:%d", host, os.Getpid())

	if err := sweep(ctx, cli, isLeftover); err != nil {
		fmt.Fprintf(os.Stderr, "%s: sweeping leftovers: %v\n", name, err)
	}
	root, err := repoRoot()
	if err == nil {
		suite.root = root
		err = buildImages(ctx, name, root)
	}
	suite.buildErr = err

	code := m.Run()

	// t.Cleanup removed each test's stack; this catches whatever a panic
	// or a failed cleanup left behind.
	mine := func(labels map[string]string) bool { return labels[labelOwner] == suite.owner }
	if err := sweep(context.Background(), cli, mine); err != nil {
		fmt.Fprintf(os.Stderr, "%s: final sweep: %v\n", name, err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// dockerClient connects the way testcontainers does (DOCKER_HOST,
// ~/.testcontainers.properties, the default socket) and checks the daemon
// answers.
func dockerClient(ctx context.Context) (*client.Client, error) {
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tc, err := testcontainers.NewDockerClientWithOpts(pingCtx)
	if err != nil {
		return nil, err
	}
	if _, err := tc.Ping(pingCtx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		return nil, fmt.Errorf("ping: %w", err)
	}
	return tc.Client, nil
}

// localDaemon tells whether Docker runs on this machine (a unix socket),
// so that its published ports are reachable on loopback.
func localDaemon() bool {
	h := os.Getenv("DOCKER_HOST")
	return h == "" || strings.HasPrefix(h, "unix://")
}

// Need is the first line of every test: it skips without a Docker daemon
// and fails when the images could not be built.
func Need(t *testing.T) {
	t.Helper()
	if suite.skip != "" {
		t.Skip(suite.skip)
	}
	if suite.buildErr != nil {
		t.Fatalf("images: %v", suite.buildErr)
	}
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("repository root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root: no go.work above the working directory")
		}
		dir = parent
	}
}

// buildImages runs the same script as `make up`, so the tests exercise
// the images users get, built the same way (offline base images included).
func buildImages(ctx context.Context, name, root string) error {
	unlock, err := lockBuild(imageTag)
	if err != nil {
		return err
	}
	defer unlock()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "deploy", "images.sh"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "WSCHAT_TAG="+imageTag)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("deploy/images.sh: %w\n%s", err, out.Bytes())
	}
	fmt.Fprintf(os.Stderr, "%s: images ready in %s\n", name, time.Since(start).Round(time.Second))
	return nil
}

// testLabels are the labels of everything a test creates.
func testLabels() map[string]string {
	return map[string]string{
		labelTest:    "1",
		labelOwner:   suite.owner,
		labelStarted: strconv.FormatInt(time.Now().Unix(), 10),
	}
}

// isLeftover tells whether resources with these labels belong to no live
// test run: their process is gone, or they are older than any run.
func isLeftover(labels map[string]string) bool {
	if started, err := strconv.ParseInt(labels[labelStarted], 10, 64); err == nil &&
		time.Since(time.Unix(started, 0)) > staleAfter {
		return true
	}
	host, pidText, ok := strings.Cut(labels[labelOwner], ":")
	me, _ := os.Hostname()
	if !ok || host != me {
		return false
	}
	pid, err := strconv.Atoi(pidText)
	if err != nil {
		return true
	}
	return !processAlive(pid)
}

func processAlive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	err = p.Signal(syscall.Signal(0))
	return err == nil || errors.Is(err, syscall.EPERM)
}

// sweep removes the labelled containers, then networks, then volumes
// (in the order their dependencies allow) that match.
func sweep(ctx context.Context, cli *client.Client, match func(map[string]string) bool) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	filter := client.Filters{}.Add("label", labelTest)
	var errs []error

	containers, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: filter})
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	for _, c := range containers.Items {
		if match(c.Labels) {
			_, err := cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
			errs = append(errs, IgnoreNotFound(err))
		}
	}
	networks, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: filter})
	if err != nil {
		return fmt.Errorf("list networks: %w", err)
	}
	for _, n := range networks.Items {
		if match(n.Labels) {
			_, err := cli.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{})
			errs = append(errs, IgnoreNotFound(err))
		}
	}
	volumes, err := cli.VolumeList(ctx, client.VolumeListOptions{Filters: filter})
	if err != nil {
		return fmt.Errorf("list volumes: %w", err)
	}
	for _, v := range volumes.Items {
		if match(v.Labels) {
			_, err := cli.VolumeRemove(ctx, v.Name, client.VolumeRemoveOptions{Force: true})
			errs = append(errs, IgnoreNotFound(err))
		}
	}
	return errors.Join(errs...)
}

// Docker is the daemon's client (nil when the tests skip), for faults the
// Stack has no method for.
func Docker() *client.Client { return suite.docker }

// Root is the repository's root directory.
func Root() string { return suite.root }

// ImageTag is the tag of the images the tests build (deploy/images.sh's
// WSCHAT_TAG), apart from the "dev" tag of `make up`.
const ImageTag = imageTag

// IgnoreNotFound: a concurrent cleanup may have won the race.
func IgnoreNotFound(err error) error {
	if cerrdefs.IsNotFound(err) {
		return nil
	}
	return err
}
