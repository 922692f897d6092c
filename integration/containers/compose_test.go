package containers

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// script runs one of deploy/'s scripts from the repository root with the
// test's image tag and extra environment, and returns how long it took.
func script(ctx context.Context, t *testing.T, env []string, name string, args ...string) time.Duration {
	t.Helper()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(suite.root, "deploy", name)}, args...)...)
	cmd.Dir = suite.root
	cmd.Env = append(append(os.Environ(), "WSCHAT_TAG="+imageTag), env...)
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
	img, err := suite.docker.ImageInspect(ctx, ref)
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
		"-f", filepath.Join(suite.root, "deploy", "Dockerfile"), "--build-arg", "GO_IMAGE="+goImage, suite.root)
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
	needDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	user, err := suite.docker.ImageInspect(ctx, "wschat/ws-user:"+imageTag)
	if err != nil {
		t.Fatal(err)
	}
	goImage := user.Config.Labels["org.wschat.go-image"]
	if goImage == "" {
		t.Fatalf("wschat/ws-user:%s has no org.wschat.go-image label", imageTag)
	}
	before := buildStage(ctx, t, goImage)
	tagged := imageID(ctx, t, "wschat/ws-build:"+imageTag)

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
	if after := imageID(ctx, t, "wschat/ws-build:"+imageTag); after != tagged {
		t.Errorf("deploy/images.sh rebuilt wschat/ws-build:%s (%s, was %s) with nothing changed", imageTag, after, tagged)
	}
	t.Logf("warm deploy/images.sh: %s", d.Round(100*time.Millisecond))
}
