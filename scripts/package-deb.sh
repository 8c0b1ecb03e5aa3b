#!/usr/bin/env bash
# Builds a Debian package from the release binary: dist/pml_<version>_<arch>.deb, which installs
# /usr/bin/pml and /usr/share/pml/ (Lua library, Node preload, plugins, web dashboard).
#
#   scripts/package-deb.sh [--binary PATH]     (--binary: package that pml instead of building)
set -euo pipefail
cd "$(dirname "$0")/.."

binary_args=()
case ${1:-} in
  --binary) [[ $# -ge 2 ]] || { echo "package-deb.sh: --binary needs a file" >&2; exit 2; }; binary_args=(--binary "$2") ;;
  "") ;;
  *) echo "package-deb.sh: unknown argument \"$1\"" >&2; exit 2 ;;
esac
command -v dpkg-deb >/dev/null || { echo "package-deb.sh: dpkg-deb is missing (Debian's dpkg)" >&2; exit 1; }

stage=$(mktemp -d)
chmod 0755 "$stage"
trap 'rm -rf "$stage"' EXIT
./scripts/install.sh --prefix "$stage/usr" "${binary_args[@]}" >/dev/null
version=$("$stage/usr/bin/pml" --version | cut -d' ' -f1)
arch=$(dpkg --print-architecture)

mkdir -p "$stage/DEBIAN"
cat >"$stage/DEBIAN/control" <<CONTROL
Package: pml
Version: $version
Architecture: $arch
Maintainer: pml developers <pml@localhost>
Depends: libc6, liblua5.4-0
Recommends: nodejs
Section: admin
Priority: optional
Description: process manager for Linux, scripted in Lua
 Keeps programs alive, runs them as a cluster behind one port and reloads them
 with zero downtime. PM2's ecosystem files and commands work unchanged.
CONTROL

mkdir -p dist
dpkg-deb --root-owner-group --build "$stage" "dist/pml_${version}_${arch}.deb" >/dev/null
echo "built dist/pml_${version}_${arch}.deb ($("$stage/usr/bin/pml" --version))"
