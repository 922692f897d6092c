//go:build !linux

package load

import "syscall"

func bindNoPort(network, address string, rc syscall.RawConn) error { return nil }

func openFilesLimit() uint64 { return 0 }
