#!/usr/bin/env bash
# Which state did a server process settle in? Starts one benchmark server (benchmarks/servers/),
# logs in, loads GET /me for 4 s, then samples it with `perf record -e cpu-clock` for 2 s under
# the same load, and prints the share of its samples in V8's runtime, and in
# Runtime_DefineKeyedOwnPropertyInLiteral: above zero, Node's process.nextTick literal is built
# through the runtime, the slow state described in benchmarks/README.md ("The swings").
# A share, not a time: it tells the state apart on a machine too noisy for timings.
#
# The server starts as it is, without the keep-ticks.mjs preload that benchmarks/run.ts gives
# every server but fastify-pow's; NODE_ARGS adds node options (that preload, for one):
#
#   bash benchmarks/v8-state.sh pow.ts BENCH_STORE=memory
#   bash benchmarks/v8-state.sh cookie.ts
#   NODE_ARGS="--import ./benchmarks/servers/keep-ticks.mjs" bash benchmarks/v8-state.sh cookie.ts
#
# Needs perf (Debian: linux-perf) and may need kernel.perf_event_paranoid <= 1, and the build
# (npm run build) for pow.ts and the preload.
set -euo pipefail
cd "$(dirname "$0")/.."
file=$1
shift
port=$(node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")
out=$(mktemp -d)
# shellcheck disable=SC2086 # NODE_ARGS is a list of options
env NODE_ENV=production BENCH_PORT="$port" "$@" node ${NODE_ARGS:-} --import tsx "benchmarks/servers/$file" >"$out/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$out"' EXIT
for _ in $(seq 1 120); do grep -q '"ready"' "$out/server.log" 2>/dev/null && break; sleep 0.5; done
cookie=$(curl -si -X POST "http://127.0.0.1:$port/login" | grep -i '^set-cookie' | head -n 1 | sed 's/^set-cookie: //I; s/;.*//' | tr -d '\r')
load() { npx autocannon -c 50 -d "$1" -H "cookie=$cookie" "http://127.0.0.1:$port/me" >/dev/null 2>&1; }
load 4
perf record -q -e cpu-clock -F 1000 -p "$pid" -o "$out/perf.data" -- sleep 2 >/dev/null 2>&1 &
recorder=$!
load 2
wait "$recorder"
perf report -i "$out/perf.data" --no-children --sort sym --stdio 2>/dev/null | grep -v '^#' >"$out/report.txt"
share() { grep -E "$1" "$out/report.txt" | awk '{ s += $1 } END { printf "%.2f", s }'; }
echo "$file $* ${NODE_ARGS:-}: Runtime_DefineKeyedOwnPropertyInLiteral $(share 'Runtime_DefineKeyedOwnPropertyInLiteral')%, V8 runtime (v8::internal) $(share 'v8::internal::')% of the samples"
