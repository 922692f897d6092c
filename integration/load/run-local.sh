#!/usr/bin/env bash
# Runs one wsload workload against two ws-users and their relay tier (a
# relayer, or NATS: BUS) on loopback.
# Servers are pinned to CPU 0 and the generator to CPU 1 (taskset), so the
# generator does not steal the servers' CPU. Everything started here is
# killed on exit.
#
#   integration/load/run-local.sh W1|W2|W3|W4|W4b|W5 [extra wsload flags...]
#
# W1  fan-out: 100 rooms x 10 members, 1 publisher per room, over 2 instances
# W2  fan-out: 1 room x 1000 members, 1 publisher
# W5  many small rooms: 1000 rooms x 2 members, 1 publisher per room
# W3  idle: IDLE_CONNS connections per instance (default 2000; 19000 is the
#     most one ws-user can hold under the 20,000 open-files limit), split
#     over several generator processes of at most PER_PROC connections
# W4  connection storm, rate x1.5 per step until one fails, then the edge
#     bisected (wsload -storm-refine), up to STORM_CAP connections in all
# W4b reconnect burst: BURST_CONNS connections (19000) over the instances,
#     BURST_CONCURRENCY (128) at a time, as fast as they are taken (wsload
#     -mode burst): wall time and setup latency
#
# Environment: BUS (relayer: one ws-relayer, the default; nats: the relay
# tier on NATS_NODES nats-server processes (3: a cluster, R3; or 1, R1)
# built from the Go module proxy, JetStream on disk, fsyncing as
# NATS_SYNC says (empty: nats-server's default, every 2 minutes; always:
# every write, as RELAY_FSYNC does); bench-scaling.sh), PEER (centrifugo:
# run the peer instead of wschat, two
# Centrifugo nodes over Redis, CENTRIFUGO_BIN its binary; bench-peers.sh),
# PROTOCOL (extended|seed), RATE (msg/s per publisher, 10),
# WARMUP (2s), DURATION (10s), HOLD (10s), IDLE_CONNS (2000), PER_PROC
# (18000), STORM_CAP (10000), STORM_START (200), RELAY_FSYNC (true),
# RELAY_COMMIT_DELAY (0s),
# SEND_QUEUE (4096), SERVER_CPUS (0), GEN_CPUS (1), TARGETS (2: how many
# of the two ws-users the generator connects to; both always run),
# BURST_CONNS (19000), BURST_CONCURRENCY (128),
# STORM_SOURCES (127.0.0.2-5: W4 and W4b dial from these), OUT (results file,
# default /tmp/wsload-results.jsonl: one JSON line per generator process),
# PPROF_DIR (if set: a CPU profile of the first ws-user, taken for
# PPROF_SECONDS (5) after the warm-up, is written there), PERF_DIR (if set:
# a kernel-and-user profile of the servers' CPU by Linux perf at PERF_FREQ
# (2000) samples a second, PERF_SECONDS (5) long from PERF_DELAY (the
# warm-up; 1s for W3, W4) on, folded into PERF_DIR/server.folded, with
# system call counts in server.syscalls; integration/load/perf-summary.sh
# PERF_DIR prints what it shows. The run waits for the profile: keep its
# window inside the run).
set -euo pipefail

workload=${1:?usage: $0 W1|W2|W3|W4|W4b|W5 [wsload flags...]}
shift
root=$(cd "$(dirname "$0")/../.." && pwd)
PROTOCOL=${PROTOCOL:-extended}
RATE=${RATE:-10}
WARMUP=${WARMUP:-2s}
DURATION=${DURATION:-10s}
HOLD=${HOLD:-10s}
IDLE_CONNS=${IDLE_CONNS:-2000}
PER_PROC=${PER_PROC:-18000}
STORM_CAP=${STORM_CAP:-10000}
STORM_START=${STORM_START:-200}
BURST_CONNS=${BURST_CONNS:-19000}
BURST_CONCURRENCY=${BURST_CONCURRENCY:-128}
SERVER_CPUS=${SERVER_CPUS:-0}
GEN_CPUS=${GEN_CPUS:-1}
OUT=${OUT:-/tmp/wsload-results.jsonl}
SECRET=run-local-secret
TARGETS=${TARGETS:-2}
BUS=${BUS:-relayer}
NATS_NODES=${NATS_NODES:-3}
NATS_SYNC=${NATS_SYNC:-}
# Bad settings fail here, before anything is built or started.
((TARGETS >= 1 && TARGETS <= 2)) || { echo "TARGETS must be 1 or 2" >&2; exit 2; }
case $BUS in relayer | nats) ;; *) echo "BUS must be relayer or nats" >&2; exit 2 ;; esac
case $NATS_NODES in 1 | 3) ;; *) echo "NATS_NODES must be 1 or 3" >&2; exit 2 ;; esac
case $NATS_SYNC in "" | always) ;; *) echo "NATS_SYNC must be empty or always" >&2; exit 2 ;; esac
if [[ $BUS == nats && -n ${PEER:-} ]]; then echo "BUS=nats runs wschat: not with PEER" >&2; exit 2; fi
if [[ -n ${PERF_DIR:-} ]] && ! command -v perf >/dev/null; then
	echo "PERF_DIR needs perf (Debian: apt-get install linux-perf)" >&2
	exit 1
