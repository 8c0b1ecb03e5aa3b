#!/usr/bin/env bash
# Cluster-mode benchmark: pml rr against Node's own cluster module, on 127.0.0.1, in one run.
#
#   Benchmarks/cluster.sh                    # 2 workers, 10 s per measurement
#   WORKERS=4 DURATION=5 Benchmarks/cluster.sh
#
# Every setup runs the same Node hello world (examples/cluster-node/app.js, port from $PORT):
#   node-single   one Node process
#   cluster-rr    Node cluster, cluster.SCHED_RR (the primary accepts and passes fds)
#   cluster-none  Node cluster, cluster.SCHED_NONE (workers accept on a shared socket)
#   pml-rr        pml start with instances = WORKERS (pml accepts and passes fds)
# Each is measured with wrk twice: keep-alive, and one connection per request
# (-H 'Connection: close'). See Benchmarks/README.md for the columns.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

WORKERS=${WORKERS:-2}
DURATION=${DURATION:-10}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-50}
PORT=${PORT:-18080}
IDLE_WORKERS=4            # the idle-RSS comparison is always with 4 workers

# -- Tools --------------------------------------------------------------------------------------
./scripts/setup.sh        # node, python3, build dependencies
if ! command -v wrk >/dev/null 2>&1; then
  sudo=(); [[ $(id -u) -ne 0 ]] && sudo=(sudo)
  echo "cluster.sh: installing wrk"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
if ! command -v swift >/dev/null 2>&1 && [[ -x /opt/swift/usr/bin/swift ]]; then
  export PATH=/opt/swift/usr/bin:$PATH
fi
pml=${PML:-$root/.build/release/pml}   # PML= to benchmark another build
if [[ -z ${PML:-} ]]; then
  echo "cluster.sh: building pml (release)"
  # Incremental: never benchmark a stale binary. A static stdlib keeps the daemon from paging in
  # the unused parts of libswiftCore and libFoundationEssentials (about 3.5 MB less RSS).
  swift build -c release --static-swift-stdlib >/dev/null
fi

# -- Scratch space, cleaned up whatever happens -------------------------------------------------
work=$(mktemp -d /tmp/pml-bench.XXXXXX)
export PML_HOME=$work/pml-home
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$pml" kill >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# The example itself, with its port taken from $PORT so that it can share the machine.
sed "s/listen(8080)/listen(+process.env.PORT || 8080)/" examples/cluster-node/app.js > "$work/app.js"
cat > "$work/cluster.js" <<'EOF'
// Node's cluster module around the same app.js: POLICY=rr|none, WORKERS=n.
const cluster = require('cluster');
cluster.schedulingPolicy = process.env.POLICY === 'none' ? cluster.SCHED_NONE : cluster.SCHED_RR;
if (cluster.isPrimary) {
  for (let i = 0; i < Number(process.env.WORKERS); i++) cluster.fork();
} else {
  require('./app.js');
}
EOF
app_file() { # name instances
  cat > "$work/$1.lua" <<EOF
return { name = "$1", script = "app.js", instances = $2, env = { PORT = "$PORT" } }
EOF
}

