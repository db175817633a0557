#!/usr/bin/env bash
# idle_cpu.sh BIN [poll|stream] [N]: the CPU a fresh node of BIN spends, with no load,
# on N (10,000) idle workers on queue 'idle' (idle_pollers.py): utime + stime over 30 s,
# after 30 s for them to settle, as % of one core. Run from the repository root; the
# Python SDK's virtualenv (worker-sdk/python/.venv) must exist (the test command makes it).
set -euo pipefail
bin=$1; kind=${2:-poll}; n=${3:-10000}
root=$(cd "$(dirname "$0")/../.." && pwd)
python=$root/worker-sdk/python/.venv/bin/python
d=$(mktemp -d /tmp/idle-cpu-XXXX)
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
port=$(free_port); hport=$(free_port)
RUST_LOG=warn "$bin" serve --listen 127.0.0.1:$port --http 127.0.0.1:$hport --data-dir "$d/data" >"$d/log" 2>&1 &
pid=$!
trap 'kill -9 $pid 2>/dev/null; [ -n "${ipid:-}" ] && kill $ipid 2>/dev/null; rm -rf "$d"' EXIT
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:$hport/readyz >/dev/null && break; sleep 0.2; done
"$python" "$root/benches/scripts/idle_pollers.py" 127.0.0.1:$port "$n" "$kind" >"$d/idle.log" 2>&1 &
ipid=$!
sleep 30
cpu() { awk '{print $14 + $15}' /proc/$pid/stat; }
a=$(cpu); sleep 30; b=$(cpu)
known=$(curl -sf http://127.0.0.1:$hport/metrics | awk '$1 == "taskraft_workers" {print $2}')
awk -v t=$((b - a)) -v hz="$(getconf CLK_TCK)" -v k="$kind" -v n="$n" -v w="${known:-0}" \
  'BEGIN {printf "idle %s %s: node CPU %.1f %% of a core (workers known: %s)\n", n, k, t * 100 / (30 * hz), w}'