fi
# seconds DURATION prints a Go-style duration (500ms, 2s, 1m) in seconds,
# for sleep.
seconds() {
	case $1 in
	*ms) awk -v v="${1%ms}" 'BEGIN { print v / 1000 }' ;;
	*s) echo "${1%s}" ;;
	*m) awk -v v="${1%m}" 'BEGIN { print v * 60 }' ;;
	*) echo "cannot read the duration $1 (use ms, s or m)" >&2 && return 1 ;;
	esac
}
warmup_s=$(seconds "$WARMUP")

work=$(mktemp -d /tmp/wsload-run.XXXXXX)
pids=()
cleanup() {
	local status=$?
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	if [[ $status -ne 0 ]]; then
		for f in "$work"/*.log; do [[ -e $f ]] && { echo "--- $f"; tail -n 20 "$f"; }; done >&2
	fi
	rm -rf "$work"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building into $work" >&2
(cd "$root" && go build -o "$work/ws-relayer" ./services/relayer/cmd/ws-relayer \
	&& go build -o "$work/ws-user" ./services/user/cmd/ws-user \
	&& go build -o "$work/wsload" ./integration/cmd/wsload)
if [[ $BUS == nats ]]; then
	# The version ws-user's module requires (services/user/go.mod).
	(cd "$root/services/user" && go build -o "$work/nats-server" github.com/nats-io/nats-server/v2)
fi

# start NAME ENV... starts a server on a free loopback port and sets addr
# from its "listening" log line. (Not in $(...): the pid must be recorded
# by this shell.)
start() {
	local name=$1
	shift
	env HOST=127.0.0.1 PORT=0 LOG_LEVEL=info "$@" taskset -c "$SERVER_CPUS" "$work/${name%%-[0-9]*}" \
		>/dev/null 2>"$work/$name.log" &
	pids+=($!)
	addr=
	for _ in $(seq 100); do
		addr=$(sed -n 's/.*"msg":"listening".*"addr":"\([^"]*\)".*/\1/p' "$work/$name.log" | head -n1)
		[[ -n $addr ]] && break
		kill -0 "${pids[-1]}" 2>/dev/null || { echo "$name exited" >&2; return 1; }
		sleep 0.1
	done
	[[ -n $addr ]] || { echo "$name did not listen" >&2; return 1; }
}

