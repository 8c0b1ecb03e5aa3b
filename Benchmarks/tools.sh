# Sourced by every benchmark (from the repo root): installs what is missing and sets `pml` to the
# binary to measure — $PML, or .build/release/pml built afresh. Usage: bench_tools <script name>.
bench_tools() {
  local name=$1
  ./scripts/setup.sh        # node, python3, curl, build dependencies (quick when all are there)
  if ! command -v wrk >/dev/null 2>&1; then
    local sudo=(); [[ $(id -u) -ne 0 ]] && sudo=(sudo)
    echo "$name: installing wrk"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends wrk >/dev/null
  fi
  if ! command -v swift >/dev/null 2>&1 && [[ -x /opt/swift/usr/bin/swift ]]; then
    export PATH=/opt/swift/usr/bin:$PATH
  fi
  pml=${PML:-$PWD/.build/release/pml}
  if [[ -z ${PML:-} ]]; then
    echo "$name: building pml (release)"
    # Incremental: never benchmark a stale binary. A static stdlib keeps the daemon from paging in
    # the unused parts of libswiftCore and libFoundationEssentials (about 3.5 MB less RSS).
    swift build -c release --static-swift-stdlib >/dev/null
  fi
}

# CPU clock ticks (utime + stime, all threads) a process has used.
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Waits until http://127.0.0.1:<port>/ answers, trying every 0.1 s, at most <tries> times (100).
wait_http() {
  for _ in $(seq "${2:-100}"); do
    curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$1/" && return 0
    sleep 0.1
  done
  return 1
}

# A/B setups for interleaved rounds: `ab_start <work dir> <apps per setup> <spec>...`, each spec
# `[VAR=value,...@]pml`: one daemon per spec (own PML_HOME, with those variables), each with
# <apps> Node hello-world apps of 2 rr workers, app j of setup i on port PORT + i*<apps> + j.
# Sets homes[i], bins[i], pids[i] (the daemon) and ports[i*<apps>+j]; `ab_stop` ends them all.
ab_start() {
  local work=$1 apps=$2 i j spec bin envs port home
  shift 2
  specs=("$@") homes=() bins=() pids=() ports=()
  cat > "$work/app.js" <<'JS'
require('http').createServer((req, res) => res.end('hello from ' + process.pid + '\n')).listen(+process.env.PORT || 8080);
JS
  for i in "${!specs[@]}"; do
    spec=${specs[$i]} envs=()
    bin=${spec##*@}
    [[ $spec == *@* ]] && IFS=, read -ra envs <<<"${spec%@*}"
    home=$work/home$i
    mkdir -p "$home"
    homes[i]=$home bins[i]=$bin
    for ((j = 0; j < apps; j++)); do
      port=$((PORT + i * apps + j))
      ports[i * apps + j]=$port
      cat > "$work/app${i}_$j.lua" <<LUA
return { name = "ab${i}_$j", script = "app.js", instances = 2, dispatch = "rr", listen = $port, env = { PORT = "$port" } }
LUA
      env ${envs[@]+"${envs[@]}"} PML_HOME="$home" "$bin" start "$work/app${i}_$j.lua" >/dev/null
    done
    pids[i]=$(cat "$home/daemon.pid")
  done
  for port in "${ports[@]}"; do
    wait_http "$port" || true
  done
  sleep 1
}

ab_stop() {
  local j
  for j in "${!homes[@]}"; do PML_HOME=${homes[$j]} "${bins[$j]}" kill >/dev/null 2>&1 || true; done
}
