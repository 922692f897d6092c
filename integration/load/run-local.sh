#!/usr/bin/env bash
# Runs one wsload workload against a relayer and two ws-users on loopback.
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
# Environment: PEER (centrifugo: run the peer instead of wschat, two
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
# Bad settings fail here, before anything is built or started.
((TARGETS >= 1 && TARGETS <= 2)) || { echo "TARGETS must be 1 or 2" >&2; exit 2; }
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
else
start ws-relayer RELAY_SECRET=$SECRET DATA_DIR="$work/data" RELAY_FSYNC="${RELAY_FSYNC:-true}" \
	RELAY_COMMIT_DELAY="${RELAY_COMMIT_DELAY:-0s}"
relayer=$addr
server_pids=${pids[-1]}
urls=
for i in 1 2; do
	start "ws-user-$i" INSTANCE_ID="u$i" RELAYER_URL="ws://$relayer" RELAY_SECRET=$SECRET \
		RATE_PER_SEC=100000 RATE_BURST=100000 MAX_CONNS_PER_ADDR=0 SEND_QUEUE="${SEND_QUEUE:-4096}" "$(debug $((6060 + i)))"
	server_pids+=,${pids[-1]}
	urls+=${urls:+,}ws://$addr/ws
	for _ in $(seq 100); do
		[[ $(curl -s -o /dev/null -w '%{http_code}' "http://$addr/readyz") == 200 ]] && break
		sleep 0.1
	done
done
echo "relayer $relayer, ws-users $urls, server pids $server_pids" >&2
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
gen=(taskset -c "$GEN_CPUS" "$work/wsload" -label "$workload" -protocol "$PROTOCOL" -urls "$urls" -pids "$server_pids")

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
