//go:build !unix

package dockerstack

// lockBuild is a no-op where flock(2) is missing: packages may then build
// the images at the same time.
func lockBuild(string) (func(), error) { return func() {}, nil }
