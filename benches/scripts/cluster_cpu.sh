#!/usr/bin/env bash
# CPU seconds each node of a 3-node cluster spends on one bench scenario sent to the
# leader: a steadier yardstick than jobs/s on a shared 2-core machine, where other load
# moves throughput by 2x but moves CPU per job much less. Compare two builds by
# interleaving their runs.
#
#   benches/scripts/cluster_cpu.sh target/release/taskraft target/release/taskraft-bench lifecycle
#   -> lifecycle 7700 leader=3 f:4.50 f:4.51 L:8.47     (jobs/s, then CPU s per node: f follower, L leader)
#
# With SPREAD=1 the bench's calls go to all three nodes (followers forward to the leader).
#
# Uses cluster3.sh (fixed ports 17101-17303, data in /tmp/c3) and stops the nodes after.
set -euo pipefail
BIN=${1:?usage: cluster_cpu.sh TASKRAFT TASKRAFT-BENCH SCENARIO [ARGS...]}
BENCH=${2:?usage: cluster_cpu.sh TASKRAFT TASKRAFT-BENCH SCENARIO [ARGS...]}
shift 2
here=$(dirname "$0")
"$here/cluster3.sh" "$BIN" >/dev/null 2>&1
trap 'kill $(cat /tmp/c3/pid*) 2>/dev/null || true' EXIT
leader=""
for _ in $(seq 1 100); do
  for n in 1 2 3; do
    if curl -s "127.0.0.1:1720$n/metrics" | grep -q '^taskraft_raft_is_leader 1'; then leader=$n; fi
  done
  [ -n "$leader" ] && break
  sleep 0.1
done
[ -n "$leader" ] || { echo "no leader elected" >&2; exit 1; }
cpu() { awk '{print $14+$15}' "/proc/$(cat /tmp/c3/pid$1)/stat"; }
declare -A before
for n in 1 2 3; do before[$n]=$(cpu $n); done
target=(--server "127.0.0.1:1710$leader")
if [ -n "${SPREAD:-}" ]; then target=(--servers "127.0.0.1:17101,127.0.0.1:17102,127.0.0.1:17103"); fi
out=$("$BENCH" "$@" "${target[@]}" 2>&1 |
  grep -E "^(enqueue|enqueue-batch|lifecycle) " | awk '{print $1, $6}' | tr '\n' ' ')
tck=$(getconf CLK_TCK)
line="${out}leader=$leader"
for n in 1 2 3; do
  role=f; [ "$n" = "$leader" ] && role=L
  line="$line $role:$(awk -v a="${before[$n]}" -v b="$(cpu $n)" -v t="$tck" 'BEGIN{printf "%.2f", (b-a)/t}')"
done
echo "$line"
