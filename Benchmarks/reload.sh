#!/usr/bin/env bash
# Reload benchmark: requests lost while `pml reload web --graceful` replaces 4 Node workers
# under steady load, against Node's cluster module reloaded the way PM2 does it (fork the new
# worker, kill the old one as soon as the new one listens, no draining). Loopback only.
#
#   Benchmarks/reload.sh                       # 4 workers, 3 reloads 2 s apart, 12 s of load each
#   DURATION=8 RELOADS=3 Benchmarks/reload.sh
#   PML=/path/to/pml Benchmarks/reload.sh      # another build (default: .build/release/pml, rebuilt first)
#
# Load: wrk, one connection per request (-H 'Connection: close'), ~5% of requests to /slow,
# which the app answers after 300 ms, so that some requests are in flight at every reload.
# See Benchmarks/README.md ("Reload") for what is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

WORKERS=${WORKERS:-4}
RELOADS=${RELOADS:-3}
SPACING=${SPACING:-2}          # seconds between reloads
DURATION=${DURATION:-12}       # seconds of load per setup (must cover 1 s + RELOADS x (reload + SPACING))
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-16}
PORT=${PORT:-18090}

# -- Tools --------------------------------------------------------------------------------------
source Benchmarks/tools.sh
bench_tools reload.sh

# -- Scratch space, cleaned up whatever happens -------------------------------------------------
work=$(mktemp -d /tmp/pml-reload.XXXXXX)
export PML_HOME=$work/pml-home
primary=
cleanup() {
  [[ -n $primary ]] && kill "$primary" 2>/dev/null || true
  "$pml" kill >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/app.js" <<'EOF'
// Hello world; /slow answers after 300 ms.
const http = require('http');
http.createServer((req, res) => {
  const reply = () => res.end('hello from ' + process.pid + '\n');
  if (req.url === '/slow') setTimeout(reply, 300); else reply();
}).listen(Number(process.env.PORT));
EOF
cat > "$work/web.lua" <<EOF
return { name = "web", script = "app.js", instances = $WORKERS, listen = $PORT, env = { PORT = "$PORT" } }
EOF
cat > "$work/load.lua" <<'EOF'
-- ~5% of requests to /slow (300 ms), the rest to /. The requests are built in init(), once
-- wrk has set the Host and Connection headers (built at load time they would lack them).
local fast, slow
init = function(args)
  math.randomseed(os.time())
  fast, slow = wrk.format("GET", "/"), wrk.format("GET", "/slow")
end
request = function()
  if math.random(100) <= 5 then return slow end
  return fast
end
EOF

# -- Helpers -------------------------------------------------------------------------------------
wait_up() { # until the port answers (15 s)
  for _ in $(seq 150); do
    if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "reload.sh: nothing answers on 127.0.0.1:$PORT" >&2
  return 1
}
ms_now() { date +%s%3N; }

# wrk's summary → "served failed connect read write timeout non2xx"
summarize() { # wrk-output-file
  awk '
    / requests in / { total = $1 }
    /Socket errors:/ { gsub(",", ""); c = $4; r = $6; w = $8; t = $10 }
    /Non-2xx or 3xx responses:/ { n = $5 }
    END {
      c += 0; r += 0; w += 0; t += 0; n += 0; total += 0
      printf "%d %d %d %d %d %d %d\n", total - n, c + r + w + t + n, c, r, w, t, n
    }' "$1"
}

start_load() { # output file
  timeout $((DURATION + 15)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s \
    -H 'Connection: close' -s "$work/load.lua" "http://127.0.0.1:$PORT/" > "$1" 2>&1 &
  load_pid=$!
}

# -- pml ----------------------------------------------------------------------------------------
echo "reload.sh: pml $("$pml" --version 2>/dev/null || echo '?'), $WORKERS Node workers, $RELOADS reloads ${SPACING}s apart, ${DURATION}s of load"
(cd "$work" && "$pml" start web.lua >/dev/null)
wait_up
sleep 1
start_load "$work/wrk-pml.txt"
sleep 1
pml_durations=()
pml_reported=()
for i in $(seq "$RELOADS"); do
  t0=$(ms_now)
  out=$(timeout 60 "$pml" reload web --graceful 2>&1) || { echo "reload.sh: pml reload failed: $out" >&2; exit 1; }
  t1=$(ms_now)
  pml_durations+=("$((t1 - t0))")
  pml_reported+=("$(sed -n 's/.* started in \([0-9]*\) ms.*/\1/p' <<<"$out" | head -1)")
  sleep "$SPACING"
done
wait "$load_pid" || true
"$pml" kill >/dev/null 2>&1 || true
read -r p_served p_failed p_conn p_read p_write p_timeout p_non2xx < <(summarize "$work/wrk-pml.txt")

# -- Node cluster, PM2-style reload ---------------------------------------------------------------
for _ in $(seq 50); do # the port is free again
  curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/" 2>/dev/null || break
  sleep 0.1
done
WORKERS=$WORKERS PORT=$PORT APP="$work/app.js" node "$root/Benchmarks/reload-cluster.js" > "$work/cluster.out" 2>&1 &
primary=$!
wait_up
sleep 1
start_load "$work/wrk-cluster.txt"
sleep 1
c_wall=()
for i in $(seq "$RELOADS"); do
  t0=$(ms_now)
  kill -USR2 "$primary"
  for _ in $(seq 600); do # up to 60 s
    [[ $(grep -c '^reload ' "$work/cluster.out" || true) -ge $i ]] && break
    sleep 0.05
  done
  t1=$(ms_now)
  c_wall+=("$((t1 - t0))")
  sleep "$SPACING"
done
mapfile -t c_durations < <(sed -n 's/^reload \([0-9]*\) ms$/\1/p' "$work/cluster.out")
wait "$load_pid" || true
kill "$primary" 2>/dev/null || true
primary=
read -r c_served c_failed c_conn c_read c_write c_timeout c_non2xx < <(summarize "$work/wrk-cluster.txt")

# -- Report -------------------------------------------------------------------------------------
for side in pml:$p_served cluster:$c_served; do
  [[ ${side#*:} -gt 0 ]] || echo "reload.sh: warning: no 2xx answers for ${side%%:*}; see the wrk output above" >&2
done
join() { local IFS=,; echo "$*" | sed 's/,/, /g'; }
printf '\n%-34s %-30s %-30s\n' "" "pml reload --graceful" "node cluster, PM2-style"
printf '%-34s %-30s %-30s\n' "requests served (2xx)" "$p_served" "$c_served"
printf '%-34s %-30s %-30s\n' "requests failed" "$p_failed" "$c_failed"
printf '%-34s %-30s %-30s\n' "  connect / read / write errors" "$p_conn / $p_read / $p_write" "$c_conn / $c_read / $c_write"
printf '%-34s %-30s %-30s\n' "  timeouts / non-2xx" "$p_timeout / $p_non2xx" "$c_timeout / $c_non2xx"
printf '%-34s %-30s %-30s\n' "reload durations (ms)" "$(join "${pml_durations[@]}")" "$(join "${c_wall[@]}")"
printf '%-34s %-30s %-30s\n' "  as each reports them (ms)" "$(join "${pml_reported[@]}")" "$(join "${c_durations[@]}")"
echo
echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s -H 'Connection: close', ~5% /slow (300 ms); durations: wall clock from \`pml reload\` start to its exit / from SIGUSR2 to the primary's 'reload' line"
