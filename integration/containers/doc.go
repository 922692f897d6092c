// Package containers tests the images of docker-compose.yml as a user
// meets them: a relayer, several ws-user replicas and nginx in containers
// on a private Docker network, driven through nginx's published port by
// WebSocket clients (the seed dialect and the extended one).
//
// TestMain builds the images with deploy/images.sh (which falls back to
// deploy/offline-images.sh where no registry answers), so the first run
// on a machine takes minutes; later runs reuse Docker's cache. Every test
// starts its own stack, because most of them break it on purpose.
//
// The tests skip only when no Docker daemon is reachable. They do not rely
// on Ryuk (it cannot be pulled without a registry): everything they create
// carries the label org.wschat.test, is removed by t.Cleanup and by
// TestMain, and leftovers of runs that died are swept at start.
package containers
