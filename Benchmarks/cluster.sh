#!/usr/bin/env bash
# Cluster-mode benchmark: pml's dispatch modes against Node's own cluster module, on 127.0.0.1,
# all in one run, measured in interleaved rounds.
#
#   Benchmarks/cluster.sh                          # 2 workers, 3 rounds of 5 s per setup
#   WORKERS=4 ROUNDS=2 DURATION=4 Benchmarks/cluster.sh
#
# Every setup runs the same Node app (a hello world on /, and /slow: 300 ms of synchronous work,
# for the mixed load), unchanged, WORKERS workers each, all started at once on their own ports:
#   cluster-rr      Node cluster, SCHED_RR (the primary accepts and passes fds)
#   cluster-none    Node cluster, SCHED_NONE (workers accept on one shared socket)
#   pml-rr          pml, dispatch = "rr" (the daemon accepts and passes fds)
#   pml-least-busy  pml, dispatch = "least-busy"
#   pml-reuseport   pml, dispatch = "reuseport" (a SO_REUSEPORT socket per worker, held by pml)
# Load generators run in a session of their own (setsid): with the kernel's autogroup scheduling
# (on here), a client in the same session as the server it loads is scheduled against it very
# differently (3x on this machine) than one in another session, and pml's workers have sessions
# of their own. Loads: wrk keep-alive (once per setup); wrk one connection per request (-H 'Connection: close',
# ROUNDS rounds, setups interleaved within each round); a 2 s wrk run whose responses are
# tallied per worker pid (distribution); and an open-loop mix of RATE req/s with 5 % to /slow
# (p50/p99 of the fast requests). See Benchmarks/README.md for the columns and targets.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=${WORKERS:-2}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-50}
PORT=${PORT:-18080}         # setups use PORT .. PORT+4 (keep them below 32768)
RATE=${RATE:-40}            # mixed load: requests per second, every 20th to /slow
MIX_SECONDS=${MIX_SECONDS:-8}
IDLE_WORKERS=4              # the idle-RSS comparison is always with 4 workers

# -- Tools --------------------------------------------------------------------------------------
source Benchmarks/tools.sh
bench_tools cluster.sh

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

# The example's hello world, its port from $PORT, plus /slow (300 ms of synchronous work: what
# piles up on a worker) for the mixed load.
cat > "$work/app.js" <<'EOF'
require('http').createServer((req, res) => {
  if (req.url === '/slow') { const end = Date.now() + 300; while (Date.now() < end); }
  res.end('hello from ' + process.pid + '\n');
}).listen(+process.env.PORT || 8080);
EOF
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
# Open-loop mixed load: RATE requests a second (a new connection each), every 20th to /slow;
# prints "fast_count fast_p50 fast_p99 slow_count slow_p99 errors" (ms).
cat > "$work/mix.js" <<'EOF'
const http = require('http');
const [port, rate, seconds] = process.argv.slice(2).map(Number);
const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
const fast = [], slow = [];
let n = 0, errors = 0, outstanding = 0, stopped = false;
const start = Date.now();
const tick = setInterval(() => {
  if (Date.now() - start >= seconds * 1000) { clearInterval(tick); stopped = true; if (!outstanding) report(); return; }
  const isSlow = n++ % 20 === 19;
  const t0 = process.hrtime.bigint();
  outstanding++;
  const done = (ok) => {
    if (ok) (isSlow ? slow : fast).push(Number(process.hrtime.bigint() - t0) / 1e6); else errors++;
    if (--outstanding === 0 && stopped) report();
  };
  const req = http.get({ host: '127.0.0.1', port, path: isSlow ? '/slow' : '/', agent }, (res) => {
    res.resume();
    res.on('end', () => done(res.statusCode === 200));
  });
  req.on('error', () => done(false));
  req.setTimeout(10000, () => req.destroy());
}, 1000 / rate);
function pct(a, p) { if (!a.length) return 0; a.sort((x, y) => x - y); return a[Math.min(a.length - 1, Math.floor(a.length * p))]; }
function report() {
  console.log([fast.length, pct(fast, 0.5).toFixed(2), pct(fast, 0.99).toFixed(2), slow.length, pct(slow, 0.99).toFixed(2), errors].join(' '));
  process.exit(0);
}
EOF
# Per-worker tally of the responses' "hello from <pid>" (wrk Lua; only in the short distribution run).
cat > "$work/tally.lua" <<'EOF'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function response(status, headers, body)
  local pid = body:match("hello from (%d+)")
  if pid then counts[pid] = (counts[pid] or 0) + 1 end
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for pid, n in pairs(c) do total[pid] = (total[pid] or 0) + n end
  end
  local parts = {}
  for pid, n in pairs(total) do table.insert(parts, n) end
  table.sort(parts, function(a, b) return a > b end)
  local sum = 0
  for _, n in ipairs(parts) do sum = sum + n end
  local shares = {}
  for _, n in ipairs(parts) do table.insert(shares, string.format("%.0f%%", 100 * n / sum)) end
  io.write("TALLY " .. table.concat(shares, "/") .. "\n")
