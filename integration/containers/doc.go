// Package containers tests the images of docker-compose.yml as a user
// meets them: a relayer, several ws-user replicas and nginx in containers
// on a private Docker network, driven through nginx's published port by
// WebSocket clients (the seed dialect and the extended one).
//
// The stacks come from package dockerstack, which builds the images in
// TestMain (minutes on a machine's first run) and cleans up after itself;
// every test starts its own stack, because most of them break it on
// purpose. The tests skip only when no Docker daemon is reachable.
package containers
