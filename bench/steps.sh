#!/usr/bin/env bash
# CPU cost of each protocol step per call, on the release binary, loopback only. Bounded:
# wrk posts events to each flow for DURATION seconds (default 5), then the script waits (at
# most 10 minutes) for the runs to finish.
#
#   bench/steps.sh
#   DURATION=10 bench/steps.sh
#
# For each flow — webhook → map (the baseline), webhook → http, → graphql, → soap, against
# ferry-fakes — it posts events at 16 connections, waits until the fake has received every
# call, and reads the server's CPU time (utime + stime from /proc/PID/stat). The step's cost
# is the flow's CPU per event minus the baseline's: what one call of that step adds to a
# run (rendering, sending, reading and mapping the answer, storing the step).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
command -v wrk >/dev/null || { echo "installing wrk" >&2; apt-get install -y -qq wrk >/dev/null; }
cargo build --release --locked -q -p ferry --bin ferry -p ferry-fakes --bin ferry-fakes
BIN=target/release/ferry
FAKES=target/release/ferry-fakes
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$FAKES" --quiet --listen "127.0.0.1:$PORT" 2>/dev/null &
PIDS+=($!)
F="http://127.0.0.1:$PORT"
for _ in $(seq 1 50); do curl -sf "$F/_count" >/dev/null && break; sleep 0.1; done

P="$WORK/p"
mkdir -p "$P/flows" "$P/connections" "$P/wsdl"
sed "s#http://127.0.0.1:4010#$F#" examples/order-to-erp/wsdl/erp.wsdl > "$P/wsdl/erp.wsdl"
for c in crm:/crm mailer:/mailer/graphql erp:/erp/soap; do
  printf 'id: %s\nbase_url: %s%s\ntimeout: 10s\n' "${c%%:*}" "$F" "${c#*:}" > "$P/connections/${c%%:*}.yaml"
done
cat > "$P/flows/baseline.yaml" <<'YAML'
id: baseline
trigger: { webhook: { path: /b/baseline } }
steps:
  - id: shape
    map: { email: '{{ .event.body.email | ascii_downcase }}' }
YAML
cat > "$P/flows/http.yaml" <<'YAML'
id: http
trigger: { webhook: { path: /b/http } }
steps:
  - id: shape
    map: { email: '{{ .event.body.email | ascii_downcase }}' }
  - id: call
    http:
      connection: crm
      method: POST
      path: /contacts
      body: { email: '{{ .steps.shape.email }}', name: '{{ .event.body.first_name }}', source: bench }
YAML
cat > "$P/flows/graphql.yaml" <<'YAML'
id: graphql
trigger: { webhook: { path: /b/graphql } }
steps:
  - id: shape
    map: { email: '{{ .event.body.email | ascii_downcase }}' }
  - id: call
    graphql:
      connection: mailer
      query: 'mutation($e: String!) { subscribe(email: $e, list: "welcome") { id } }'
      variables: { e: '{{ .steps.shape.email }}' }
YAML
cat > "$P/flows/soap.yaml" <<'YAML'
id: soap
trigger: { webhook: { path: /b/soap } }
steps:
  - id: shape
    map: { email: '{{ .event.body.email | ascii_downcase }}' }
  - id: call
    soap:
      connection: erp
      wsdl: wsdl/erp.wsdl
      operation: CreateSalesOrder
      body:
        externalId: '{{ .event.body.order.id }}'
        customerEmail: '{{ .steps.shape.email }}'
        currency: '{{ .event.body.order.currency }}'
        line: '{{ [.event.body.order.items[] | {sku, quantity: .qty, unitPrice: .price}] }}'
YAML
"$BIN" validate "$P" >/dev/null 2>&1 || "$BIN" validate "$P"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

echo "machine: $(nproc) cores; $(uname -sr); ferry $($BIN --version | awk '{print $2}'); wrk -t1 -c16, ~1 KB JSON event"
printf '%-9s %9s %12s %14s %14s\n' flow events "CPU µs/ev" "step µs/call" "fake calls"
base=0
for flow in baseline http graphql soap; do
  rm -rf "$WORK/data"
  "$BIN" serve "$P" --listen 127.0.0.1:0 --data "$WORK/data" 2>"$WORK/log" &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 1 100); do ADDR=$(grep -o 'listening on [0-9.:]*' "$WORK/log" | awk '{print $3}') && [ -n "$ADDR" ] && break; sleep 0.1; done
  system=$(case $flow in http) echo crm;; graphql) echo mailer;; soap) echo erp;; *) echo none;; esac)
  before=$(curl -s "$F/_count" | python3 -c "import sys,json; print(json.load(sys.stdin).get('$system',0))")
  t0=$(cpu_ticks "$PID")
  OUT=$(wrk -t1 -c16 -d"${DURATION}s" -s bench/post.lua "http://$ADDR/b/$flow" 2>&1 || true)
  acked=$(awk '/requests in/ {print $1}' <<<"$OUT")
  # Wait until the runs are done: the fake's count (or, for the baseline, the server's CPU)
  # stops moving.
  prev=-1
  for _ in $(seq 1 600); do
    if [ "$system" = none ]; then now=$(cpu_ticks "$PID"); else now=$(curl -s "$F/_count" | python3 -c "import sys,json; print(json.load(sys.stdin).get('$system',0))"); fi
    [ "$now" = "$prev" ] && break
    prev=$now; sleep 1
  done
  t1=$(cpu_ticks "$PID")
  calls=$([ "$system" = none ] && echo - || echo $((prev - before)))
  us=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$acked" 'BEGIN {printf "%.0f", t / hz * 1e6 / n}')
  [ "$flow" = baseline ] && base=$us
  printf '%-9s %9s %12s %14s %14s\n' "$flow" "$acked" "$us" "$([ "$flow" = baseline ] && echo - || echo $((us - base)))" "$calls"
  kill "$PID"; wait "$PID" 2>/dev/null || true
done
