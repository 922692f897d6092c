#!/usr/bin/env bash
# Builds the project's images from the working tree:
#   wschat/ws-relayer:$WSCHAT_TAG  wschat/ws-user:$WSCHAT_TAG  wschat/nginx:$WSCHAT_TAG
# (WSCHAT_TAG defaults to dev, the tag docker-compose.yml uses). Base images
# come from GO_IMAGE / NGINX_IMAGE, else the official ones when a registry
# answers, else deploy/offline-images.sh builds local ones. Docker's layer
# cache makes a run with unchanged sources take seconds.
set -euo pipefail

deploy_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$deploy_dir")
# shellcheck source=deploy/lib.sh
. "$deploy_dir/lib.sh"
load_dotenv "$root"

docker info >/dev/null 2>&1 || die "no Docker daemon reachable"
tag=${WSCHAT_TAG:-dev}
choose_base_images

errf=$(mktemp)
trap 'rm -f "$errf"' EXIT
build() { # image dockerfile [args...]
	local image=$1 file=$2
	shift 2
	log "building $image"
	if ! docker build -q --force-rm -f "$root/$file" -t "$image" --label org.wschat.image=1 "$@" "$root" >/dev/null 2>"$errf"; then
		grep -v -e DEPRECATED -e 'legacy builder' -e buildx -e BuildKit "$errf" >&2 || true
		die "building $image failed"
	fi
}

build "wschat/ws-relayer:$tag" deploy/Dockerfile --target ws-relayer --build-arg "GO_IMAGE=$GO_IMAGE"
# Same build stage as above: Docker's cache compiles once for both.
build "wschat/ws-user:$tag" deploy/Dockerfile --target ws-user --build-arg "GO_IMAGE=$GO_IMAGE"
build "wschat/nginx:$tag" deploy/nginx.Dockerfile --build-arg "NGINX_IMAGE=$NGINX_IMAGE"
