#!/usr/bin/env bash
# What a minimal rr dispatcher costs per connection under cluster.sh's close load, epoll against
# io_uring, without pml (Benchmarks/rr-floor-dispatch.c; see README "rr-floor-dispatch.sh").
#
#   Benchmarks/rr-floor-dispatch.sh                   # 3 interleaved rounds of 5 s per variant
#   ROUNDS=5 VARIANTS="epoll-hold uring-hold" Benchmarks/rr-floor-dispatch.sh
#   WORK_US=60 Benchmarks/rr-floor-dispatch.sh      # receivers spend 60 us of CPU per request
#
# One dispatcher per variant (A epoll, B epoll-hold, C uring, D uring-batch, E uring-hold, F
# epoll-credit, G epoll-credit-late, H epoll-credit-nohold: see the .c file), each with its own 2 receivers, on 127.0.0.1:PORT+i; in each round
# `wrk -t2 -c50 -d5s -H 'Connection: close'` hits each in turn (A B C ... H A B ...), so load from
# elsewhere on a shared machine hits all alike.
# Per round and in total: req/s, the dispatcher's CPU (utime + stime of all its threads, from
# /proc) per connection it dispatched (its own exact count), its voluntary context switches per
# connection, wrk's p99, and the load average before the round.
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/tools.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WORK_US=${WORK_US:-0}       # CPU a receiver spends per request (an app's work), so the rate nears Node's
PORT=${PORT:-19180}         # variants use PORT, PORT+1, ... (keep them below 32768)
read -ra VARIANTS <<<"${VARIANTS:-epoll epoll-hold uring uring-batch uring-hold epoll-credit epoll-credit-late epoll-credit-nohold}"
declare -A LABEL=([epoll]=A [epoll-hold]=B [uring]=C [uring-batch]=D [uring-hold]=E [epoll-credit]=F [epoll-credit-late]=G
                  [epoll-credit-nohold]=H)
LABELS=()
for v in "${VARIANTS[@]}"; do
  [[ -n ${LABEL[$v]:-} ]] || { echo "rr-floor-dispatch.sh: unknown variant $v" >&2; exit 2; }
  LABELS+=("${LABEL[$v]}")
done

if ! command -v wrk >/dev/null 2>&1 || ! command -v gcc >/dev/null 2>&1; then
  sudo=(); [[ $(id -u) -ne 0 ]] && sudo=(sudo)
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends wrk gcc libc6-dev curl >/dev/null
fi

work=$(mktemp -d /tmp/rr-floor-dispatch.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done   # its receivers exit on EOF
  rm -rf "$work"
}
trap cleanup EXIT
gcc -O2 -Wall -o "$work/dispatch" Benchmarks/rr-floor-dispatch.c

for i in "${!VARIANTS[@]}"; do
  RR_WORK_US=$WORK_US "$work/dispatch" "${VARIANTS[$i]}" $((PORT + i)) "$work/count$i" 2>"$work/err$i" &
  pids[i]=$!
done
for i in "${!VARIANTS[@]}"; do
  wait_http $((PORT + i)) 50 || true
done
sleep 0.5

hz=$(getconf CLK_TCK)
switches() { cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s}'; }
count() { od -An -tu8 "$work/count$1" | tr -d ' '; }
declare -A T N C
echo "receivers: $WORK_US us of work per request; load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %-3s %-19s %8s %9s %10s %9s %8s %s\n' round var design req/s 'us/conn' 'csw/conn' 'p99 ms' errors 'load (1 min)'
for round in $(seq "$ROUNDS"); do
  for i in "${!VARIANTS[@]}"; do
    pid=${pids[$i]} load=$(cut -d' ' -f1 /proc/loadavg)
    t0=$(proc_ticks "$pid") c0=$(switches "$pid") n0=$(count "$i")
    out=$(wrk -t2 -c50 -d"${DURATION}s" --latency -H 'Connection: close' "http://127.0.0.1:$((PORT + i))/")
    t1=$(proc_ticks "$pid") c1=$(switches "$pid") n1=$(count "$i")
    n=$((n1 - n0)) t=$((t1 - t0)) c=$((c1 - c0))
    T[$i]=$(( ${T[$i]:-0} + t )) N[$i]=$(( ${N[$i]:-0} + n )) C[$i]=$(( ${C[$i]:-0} + c ))
    errs=$(awk '/Socket errors|Non-2xx/ {sub(/^ +/, ""); printf "%s; ", $0}' <<<"$out")
    awk -v r="$round" -v v="${LABELS[$i]}" -v d="${VARIANTS[$i]}" -v t="$t" -v c="$c" -v n="$n" -v hz="$hz" -v load="$load" \
        -v rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")" -v e="${errs:-0}" \
        -v p99="$(awk '$1 == "99%" {v = $2; if (v ~ /us$/) v = v / 1000; else if (v ~ /ms$/) v = v + 0; else if (v ~ /s$/) v = v * 1000; print v}' <<<"$out")" \
        'BEGIN { printf "%-5d %-3s %-19s %8.0f %9.2f %10.2f %9.2f %8s %s\n", r, v, d, rps, t / hz / n * 1e6, c / n, p99, e, load }'
  done
done
echo
for i in "${!VARIANTS[@]}"; do
  awk -v v="${LABELS[$i]}" -v d="${VARIANTS[$i]}" -v t="${T[$i]}" -v c="${C[$i]}" -v n="${N[$i]}" -v hz="$hz" \
    'BEGIN { printf "total %-3s %-19s %9.2f us/conn %6.2f csw/conn over %d connections\n", v, d, t / hz / n * 1e6, c / n, n }'
  [[ -s $work/err$i ]] && sed "s/^/  ${LABELS[$i]}: /" "$work/err$i"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
