"""The conformance scenarios (``tests/conformance/scenarios/*.json``) through the
Python runner, with this file playing the harness: it starts the brokers, runs
``python -m taskraft.conformance``, answers ``kill_leader`` by SIGKILLing the
leader, and checks the result line and the exit code."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import taskraft
from brokers import REPO, BrokerCluster, BrokerNode

SCENARIOS = REPO / "tests" / "conformance" / "scenarios"
IDS = sorted(p.stem for p in SCENARIOS.glob("*.json"))


def run_runner(scenario: Path, addrs: list[str], cluster: BrokerCluster | None, tmp: Path) -> list[dict[str, object]]:
    doc = json.loads(scenario.read_text())
    timeout = doc["params"].get("timeout_ms", 60000) / 1000 * 2 + 30
    stderr = tmp / "runner.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskraft.conformance", str(scenario), "--addrs", ",".join(addrs)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
        )
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    lines: list[dict[str, object]] = []
    try:
        assert proc.stdout is not None and proc.stdin is not None
        for raw in proc.stdout:
            line = json.loads(raw)
            lines.append(line)
            if line.get("control") == "kill_leader":
                assert cluster is not None, "kill_leader asked in a one-node scenario"
                alive = [n.addr for n in cluster.nodes if n.running]
                with taskraft.Client(alive) as c:
                    leader = c.cluster_status().leader_id
                cluster.node(leader).kill()
                proc.stdin.write(json.dumps({"killed": leader}) + "\n")
                proc.stdin.flush()
        code = proc.wait(timeout)
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
    last = lines[-1] if lines else {}
    want = {"pass": 0, "fail": 1, "unsupported": 2}
    assert last.get("result") == "pass" and code == 0, (
        f"{scenario.stem}: exit {code}, last line {last}\n--- stdout ---\n"
        + "\n".join(json.dumps(x) for x in lines)
        + f"\n--- stderr ---\n{stderr.read_text(errors='replace')[-6000:]}"
    )
    assert code == want[str(last["result"])]
    print("\n".join(json.dumps(x) for x in lines))
    return lines


def test_all_nine_scenarios_are_present() -> None:
    assert IDS == sorted([
        "roundtrip", "priority_order", "lease_extension", "retry_until_dead", "permanent_error",
        "cancel_running", "graceful_shutdown", "leader_failover", "trace_context",
    ])


@pytest.mark.parametrize("sid", [i for i in IDS if json.loads((SCENARIOS / f"{i}.json").read_text())["nodes"] == 1])
def test_one_node_scenario(sid: str, broker: BrokerNode, tmp_path: Path) -> None:
    run_runner(SCENARIOS / f"{sid}.json", [broker.addr], None, tmp_path)


def test_leader_failover_scenario(tmp_path: Path) -> None:
    cluster = BrokerCluster(tmp_path / "cluster", 3).start()
    try:
        lines = run_runner(SCENARIOS / "leader_failover.json", cluster.addrs, cluster, tmp_path)
        assert {"control": "kill_leader"} in lines
        assert sum(1 for n in cluster.nodes if not n.running) == 1
    finally:
        cluster.stop()


def test_unknown_scenario_is_unsupported(tmp_path: Path, broker: BrokerNode) -> None:
    f = tmp_path / "nope.json"
    f.write_text(json.dumps({"id": "nope", "description": "", "nodes": 1, "params": {}, "expect": {}}))
    out = subprocess.run(
        [sys.executable, "-m", "taskraft.conformance", str(f), "--addrs", broker.addr],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert json.loads(out.stdout.splitlines()[-1])["result"] == "unsupported"
