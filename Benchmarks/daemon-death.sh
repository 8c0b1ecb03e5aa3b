#!/usr/bin/env bash
# Daemon-death benchmark: a Node rr cluster under steady load while the pml daemon is killed with
# SIGKILL three times and replaced by `pml update` twice. Prints the requests served, failed and
# refused, the worker pids before and after, and how long each daemon was away. Loopback only.
#
#   Benchmarks/daemon-death.sh                    # 4 workers, 5 events 2 s apart, 14 s of load
#   SPACING=3 DURATION=20 Benchmarks/daemon-death.sh
#   PML=/path/to/pml Benchmarks/daemon-death.sh   # another build (default: .build/release/pml, rebuilt first)
#
# Load: wrk, one connection per request (-H 'Connection: close'), ~5% of requests to /slow, which
# the app answers after 300 ms, so that requests are in flight at every death.
# See Benchmarks/README.md ("Daemon death") for what is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=${WORKERS:-4}
SPACING=${SPACING:-2}          # seconds between events
DURATION=${DURATION:-14}       # seconds of load (must cover 1 s + 5 x SPACING + a little)
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-16}
PORT=${PORT:-18095}
EVENTS=(kill update kill update kill)

# -- Tools --------------------------------------------------------------------------------------
source Benchmarks/tools.sh
bench_tools daemon-death.sh

# -- Scratch space, cleaned up whatever happens -------------------------------------------------
work=$(mktemp -d /tmp/pml-death.XXXXXX)
export PML_HOME=$work/pml-home
cleanup() {
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
-- ~5% of requests to /slow (300 ms), the rest to /.
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
  echo "daemon-death.sh: nothing answers on 127.0.0.1:$PORT" >&2
  return 1
}
ms_now() { date +%s%3N; }
daemon_pid() { cat "$PML_HOME/daemon.pid" 2>/dev/null || true; }
worker_pids() { "$pml" ls --json 2>>"$work/ls.err" | node -e '
  let s = ""; process.stdin.on("data", d => s += d).on("end", () =>
    console.log(JSON.parse(s).map(r => r.pid).sort((a, b) => a - b).join(" ")))'; }
# Waits until daemon.pid names a live process other than $1; prints the ms it took.
wait_successor() { # old-pid t0
  local p
  for _ in $(seq 1000); do
    p=$(daemon_pid)
    if [[ -n $p && $p != "$1" ]] && kill -0 "$p" 2>/dev/null; then echo $(( $(ms_now) - $2 )); return 0; fi
    sleep 0.01
  done
  echo "daemon-death.sh: no successor to daemon $1 within 10 s" >&2
  return 1
}

# -- Run -----------------------------------------------------------------------------------------
echo "daemon-death.sh: pml $("$pml" --version 2>/dev/null || echo '?'), $WORKERS Node workers, events ${EVENTS[*]} ${SPACING}s apart, ${DURATION}s of load"
(cd "$work" && "$pml" start web.lua >/dev/null)
wait_up
sleep 1
keeper=$(cat "$PML_HOME/keeper.pid")
pids_before=$(worker_pids)
daemons=("$(daemon_pid)")
timeout $((DURATION + 15)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s \
  -H 'Connection: close' -s "$work/load.lua" "http://127.0.0.1:$PORT/" > "$work/wrk.txt" 2>&1 &
load_pid=$!
sleep 1
gaps=()
for event in "${EVENTS[@]}"; do
  old=$(daemon_pid)
  t0=$(ms_now)
  case $event in
    kill) kill -9 "$old" ;;
    update) timeout 30 "$pml" update >/dev/null 2>&1 || { echo "daemon-death.sh: pml update failed" >&2; exit 1; } ;;
  esac
  gaps+=("$event $(wait_successor "$old" "$t0")")
  daemons+=("$(daemon_pid)")
  sleep "$SPACING"
done
wait "$load_pid" || true
: > "$work/ls.err"
pids_after=$(worker_pids)
notice=$(cat "$work/ls.err")   # what the first command after the last death printed

# wrk's summary → served, failed, refused (connect errors), read, write, timeouts, non-2xx
read -r served failed refused rd wr to n2 < <(awk '
  / requests in / { total = $1 }
  /Socket errors:/ { gsub(",", ""); c = $4; r = $6; w = $8; t = $10 }
  /Non-2xx or 3xx responses:/ { n = $5 }
  END {
    c += 0; r += 0; w += 0; t += 0; n += 0; total += 0
    printf "%d %d %d %d %d %d %d\n", total - n, c + r + w + t + n, c, r, w, t, n
  }' "$work/wrk.txt")

echo
printf '%-34s %s\n' "requests served (2xx)" "$served"
printf '%-34s %s\n' "requests failed" "$failed"
printf '%-34s %s\n' "  refused (connect errors)" "$refused"
printf '%-34s %s\n' "  read / write / timeouts / non-2xx" "$rd / $wr / $to / $n2"
printf '%-34s %s\n' "worker pids before" "$pids_before"
printf '%-34s %s\n' "worker pids after" "$pids_after"
printf '%-34s %s\n' "daemon pids" "${daemons[*]}"
printf '%-34s %s\n' "keeper pid (before / after)" "$keeper / $(cat "$PML_HOME/keeper.pid")"
printf '%-34s %s\n' "new daemon up after (ms)" "$(IFS=,; echo "${gaps[*]}" | sed 's/,/, /g')"
printf '%-34s %s\n' "next command said" "${notice:-(nothing)}"
echo
echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s -H 'Connection: close', ~5% /slow (300 ms); 'up after': from kill -9 / the start of pml update until daemon.pid names the successor"
[[ $pids_before == "$pids_after" && $failed == 0 ]] && echo "target: same worker pids, 0 failed, 0 refused: met" \
  || echo "target: same worker pids, 0 failed, 0 refused: NOT met"
