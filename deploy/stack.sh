#!/usr/bin/env bash
# Runs the stack of docker-compose.yml with whichever Compose is installed.
#   stack.sh up     build the images (works without a registry) and start
#                   relayer, $WSCHAT_REPLICAS ws-user replicas (3) and nginx;
#                   returns once nginx is healthy. Run it again with another
#                   WSCHAT_REPLICAS to scale a running stack. With no
#                   RELAY_SECRET in the environment or .env, it writes a
#                   random one to .env first (see relay_secret).
#   stack.sh up-nats the same with the NATS profile: BUS=nats and
#                   --profile nats, a three-node NATS cluster (nats-1..3)
#                   as the relay tier; returns once nginx and the three
#                   nodes are healthy.
#   stack.sh down   stop and remove the containers, the NATS profile's
#                   included (the data volumes stay; WSCHAT_DOWN_VOLUMES=1
#                   removes them too)
#   stack.sh ...    anything else is passed to compose (ps, logs -f, ...)
set -euo pipefail

deploy_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$deploy_dir")
# shellcheck source=deploy/lib.sh
. "$deploy_dir/lib.sh"
load_dotenv "$root"
cd "$root"
compose_cmd

# healthy waits until the containers of a service are all healthy.
healthy() { # service [service...]
	local svc ids id deadline=$((SECONDS + ${WSCHAT_UP_TIMEOUT:-120}))
	for svc in "$@"; do
		ids=$("${COMPOSE[@]}" ps -q "$svc")
		[ -n "$ids" ] || die "$svc did not start; see: ${COMPOSE[*]} logs"
		for id in $ids; do
			until [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ]; do
				[ $SECONDS -lt $deadline ] || die "$svc not healthy in time; see: ${COMPOSE[*]} logs $svc"
				sleep 1 # polling a status Docker updates on its own schedule
			done
		done
	done
}

# relay_secret makes sure the stack has a relay secret of its own:
# docker-compose.yml has no default. RELAY_SECRET (or RELAY_SECRET_FILE)
# from the environment or .env is used as it is. With
# docker-compose.secrets.yml in COMPOSE_FILE, the secret is the file that
# override mounts, secrets/relay_secret. Where there is none, a random one
# is written (to .env, or to that file), and said so.
relay_secret() {
	case ":${COMPOSE_FILE:-}:" in
	*docker-compose.secrets.yml*)
		local file=$root/secrets/relay_secret
		[ -s "$file" ] && return
		mkdir -p "$root/secrets"
		chmod 700 "$root/secrets"
		# The services run as uid 65532 and Compose mounts the file as it
		# is: readable by all, in a directory only its owner enters.
		(umask 022 && random_secret >"$file")
		log "wrote a random relay secret to secrets/relay_secret (docker-compose.secrets.yml mounts it)"
		return
		;;
	esac
	[ -z "${RELAY_SECRET:-}${RELAY_SECRET_FILE:-}" ] || return 0
	dotenv_locked write_relay_secret "$root/.env" "$(random_secret)"
	# What .env has now (an empty RELAY_SECRET, from .env or the
	# environment, would hide it from Compose).
	unset RELAY_SECRET
	load_dotenv "$root"
	log "no RELAY_SECRET in the environment or .env: wrote a random one to .env (keep that file private)"
}

# write_relay_secret FILE SECRET sets RELAY_SECRET in the .env FILE (under
# dotenv_locked): on an empty RELAY_SECRET= line, as .env.example has
# one, or appended; unless another make up set one meanwhile. FILE is
# rewritten in place (its mode, owner and any symlink kept); a new one is
# private.
write_relay_secret() {
	local file=$1 secret=$2 tmp
	local empty='^[[:space:]]*RELAY_SECRET=[[:space:]]*(""|'"''"')?[[:space:]]*$'
	[ -e "$file" ] || (umask 077 && : >"$file")
	grep -E '^[[:space:]]*RELAY_SECRET=' "$file" | grep -vE "$empty" >/dev/null && return
	if grep -qE "$empty" "$file"; then
		tmp=$(mktemp)
		sed -E "s/$empty/RELAY_SECRET=$secret/" "$file" >"$tmp"
		cat "$tmp" >"$file"
		rm -f "$tmp"
	else
		printf '\n# Added by make up (deploy/stack.sh): the relay link'"'"'s shared secret, random.\nRELAY_SECRET=%s\n' "$secret" >>"$file"
	fi
}

case "${1:-}" in
up | up-nats)
	wait_for=(nginx)
	if [ "$1" = up-nats ]; then
		export BUS=nats
		COMPOSE+=(--profile nats)
		wait_for+=(nats-1 nats-2 nats-3)
	fi
	shift
	start=$SECONDS
	relay_secret
	"$deploy_dir/images.sh"
	log "starting the stack with ${COMPOSE[*]}${BUS:+ (BUS=$BUS)}"
	if ! "${COMPOSE[@]}" up -d --no-build --scale "ws-user=${WSCHAT_REPLICAS:-3}" "$@"; then
		# Compose only says a container is unhealthy; the services say why
		# they refused to start (a missing or published RELAY_SECRET, ...).
		"${COMPOSE[@]}" logs --no-color --tail=3 relayer ws-user >&2 || true
		die "the stack did not start (the services' last lines above); see: ${COMPOSE[*]} logs"
	fi
	healthy "${wait_for[@]}"
	log "wschat is up in $((SECONDS - start))s: http://localhost:${WSCHAT_PORT:-8080}"
	;;
down)
	# With the profile, so that its containers go too.
	flags=(--remove-orphans)
	[ "${WSCHAT_DOWN_VOLUMES:-}" = 1 ] && flags+=(-v)
	"${COMPOSE[@]}" --profile nats down "${flags[@]}"
	;;
"")
	die "usage: $0 up|up-nats|down|<compose command>"
	;;
*)
	"${COMPOSE[@]}" --profile nats "$@"
	;;
esac
