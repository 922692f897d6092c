#!/usr/bin/env bash
# Runs the same workloads against wschat and a peer, Centrifugo v6 over
# Redis, side by side in one run, after the write floor, and prints one
# Markdown table (wsload table): every CPU per delivery also as a ratio to
# the floor measured in that run. Servers of each system on CPU 0, the
# generator on CPU 1, as make bench does: W1 at 20,000 and 40,000
# deliveries/s (the everyday rate; on a slow day here the second saturates
# the servers' core) and up to its highest lossless rate, W2, W5 (fan-out), W3 (idle memory), W4 (storm:
# the highest sustained connection rate) and W4b (a reconnect burst: 19,000
# clients, 128 at a time). About seven minutes here (the first time, a few
# more to build Centrifugo).
#
#   integration/load/bench-peers.sh          # or: make bench-peers
#
# Needs Redis (Debian: apt-get install redis-server). Centrifugo is built
# from the Go module proxy (go install, CENTRIFUGO_VERSION, v6.9.1) into
# $CENTRIFUGO_DIR (default ~/.cache/wschat-peers) once; nothing of it is
# copied into this repository. Results go to $OUT (default
# bench-peers.jsonl in the current directory, replaced).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export OUT=${OUT:-$PWD/bench-peers.jsonl}
CENTRIFUGO_VERSION=${CENTRIFUGO_VERSION:-v6.9.1}
CENTRIFUGO_DIR=${CENTRIFUGO_DIR:-$HOME/.cache/wschat-peers}
command -v redis-server >/dev/null || { echo "needs redis-server: apt-get install redis-server" >&2; exit 1; }
export CENTRIFUGO_BIN=$CENTRIFUGO_DIR/centrifugo-$CENTRIFUGO_VERSION
if [[ ! -x $CENTRIFUGO_BIN ]]; then
	echo "== go install github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION (once)" >&2
	mkdir -p "$CENTRIFUGO_DIR"
	tmp=$(mktemp -d)
	GOBIN=$tmp go install "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION"
	mv "$tmp/centrifugo" "$CENTRIFUGO_BIN"
	rm -rf "$tmp"
fi
: >"$OUT"
run() { echo "== $*" >&2; env "$@" >/dev/null; }
"$here/floor.sh" 10000 20000 40000 100000
# wschat with its original (seed) protocol, which is what Centrifugo's
# insecure mode compares with: no acknowledgement needed, no identity.
for peer in "" centrifugo; do
	for rate in 20 40 100 120; do
		run PEER=$peer PROTOCOL=seed RATE=$rate WARMUP=2s DURATION=10s "$here/run-local.sh" W1
	done
	run PEER=$peer PROTOCOL=seed RATE=150 WARMUP=2s DURATION=10s "$here/run-local.sh" W2
	for rate in 5 20; do
		run PEER=$peer PROTOCOL=seed RATE=$rate WARMUP=2s DURATION=10s "$here/run-local.sh" W5
	done
	run PEER=$peer PROTOCOL=seed IDLE_CONNS=19000 HOLD=10s "$here/run-local.sh" W3
	run PEER=$peer PROTOCOL=seed STORM_CAP=19000 STORM_START=1000 "$here/run-local.sh" W4 -storm-step 500ms
	run PEER=$peer PROTOCOL=seed BURST_CONNS=19000 BURST_CONCURRENCY=128 "$here/run-local.sh" W4b
done
(cd "$root/integration" && go run ./cmd/wsload table) <"$OUT"
