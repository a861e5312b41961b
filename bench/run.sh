#!/usr/bin/env bash
# Load benchmark of the release binary on loopback (127.0.0.1 only). Bounded: each wrk run
# lasts DURATION seconds (default 10); the script stops everything it started.
#
#   bench/run.sh            # all scenarios
#   DURATION=5 bench/run.sh
#
# Scenarios: (a) durable ingest, webhook → 202 (flow: one map step);
#            (b) end to end, webhook → map → http POST to a local sink;
#            (c) respond, webhook (response: sync) → map → respond: the caller waits for the run.
# Each at 16 and 64 connections, on a fresh data folder. Prints events/s, p50/p99 ack
# latency, delivered count, peak RSS; plus idle RSS and time from start to first 202.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
source bench/common.sh
BIN=target/release/ferry

stop_ferry() { # SIGTERM, then wait (at most 15 s) for the process to exit
  kill "$PID" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$PID" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$PID" 2>/dev/null || true
}

rss() { awk -v k="$2" '$1==k":" {print int($2/1024) " MB"}' "/proc/$1/status"; }

start_ferry() {
  rm -rf "$WORK/data"
  read -r MS PID ADDR < <("$KIT" first-ack /bench/ingest -- "$BIN" serve "$WORK/p" --listen 127.0.0.1:0 --data "$WORK/data")
  PIDS+=("$PID")
}

wait_drained() { # until the sink count stops moving for 2 s, at most 120 s
  local prev=-1 same=0
  for _ in $(seq 1 240); do
    read -r n last < <(curl -s "http://$SINK/count")
    if [ "$n" = "$prev" ]; then same=$((same+1)); [ $same -ge 4 ] && break; else same=0; fi
    prev=$n; sleep 0.5
  done
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(uname -sr)"
echo "ferry $($BIN --version | awk '{print $2}'), wrk -t2, ${DURATION}s per run, ~1 KB JSON body"

# The same load against the bare axum sink (no storage, no work): this machine's ceiling, so
# that figures from machines of different speed can be compared as a fraction of it.
BASE=$(wrk -t2 -c64 -d"${DURATION}s" -s bench/post.lua "http://$SINK/baseline" | awk '/Requests\/sec/ {print int($2)}')
echo
echo "baseline, bare axum answering 200 (64 connections): ${BASE} req/s"

start_ferry
echo
echo "start to first 202: ${MS} ms"
sleep 1
echo "idle RSS: $(rss "$PID" VmRSS)"
stop_ferry

for scenario in ingest e2e respond; do
  for c in 16 64; do
    start_ferry
    read -r before _ < <(curl -s "http://$SINK/count")
    t0=$(date +%s%3N)
    OUT=$(wrk -t2 -c"$c" -d"${DURATION}s" --latency -s bench/post.lua "http://$ADDR/bench/$scenario")
    rps=$(awk '/Requests\/sec/ {print int($2)}' <<<"$OUT")
    p50=$(awk '$1=="50%" {print $2}' <<<"$OUT")
    p99=$(awk '$1=="99%" {print $2}' <<<"$OUT")
    errs=$(awk '/Non-2xx/ {print $5}' <<<"$OUT"); errs=${errs:-0}
    acked=$(awk '/requests in/ {print $1}' <<<"$OUT")
    echo
    echo "[$scenario, $c connections] acked ${rps} ev/s ($(awk -v r="$rps" -v b="$BASE" 'BEGIN {printf "%d%%", 100*r/b}') of baseline), p50 ${p50}, p99 ${p99}, non-2xx ${errs}, peak RSS $(rss "$PID" VmHWM)"
    if [ "$scenario" = e2e ]; then
      wait_drained
      read -r after last < <(curl -s "http://$SINK/count")
      delivered=$((after - before))
      secs=$(awk -v a="$t0" -v b="$last" 'BEGIN {printf "%.1f", (b-a)/1000}')
      echo "  delivered ${delivered} of ${acked} acked in ${secs}s = $(awk -v d="$delivered" -v s="$secs" 'BEGIN {print int(d/s)}') ev/s end to end; peak RSS $(rss "$PID" VmHWM)"
    fi
    stop_ferry
  done
done
