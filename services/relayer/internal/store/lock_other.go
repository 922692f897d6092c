//go:build !unix

package store

import "os"

// lockFile is a no-op where flock does not exist; the relayer ships on Linux.
func lockFile(*os.File) (unlock func() error, err error) {
	return func() error { return nil }, nil
}
