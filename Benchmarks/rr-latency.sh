#!/usr/bin/env bash
# What the accept hold (or any change) does to latency, between builds or settings, in interleaved
# rounds: light loads on one app, and an idle app's latency while its neighbour is loaded.
#
#   Benchmarks/rr-latency.sh PML_ACCEPT_HOLD_US=0@.build/ab/pml-new PML_ACCEPT_HOLD_US=250@.build/ab/pml-new
#
# Each argument is a pml binary, optionally preceded by daemon environment settings, as for
# rr-cpu.sh. Every setup is its own daemon with two apps of 2 Node hello-world workers (rr):
# `busy` on PORT+2i and `idle` on PORT+2i+1. Per round and setup, DURATION seconds each (wrk):
#   light c2/c4, keep-alive and close   wrk -t1 -c2|-c4 on `busy` alone (a few fast clients;
#                                        `c8-close` too, if ROWS names it)
#   neighbour                            wrk -t2 -c50 close on `busy` and, at the same time,
#                                        wrk -t1 -c1 close on `idle` (its latency is the row)
# ROWS="c2-close c4-close" runs only those rows. Prints each row's req/s, p50 and p99 per round,
# and each app's accept holds so far (`accept_holds`), then the median of the rounds' p50 and p99.
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/tools.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4}
PORT=${PORT:-19180}         # setups use PORT .. PORT+2n-1 (keep them below 32768)
(($# >= 1)) || { echo "usage: Benchmarks/rr-latency.sh [VAR=value,...@]pml ..." >&2; exit 2; }
command -v wrk >/dev/null || { echo "rr-latency.sh: wrk is missing (Benchmarks/cluster.sh installs it)" >&2; exit 1; }

work=$(mktemp -d /tmp/pml-rrlat.XXXXXX)
cleanup() {
  ab_stop
  rm -rf "$work"
}
trap cleanup EXIT
ab_start "$work" 2 "$@"

# wrk's req/s, p50 and p99 (ms) from its --latency output.
summary() {
  awk '/^Requests\/sec:/ {rps = $2}
       function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
       $1 == "50%" {p50 = ms($2)} $1 == "99%" {p99 = ms($2)}
       $1 == "neighbour" {nb = $2}
       END {printf "%.0f %.3f %.3f %s", rps, p50, p99, nb == "" ? "" : sprintf("(neighbour %.0f req/s)", nb)}' <<<"$1"
}

read -ra rows <<<"${ROWS:-c2-keepalive c4-keepalive c2-close c4-close idle-next-to-c50}"
declare -A p50s p99s
for round in $(seq "$ROUNDS"); do
  for i in "${!specs[@]}"; do
    busy=${ports[2 * i]} idle=${ports[2 * i + 1]}
    for row in "${rows[@]}"; do
      case $row in
        c2-keepalive) out=$(wrk -t1 -c2 -d"${DURATION}s" --latency "http://127.0.0.1:$busy/") ;;
        c4-keepalive) out=$(wrk -t1 -c4 -d"${DURATION}s" --latency "http://127.0.0.1:$busy/") ;;
        c2-close) out=$(wrk -t1 -c2 -d"${DURATION}s" --latency -H 'Connection: close' "http://127.0.0.1:$busy/") ;;
        c4-close) out=$(wrk -t1 -c4 -d"${DURATION}s" --latency -H 'Connection: close' "http://127.0.0.1:$busy/") ;;
        c8-close) out=$(wrk -t1 -c8 -d"${DURATION}s" --latency -H 'Connection: close' "http://127.0.0.1:$busy/") ;;
        idle-next-to-c50)
          wrk -t2 -c50 -d"$((DURATION + 1))s" -H 'Connection: close' "http://127.0.0.1:$busy/" >"$work/neighbour" &
          load=$!
          sleep 0.5   # the neighbour's load is sustained (held, if it holds) before the probe starts
          out=$(wrk -t1 -c1 -d"${DURATION}s" --latency -H 'Connection: close' "http://127.0.0.1:$idle/")
          wait "$load"
          out+=$'\n'"neighbour $(awk '/^Requests\/sec:/ {print $2}' "$work/neighbour")" ;;
      esac
      read -r rps p50 p99 note <<<"$(summary "$out")"
      p50s[$i,$row]+="$p50 " p99s[$i,$row]+="$p99 "
      holds=$(PML_HOME=${homes[$i]} "${bins[$i]}" describe "ab${i}_0" --json | sed -n 's/.*"accept_holds" *: *\([0-9]*\).*/\1/p')
      printf 'round %d  setup %d  %-17s %7s req/s  p50 %7.3f ms  p99 %7.3f ms  holds %s %s\n' "$round" "$i" "$row" "$rps" "$p50" "$p99" "${holds:--}" "${note:-}"
    done
  done
done
echo
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
for row in "${rows[@]}"; do
  for i in "${!specs[@]}"; do
    printf '%-17s setup %d  median p50 %7.3f ms  median p99 %7.3f ms  %s\n' "$row" "$i" \
      "$(median "${p50s[$i,$row]}")" "$(median "${p99s[$i,$row]}")" "${specs[$i]}"
  done
done
