//go:build unix

package dockerstack

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockBuild takes an exclusive lock that every test package's image build
// shares (go test runs packages in parallel): a second build then waits
// and finds everything in Docker's cache, instead of compiling the same
// sources at the same time and retagging the images under a test that
// just read their ids. The returned func releases it.
func lockBuild(tag string) (func(), error) {
	path := filepath.Join(os.TempDir(), "wschat-images-"+tag+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, fmt.Errorf("image build lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("image build lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil // closing releases the lock
}