# -- Helpers -------------------------------------------------------------------------------------
wait_up() { # until the port answers (10 s)
  for _ in $(seq 100); do
    if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "cluster.sh: nothing answers on 127.0.0.1:$PORT" >&2
  return 1
}
wait_down() { # until the port is free again (10 s)
  for _ in $(seq 100); do
    if ! curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime of one process
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
to_ms() { # wrk latency ("812.00us", "1.23ms", "1.01s") to ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0;
                         else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'
}
hz=$(getconf CLK_TCK)

results=$work/results.tsv   # setup load rps p50 p99 non2xx sockerr requests
: > "$results"
declare -A cpu_per_conn

# wrk_run <setup> <load: keepalive|close> [supervisor pid]
wrk_run() {
  local setup=$1 load=$2 sup=${3:-} out before after
  local args=(-t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency)
  [[ $load == close ]] && args+=(-H 'Connection: close')
  [[ -n $sup ]] && before=$(cpu_ticks "$sup")
  out=$(wrk "${args[@]}" "http://127.0.0.1:$PORT/")
  [[ -n $sup ]] && after=$(cpu_ticks "$sup")
  local rps p50 p99 non2xx sockerr requests
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out"); non2xx=${non2xx:-0}
  sockerr=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' <<<"$out"); sockerr=${sockerr:-0}
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$setup" "$load" "$rps" "$p50" "$p99" "$non2xx" "$sockerr" "$requests" >> "$results"
  if [[ -n $sup && $load == close && ${requests:-0} -gt 0 ]]; then
    cpu_per_conn[$setup]=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$requests" 'BEGIN { printf "%.1f", t / hz / n * 1e6 }')
  fi
  printf '  %-13s %-10s %10s req/s  p50 %s ms  p99 %s ms  errors %s+%s\n' "$setup" "$load" "$rps" "$p50" "$p99" "$non2xx" "$sockerr"
}

start_bg() { # command...: starts it in the background, sets $bg_pid
  "$@" >"$work/bg.log" 2>&1 &
  bg_pid=$!
  pids+=("$bg_pid")
}
stop_bg() {
  kill "$bg_pid" 2>/dev/null || true
  wait "$bg_pid" 2>/dev/null || true
  wait_down
}

echo "cluster.sh: $WORKERS workers, wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s on 127.0.0.1:$PORT, $(node --version), $(nproc) CPUs"

# -- Idle memory, 4 workers each, before any load ------------------------------------------------
PORT=$PORT WORKERS=$IDLE_WORKERS POLICY=rr start_bg node "$work/cluster.js"
wait_up; sleep 1
node_master_rss=$(rss_kb "$bg_pid")
stop_bg

app_file idle "$IDLE_WORKERS"
"$pml" start "$work/idle.lua" >/dev/null
wait_up; sleep 1
daemon_pid=$(cat "$PML_HOME/daemon.pid")
pml_daemon_rss=$(rss_kb "$daemon_pid")
"$pml" delete idle >/dev/null
wait_down

# -- Throughput --------------------------------------------------------------------------------
echo "measuring (each line is one wrk run of ${DURATION}s):"
PORT=$PORT start_bg node "$work/app.js"
wait_up
wrk_run node-single keepalive
wrk_run node-single close
stop_bg

for policy in rr none; do
  PORT=$PORT WORKERS=$WORKERS POLICY=$policy start_bg node "$work/cluster.js"
  wait_up; sleep 0.5    # every worker up
  wrk_run "cluster-$policy" keepalive "$bg_pid"
  wrk_run "cluster-$policy" close "$bg_pid"
  stop_bg
done

app_file bench "$WORKERS"
"$pml" start "$work/bench.lua" >/dev/null
wait_up; sleep 0.5
daemon_pid=$(cat "$PML_HOME/daemon.pid")
wrk_run pml-rr keepalive "$daemon_pid"
wrk_run pml-rr close "$daemon_pid"
"$pml" delete bench >/dev/null

# -- Report ------------------------------------------------------------------------------------
echo
awk -F'\t' -v workers="$WORKERS" '
  { setup[NR] = $1; load[NR] = $2; rps[NR] = $3; p50[NR] = $4; p99[NR] = $5; n2[NR] = $6; se[NR] = $7
    if ($1 == "cluster-rr") crr[$2] = $3
    if ($1 == "node-single") single[$2] = $3 }
  END {
    printf "%-13s %-10s %10s %9s %9s %8s %8s %8s %8s\n", "setup", "load", "req/s", "p50 ms", "p99 ms", "non-2xx", "sockerr", "x c-rr", "x single"
    for (i = 1; i <= NR; i++) {
      r1 = crr[load[i]] > 0 ? sprintf("%.2f", rps[i] / crr[load[i]]) : "-"
      r2 = single[load[i]] > 0 ? sprintf("%.2f", rps[i] / single[load[i]]) : "-"
      printf "%-13s %-10s %10.0f %9s %9s %8s %8s %8s %8s\n", setup[i], load[i], rps[i], p50[i], p99[i], n2[i], se[i], r1, r2
    }
  }' "$results"

echo
printf 'supervisor CPU per dispatched connection (close load): pml daemon %s us, Node cluster-rr primary %s us, cluster-none primary %s us\n' \
  "${cpu_per_conn[pml-rr]:--}" "${cpu_per_conn[cluster-rr]:--}" "${cpu_per_conn[cluster-none]:--}"
printf 'idle RSS with %d workers: pml daemon %.1f MB, Node cluster primary %.1f MB\n' \
  "$IDLE_WORKERS" "$(awk -v k="$pml_daemon_rss" 'BEGIN{print k/1024}')" "$(awk -v k="$node_master_rss" 'BEGIN{print k/1024}')"

# -- Targets (Benchmarks/README.md) --------------------------------------------------------------
echo
awk -F'\t' -v rss="$pml_daemon_rss" '
  $1 == "pml-rr" { prps[$2] = $3; pp99[$2] = $5 }
  $1 == "cluster-rr" { crps[$2] = $3; cp99[$2] = $5 }
  function verdict(ok) { return ok ? "met" : "NOT met" }
  END {
    if (!crps["close"] || !prps["close"]) { print "targets: missing measurements"; exit }
    printf "target: pml-rr close >= 1.30x cluster-rr (%.2fx) and p99 no worse (%s vs %s ms): %s\n",
      prps["close"] / crps["close"], pp99["close"], cp99["close"],
      verdict(prps["close"] >= 1.3 * crps["close"] && pp99["close"] <= cp99["close"])
    printf "target: pml-rr keepalive >= 1.00x cluster-rr (%.2fx): %s\n",
      prps["keepalive"] / crps["keepalive"], verdict(prps["keepalive"] >= crps["keepalive"])
    printf "target: pml daemon idle RSS <= 15 MB (%.1f MB): %s\n", rss / 1024, verdict(rss <= 15 * 1024)
  }' "$results"
