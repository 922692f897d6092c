package deploy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// docker runs the docker CLI and returns its trimmed output.
func docker(args ...string) (string, error) {
	out, err := exec.Command("docker", args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// A rebuild removes the image it replaced only when nothing names it any
// more. Regression: images.sh removed the replaced image by id, and
// `docker rmi ID` untags and deletes an image another tag (the container
// tests' itest next to make up's dev) still named — make up then
// compiled everything again.
func TestRebuildKeepsAReplacedImageAnotherTagNames(t *testing.T) {
	if _, err := docker("info"); err != nil {
		t.Skip("no Docker daemon reachable")
	}
	lib, err := filepath.Abs(filepath.Join("..", "..", "deploy", "lib.sh"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY f /f\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	repo := fmt.Sprintf("wschat-itest/replaced-%d", os.Getpid())
	t.Cleanup(func() { _, _ = docker("rmi", repo+":a", repo+":b") })
	// build writes content into the context and builds repo:a with
	// build_replacing; it returns the new image's id.
	build := func(content string) string {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "f"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("bash", "-c", `set -euo pipefail; . "$1"; build_replacing "$2" -t "$2" "$3"`, "test", lib, repo+":a", dir)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("build_replacing: %v\n%s", err, out.Bytes())
		}
		id, err := docker("image", "inspect", "-f", "{{.Id}}", repo+":a")
		if err != nil {
			t.Fatalf("inspect: %v: %s", err, id)
		}
		return id
	}
	first := build("1")
	if out, err := docker("tag", repo+":a", repo+":b"); err != nil {
		t.Fatalf("tag: %v: %s", err, out)
	}
	second := build("2")
	if id, err := docker("image", "inspect", "-f", "{{.Id}}", repo+":b"); err != nil || id != first {
		t.Fatalf("%s:b, which the rebuild of :a replaced, is gone (%v: %s)", repo, err, id)
	}
	// Nothing names the second one once replaced: it goes.
	build("3")
	if out, err := docker("image", "inspect", second); err == nil {
		t.Errorf("the replaced, untagged image %s is still there", second)
	} else if !strings.Contains(strings.ToLower(out), "no such") {
		t.Errorf("inspect %s: %v: %s", second, err, out)
	}
}
