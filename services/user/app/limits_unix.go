//go:build unix

package app

import "syscall"

// openFilesLimit is the process's soft limit on open files.
func openFilesLimit() (uint64, bool) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, false
	}
	return uint64(l.Cur), true // int64 on some systems
}
