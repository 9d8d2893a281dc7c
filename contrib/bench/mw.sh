#!/bin/sh
# Multi-worker micro-benchmarks (see mw.lua): channel ping-pong latency
# between two workers, spawn throughput with one and two workers.
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
WEFT_BIN=${WEFT_BIN:-$top/src/weft}
export LUA_PATH="$top/lua/?.lua;${LUA_PATH:-;}"
"$WEFT_BIN" -t 1 "$here/mw.lua" || exit 1
"$WEFT_BIN" -t 2 "$here/mw.lua" || exit 1