debug() { if [[ -n ${PPROF_DIR:-} && $1 == 6061 ]]; then echo "DEBUG_ADDR=127.0.0.1:$1"; else echo "DEBUG_ADDR="; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
if [[ ${PEER:-} == centrifugo ]]; then
	# The peer instead: two Centrifugo nodes over one Redis, pinned where
	# wschat's servers are, in insecure client mode (no tokens: anyone may
	# connect, subscribe and publish, as with wschat's seed protocol).
	[[ -x ${CENTRIFUGO_BIN:-} ]] || { echo "PEER=centrifugo needs CENTRIFUGO_BIN (bench-peers.sh installs it)" >&2; exit 1; }
	command -v redis-server >/dev/null || { echo "PEER=centrifugo needs redis-server (Debian: apt-get install redis-server)" >&2; exit 1; }
	rport=$(free_port)
	taskset -c "$SERVER_CPUS" redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
		>"$work/redis.log" 2>&1 &
	pids+=($!)
	server_pids=${pids[-1]}
	for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
	urls=
	echo '{}' >"$work/centrifugo.json"
	for i in 1 2; do
		port=$(free_port)
		env CENTRIFUGO_CLIENT_INSECURE=true CENTRIFUGO_HEALTH_ENABLED=true CENTRIFUGO_ENGINE_TYPE=redis \
			CENTRIFUGO_ENGINE_REDIS_ADDRESS="redis://127.0.0.1:$rport" CENTRIFUGO_HTTP_SERVER_ADDRESS=127.0.0.1 \
			CENTRIFUGO_HTTP_SERVER_PORT="$port" CENTRIFUGO_LOG_LEVEL=warn \
			taskset -c "$SERVER_CPUS" "$CENTRIFUGO_BIN" -c "$work/centrifugo.json" >"$work/centrifugo-$i.log" 2>&1 &
		pids+=($!)
		server_pids+=,${pids[-1]}
		urls+=${urls:+,}ws://127.0.0.1:$port/connection/websocket
		for _ in $(seq 100); do
			[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health") == 200 ]] && break
			sleep 0.1
		done
	done
	PROTOCOL=centrifugo
	echo "centrifugo $urls over redis :$rport, server pids $server_pids" >&2
elif [[ $BUS == nats ]]; then
	# NATS_NODES nats-server processes on loopback, pinned where the
	# relayer would be; a cluster of three routes to each other.
	client_ports=() route_ports=() monitor_ports=()
	for ((i = 1; i <= NATS_NODES; i++)); do
		client_ports+=("$(free_port)") route_ports+=("$(free_port)") monitor_ports+=("$(free_port)")
	done
	routes=
	for p in "${route_ports[@]}"; do routes+=${routes:+, }\"nats-route://127.0.0.1:$p\"; done
	nats_url= server_pids= tier_pids=
	for ((i = 1; i <= NATS_NODES; i++)); do
		{
			echo "server_name: n$i"
			echo "listen: 127.0.0.1:${client_ports[i - 1]}"
			echo "http: 127.0.0.1:${monitor_ports[i - 1]}"
			echo "jetstream { store_dir: \"$work/nats-$i\"${NATS_SYNC:+, sync_interval: $NATS_SYNC} }"
			if ((NATS_NODES > 1)); then
				echo "cluster { name: wsload, listen: 127.0.0.1:${route_ports[i - 1]}, routes: [$routes] }"
			fi
		} >"$work/nats-$i.conf"
		taskset -c "$SERVER_CPUS" "$work/nats-server" -c "$work/nats-$i.conf" >"$work/nats-$i.log" 2>&1 &
		pids+=($!)
		server_pids+=${server_pids:+,}${pids[-1]}
		nats_url+=${nats_url:+,}nats://127.0.0.1:${client_ports[i - 1]}
	done
	tier_pids=$server_pids
	nats_pids=("${pids[@]: -NATS_NODES}")
	for ((i = 1; i <= NATS_NODES; i++)); do
		ready=
		for _ in $(seq 300); do
			[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${monitor_ports[i - 1]}/healthz?js-enabled-only=true") == 200 ]] && { ready=1; break; }
			kill -0 "${nats_pids[i - 1]}" 2>/dev/null || { echo "nats-server $i exited" >&2; exit 1; }
			sleep 0.1
		done
		[[ -n $ready ]] || { echo "nats-server $i has no JetStream after 30 s" >&2; exit 1; }
	done
	relay_env=(BUS=nats NATS_URL="$nats_url" NATS_REPLICAS="$NATS_NODES")
	relay_desc="nats $nats_url (R$NATS_NODES${NATS_SYNC:+, sync $NATS_SYNC})"
else
	start ws-relayer RELAY_SECRET=$SECRET DATA_DIR="$work/data" RELAY_FSYNC="${RELAY_FSYNC:-true}" \
		RELAY_COMMIT_DELAY="${RELAY_COMMIT_DELAY:-0s}"
	server_pids=${pids[-1]}
	tier_pids=$server_pids
	relay_env=(RELAYER_URL="ws://$addr" RELAY_SECRET=$SECRET)
	relay_desc="relayer $addr"
fi
if [[ ${PEER:-} != centrifugo ]]; then
	urls=
	for i in 1 2; do
		start "ws-user-$i" INSTANCE_ID="u$i" "${relay_env[@]}" \
			RATE_PER_SEC=100000 RATE_BURST=100000 MAX_CONNS_PER_ADDR=0 SEND_QUEUE="${SEND_QUEUE:-4096}" "$(debug $((6060 + i)))"
		server_pids+=,${pids[-1]}
		urls+=${urls:+,}ws://$addr/ws
		ready=
		for _ in $(seq 300); do
			[[ $(curl -s -o /dev/null -w '%{http_code}' "http://$addr/readyz") == 200 ]] && { ready=1; break; }
			sleep 0.1
		done
		[[ -n $ready ]] || { echo "ws-user-$i is not ready after 30 s" >&2; exit 1; }
	done
	echo "$relay_desc, ws-users $urls, server pids $server_pids" >&2
fi

if [[ -n ${PPROF_DIR:-} ]]; then
	mkdir -p "$PPROF_DIR"
	(
		sleep "$warmup_s"
		curl -s -o "$PPROF_DIR/ws-user-1.cpu.pprof" "http://127.0.0.1:6061/debug/pprof/profile?seconds=${PPROF_SECONDS:-5}"
	) &
	pids+=($!)
fi

if [[ -n ${PERF_DIR:-} ]]; then
	mkdir -p "$PERF_DIR"
	case $workload in W1 | W2 | W5) delay=${PERF_DELAY:-$warmup_s} ;; *) delay=${PERF_DELAY:-1} ;; esac
	syscalls=write,read,epoll_pwait,epoll_ctl,futex,nanosleep,accept4,fsync
	(
		sleep "$delay"
		perf stat -a -C "$SERVER_CPUS" -o "$PERF_DIR/server.syscalls" \
			-e "context-switches,page-faults,syscalls:sys_enter_${syscalls//,/,syscalls:sys_enter_}" \
			-- sleep "${PERF_SECONDS:-5}" 2>"$work/perf-stat.log" &
		stat_pid=$!
		perf record -q -a -C "$SERVER_CPUS" -g -e cpu-clock -F "${PERF_FREQ:-2000}" -o "$work/perf.data" \
			-- sleep "${PERF_SECONDS:-5}" 2>"$work/perf.log" || { wait "$stat_pid"; exit 1; }
		wait "$stat_pid" || { cat "$work/perf-stat.log" >>"$work/perf.log"; exit 1; }
		# Folded here: the binaries perf resolves symbols from go with $work.
		perf script -i "$work/perf.data" -F comm,ip,sym 2>>"$work/perf.log" |
			awk -f "$root/integration/load/perf-fold.awk" >"$PERF_DIR/server.folded"
	) &
	perf_pid=$!
	pids+=($perf_pid)
fi
# perf_done waits for the profile to be written (if the run ended first,
# the profile's window still runs to its end).
perf_done() { if [[ -n ${perf_pid:-} ]]; then wait "$perf_pid" || echo "perf failed: $(tail -n 3 "$work/perf.log")" >&2; fi; }

((TARGETS == 1)) && urls=${urls%%,*}
label=$workload
[[ $BUS == nats ]] && label+=" nats-r$NATS_NODES${NATS_SYNC:+-sync-$NATS_SYNC}"
gen=(taskset -c "$GEN_CPUS" "$work/wsload" -label "$label" -protocol "$PROTOCOL" -urls "$urls" -pids "$server_pids"
	${tier_pids:+-tier-pids "$tier_pids"})

case $workload in
W1) "${gen[@]}" -rooms 100 -members 10 -publishers 1 -rate "$RATE" -warmup "$WARMUP" -duration "$DURATION" "$@" | tee -a "$OUT" ;;
W2) "${gen[@]}" -rooms 1 -members 1000 -publishers 1 -rate "$RATE" -warmup "$WARMUP" -duration "$DURATION" "$@" | tee -a "$OUT" ;;
W5) "${gen[@]}" -rooms 1000 -members 2 -publishers 1 -rate "$RATE" -warmup "$WARMUP" -duration "$DURATION" "$@" | tee -a "$OUT" ;;
W3)
	total=$((IDLE_CONNS * TARGETS))
	procs=$(((total + PER_PROC - 1) / PER_PROC))
	limit=$(ulimit -n)
	if ((IDLE_CONNS + 200 > limit)); then
		echo "warning: $IDLE_CONNS connections per ws-user is close to the open-files limit $limit" >&2
	fi
	# Each generator process dials from its own source address and holds
	# long enough for the others to finish connecting; all report RSS per
	# connection over the total.
	gens=()
	for ((p = 0; p < procs; p++)); do
		share=$((total / procs))
		((p == procs - 1)) && share=$((total - p * share))
		"${gen[@]}" -mode idle -conns "$share" -total-conns "$total" -members 10 -hold "$HOLD" \
			-source "127.0.0.$((2 + p))" -prefix "idle-$$-$p" -connect-rate 2000 -read-buffer 1024 "$@" \
			>"$work/gen-$p.json" 2>"$work/gen-$p.err" &
		gens+=($!)
		pids+=($!)
	done
	status=0
	for g in "${gens[@]}"; do wait "$g" || status=1; done
	for ((p = 0; p < procs; p++)); do
		cat "$work/gen-$p.err" >&2
		tee -a "$OUT" <"$work/gen-$p.json"
	done
	perf_done
	exit "$status"
	;;
W4)
	# Several source addresses: from one, connect() itself slows down past
	# ~10,000 connections to one destination (see load/README.md).
	"${gen[@]}" -mode storm -conns "$STORM_CAP" -members 10 -storm-start "$STORM_START" -storm-factor 1.5 \
		-source "${STORM_SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5}" "$@" | tee -a "$OUT"
	;;
W4b)
	"${gen[@]}" -mode burst -conns "$BURST_CONNS" -connect-concurrency "$BURST_CONCURRENCY" -members 10 \
		-source "${STORM_SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5}" -read-buffer 1024 "$@" | tee -a "$OUT"
	;;
*)
	echo "unknown workload $workload (W1, W2, W3, W4, W4b, W5)" >&2
	exit 2
	;;
esac
perf_done
