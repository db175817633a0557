#!/usr/bin/env bash
# idle_pollers.sh BIN N [stream]: enqueue jobs/s (taskraft-bench enqueue, 64 callers)
# against a fresh node of BIN while N idle long-polling Lease calls (or, with `stream`,
# N idle Work sessions with a credit each) wait on another queue (idle_pollers.py, in
# the Python SDK's virtualenv: worker-sdk/python/.venv, which the test command creates).
# Prints the rate and the node's CPU time during the run. BENCH_ARGS adds arguments to
# the enqueue run (e.g. "--stream --concurrency 256 --jobs 100000"); AT_REST=1 runs no
# load and prints the node's CPU over 30 s instead (what the idle workers alone cost).
# Run from the repository root after `cargo build --release --bins`.
set -euo pipefail
bin=$1; n=$2; kind=${3:-poll}
root=$(cd "$(dirname "$0")/../.." && pwd)
bench=$root/target/release/taskraft-bench
python=$root/worker-sdk/python/.venv/bin/python
d=$(mktemp -d /tmp/idle-pollers-XXXX)
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
port=$(free_port); hport=$(free_port)
RUST_LOG=warn "$bin" serve --listen 127.0.0.1:$port --http 127.0.0.1:$hport --data-dir "$d/data" >"$d/log" 2>&1 &
pid=$!
trap 'kill -9 $pid 2>/dev/null; [ -n "${ipid:-}" ] && kill $ipid 2>/dev/null; rm -rf "$d"' EXIT
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:$hport/readyz >/dev/null && break; sleep 0.2; done
if [ "$n" -gt 0 ]; then
  "$python" "$root/benches/scripts/idle_pollers.py" 127.0.0.1:$port "$n" "$kind" >"$d/idle.log" 2>&1 &
  ipid=$!
  # Until the node knows all N workers (each registers with its first look), then a
  # little longer for the waits to settle; at most a minute.
  for _ in $(seq 1 60); do
    known=$(curl -sf http://127.0.0.1:$hport/metrics | awk '$1 == "taskraft_workers" {print $2}' || true)
    [ "${known:-0}" -ge "$n" ] && break
    sleep 1
  done
  echo "idle workers known to the node: ${known:-0} of $n" >&2
  if [ "${known:-0}" -lt "$n" ]; then
    echo "not every idle worker reached the node within a minute; see $d/idle.log" >&2
    exit 1
  fi
  sleep 3
fi
cpu() { awk '{print $14 + $15}' /proc/$pid/stat; }   # the node's CPU time, in ticks
hz=$(getconf CLK_TCK)
before=$(cpu)
if [ "${AT_REST:-0}" = 1 ]; then
  sleep 30
  awk -v t=$(( $(cpu) - before )) -v hz="$hz" -v n="$n" -v k="$kind" \
    'BEGIN {printf "idle %s %s at rest: node CPU %.1f %% of a core\n", n, k, t * 100 / (30 * hz)}'
  exit 0
fi
rate=$("$bench" enqueue --server 127.0.0.1:$port ${BENCH_ARGS:-} | awk '$1 ~ /^enqueue(-stream)?$/ {print $6}' || true)
if [ -z "$rate" ]; then
  echo "the enqueue run printed no result row (a failed run, or --json in BENCH_ARGS)" >&2
  exit 1
fi
ticks=$(( $(cpu) - before ))
echo "idle $n $kind enqueue jobs/s $rate node CPU s $(awk -v t=$ticks -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')"
