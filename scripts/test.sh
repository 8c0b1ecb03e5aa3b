#!/usr/bin/env bash
# Installs what is missing, builds pml, and runs every test (unit and integration).
# Extra arguments go to `swift test` (e.g. --filter Integration).
# PML_SCRATCH_PATH=dir uses that build folder instead of .build.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
if ! command -v swift >/dev/null 2>&1 && [[ -x /opt/swift/usr/bin/swift ]]; then
  export PATH=/opt/swift/usr/bin:$PATH
fi

build_args=()
if [[ -n ${PML_SCRATCH_PATH:-} ]]; then build_args=(--scratch-path "$PML_SCRATCH_PATH"); fi

swift build "${build_args[@]}"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
swift test "${build_args[@]}" "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

# Make sure tests really ran: a filter that matches nothing, or a test binary that did not
# start, must not pass silently.
if ((rc == 0)) && ! grep -Eq 'Test run with [1-9][0-9]* tests?|Executed [1-9][0-9]* tests?' "$log"; then
  echo "test.sh: swift test exited 0 but no test ran" >&2
  rc=1
fi
exit "$rc"
