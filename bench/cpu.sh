#!/usr/bin/env bash
# Server CPU per event, for comparing two builds (A/B) on a noisy machine where throughput
# moves ±15% between runs but CPU time per event moves less. Loopback only; bounded: each
# round runs wrk for DURATION seconds (default 8), then waits (at most 30 s) for the server
# to go idle; the script stops everything it started.
#
#   bench/cpu.sh BIN…                      # ingest flow, 64 connections, 3 rounds
#   SCENARIO=e2e ROUNDS=2 bench/cpu.sh old/ferry target/release/ferry
#
# Builds of other commits: `git worktree add ../old OLD && cargo build --release -p ferry
# --manifest-path ../old/Cargo.toml`. Rounds alternate between the binaries, so a drift of
# the machine's speed affects both alike. Per round and binary it prints acknowledged
# events/s, p99, and the server's utime + stime (/proc/PID/stat) divided by the events wrk
# completed, counted until the server is idle again (so the runs it still had to finish
# are included).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,15p "$0" >&2; exit 2; }
SCENARIO=${SCENARIO:-ingest}
CONNS=${CONNS:-64}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
source bench/common.sh

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # clock ticks (1/100 s)

echo "$SCENARIO, wrk -t2 -c$CONNS -d${DURATION}s, $ROUNDS rounds"
for round in $(seq 1 "$ROUNDS"); do
  for bin in "$@"; do
    rm -rf "$WORK/data"
    read -r _ PID ADDR < <("$KIT" first-ack /bench/ingest -- "$bin" serve "$WORK/p" --listen 127.0.0.1:0 --data "$WORK/data")
    PIDS+=("$PID")
    sleep 0.5
    t0=$(cpu "$PID")
    OUT=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s bench/post.lua "http://$ADDR/bench/$SCENARIO")
    prev=-1
    for _ in $(seq 1 100); do
      cur=$(cpu "$PID"); [ "$cur" = "$prev" ] && break; prev=$cur; sleep 0.3
    done
    t1=$(cpu "$PID")
    n=$(awk '/requests in/ {print $1}' <<<"$OUT")
    rps=$(awk '/Requests\/sec/ {print int($2)}' <<<"$OUT")
    p99=$(awk '$1=="99%" {print $2}' <<<"$OUT")
    echo "round $round  $bin: $rps ev/s, p99 $p99, server CPU $(( (t1 - t0) * 10000 / n )) µs per event"
    kill "$PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  done
done
