#!/usr/bin/env bash
# Installs what pml needs to build and test, if missing (Debian/Ubuntu, apt).
# Idempotent and quiet when everything is there. Uses sudo only when not root.
set -euo pipefail

# "package[:command]": with a command, the package is skipped when the command is on PATH
# (a node or python3 from nvm/pyenv is fine); without, dpkg decides.
wanted=(
  liblua5.4-dev        # Lua 5.4, linked by pml (pkg-config name lua5.4)
  pkg-config           # SwiftPM finds Lua through it
  git                  # SwiftPM fetches dependencies
  ca-certificates
  gcc                  # the Swift toolchain links with the system C toolchain
  libc6-dev
  libstdc++-12-dev
  binutils
  zlib1g-dev
  libxml2-dev
  libsqlite3-dev
  libncurses-dev
  libpython3-dev
  python3:python3      # worker scripts (.py) in tests and examples
  nodejs:node          # .js workers
  tmux:tmux
  procps:ps
  iproute2:ss          # tests count a port's listening sockets and their accept queues
  curl:curl            # the example cluster and the tests speak HTTP with it
  logrotate:logrotate  # the log-rotation test (create mode, then pml reloadLogs)
  util-linux:setpriv   # a handoff test runs the daemon without CAP_SYS_RESOURCE, as a plain user's
  chromium:chromium    # the dashboard's browser tests and scripts/dashboard-screenshot.sh
)

missing=()
for entry in "${wanted[@]}"; do
  pkg=${entry%%:*}
  cmd=${entry#*:}
  if [[ $cmd != "$entry" ]] && command -v "$cmd" >/dev/null 2>&1; then continue; fi
  if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then continue; fi
  missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then exit 0; fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: missing ${missing[*]}, and there is no apt-get here: install them by hand" >&2
  exit 1
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "setup: missing ${missing[*]}: run as root or install sudo" >&2
    exit 1
  fi
  sudo=(sudo)
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# Skip names this release does not know (e.g. libstdc++-12-dev outside Debian 12).
installable=()
for pkg in "${missing[@]}"; do
  if apt-cache show "$pkg" >/dev/null 2>&1; then installable+=("$pkg")
  else echo "setup: no package $pkg in this release, skipping" >&2; fi
done
if ((${#installable[@]} > 0)); then
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${installable[@]}" >/dev/null
fi

if ! pkg-config --exists lua5.4; then
  echo "setup: Lua 5.4 (pkg-config lua5.4) is still missing" >&2
  exit 1
fi
