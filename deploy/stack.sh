#!/usr/bin/env bash
# Runs the stack of docker-compose.yml with whichever Compose is installed.
#   stack.sh up     build the images (works without a registry) and start
#                   relayer, $WSCHAT_REPLICAS ws-user replicas (3) and nginx;
#                   returns once nginx is healthy. Run it again with another
#                   WSCHAT_REPLICAS to scale a running stack.
#   stack.sh down   stop and remove the containers (the data volume stays;
#                   WSCHAT_DOWN_VOLUMES=1 removes it too)
#   stack.sh ...    anything else is passed to compose (ps, logs -f, ...)
set -euo pipefail

deploy_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$deploy_dir")
# shellcheck source=deploy/lib.sh
. "$deploy_dir/lib.sh"
load_dotenv "$root"
cd "$root"
compose_cmd

case "${1:-}" in
up)
	shift
	start=$SECONDS
	"$deploy_dir/images.sh"
	log "starting the stack with ${COMPOSE[*]}"
	"${COMPOSE[@]}" up -d --no-build --scale "ws-user=${WSCHAT_REPLICAS:-3}" "$@"
	nginx=$("${COMPOSE[@]}" ps -q nginx)
	[ -n "$nginx" ] || die "nginx did not start; see: ${COMPOSE[*]} logs"
	deadline=$((SECONDS + ${WSCHAT_UP_TIMEOUT:-120}))
	until [ "$(docker inspect -f '{{.State.Health.Status}}' "$nginx")" = healthy ]; do
		[ $SECONDS -lt $deadline ] || die "nginx not healthy in time; see: ${COMPOSE[*]} logs"
		sleep 1 # polling a status Docker updates on its own schedule
	done
	log "wschat is up in $((SECONDS - start))s: http://localhost:${WSCHAT_PORT:-8080}"
	;;
down)
	flags=(--remove-orphans)
	[ "${WSCHAT_DOWN_VOLUMES:-}" = 1 ] && flags+=(-v)
	"${COMPOSE[@]}" down "${flags[@]}"
	;;
"")
	die "usage: $0 up|down|<compose command>"
	;;
*)
	"${COMPOSE[@]}" "$@"
	;;
esac
