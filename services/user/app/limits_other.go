//go:build !unix

package app

func openFilesLimit() (uint64, bool) { return 0, false }
