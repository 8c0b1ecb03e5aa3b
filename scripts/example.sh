#!/usr/bin/env bash
# Installs what is missing, builds pml (release), starts examples/keepalive and shows `pml ls`.
# PML_SCRATCH_PATH=dir uses that build folder instead of .build.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
if ! command -v swift >/dev/null 2>&1 && [[ -x /opt/swift/usr/bin/swift ]]; then
  export PATH=/opt/swift/usr/bin:$PATH
fi

build_args=(-c release)
if [[ -n ${PML_SCRATCH_PATH:-} ]]; then build_args+=(--scratch-path "$PML_SCRATCH_PATH"); fi
swift build "${build_args[@]}"
pml="$(swift build "${build_args[@]}" --show-bin-path)/pml"

# Start afresh if an earlier run left the app behind.
"$pml" delete keepalive >/dev/null 2>&1 || true
"$pml" start examples/keepalive/app.lua >/dev/null
sleep 1
"$pml" ls

cat <<EOT

The keepalive example runs under pml (state in ${PML_HOME:-~/.pml}).
Try:
  $pml logs keepalive
  kill -9 <the pid above>; $pml ls      # a new pid, restarts 1
  $pml describe keepalive
  $pml kill                              # stop everything
EOT
