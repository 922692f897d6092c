#!/usr/bin/env bash
# Measures the relay tiers side by side in one run, for docs/scaling.md:
# the relayer (RELAY_FSYNC on), and NATS JetStream on three nodes (R3, as
# make up-nats runs it; fsync as nats-server does by default, and on every
# write) and on one (R1). Each tier with two ws-users, all servers on CPU 0
# and the generator on CPU 1, as make bench does; the extended protocol, so
# every chat is acknowledged once the tier stored it. For each tier:
#
#   W5  1,000 rooms x 2 (publish-bound: a delivery per member, two per
#       message), first at 10 messages/s in all (what the tier costs with
#       its rooms nearly idle), then raised step by step until a run loses
#       messages or its p99 passes 1 s (the core is saturated: the steps
#       above would only queue);
#   W1  100 rooms x 10 at 1,000 messages/s (10,000 deliveries/s);
#   W2  1 room x 1,000 at 100 messages/s (100,000 deliveries/s:
#       delivery-bound).
#
# wsload reports the relay tier's processes apart (-tier-pids): its CPU per
# message published, and the ws-users' as the rest. About fourteen minutes
# here.
#
#   integration/load/bench-scaling.sh          # or: make bench-scaling
#
# Results go to $OUT (default bench-scaling.jsonl in the current directory,
# replaced); the table (wsload table) is printed at the end. TIERS
# (default "relayer nats-r3 nats-r3-always nats-r1") and W5_RATES
# (messages/s per room, "0.01 0.25 0.5 1 2 5 10 20") choose what runs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export OUT=${OUT:-$PWD/bench-scaling.jsonl}
TIERS=${TIERS:-relayer nats-r3 nats-r3-always nats-r1}
W5_RATES=${W5_RATES:-0.01 0.25 0.5 1 2 5 10 20}
: >"$OUT"
run() { echo "== $*" >&2; env "$@" >/dev/null; }
# saturated: the last result lost messages or its p99 passed 1 s. A step
# that failed outright (run-local.sh's error is on stderr) counts as
# saturated, so the other tiers still run.
saturated() {
	tail -n 1 "$OUT" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
p99 = (r.get("latency_ms") or {}).get("p99", 0)
sys.exit(0 if r.get("lost", 0) > 0 or p99 > 1000 else 1)'
}
for tier in $TIERS; do
	case $tier in
	relayer) env=(BUS=relayer) ;;
	nats-r3) env=(BUS=nats NATS_NODES=3) ;;
	nats-r3-always) env=(BUS=nats NATS_NODES=3 NATS_SYNC=always) ;;
	nats-r1) env=(BUS=nats NATS_NODES=1) ;;
	*) echo "unknown tier $tier (relayer, nats-r3, nats-r3-always, nats-r1)" >&2 && exit 2 ;;
	esac
	for rate in $W5_RATES; do
		lines=$(wc -l <"$OUT")
		run "${env[@]}" PROTOCOL=extended RATE="$rate" WARMUP=2s DURATION=10s "$here/run-local.sh" W5 || true
		if (($(wc -l <"$OUT") == lines)) || saturated; then break; fi
	done
	run "${env[@]}" PROTOCOL=extended RATE=10 WARMUP=2s DURATION=10s "$here/run-local.sh" W1 || true
	run "${env[@]}" PROTOCOL=extended RATE=100 WARMUP=2s DURATION=10s "$here/run-local.sh" W2 || true
done
(cd "$root/integration" && go run ./cmd/wsload table) <"$OUT"
