#!/usr/bin/env bash
# A/B of the pml daemon's CPU per dispatched rr connection, between builds or settings, in
# interleaved rounds (so that load from elsewhere on a shared machine hits every setup alike).
#
#   Benchmarks/rr-cpu.sh OLD_PML NEW_PML                         # 3 rounds of 5 s each
#   ROUNDS=6 Benchmarks/rr-cpu.sh PML_ACCEPT_HOLD_US=0@NEW_PML NEW_PML
#
# Each argument is a pml binary, optionally preceded by daemon environment settings
# (`VAR=value,VAR2=value@/path/to/pml`). A binary finds pml's lua/ and shims/ by walking up from
# its own path: keep copies inside a checkout (e.g. `.build/ab/pml-old`). Every setup is its own
# daemon (own PML_HOME) with 2 Node hello-world workers on 127.0.0.1:PORT+i; the load is
# cluster.sh's `close` load (wrk -t2 -c50, one connection per request). Per round and in total:
# req/s, daemon CPU (utime + stime from /proc) per connection, the daemon's voluntary context
# switches (its wake-ups) per connection, p50/p99.
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/tools.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
PORT=${PORT:-19080}         # setups use PORT, PORT+1, ... (keep them below 32768)
(($# >= 1)) || { echo "usage: Benchmarks/rr-cpu.sh [VAR=value,...@]pml ..." >&2; exit 2; }
command -v wrk >/dev/null || { echo "rr-cpu.sh: wrk is missing (Benchmarks/cluster.sh installs it)" >&2; exit 1; }

work=$(mktemp -d /tmp/pml-rrcpu.XXXXXX)
cleanup() {
  ab_stop
  rm -rf "$work"
}
trap cleanup EXIT
ab_start "$work" 1 "$@"

hz=$(getconf CLK_TCK)
switches() { awk '/^voluntary_ctxt_switches/ {print $2}' "/proc/$1/status"; }
declare -A total_ticks total_conns total_switches
for round in $(seq "$ROUNDS"); do
  for i in "${!specs[@]}"; do
    pid=${pids[$i]}
    t0=$(proc_ticks "$pid") c0=$(switches "$pid")
    out=$(setsid -w wrk -t2 -c50 -d"${DURATION}s" --latency -H 'Connection: close' "http://127.0.0.1:${ports[$i]}/")
    t1=$(proc_ticks "$pid") c1=$(switches "$pid")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    total_ticks[$i]=$(( ${total_ticks[$i]:-0} + t1 - t0 ))
    total_conns[$i]=$(( ${total_conns[$i]:-0} + n ))
    total_switches[$i]=$(( ${total_switches[$i]:-0} + c1 - c0 ))
    awk -v r="$round" -v i="$i" -v t=$((t1 - t0)) -v c=$((c1 - c0)) -v hz="$hz" -v n="$n" \
        -v rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")" \
        -v p50="$(awk '$1 == "50%" {print $2}' <<<"$out")" -v p99="$(awk '$1 == "99%" {print $2}' <<<"$out")" \
        'BEGIN { printf "round %d  setup %d  %7.0f req/s  %6.2f us/conn  %.2f wake-ups/conn  p50 %s  p99 %s\n", r, i, rps, t / hz / n * 1e6, c / n, p50, p99 }'
  done
done
echo
for i in "${!specs[@]}"; do
  awk -v i="$i" -v t="${total_ticks[$i]}" -v c="${total_switches[$i]}" -v n="${total_conns[$i]}" -v hz="$hz" -v s="${specs[$i]}" \
    'BEGIN { printf "setup %d  %6.2f us/conn  %.2f wake-ups/conn  over %d connections  %s\n", i, t / hz / n * 1e6, c / n, n, s }'
done
