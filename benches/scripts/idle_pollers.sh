#!/usr/bin/env bash
# idle_pollers.sh BIN N: enqueue jobs/s (taskraft-bench enqueue, 64 callers) against a
# fresh node of BIN while N idle long-polling Lease calls wait on another queue
# (idle_pollers.py, in the Python SDK's virtualenv: worker-sdk/python/.venv, which the
# test command creates). Run from the repository root after `cargo build --release --bins`.
set -euo pipefail
bin=$1; n=$2
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
  "$python" "$root/benches/scripts/idle_pollers.py" 127.0.0.1:$port "$n" >"$d/idle.log" 2>&1 &
  ipid=$!
  sleep 8
fi
"$bench" enqueue --server 127.0.0.1:$port | grep -E "^enqueue " | awk -v n="$n" '{print "idle", n, "enqueue jobs/s", $6}'
