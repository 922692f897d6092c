# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # COMPOSE is for, deploy_dir from, the sourcing script
# Shared by deploy/images.sh and deploy/stack.sh (sourced, not run).

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

official_go_image=golang:1.26-bookworm
official_nginx_image=nginx:1.30
official_nats_image=nats:2.15-alpine
local_go_image=wschat-local/golang:1.26
local_nginx_image=wschat-local/nginx:bookworm
local_nats_image=wschat-local/nats:2.15.3

# choose_base_images sets GO_IMAGE, NGINX_IMAGE and NATS_IMAGE unless the
# caller did: the official images when present or pullable, otherwise the
# home-made ones, built by offline-images.sh (machines without a registry).
choose_base_images() {
	if [ -n "${GO_IMAGE:-}" ] && [ -n "${NGINX_IMAGE:-}" ] && [ -n "${NATS_IMAGE:-}" ]; then
		# The local names (.env, as make images writes it) may have been
		# removed since: offline-images.sh rebuilds what is missing, and
		# takes about a second when nothing is.
		case "$GO_IMAGE $NGINX_IMAGE $NATS_IMAGE" in
		*"$local_go_image"* | *"$local_nginx_image"* | *"$local_nats_image"*) "$deploy_dir/offline-images.sh" ;;
		esac
		export GO_IMAGE NGINX_IMAGE NATS_IMAGE
		return
	fi
	local img offline=
	for img in "$official_go_image" "$official_nginx_image" "$official_nats_image"; do
		docker image inspect "$img" >/dev/null 2>&1 && continue
		log "pulling $img"
		if ! timeout 600 docker pull -q "$img" >/dev/null 2>&1; then
			offline=1
			break
		fi
	done
	if [ -z "$offline" ]; then
		GO_IMAGE=${GO_IMAGE:-$official_go_image}
		NGINX_IMAGE=${NGINX_IMAGE:-$official_nginx_image}
		NATS_IMAGE=${NATS_IMAGE:-$official_nats_image}
	else
		log "no container registry answers: using local base images"
		"$deploy_dir/offline-images.sh"
		GO_IMAGE=${GO_IMAGE:-$local_go_image}
		NGINX_IMAGE=${NGINX_IMAGE:-$local_nginx_image}
		NATS_IMAGE=${NATS_IMAGE:-$local_nats_image}
	fi
	export GO_IMAGE NGINX_IMAGE NATS_IMAGE
}

# compose_cmd sets the array COMPOSE to the Compose plugin or, failing
# that, the standalone docker-compose.
compose_cmd() {
	if docker compose version >/dev/null 2>&1; then
		COMPOSE=(docker compose)
	elif command -v docker-compose >/dev/null; then
		COMPOSE=(docker-compose)
		log "using docker-compose 1.x; 'make compose-plugin' installs 'docker compose' (v2)"
	else
		die "neither 'docker compose' nor 'docker-compose' is installed; 'make compose-plugin' installs 'docker compose'"
	fi
}

# load_dotenv exports the KEY=VALUE lines of the repository's .env that the
# environment does not set already, as Compose does, so that the scripts
# and Compose agree on WSCHAT_TAG, GO_IMAGE and the like.
load_dotenv() {
	local file=$1/.env key value
	[ -f "$file" ] || return 0
	while IFS= read -r line || [ -n "$line" ]; do
		case "$line" in '' | '#'*) continue ;; esac
		key=${line%%=*} value=${line#*=}
		[[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
		[ -z "${!key+x}" ] || continue
		value=${value%\"} value=${value#\"}
		export "$key=$value"
	done <"$file"
}

# dotenv_locked CMD...: runs CMD holding the lock every writer of the
# repository's .env takes: make images records base images there, make up
# a relay secret, and the two may run at once.
dotenv_locked() {
	(
		flock 8
		"$@"
	) 8>"${TMPDIR:-/tmp}/wschat-dotenv.lock"
}

# random_secret prints 32 random bytes in hex: openssl when installed,
# else /dev/urandom through od (coreutils).
random_secret() {
	if command -v openssl >/dev/null; then
		openssl rand -hex 32
	else
		od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
		echo
	fi
}

# docker_build IMAGE DOCKER-BUILD-ARGS...: docker build -t IMAGE, showing
# progress as one line per Dockerfile step that runs (steps served by
# Docker's layer cache are only counted), and Docker's whole output when
# the build fails. The classic builder's "Step n/m" lines and BuildKit's
# plain "#n [stage i/j]" ones are both understood.
docker_build() {
	local image=$1 out start=$SECONDS pending= ran=0 cached=0 rc line
	shift
	out=$(mktemp)
	# Fed by process substitution, so that the counters live in this shell.
	while IFS= read -r line; do
		printf '%s\n' "$line" >>"$out"
		case "$line" in
		"Step "[0-9]*" : FROM "*) # a stage's base: nothing to run
			pending= ;;
		"Step "[0-9]*) # classic: the step's fate shows on the next line
			pending=${line#*: } ;;
		" ---> Using cache")
			pending= cached=$((cached + 1)) ;;
		"#"[0-9]*" CACHED")
			cached=$((cached + 1)) ;;
		"#"[0-9]*" [internal]"*) ;;
		"#"[0-9]*" ["*"] "*)
			log "$image: ${line#* } ($((SECONDS - start))s)" ;;
		*)
			if [ -n "$pending" ]; then
				log "$image: ${pending:0:110} ($((SECONDS - start))s)"
				pending= ran=$((ran + 1))
			fi
			;;
		esac
	done < <(docker build --force-rm -t "$image" "$@" 2>&1; echo "exit status $?")
	rc=$(tail -n1 "$out")
	rc=${rc#exit status }
	if [ "$rc" != 0 ]; then
		grep -v -e DEPRECATED -e 'legacy builder' -e buildx -e BuildKit -e '^ *Install the buildx' \
			-e 'docs.docker.com/go/buildx' -e '^exit status' "$out" | tail -n 40 >&2 || true
		rm -f "$out"
		die "building $image failed (output above)"
	fi
	rm -f "$out"
	log "$image ready in $((SECONDS - start))s (steps run: $ran, from Docker's cache: $cached)"
}

# remove_replaced ID...: removes images that rebuilds replaced, in the
# order given, each only when no tag names it any more: another
# WSCHAT_TAG may share it, and `docker rmi ID` would take that tag with
# it. An image that others build on or a container uses stays (docker
# refuses those).
remove_replaced() {
	local id
	for id in "$@"; do
		[ "$(docker image inspect -f '{{len .RepoTags}}' "$id" 2>/dev/null)" = 0 ] || continue
		docker rmi "$id" >/dev/null 2>&1 || true
	done
}

# build_replacing IMAGE DOCKER-BUILD-ARGS...: docker_build, then
# remove_replaced of the image IMAGE named before.
build_replacing() {
	local image=$1 old
	old=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
	docker_build "$@"
	if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
		remove_replaced "$old"
	fi
}
