#!/usr/bin/env bash
# Builds the base images the project needs on a machine that reaches no
# container registry (this project's CI and development machines), from what
# those machines do reach: Debian's package archive and the host's Go
# toolchain. The images get the project's own names, never an official
# image's name:
#
#   wschat-local/debian:bookworm   debootstrap --variant=minbase + security updates
#   wschat-local/golang:1.26       the above + the host's /usr/local/go
#   wschat-local/nginx:bookworm    the above + Debian's nginx, laid out like the official image
#   wschat-local/nats:2.15.3       nats-server compiled by the Go image from the Go module
#                                  proxy, with busybox (shell, wget), like the official alpine one
#
# Idempotent and fast when nothing changed: every image carries the hash of
# its inputs in the label org.wschat.inputs and is rebuilt only when that
# hash differs (FORCE=1 rebuilds all). Installs its own prerequisites
# (debootstrap) when missing.
#
# With --dotenv (make images), it also records the images in the
# repository's .env as GO_IMAGE, NGINX_IMAGE and NATS_IMAGE, unless .env sets them
# already: plain Compose (docker compose up --build) reads .env, and then
# builds without a registry too.
#
# Environment: DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR (default: taken from
# /etc/apt/sources.list*), GOROOT_HOST (default: /usr/local/go), FORCE=1.
set -euo pipefail
shopt -s nullglob

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dotenv=
case "${1:-}" in
--dotenv) dotenv=$(dirname "$here")/.env ;;
"") ;;
*) printf 'usage: %s [--dotenv]\n' "$0" >&2; exit 2 ;;
esac
suite=bookworm
debian_image=wschat-local/debian:bookworm
golang_image=wschat-local/golang:1.26
nginx_image=wschat-local/nginx:bookworm
nats_version=v2.15.3
nats_image=wschat-local/nats:${nats_version#v}
label=org.wschat.inputs

# shellcheck source=deploy/lib.sh
. "$here/lib.sh"

# debootstrap and the rootfs it makes need root.
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

command -v docker >/dev/null || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "no Docker daemon reachable"

# One run at a time: make images and the container tests may start together.
lock=${TMPDIR:-/tmp}/wschat-offline-images.lock
exec 9>"$lock"
flock 9

sha() { sha256sum | cut -c1-32; }

current_inputs() {
	docker image inspect -f "{{index .Config.Labels \"$label\"}}" "$1" 2>/dev/null || true
}

up_to_date() { # image wanted-hash
	[ "${FORCE:-}" != 1 ] && [ "$(current_inputs "$1")" = "$2" ]
}

image_id() { docker image inspect -f '{{.Id}}' "$1"; }

# build records the images its rebuilds replace in $workdir/replaced, one
# a line, in build order (builds may run in the background): they are
# removed at the end, children first, where nothing uses them any more.
build() { # image inputs-hash docker-build-args...
	local image=$1 hash=$2 old
	shift 2
	old=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
	docker_build "$image" --label "$label=$hash" "$@"
	if [ -n "$old" ] && [ "$old" != "$(image_id "$image")" ]; then
		echo "$old" >>"$workdir/replaced"
	fi
}

first_uri() { # pattern: prints the first apt source URI matching it
	local files=() f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] && files+=("$f")
	done
	[ ${#files[@]} -gt 0 ] || return 0
	awk '/^[[:space:]]*#/ {next}
	     $1 == "URIs:" {for (i = 2; i <= NF; i++) print $i}
	     $1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' "${files[@]}" |
		grep -E "$1" | head -n1 || true
}

mirror=${DEBIAN_MIRROR:-$(first_uri '/debian/?$')}
mirror=${mirror:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-$(first_uri '/debian-security/?$')}
security_mirror=${security_mirror:-http://deb.debian.org/debian-security}

workdir=
cleanup() {
	[ -n "$workdir" ] || return 0
	# debootstrap mounts proc and sys in the target; never let rm walk into them.
	awk -v root="$workdir/" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r |
		while read -r m; do "${sudo_cmd[@]}" umount -l "$m" || true; done
	"${sudo_cmd[@]}" rm -rf --one-file-system "$workdir"
}
trap cleanup EXIT
workdir=$(mktemp -d "${TMPDIR:-/var/tmp}/wschat-images.XXXXXX")

build_debian() {
	local want
	# The recipe is this function itself: the rootfs has no file to hash.
	want=$(declare -f build_debian | sha)
	if up_to_date "$debian_image" "$want"; then
		log "$debian_image is up to date"
		return
	fi
	if [ ${#sudo_cmd[@]} -gt 0 ] && ! command -v sudo >/dev/null; then
		die "building $debian_image needs root (or sudo)"
	fi
	if ! command -v debootstrap >/dev/null; then
		log "installing debootstrap"
		"${sudo_cmd[@]}" apt-get update -q
		DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q debootstrap
	fi
	log "debootstrap $suite from $mirror (about a minute)"
	local root=$workdir/rootfs
	if ! "${sudo_cmd[@]}" debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$workdir/debootstrap.log" 2>&1; then
		tail -n 30 "$workdir/debootstrap.log" >&2
		die "debootstrap failed (full log above)"
	fi
	"${sudo_cmd[@]}" tee "$root/etc/apt/sources.list" >/dev/null <<-EOF
		deb $mirror $suite main
		deb $mirror $suite-updates main
		deb $security_mirror $suite-security main
	EOF
	# As in the official slim images: no docs or man pages in later installs.
	"${sudo_cmd[@]}" tee "$root/etc/dpkg/dpkg.cfg.d/wschat-slim" >/dev/null <<-'EOF'
		path-exclude /usr/share/doc/*
		path-include /usr/share/doc/*/copyright
		path-exclude /usr/share/man/*
		path-exclude /usr/share/info/*
	EOF
	"${sudo_cmd[@]}" tee "$root/etc/apt/apt.conf.d/wschat-container" >/dev/null <<-'EOF'
		APT::Install-Recommends "false";
		APT::Install-Suggests "false";
		Acquire::Languages "none";
	EOF
	"${sudo_cmd[@]}" find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
	"${sudo_cmd[@]}" rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* \
		"$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
	local raw
	raw=$("${sudo_cmd[@]}" tar -C "$root" --numeric-owner -c . | docker import - 2>/dev/null)
	log "imported rootfs $raw; applying security updates"
	# Updates run in a container rather than in the chroot: no proc/sys
	# mounts needed, and apt sees a normal system.
	build "$debian_image" "$want" - <<-EOF
		FROM $raw
		RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get -y upgrade \\
		 && apt-get clean && rm -rf /var/lib/apt/lists/*
		CMD ["bash"]
	EOF
	log "built $debian_image"
}

build_golang() {
	local goroot=${GOROOT_HOST:-/usr/local/go}
	[ -x "$goroot/bin/go" ] || die "no Go toolchain at $goroot (set GOROOT_HOST)"
	local ctx=$workdir/golang-context
	mkdir -p "$ctx/local-ca"
	# Locally added CAs only (Debian's convention); the distribution's own
	# come from the ca-certificates package.
	if [ -d /usr/local/share/ca-certificates ]; then
		find /usr/local/share/ca-certificates -name '*.crt' -type f -exec cp {} "$ctx/local-ca/" \;
	fi
	cp "$here/base/golang.Dockerfile" "$ctx/Dockerfile"
	local want
	want=$({
		declare -f build_golang
		image_id "$debian_image"
		cat "$ctx/Dockerfile" "$ctx"/local-ca/*
		"$goroot/bin/go" version
		cat "$goroot/VERSION"
	} | sha)
	if up_to_date "$golang_image" "$want"; then
		log "$golang_image is up to date"
		return
	fi
	log "building $golang_image from $goroot ($("$goroot/bin/go" env GOVERSION))"
	# The context is streamed as a tar so the toolchain is never copied to disk.
	local parent name
	parent=$(dirname "$goroot") name=$(basename "$goroot")
	tar -c --exclude="$name/test" --exclude="$name/pkg/obj" \
		-C "$ctx" Dockerfile local-ca \
		-C "$parent" --transform "s|^$name/|go/|;s|^$name\$|go|" "$name" |
		build "$golang_image" "$want" --build-arg "BASE_IMAGE=$debian_image" -
	log "built $golang_image"
}

build_nginx() {
	local want
	want=$({
		declare -f build_nginx
		image_id "$debian_image"
		cat "$here/base/nginx.Dockerfile"
	} | sha)
	if up_to_date "$nginx_image" "$want"; then
		log "$nginx_image is up to date"
		return
	fi
	log "building $nginx_image"
	build "$nginx_image" "$want" --build-arg "BASE_IMAGE=$debian_image" - <"$here/base/nginx.Dockerfile"
	log "built $nginx_image"
}

build_nats() {
	local want
	want=$({
		declare -f build_nats
		echo "$nats_version"
		image_id "$debian_image"
		image_id "$golang_image"
		cat "$here/base/nats.Dockerfile"
	} | sha)
	if up_to_date "$nats_image" "$want"; then
		log "$nats_image is up to date"
		return
	fi
	log "building $nats_image (nats-server $nats_version from the Go module proxy, about a minute)"
	build "$nats_image" "$want" --build-arg "GO_IMAGE=$golang_image" --build-arg "BASE_IMAGE=$debian_image" \
		--build-arg "NATS_SERVER_VERSION=$nats_version" - <"$here/base/nats.Dockerfile"
	log "built $nats_image"
}

# record_dotenv appends to .env the settings Compose needs to build from
# the local base images, each unless .env sets it already.
record_dotenv() {
	local key value lines=()
	for key in GO_IMAGE NGINX_IMAGE NATS_IMAGE; do
		grep -qE "^[[:space:]]*$key=" "$dotenv" 2>/dev/null && continue
		case $key in
		GO_IMAGE) value=$golang_image ;;
		NGINX_IMAGE) value=$nginx_image ;;
		NATS_IMAGE) value=$nats_image ;;
		esac
		lines+=("$key=$value")
	done
	[ ${#lines[@]} -gt 0 ] || return 0
	{
		printf '\n# Added by make images (deploy/offline-images.sh): no container registry\n'
		printf '# here, so Compose builds from the local base images.\n'
		printf '%s\n' "${lines[@]}"
	} >>"$dotenv"
	log "recorded ${lines[*]} in $dotenv, for plain docker compose"
}

start=$SECONDS
build_debian
# Both build on debian alone, and spend most of their time in apt and in
# copying the toolchain: side by side they take about as long as one.
build_nginx &
nginx_pid=$!
build_golang
# nats-server compiles in the Go image, beside nginx's apt if that still runs.
build_nats
wait "$nginx_pid" || die "building $nginx_image failed"
# What the rebuilds above replaced, children first: an image some other
# image still builds on stays. Never a prune of dangling images by label:
# the project's build stages inherit the label from the golang image, and
# a prune would throw away Docker's cache of their compile.
if [ -f "$workdir/replaced" ]; then
	mapfile -t replaced < <(tac "$workdir/replaced")
	remove_replaced "${replaced[@]}"
fi
[ -z "$dotenv" ] || dotenv_locked record_dotenv
log "base images ready in $((SECONDS - start))s"
