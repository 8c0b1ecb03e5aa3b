#!/usr/bin/env bash
# pml's own code per dispatched rr connection, between builds, in interleaved rounds: what
# rr-cpu.sh cannot show. Its total (utime + stime, in clock ticks) follows the kernel's share
# (wake-ups, accept, sendmsg, close) and moves by ±1 µs from round to round on a shared machine;
# a change in pml's own code is a few tenths of that.
#
#   Benchmarks/rr-own.sh OLD_PML NEW_PML              # 3 rounds of 6 s each
#   CALLS=1 Benchmarks/rr-own.sh OLD_PML NEW_PML      # and Swift runtime calls per connection
#
# Same setups as rr-cpu.sh (`[VAR=value,...@]pml`, 2 Node workers each, wrk -t2 -c50 close load).
# Per round: the daemon's CPU per connection sampled by `perf record -F 4000` (user space apart:
# pml, the Swift runtime, libc). With CALLS=1, one more run per setup with uprobes on the Swift
# runtime's swift_retain, swift_release, swift_beginAccess (exclusivity checks) and libc's malloc,
# counted per connection: exact, whatever the machine's load, but each probe traps, so the daemon
# runs slower then (bigger batches per wake-up: per-wake-up costs look smaller). Needs perf, and
# root for the uprobes (removed at exit).
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/tools.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6}
PORT=${PORT:-19180}         # setups use PORT, PORT+1, ... (keep them below 32768)
FREQ=4000
(($# >= 1)) || { echo "usage: Benchmarks/rr-own.sh [VAR=value,...@]pml ..." >&2; exit 2; }
for tool in wrk perf; do
  command -v $tool >/dev/null || { echo "rr-own.sh: $tool is missing" >&2; exit 1; }
done

work=$(mktemp -d /tmp/pml-rrown.XXXXXX)
probes=()
cleanup() {
  ab_stop
  for p in "${probes[@]}"; do perf probe -q -d "$p" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ab_start "$work" 1 "$@"

load() { setsid -w wrk -t2 -c50 -d"${DURATION}s" -H 'Connection: close' "http://127.0.0.1:$1/"; }
declare -A total_samples user_samples total_conns
for round in $(seq "$ROUNDS"); do
  for i in "${!specs[@]}"; do
    perf record -q -F $FREQ -p "${pids[$i]}" -o "$work/perf.data" -- sleep "$DURATION" >/dev/null 2>&1 &
    rec=$!
    n=$(load "${ports[$i]}" | awk '/requests in/ {print $1}')
    wait $rec
    read -r all user < <(perf report -i "$work/perf.data" --sort dso --stdio -F sample,dso 2>/dev/null |
      awk '$1 ~ /^[0-9]+$/ { all += $1; if ($2 !~ /kernel/) user += $1 } END { print all + 0, user + 0 }')
    total_samples[$i]=$(( ${total_samples[$i]:-0} + all ))
    user_samples[$i]=$(( ${user_samples[$i]:-0} + user ))
    total_conns[$i]=$(( ${total_conns[$i]:-0} + n ))
    awk -v r="$round" -v i="$i" -v a="$all" -v u="$user" -v n="$n" -v f=$FREQ \
      'BEGIN { printf "round %d  setup %d  %6d connections  %6.2f us/conn, user space %5.2f\n", r, i, n, a / f / n * 1e6, u / f / n * 1e6 }'
  done
done
echo
for i in "${!specs[@]}"; do
  awk -v i="$i" -v a="${total_samples[$i]}" -v u="${user_samples[$i]}" -v n="${total_conns[$i]}" -v f=$FREQ -v s="${specs[$i]}" \
    'BEGIN { printf "setup %d  %6.2f us/conn, user space %5.2f  over %d connections  %s\n", i, a / f / n * 1e6, u / f / n * 1e6, n, s }'
done

[[ ${CALLS:-0} == 1 ]] || exit 0
swift_core=$(ldd "${bins[0]}" | awk '/libswiftCore.so/ {print $3}')
libc=$(ldd "${bins[0]}" | awk '/libc.so.6/ {print $3}')
events=()
for f in swift_retain swift_release swift_beginAccess; do
  perf probe -q -x "$swift_core" "$f" >/dev/null 2>&1 && probes+=("probe_libswiftCore:$f")
  events+=("probe_libswiftCore:$f")
done
perf probe -q -x "$libc" malloc >/dev/null 2>&1 && probes+=("probe_libc:malloc")
events+=(probe_libc:malloc syscalls:sys_enter_sendmsg)
echo
for i in "${!specs[@]}"; do
  perf stat -x, -e "$(IFS=,; echo "${events[*]}")" -p "${pids[$i]}" -o "$work/calls" -- sleep "$DURATION" >/dev/null 2>&1 &
  st=$!
  load "${ports[$i]}" >/dev/null
  wait $st
  # Per connection: one sendmsg each (one fd per message for Node workers).
  awk -F, -v i="$i" -v s="${specs[$i]}" '$3 ~ /:/ { c[$3] = $1 } END {
      n = c["syscalls:sys_enter_sendmsg"]; if (n == 0) { print "setup " i ": no connection counted"; exit }
      printf "setup %d  per connection: retain %.1f  release %.1f  beginAccess %.1f  malloc %.2f  %s\n", i,
        c["probe_libswiftCore:swift_retain"] / n, c["probe_libswiftCore:swift_release"] / n,
        c["probe_libswiftCore:swift_beginAccess"] / n, c["probe_libc:malloc"] / n, s }' "$work/calls"
done
