#!/usr/bin/env bash
# Renders docs/dashboard.png: a 4-worker Node cluster under load in a throw-away PML_HOME, a crash,
# a scale up and down and a reload on its timeline, screenshotted with headless Chromium
# (scripts/browser.py). Takes about a minute. PML_BIN=path uses that pml instead of the debug build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

./scripts/setup.sh
if [[ -z ${PML_BIN:-} ]]; then
  if ! command -v swift >/dev/null 2>&1 && [[ -x /opt/swift/usr/bin/swift ]]; then export PATH=/opt/swift/usr/bin:$PATH; fi
  swift build >/dev/null
  PML_BIN=$root/.build/debug/pml
fi
pml=$PML_BIN
out=${1:-$root/docs/dashboard.png}
seconds=${DEMO_SECONDS:-50}   # the events happen over this time; the load lasts until the screenshot

export PML_HOME
PML_HOME=$(mktemp -d /tmp/pml-screenshot.XXXXXX)
load_pid=
cleanup() {
  [[ -n $load_pid ]] && kill "$load_pid" 2>/dev/null || true
  "$pml" kill >/dev/null 2>&1 || true
  rm -rf "$PML_HOME"
}
trap cleanup EXIT

# A free port below the ephemeral range (load leaves TIME_WAIT sockets there).
port=$(python3 -c 'import socket,random
for p in random.sample(range(20000, 30000), 200):
    s = socket.socket()
    try: s.bind(("127.0.0.1", p)); print(p); break
    except OSError: pass')

# The app file is copied with its port written in, so that a reload (which reads it again) keeps it.
cp "$root/scripts/dashboard-demo/"*.js "$PML_HOME/"
sed "s/__PORT__/$port/" "$root/scripts/dashboard-demo/apps.lua" > "$PML_HOME/apps.lua"
"$pml" start "$PML_HOME/apps.lua" >/dev/null
for _ in $(seq 1 100); do curl -s -m 1 "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.1; done
url=$("$pml" dashboard)

node "$root/scripts/dashboard-demo/load.js" "$port" $((seconds * 2)) 6 &
load_pid=$!
# What a deploy looks like: a worker dies, the cluster grows (a button on the dashboard) and
# shrinks, a rolling reload.
sleep $((seconds / 5))
victim=$("$pml" ls --json | python3 -c 'import json,sys; print(next(r["pid"] for r in json.load(sys.stdin) if r["name"] == "api" and r["instance"] == 2))')
kill -9 "$victim"
sleep $((seconds / 6))
python3 "$root/scripts/browser.py" "$url" "wait:document.querySelector('button[data-action=\"scale+1\"][data-app=\"api\"]')" \
  "click:button[data-action=\"scale+1\"][data-app=\"api\"]" "wait:document.querySelector('#timeline li[data-kind=\"scale\"]')"
sleep $((seconds / 6))
"$pml" scale api -1 >/dev/null
sleep $((seconds / 6))
"$pml" reload api >/dev/null
sleep 5
# Taken while the load still runs, so the graphs end at their live values.
python3 "$root/scripts/browser.py" --dark --size 1600x1000 "$url#range=1" \
  "wait:document.querySelectorAll('polyline[data-points]').length > 4 && document.querySelectorAll('#logs .l').length > 5" \
  "sleep:1200" "screenshot:$out"
kill "$load_pid" 2>/dev/null || true
wait "$load_pid" 2>/dev/null || true
load_pid=
echo "wrote $out"
