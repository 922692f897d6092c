#!/usr/bin/env bash
# Measures the write floor of this machine at each rate given (writes a
# second) and appends its JSON lines to $OUT, for the table of the same run
# (wsload table gives every CPU per delivery as a ratio to it): one
# write(2) per frame to 1,000 loopback sockets (integration/cmd/writefloor),
# the writer pinned as the servers are (SERVER_CPUS, 0), the reader as the
# generator is (GEN_CPUS, 1).
#
#   OUT=results.jsonl integration/load/floor.sh 10000 40000 100000
set -euo pipefail
: "${OUT:?set OUT, the results file}"
(($# > 0)) || { echo "usage: $0 RATE..." >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
(cd "$root" && go build -o "$dir/writefloor" ./integration/cmd/writefloor)
for rate in "$@"; do
	echo "== writefloor -rate $rate" >&2
	taskset -c "${SERVER_CPUS:-0}" "$dir/writefloor" -rate "$rate" -reader-cpus "${GEN_CPUS:-1}" >>"$OUT"
done
