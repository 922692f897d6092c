#!/usr/bin/env bash
# Summarises a kernel-and-user CPU profile of the servers' core taken by
# run-local.sh with PERF_DIR set:
#
#   integration/load/perf-summary.sh DIR
#
# DIR/server.folded holds the folded stacks of every sample on the servers'
# CPU (any process, the idle task included) and DIR/server.syscalls the
# system call counts of `perf stat` over the same window. Printed: each
# process's share of the core, what the servers did with it (each sample
# goes to the first matching line of the list below, so shares add up), the
# share of some kernel paths wherever they were called from, and system
# calls per second.
set -euo pipefail
dir=${1:?usage: $0 DIR (written by PERF_DIR=DIR run-local.sh)}
folded=$dir/server.folded
[[ -s $folded ]] || { echo "no $folded" >&2; exit 1; }

echo "== share of the servers' core by process"
awk '{ n = $NF; split($0, f, ";"); c[f[1]] += n; t += n }
	END { for (k in c) if (c[k] / t >= 0.005) printf "%6.1f%%  %s\n", 100 * c[k] / t, k }' "$folded" | sort -rn
awk '{ t += $NF } END { print "(" t " samples)" }' "$folded"

echo "== what the servers spent it on (first match, % of the core)"
awk '
BEGIN {
	# pattern|name, in priority order: a page fault or the GC inside a
	# handler counts as page fault or GC, not as the handler.
	n = split("asm_exc_page_fault|page faults (first touch of new memory)" \
		"~runtime.sysmon|Go sysmon thread" \
		"~gcBgMarkWorker|GC" "~gcAssistAlloc|GC" "~runtime.bgsweep|GC" "~runtime.bgscavenge|GC" \
		"~conn.(*Conn).writeLoop|client writes (fan-out)" \
		"~TCPListener).accept|accept" \
		"~http.(*conn).readRequest|HTTP upgrade request read" \
		"~Hijack|hijack and 101 response write" \
		"~websocket.accept|rest of the upgrade" \
		"~conn.(*Conn).serve|client reads (chat, join)" \
		"~relay.(*Bus)|relay link, ws-user side" \
		"~sequencer.(*Sequencer)|relayer: sequencing, fsync, fan-out" \
		"~linkserver.|relayer: link reads and writes" "~linkws.|relayer: link reads and writes" \
		"~runtime.findRunnable|Go scheduler" "~runtime.schedule|Go scheduler" "~runtime.mcall|Go scheduler", r, "~")
	for (i = 1; i <= n; i++) { split(r[i], kv, "|"); pat[i] = kv[1]; name[i] = kv[2] }
}
{
	cnt = $NF; t += cnt
	split($0, f, ";")
	if (f[1] != "ws-user" && f[1] != "ws-relayer") next
	for (i = 1; i <= n; i++) if (index($0, pat[i])) { c[name[i]] += cnt; next }
	c["other (" f[1] ")"] += cnt
}
END { for (k in c) printf "%6.1f%%  %s\n", 100 * c[k] / t, k }' "$folded" | sort -rn

echo "== kernel paths, wherever called from (% of the core)"
awk '
BEGIN {
	n = split("ksys_write|write(2)" "~ksys_read|read(2)" "~net_rx_action|loopback receive (softirq, for the receiving socket)" \
		"~nf_hook_slow|netfilter (conntrack, iptables) on loopback" "~do_fsync|fsync(2)" \
		"~exc_page_fault|page faults" "~do_epoll_pwait|epoll_pwait(2)" "~__x64_sys_futex|futex(2)" \
		"~__x64_sys_nanosleep|nanosleep(2)" "~__schedule|context switches", r, "~")
	for (i = 1; i <= n; i++) { split(r[i], kv, "|"); pat[i] = ";" kv[1]; name[i] = kv[2] }
}
{
	cnt = $NF; t += cnt
	s = $0; sub(/ [0-9]+$/, ";", s)
	# A frame matches with or without a compiler suffix (do_epoll_pwait.part.0).
	for (i = 1; i <= n; i++) if (index(s, pat[i] ";") || index(s, pat[i] ".")) c[name[i]] += cnt
}
END { for (k in c) printf "%6.1f%%  %s\n", 100 * c[k] / t, k }' "$folded" | sort -rn

if [[ -s $dir/server.syscalls ]]; then
	echo "== system calls and events on the servers' core, per second"
	awk '/elapsed/ { secs = $1 } $1 ~ /^[0-9,]+$/ && $2 != "" { gsub(/,/, "", $1); v[$2] = $1 }
		END { if (secs <= 0) exit; for (k in v) { name = k; sub(/^syscalls:sys_enter_/, "", name); printf "%10.0f  %s\n", v[k] / secs, name } }' \
		"$dir/server.syscalls" | sort -rn
fi
