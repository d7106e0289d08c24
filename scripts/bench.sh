#!/usr/bin/env bash
# npm run bench: set up as for the tests, add the benchmark tools from Debian
# (iperf3, haproxy; openssl and prlimit come with setup.sh's packages), run
# the benchmarks: L4 and memory (bench/proxy.ts; its flags pass through, e.g.
# npm run bench -- --seconds 1 --runs 1 --connections 1000), the controller's
# config push, a proxy's memory at scale.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each part's wall time, printed at the end (and when a part fails: which one).
start=$SECONDS
times=()
part() {
  local name=$1 t=$SECONDS
  shift
  if ! "$@"; then
    echo "bench: FAILED in part \"$name\" after $((SECONDS - t)) s (${times[*]:-no part before it}; $((SECONDS - start)) s in all)" >&2
    exit 1
  fi
  times+=("$name $((SECONDS - t)) s")
}
part setup bash scripts/setup.sh
missing=()
for tool in iperf3 haproxy; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "bench: missing ${missing[*]} (apt-get install -y ${missing[*]})" >&2; exit 1; }
  t=$SECONDS
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  times+=("apt-get $((SECONDS - t)) s")
fi
part "L4 and memory" node dist/bench/proxy.js "$@"
# The 100 simulated nodes live in the benchmark process: at 50,000 workloads they hold about 4 GiB.
part controller node --max-old-space-size=8192 dist/bench/controller.js
# Its one-node lab: NODEMESH_BENCH_SCALE_LAB names it (default pscale), so two benchmarks on one machine need not collide.
part "proxy scale" node dist/bench/proxy-scale.js --name "${NODEMESH_BENCH_SCALE_LAB:-pscale}"
echo
echo "npm run bench: $((SECONDS - start)) s in all ($(IFS=,; echo "${times[*]}" | sed 's/,/, /g'))"
