#!/usr/bin/env bash
# Builds the project's images from the working tree:
#   wschat/ws-relayer:$WSCHAT_TAG  wschat/ws-user:$WSCHAT_TAG  wschat/nginx:$WSCHAT_TAG
#   wschat/nats:$WSCHAT_TAG (a node of the NATS profile's cluster)
# (WSCHAT_TAG defaults to dev, the tag docker-compose.yml uses), and
# wschat/ws-build:$WSCHAT_TAG, the build stage both service images copy
# their binary from: tagged, it is compiled once for both and no prune of
# dangling images can take Docker's cache of the compile away. Base images
# come from GO_IMAGE / NGINX_IMAGE / NATS_IMAGE, else the official ones when a registry
# answers, else deploy/offline-images.sh builds local ones. With unchanged
# sources every step comes from Docker's layer cache: seconds.
set -euo pipefail

deploy_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$deploy_dir")
# shellcheck source=deploy/lib.sh
. "$deploy_dir/lib.sh"
load_dotenv "$root"

docker info >/dev/null 2>&1 || die "no Docker daemon reachable"
tag=${WSCHAT_TAG:-dev}
choose_base_images

# build builds one image and removes the one it replaces where nothing
# else names or uses it: a stale build stage holds hundreds of megabytes.
# (Only that one: a prune of dangling images would take Docker's cache of
# the current compile with it where Compose built the stage untagged.)
build() { # image dockerfile [args...]
	local image=$1 file=$2
	shift 2
	build_replacing "$image" -f "$root/$file" --label org.wschat.image=1 "$@" "$root"
}

start=$SECONDS
build "wschat/ws-build:$tag" deploy/Dockerfile --target build --build-arg "GO_IMAGE=$GO_IMAGE"
# org.wschat.go-image records which Go image compiled the binaries (the
# container tests rebuild the build stage with it).
build "wschat/ws-relayer:$tag" deploy/Dockerfile --target ws-relayer --build-arg "GO_IMAGE=$GO_IMAGE" \
	--label "org.wschat.go-image=$GO_IMAGE"
build "wschat/ws-user:$tag" deploy/Dockerfile --target ws-user --build-arg "GO_IMAGE=$GO_IMAGE" \
	--label "org.wschat.go-image=$GO_IMAGE"
build "wschat/nginx:$tag" deploy/nginx.Dockerfile --build-arg "NGINX_IMAGE=$NGINX_IMAGE"
build "wschat/nats:$tag" deploy/nats.Dockerfile --build-arg "NATS_IMAGE=$NATS_IMAGE"
log "images ready in $((SECONDS - start))s"
