#!/usr/bin/env bash
# Builds the BPF objects (build/bpf), the libbpf addon (build/native) and the
# TypeScript (dist). Each step only redoes what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

make -s -C bpf OUT=../build/bpf

addon=build/native/Release/nodemesh_bpf.node
if [ ! -f "$addon" ] || [ -n "$(find native binding.gyp -newer "$addon" -type f -print -quit)" ]; then
  node_modules/.bin/cmake-js compile --directory native --out build/native --log-level warn
fi

node_modules/.bin/tsc -p .
