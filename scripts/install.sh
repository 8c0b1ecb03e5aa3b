#!/usr/bin/env bash
# Builds pml (release, static Swift stdlib) and installs it: <prefix>/bin/pml and pml-yaml (its YAML
# reader), and its Lua library, Node preload, plugins and any other resource folder under
# <prefix>/share/pml/, where the binary finds them (it walks up from its own path to
# <prefix>/share/pml). Default prefix: /usr/local.
#
#   scripts/install.sh [--prefix DIR] [--binary PATH]
#
# The git commit is baked into the binary (`pml --version`); "unknown" outside a git checkout.
# --binary installs that pml (already built, e.g. by a package script or a test) instead of building.
# PML_SCRATCH_PATH=dir uses that build folder instead of .build.
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

prefix=/usr/local
binary=
while (($#)); do
  case $1 in
    --binary) [[ $# -ge 2 ]] || { echo "install.sh: --binary needs a file" >&2; exit 2; }; binary=$2; shift 2 ;;
    --prefix) [[ $# -ge 2 ]] || { echo "install.sh: --prefix needs a folder" >&2; exit 2; }; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument \"$1\" (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n $prefix ]] || { echo "install.sh: --prefix needs a folder" >&2; exit 2; }
case $prefix in /*) ;; *) prefix="$PWD/$prefix" ;; esac

if ! mkdir -p "$prefix/bin" 2>/dev/null || [[ ! -w $prefix/bin ]]; then
  echo "install.sh: cannot write to $prefix/bin: run it as root (sudo), or choose --prefix ~/.local" >&2
  exit 1
fi

if [[ -n $binary ]]; then
  case $binary in /*) ;; *) binary="$PWD/$binary" ;; esac
  [[ -x $binary ]] || { echo "install.sh: --binary $binary is not an executable file" >&2; exit 2; }
fi

cd "$(dirname "$0")/.."
if [[ -z $binary ]]; then
  ./scripts/setup.sh
  if ! command -v swift >/dev/null 2>&1 && [[ -x /opt/swift/usr/bin/swift ]]; then
    export PATH=/opt/swift/usr/bin:$PATH
  fi

  commit=unknown
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    commit=$(git rev-parse --short=12 HEAD)
    # Uncommitted changes to tracked files: say so rather than name a commit that is not what was built.
    if ! git diff --quiet HEAD -- 2>/dev/null; then commit="$commit-dirty"; fi
  fi

  build_args=(-c release --static-swift-stdlib -Xcc "-DPML_COMMIT=\"$commit\"")
  if [[ -n ${PML_SCRATCH_PATH:-} ]]; then build_args+=(--scratch-path "$PML_SCRATCH_PATH"); fi
  swift build "${build_args[@]}"
  binary="$(swift build "${build_args[@]}" --show-bin-path)/pml"
fi

share="$prefix/share/pml"
mkdir -p "$prefix/bin" "$share"
# pml-yaml (pml's YAML reader) is built beside pml and installed beside it.
helper="$(dirname "$binary")/pml-yaml"
[[ -x $helper ]] || { echo "install.sh: $helper is missing (build it: swift build --product pml-yaml)" >&2; exit 1; }
# Copy then rename: a running daemon keeps its (old) binary, and no one sees a half-written file.
for pair in "$binary:pml" "$helper:pml-yaml"; do
  cp "${pair%%:*}" "$prefix/bin/.${pair#*:}.new.$$"
  chmod 0755 "$prefix/bin/.${pair#*:}.new.$$"
  mv -f "$prefix/bin/.${pair#*:}.new.$$" "$prefix/bin/${pair#*:}"
done

# Every resource folder the binary looks for beside itself: lua/ (required), shims/, plugins/, web/.
for dir in lua shims plugins web; do
  [[ -d $dir ]] || continue
  rm -rf "$share/.$dir.new"
  cp -R "$dir" "$share/.$dir.new"
  rm -rf "$share/$dir"
  mv "$share/.$dir.new" "$share/$dir"
done

echo "installed $("$prefix/bin/pml" --version) to $prefix/bin/pml (resources in $share)"
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "note: $prefix/bin is not on PATH; add it, or run $prefix/bin/pml" ;;
esac
