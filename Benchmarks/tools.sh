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