end
EOF
app_file() { # name instances dispatch port
  cat > "$work/$1.lua" <<EOF
return { name = "$1", script = "app.js", instances = $2, dispatch = "$3", listen = $4, env = { PORT = "$4" } }
EOF
}

# -- Helpers -------------------------------------------------------------------------------------
wait_up() { # port: until it answers (10 s)
  for _ in $(seq 100); do
    if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$1/" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "cluster.sh: nothing answers on 127.0.0.1:$1" >&2
  return 1
}
cpu_ticks() { # pids...: utime + stime summed
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$t"
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
to_ms() { # wrk latency ("812.00us", "1.23ms", "1.01s") to ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0;
                         else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'
}
hz=$(getconf CLK_TCK)

declare -A port_of sup_of workers_of
setups=(cluster-rr cluster-none pml-rr pml-least-busy pml-reuseport)

results=$work/results.tsv   # setup load round rps p50 p99 errors requests sup_us worker_us
: > "$results"

# wrk_run <setup> <load: keepalive|close> <round>
wrk_run() {
  local setup=$1 load=$2 round=$3 out
  local args=(-t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency)
  [[ $load == close ]] && args+=(-H 'Connection: close')
  local sup=${sup_of[$setup]} wk=${workers_of[$setup]}
  # shellcheck disable=SC2086
  local s0 w0 s1 w1; s0=$(cpu_ticks $sup); w0=$(cpu_ticks $wk)
  out=$(setsid -w wrk "${args[@]}" "http://127.0.0.1:${port_of[$setup]}/")
  # shellcheck disable=SC2086
  s1=$(cpu_ticks $sup); w1=$(cpu_ticks $wk)
  local rps p50 p99 non2xx sockerr requests
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out"); non2xx=${non2xx:-0}
  sockerr=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' <<<"$out"); sockerr=${sockerr:-0}
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  local sup_us worker_us
  sup_us=$(awk -v t=$((s1 - s0)) -v hz="$hz" -v n="${requests:-0}" 'BEGIN { printf "%.1f", n ? t / hz / n * 1e6 : 0 }')
  worker_us=$(awk -v t=$((w1 - w0)) -v hz="$hz" -v n="${requests:-0}" 'BEGIN { printf "%.1f", n ? t / hz / n * 1e6 : 0 }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$setup" "$load" "$round" "$rps" "$p50" "$p99" \
    "$((non2xx + sockerr))" "$requests" "$sup_us" "$worker_us" >> "$results"
  printf '  %-15s %-9s r%s %8.0f req/s  p99 %7s ms  errors %s  CPU/req: supervisor %s us, workers %s us\n' \
    "$setup" "$load" "$round" "$rps" "$p99" "$((non2xx + sockerr))" "$sup_us" "$worker_us"
}

echo "cluster.sh: $WORKERS workers, wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, $ROUNDS rounds, ports $PORT-$((PORT + 4)), $(node --version), $(nproc) CPUs"

# -- Idle memory, 4 workers each, before any load ------------------------------------------------
PORT=$PORT WORKERS=$IDLE_WORKERS POLICY=rr node "$work/cluster.js" >/dev/null 2>&1 &
idle_node=$!; pids+=("$idle_node")
wait_up "$PORT"; sleep 1
node_master_rss=$(rss_kb "$idle_node")
kill "$idle_node"; wait "$idle_node" 2>/dev/null || true
app_file idle "$IDLE_WORKERS" rr "$((PORT + 1))"
"$pml" start "$work/idle.lua" >/dev/null
wait_up "$((PORT + 1))"; sleep 1
daemon_pid=$(cat "$PML_HOME/daemon.pid")
pml_daemon_rss=$(rss_kb "$daemon_pid")
"$pml" delete idle >/dev/null

# -- Every setup up at once ---------------------------------------------------------------------
i=0
for policy in rr none; do
  port=$((PORT + i)); i=$((i + 1))
  PORT=$port WORKERS=$WORKERS POLICY=$policy node "$work/cluster.js" >/dev/null 2>&1 &
  pids+=("$!")
  port_of[cluster-$policy]=$port; sup_of[cluster-$policy]=$!
done
for dispatch in rr least-busy reuseport; do
  port=$((PORT + i)); i=$((i + 1))
  app_file "pml-$dispatch" "$WORKERS" "$dispatch" "$port"
  "$pml" start "$work/pml-$dispatch.lua" >/dev/null
  port_of[pml-$dispatch]=$port; sup_of[pml-$dispatch]=$daemon_pid
done
for s in "${setups[@]}"; do wait_up "${port_of[$s]}"; done
sleep 1   # every worker listening
for s in cluster-rr cluster-none; do workers_of[$s]=$(pgrep -P "${sup_of[$s]}" | tr '\n' ' '); done
for d in rr least-busy reuseport; do
  workers_of[pml-$d]=$("$pml" ls --json | node -e "
    const rows = JSON.parse(require('fs').readFileSync(0, 'utf8'));
    console.log(rows.filter((r) => r.name === 'pml-$d' && r.pid).map((r) => r.pid).join(' '))")
done

# -- Throughput ---------------------------------------------------------------------------------
echo "keep-alive, once per setup:"
for s in "${setups[@]}"; do wrk_run "$s" keepalive 1; done
echo "one connection per request, $ROUNDS interleaved rounds:"
for round in $(seq "$ROUNDS"); do
  for s in "${setups[@]}"; do wrk_run "$s" close "$round"; done
done

# -- Distribution over the workers (2 s, close load, responses tallied by pid) --------------------
declare -A dist
for s in "${setups[@]}"; do
  dist[$s]=$(setsid -w wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H 'Connection: close' -s "$work/tally.lua" \
    "http://127.0.0.1:${port_of[$s]}/" | awk '/^TALLY/ {print $2}')
done

# -- 5 % slow requests -------------------------------------------------------------------------
mix=$work/mix.tsv   # setup fast_count fast_p50 fast_p99 slow_count slow_p99 errors
: > "$mix"
echo "mixed load: $RATE req/s for ${MIX_SECONDS}s each, every 20th to /slow (300 ms of CPU):"
for s in "${setups[@]}"; do
  line=$(setsid -w node "$work/mix.js" "${port_of[$s]}" "$RATE" "$MIX_SECONDS")
  printf '%s %s\n' "$s" "$line" | tr ' ' '\t' >> "$mix"
  # shellcheck disable=SC2086
  printf '  %-15s fast: %s requests, p50 %s ms, p99 %s ms; slow: %s requests, p99 %s ms; errors %s\n' "$s" $line
done

# -- Report ------------------------------------------------------------------------------------
echo
awk -F'\t' -v dists="$(for s in "${setups[@]}"; do printf '%s=%s;' "$s" "${dist[$s]}"; done)" '
  BEGIN { n = split(dists, d, ";"); for (i = 1; i <= n; i++) { split(d[i], kv, "="); dist[kv[1]] = kv[2] } }
  { key = $1 SUBSEP $2
    if (!(key in seen)) { seen[key] = 1; order[++k] = key }
    req[key] += $8; secs[key] += $8 / ($4 > 0 ? $4 : 1); err[key] += $7
    if (!(key in lo) || $4 < lo[key]) lo[key] = $4
    if (!(key in hi) || $4 > hi[key]) hi[key] = $4
    p99[key] = (p99[key] == "" ? $6 : p99[key] "," $6)
    sup[key] += $9 * $8; wk[key] += $10 * $8 }
  END {
    for (i = 1; i <= k; i++) { split(order[i], f, SUBSEP); rate[order[i]] = secs[order[i]] > 0 ? req[order[i]] / secs[order[i]] : 0 }
    printf "%-15s %-9s %8s %15s %8s %8s %12s %10s %10s %12s\n", "setup", "load", "req/s", "rounds min-max", "x c-rr", "x c-none", "sup us/req", "wk us/req", "errors", "p99 ms"
    for (i = 1; i <= k; i++) {
      key = order[i]; split(key, f, SUBSEP)
      crr = rate["cluster-rr" SUBSEP f[2]]; cnone = rate["cluster-none" SUBSEP f[2]]
      printf "%-15s %-9s %8.0f %7.0f-%-7.0f %8.2f %8.2f %12.1f %10.1f %10d %12s\n", f[1], f[2], rate[key], lo[key], hi[key],
        crr ? rate[key] / crr : 0, cnone ? rate[key] / cnone : 0, req[key] ? sup[key] / req[key] : 0, req[key] ? wk[key] / req[key] : 0, err[key], p99[key]
    }
    print ""
    print "share of responses per worker (2 s, close load):"
    for (i = 1; i <= k; i++) { split(order[i], f, SUBSEP); if (f[2] == "close") printf "  %-15s %s\n", f[1], dist[f[1]] }
  }' "$results"
echo
echo "mixed load ($RATE req/s, 5 % /slow of 300 ms CPU, ${MIX_SECONDS}s each):"
awk '{ printf "  %-15s fast p50 %7s ms  fast p99 %7s ms  slow p99 %7s ms  errors %s\n", $1, $3, $4, $6, $7 }' "$mix"
echo
printf 'idle RSS with %d workers: pml daemon %.1f MB, Node cluster primary %.1f MB\n' \
  "$IDLE_WORKERS" "$(awk -v k="$pml_daemon_rss" 'BEGIN{print k/1024}')" "$(awk -v k="$node_master_rss" 'BEGIN{print k/1024}')"

# -- Targets (Benchmarks/README.md) --------------------------------------------------------------
echo
awk -F'\t' -v rss="$pml_daemon_rss" -v mixfile="$mix" '
  { req[$1, $2] += $8; secs[$1, $2] += $8 / ($4 > 0 ? $4 : 1); sup[$1, $2] += $9 * $8 }
  function rate(s, l) { return secs[s, l] > 0 ? req[s, l] / secs[s, l] : 0 }
  function verdict(ok) { return ok ? "met" : "NOT met" }
  END {
    while ((getline line < mixfile) > 0) { split(line, m, "\t"); fastp99[m[1]] = m[4] }
    rp = rate("pml-reuseport", "close"); none = rate("cluster-none", "close"); crr = rate("cluster-rr", "close"); rr = rate("pml-rr", "close")
    if (!rp || !none || !crr || !rr) { print "targets: missing measurements"; exit }
    printf "target: reuseport close >= 0.95x cluster-none (%.2fx): %s\n", rp / none, verdict(rp >= 0.95 * none)
    printf "target: reuseport close >= 1.60x cluster-rr (%.2fx): %s\n", rp / crr, verdict(rp >= 1.6 * crr)
    printf "target: pml-rr close >= 1.30x cluster-rr (%.2fx): %s\n", rr / crr, verdict(rr >= 1.3 * crr)
    us = req["pml-rr", "close"] ? sup["pml-rr", "close"] / req["pml-rr", "close"] : 0
    printf "target: pml daemon CPU per rr connection <= 8 us (%.1f us): %s\n", us, verdict(us <= 8)
    printf "target: least-busy fast p99 < rr fast p99 under 5%% slow (%s vs %s ms): %s\n",
      fastp99["pml-least-busy"], fastp99["pml-rr"], verdict(fastp99["pml-least-busy"] + 0 < fastp99["pml-rr"] + 0)
    printf "target: pml daemon idle RSS <= 15 MB (%.1f MB): %s\n", rss / 1024, verdict(rss <= 15 * 1024)
  }' "$results"
