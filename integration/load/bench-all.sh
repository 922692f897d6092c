#!/usr/bin/env bash
# Runs the whole benchmark suite of docs/benchmarks.md (the write floor,
# then W1-W5 and the W4b burst, both protocols) with run-local.sh and prints its Markdown
# table. Results go to
# $OUT (default bench-results.jsonl in the current directory, replaced).
# Takes about ten minutes; run it on an otherwise idle machine.
#
#   integration/load/bench-all.sh          # or: make bench
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export OUT=${OUT:-$PWD/bench-results.jsonl}
: >"$OUT"
run() { echo "== $*" >&2; env "$@" >/dev/null; }
# The write floor of this machine, measured in the same run: at W5's rate,
# W1's everyday one and its highest.
"$here/floor.sh" 10000 40000 100000
for proto in seed extended; do
	for rate in 40 100 120; do
		run PROTOCOL=$proto RATE=$rate WARMUP=2s DURATION=10s "$here/run-local.sh" W1
	done
	for rate in 40 150 250 500; do
		run PROTOCOL=$proto RATE=$rate WARMUP=2s DURATION=10s "$here/run-local.sh" W2
	done
	# Many small rooms: 5,000 messages/s (10,000 deliveries), and 20,000.
	for rate in 5 20; do
		run PROTOCOL=$proto RATE=$rate WARMUP=2s DURATION=10s "$here/run-local.sh" W5
	done
	run PROTOCOL=$proto IDLE_CONNS=19000 HOLD=10s "$here/run-local.sh" W3
	run PROTOCOL=$proto STORM_CAP=19000 STORM_START=1000 "$here/run-local.sh" W4 -storm-step 500ms
	# The same storm on one ws-user (the other idle on the same core): what
	# one instance takes.
	run PROTOCOL=$proto TARGETS=1 STORM_CAP=19000 STORM_START=1000 "$here/run-local.sh" W4 -storm-step 500ms
	# A reconnect burst: 19,000 clients over both instances, 128 at a time.
	run PROTOCOL=$proto BURST_CONNS=19000 BURST_CONCURRENCY=128 "$here/run-local.sh" W4b
done
(cd "$root/integration" && go run ./cmd/wsload table) <"$OUT"
