#!/usr/bin/env bash
# Starts a 3-node cluster of BIN on fixed loopback ports (gRPC 17101-17103, HTTP
# 17201-17203, peers 17301-17303) with data and logs in /tmp/c3, for measurements that
# need the nodes to outlive one bench run (metrics scraped afterwards, debug logs).
# Extra arguments go to every `taskraft serve`. Stop it with: kill $(cat /tmp/c3/pid*)
#
#   benches/scripts/cluster3.sh target/release/taskraft
#   L=$(for i in 1 2 3; do curl -s 127.0.0.1:1720$i/metrics | grep -q '^taskraft_raft_is_leader 1' && echo $i; done)
#   target/release/taskraft-bench latency --server 127.0.0.1:1710$L
set -euo pipefail
BIN=${1:?usage: cluster3.sh BIN [serve args...]}
shift
rm -rf /tmp/c3
mkdir -p /tmp/c3
P="1=127.0.0.1:17101/127.0.0.1:17301,2=127.0.0.1:17102/127.0.0.1:17302,3=127.0.0.1:17103/127.0.0.1:17303"
for i in 1 2 3; do
  "$BIN" serve --id "$i" --peers "$P" --listen "127.0.0.1:1710$i" --http "127.0.0.1:1720$i" \
    --peer-listen "127.0.0.1:1730$i" --data-dir "/tmp/c3/d$i" "$@" >"/tmp/c3/n$i.log" 2>&1 &
  echo $! >"/tmp/c3/pid$i"
done
