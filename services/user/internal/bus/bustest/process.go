package bustest

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"testing"
	"time"
)

// Build builds the main package pkg (of the workspace, or of a module it
// requires) for t and returns the binary's path.
func Build(t *testing.T, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), path.Base(pkg))
	if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// StartServer runs bin with args and env (added to the test's) until t
// ends, and returns the address it listens on, which listening finds in a
// line of its standard error, and its process.
func StartServer(t *testing.T, bin string, args, env []string, listening func(line string) (addr string, ok bool)) (string, *os.Process) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	addrs := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if a, ok := listening(sc.Text()); ok {
				select {
				case addrs <- a:
				default: // read on: a full pipe would stop the server
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr) // past a line too long for sc
	}()
	select {
	case a := <-addrs:
		return a, cmd.Process
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not say where it listens within 30s", filepath.Base(bin))
		return "", nil
	}
}
