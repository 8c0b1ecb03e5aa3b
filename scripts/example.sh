#!/usr/bin/env bash
# Installs what is missing, builds pml (release), starts the example cluster (examples/cluster-node:
# an unchanged Node hello world, 4 workers behind port 8080), shows `pml ls` and a few answers.
# PML_SCRATCH_PATH=dir uses that build folder instead of .build.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
if ! command -v swift >/dev/null 2>&1 && [[ -x /opt/swift/usr/bin/swift ]]; then
  export PATH=/opt/swift/usr/bin:$PATH
fi

build_args=(-c release --static-swift-stdlib)   # self-contained binary, smaller daemon RSS
if [[ -n ${PML_SCRATCH_PATH:-} ]]; then build_args+=(--scratch-path "$PML_SCRATCH_PATH"); fi
swift build "${build_args[@]}"
pml="$(swift build "${build_args[@]}" --show-bin-path)/pml"

# Start afresh if an earlier run left the app behind.
"$pml" delete web >/dev/null 2>&1 || true
"$pml" start examples/cluster-node/app.lua >/dev/null
# The workers ask pml for port 8080 as they start; wait (bounded) until it answers.
for _ in $(seq 1 100); do
  if curl -s -m 1 http://127.0.0.1:8080/ >/dev/null 2>&1; then break; fi
  sleep 0.1
done
"$pml" ls
echo
for _ in 1 2 3 4 5 6 7 8; do curl -s -m 2 http://127.0.0.1:8080/; done

cat <<EOT

The example cluster runs under pml (state in ${PML_HOME:-~/.pml}): four Node workers behind
port 8080, each connection handed to the next worker in turn. Try:
  curl localhost:8080                    # a different pid each time
  kill -9 <a pid above>; $pml ls         # a new pid, restarts 1; requests keep being served
  $pml scale web 6                       # and back: $pml scale web 2
  $pml logs web                          # streams new lines; Ctrl-C stops (--nostream exits)
  $pml describe web
  $pml kill                              # stop everything
EOT
