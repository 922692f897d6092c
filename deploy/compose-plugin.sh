#!/usr/bin/env bash
# Installs the Compose v2 CLI plugin, so that `docker compose ...` works on
# a machine that has only the Docker engine and CLI (and perhaps the old
# docker-compose 1.x): it is built from source with the host's Go toolchain
# through the Go module proxy, which machines without a container registry
# still reach.
#
#   deploy/compose-plugin.sh      (make compose-plugin)
#
# Idempotent: nothing is done when `docker compose version` already works
# (FORCE=1 rebuilds). Takes a few minutes the first time (about 200 MB of
# modules, then the compile). Installs to $DOCKER_CONFIG/cli-plugins
# (default ~/.docker/cli-plugins), where the docker CLI looks for plugins.
#
# Environment: COMPOSE_VERSION (default below), DOCKER_CONFIG, FORCE=1.
set -euo pipefail

deploy_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/lib.sh
. "$deploy_dir/lib.sh"

# `go install github.com/docker/compose/v5/cmd@v5.6.0` is refused (the
# module's go.mod has exclude directives), so a throwaway main module
# requires it and builds its command.
version=${COMPOSE_VERSION:-v5.6.0}
module=github.com/docker/compose/v5
dest_dir=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins
dest=$dest_dir/docker-compose

if [ "${FORCE:-}" != 1 ] && docker compose version >/dev/null 2>&1; then
	log "docker compose is installed: $(docker compose version)"
	exit 0
fi
command -v go >/dev/null || die "building the Compose plugin needs Go (https://go.dev/dl/)"

work=$(mktemp -d "${TMPDIR:-/tmp}/wschat-compose.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
cat >go.mod <<EOF
module wschat.local/compose-plugin

go 1.26

require $module $version
EOF
# The import keeps `go mod tidy` from dropping the requirement.
cat >tools.go <<EOF
//go:build tools

package tools

import _ "$module/cmd"
EOF
log "fetching $module $version through the Go module proxy"
GOFLAGS=-mod=mod GOWORK=off go mod tidy >"$work/tidy.log" 2>&1 || {
	cat "$work/tidy.log" >&2
	die "could not resolve $module $version"
}
log "compiling docker-compose $version (a few minutes on 2 cores)"
mkdir -p "$dest_dir"
# -X sets what `docker compose version` prints, as in Compose's own builds.
GOWORK=off CGO_ENABLED=0 go build -trimpath \
	-ldflags "-s -w -X $module/internal.Version=$version" \
	-o "$dest.tmp" "$module/cmd"
mv "$dest.tmp" "$dest"
log "installed $dest: $(docker compose version)"
