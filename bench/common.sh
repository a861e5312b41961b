# Sourced by bench/run.sh and bench/cpu.sh: wrk, a temporary folder cleaned up on exit (with
# every process whose pid is added to PIDS), the counting sink (SINK=its address), and the
# benchmark project in $WORK/p (the flows of bench/project/flows and a `sink` connection).
command -v wrk >/dev/null || { echo "installing wrk" >&2; apt-get install -y -qq wrk >/dev/null; }
cargo build --release --locked -q -p ferry --bin ferry --example benchkit
KIT=target/release/examples/benchkit
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

"$KIT" sink > "$WORK/sink.addr" &
PIDS+=($!)
sleep 0.3
SINK=$(head -1 "$WORK/sink.addr")
mkdir -p "$WORK/p/connections"
cp -r bench/project/flows "$WORK/p/"
printf 'id: sink\nbase_url: http://%s\ntimeout: 10s\n' "$SINK" > "$WORK/p/connections/sink.yaml"
