#!/usr/bin/env bash
# Runs the stack of docker-compose.yml with whichever Compose is installed.
#   stack.sh up     build the images (works without a registry) and start
#                   relayer, $WSCHAT_REPLICAS ws-user replicas (3) and nginx;
#                   returns once nginx is healthy. Run it again with another
#                   WSCHAT_REPLICAS to scale a running stack.
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
	"$deploy_dir/images.sh"
	log "starting the stack with ${COMPOSE[*]}${BUS:+ (BUS=$BUS)}"
	"${COMPOSE[@]}" up -d --no-build --scale "ws-user=${WSCHAT_REPLICAS:-3}" "$@"
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
