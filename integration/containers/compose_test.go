package containers

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wschat/wschat/integration/dockerstack"
)

// script runs one of deploy/'s scripts from the repository root with the
// test's image tag and extra environment, and returns how long it took.
func script(ctx context.Context, t *testing.T, env []string, name string, args ...string) time.Duration {
	t.Helper()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(dockerstack.Root(), "deploy", name)}, args...)...)
	cmd.Dir = dockerstack.Root()
	cmd.Env = append(append(os.Environ(), "WSCHAT_TAG="+dockerstack.ImageTag), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("deploy/%s %s: %v\n%s", name, strings.Join(args, " "), err, out.Bytes())
	}
	t.Logf("deploy/%s %s: %s\n%s", name, strings.Join(args, " "), time.Since(start).Round(100*time.Millisecond), out.Bytes())
	return time.Since(start)
}

func imageID(ctx context.Context, t *testing.T, ref string) string {
	t.Helper()
	img, err := dockerstack.Docker().ImageInspect(ctx, ref)
	if err != nil {
		t.Fatalf("inspect %s: %v", ref, err)
	}
	return img.ID
}

// buildStage builds the Dockerfile's build stage the way Compose does,
// untagged, and returns its image id: the same id as last time means the
// compile came from Docker's cache.
func buildStage(ctx context.Context, t *testing.T, goImage string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, "docker", "build", "-q", "--target", "build",
		"-f", filepath.Join(dockerstack.Root(), "deploy", "Dockerfile"), "--build-arg", "GO_IMAGE="+goImage, dockerstack.Root())
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("docker build --target build: %v\n%s", err, errOut.Bytes())
	}
	return strings.TrimSpace(out.String())
}

// A second `make images` / `make up` compiles nothing. Regression: the
// base-image script ended with a prune of dangling images carrying its
// label, which the build stage inherits from the local golang image, so
// every run after it recompiled both services (over two minutes).
func TestWarmRebuildKeepsTheCompileCached(t *testing.T) {
	dockerstack.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	user, err := dockerstack.Docker().ImageInspect(ctx, "wschat/ws-user:"+dockerstack.ImageTag)
	if err != nil {
		t.Fatal(err)
	}
	goImage := user.Config.Labels["org.wschat.go-image"]
	if goImage == "" {
		t.Fatalf("wschat/ws-user:%s has no org.wschat.go-image label", dockerstack.ImageTag)
	}
	before := buildStage(ctx, t, goImage)
	tagged := imageID(ctx, t, "wschat/ws-build:"+dockerstack.ImageTag)

	if strings.HasPrefix(goImage, "wschat-local/") {
		// What `make images` runs (without --dotenv: the test leaves the
		// checkout's .env alone), with nothing to rebuild.
		d := script(ctx, t, nil, "offline-images.sh")
		t.Logf("make images with nothing to do: %s", d.Round(100*time.Millisecond))
	}
	if after := buildStage(ctx, t, goImage); after != before {
		t.Errorf("the build stage was rebuilt (%s, was %s): Docker's cache of the compile is gone", after, before)
	}
	d := script(ctx, t, nil, "images.sh")
	if after := imageID(ctx, t, "wschat/ws-build:"+dockerstack.ImageTag); after != tagged {
		t.Errorf("deploy/images.sh rebuilt wschat/ws-build:%s (%s, was %s) with nothing changed", dockerstack.ImageTag, after, tagged)
	}
	t.Logf("warm deploy/images.sh: %s", d.Round(100*time.Millisecond))
}

// composeCommand is the Compose deploy/stack.sh uses, or nil.
func composeCommand() []string {
	if exec.Command("docker", "compose", "version").Run() == nil {
		return []string{"docker", "compose"}
	}
	if _, err := exec.LookPath("docker-compose"); err == nil {
		return []string{"docker-compose"}
	}
	return nil
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// The stack of docker-compose.yml as `make up` starts it, with the images
// built: it comes up without compiling anything, replicas are named after
// their Compose service and index, and a rescale adds one that nginx
// reaches. The times go to the test log (go test -v).
func TestComposeUpAndRescale(t *testing.T) {
	dockerstack.Need(t)
	compose := composeCommand()
	if compose == nil {
		t.Skip("neither docker compose nor docker-compose is installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	project := fmt.Sprintf("wschat-itest-%d", os.Getpid())
	port := freePort(t)
	env := []string{
		"COMPOSE_PROJECT_NAME=" + project,
		fmt.Sprintf("WSCHAT_PORT=127.0.0.1:%d", port),
		"RELAY_SECRET=" + dockerstack.RelaySecret,
		"WSCHAT_UP_TIMEOUT=180",
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		script(ctx, t, append(env, "WSCHAT_DOWN_VOLUMES=1"), "stack.sh", "down")
	})
	compiled := imageID(ctx, t, "wschat/ws-build:"+dockerstack.ImageTag)

	up := script(ctx, t, append(env, "WSCHAT_REPLICAS=2"), "stack.sh", "up")
	base := fmt.Sprintf("ws://127.0.0.1:%d", port)
	// reach connects through nginx until one connection lands on each
	// wanted replica; any other name fails the test.
	reach := func(want ...string) {
		t.Helper()
		pending := map[string]bool{}
		for _, w := range want {
			pending[w] = true
		}
		named := regexp.MustCompile(`^ws-user-[0-9]+$`)
		deadline := time.Now().Add(60 * time.Second)
		var seen []string
		for i := 0; len(pending) > 0 && time.Now().Before(deadline) && i < 400; i++ {
			c, w, err := dockerstack.Hello(ctx, base, fmt.Sprintf("probe-%d", i))
			if err != nil {
				// nginx may not know a new replica yet (it re-resolves every
				// 2 s): retry, as a client would.
				select {
				case <-time.After(200 * time.Millisecond):
				case <-ctx.Done():
				}
				continue
			}
			c.Close(websocket.StatusNormalClosure, "")
			if !named.MatchString(w.Instance) {
				t.Fatalf("a replica calls itself %q, want ws-user-<n>", w.Instance)
			}
			seen = append(seen, w.Instance)
			delete(pending, w.Instance)
		}
		if len(pending) > 0 {
			t.Fatalf("replicas %v never reached through nginx; connections went to %v", pending, seen)
		}
	}
	reach("ws-user-1", "ws-user-2")

	rescale := script(ctx, t, append(env, "WSCHAT_REPLICAS=3"), "stack.sh", "up")
	reach("ws-user-1", "ws-user-2", "ws-user-3")
	if now := imageID(ctx, t, "wschat/ws-build:"+dockerstack.ImageTag); now != compiled {
		t.Errorf("make up rebuilt the build stage (%s, was %s) with nothing changed", now, compiled)
	}
	t.Logf("%s: make up with the images built %s, rescale to 3 replicas %s",
		strings.Join(compose, " "), up.Round(100*time.Millisecond), rescale.Round(100*time.Millisecond))
}
