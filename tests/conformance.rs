//! The conformance suite: every scenario of `tests/conformance/scenarios/*.json`, run by
//! every SDK's runner against real `taskraft serve` processes (protocol:
//! `tests/conformance/README.md`).
//!
//! ```text
//!  scenario.json ──> fresh broker(s): 1 node, or 3 (ProcessCluster)
//!       │                 ^
//!       v                 │ {"control":"kill_leader"}  ──> SIGKILL the leader
//!  runner <scenario> --addrs a,b,c  ── stdout (JSON lines) ──> last line = result
//!       ^                 │ {"killed": id}  <── answer on the runner's stdin
//! ```
//!
//! One test per SDK runs all scenarios (one after another, each on fresh brokers) and
//! prints a table; it fails unless every scenario passes. `unsupported` fails too, with
//! the runner's reason naming the gap. The SDK tests of this binary take turns (a
//! mutex), so timing-sensitive scenarios do not compete for the CPU with each other.
//!
//! Runners: Rust `conformance-rust` (tests/bin/conformance_rust.rs), TypeScript
//! `node worker-sdk/typescript/dist/conformance.js`, Python `python -m
//! taskraft.conformance` from a virtualenv with `worker-sdk/python` installed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use taskraft_tests::{node, setup, ProcessCluster, ProcessNode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// Added to a scenario's own `timeout_ms` before the harness gives up on its runner.
const MARGIN: Duration = Duration::from_secs(60);

/// One SDK test at a time in this binary.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conformance")
        .join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "no conformance scenarios at {}: {e} (they are written in the sdk-python branch)",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.json scenario in {}", dir.display());
    files
}

/// How one scenario ended for one SDK.
#[derive(Debug)]
struct Outcome {
    scenario: String,
    result: String,
    reason: String,
    took: Duration,
}

/// A runner command: program and leading arguments (the scenario and `--addrs` follow).
struct Runner {
    sdk: &'static str,
    program: PathBuf,
    args: Vec<String>,
    cwd: Option<PathBuf>,
}

/// Starts the brokers a scenario asks for; returns them (kept alive by the caller) and
/// their gRPC addresses.
async fn brokers(scenario: &Value, dir: &Path) -> (Brokers, Vec<String>) {
    let mut extra: Vec<String> = Vec::new();
    if let Some(ms) = scenario["params"]["broker_retry_base_ms"].as_u64() {
        extra.extend(["--retry-base".into(), format!("{ms}ms")]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    match scenario["nodes"].as_u64().unwrap_or(1) {
        1 => {
            let node = ProcessNode::spawn(&dir.join("node"), &extra).await;
            node.wait_ready().await;
            let addr = node.addr.to_string();
            (Brokers::One(node), vec![addr])
        }
        3 => {
            let cluster = ProcessCluster::spawn(3, &extra).await;
            for n in &cluster.nodes {
                n.wait_ready().await;
            }
            let addrs = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
            (Brokers::Three(cluster), addrs)
        }
        n => panic!("scenario {}: nodes must be 1 or 3, not {n}", scenario["id"]),
    }
}

enum Brokers {
    One(ProcessNode),
    Three(ProcessCluster),
}

impl Brokers {
    /// SIGKILLs the node that leads (asking the nodes still running) and returns its id.
    async fn kill_leader(&mut self, killed: &[u64]) -> Result<u64, String> {
        let Brokers::Three(cluster) = self else {
            return Err("kill_leader asked of a one-node scenario".into());
        };
        let nodes = cluster.nodes.len() as u64;
        let leader = taskraft_tests::poll_until(taskraft_tests::SOON, || async {
            for id in (1..=nodes).filter(|id| !killed.contains(id)) {
                let Ok(Some(status)) =
                    tokio::time::timeout(Duration::from_secs(2), cluster.status(id)).await
                else {
                    continue;
                };
                let leader = status.leader_id;
                if (1..=nodes).contains(&leader) && !killed.contains(&leader) {
                    return Ok(leader);
                }
            }
            Err("no node named a live leader".to_string())
        })
        .await?;
        cluster.node(leader).kill9();
        Ok(leader)
    }

    fn log_tails(&self) -> String {
        match self {
            Brokers::One(n) => n.log_tail(),
            Brokers::Three(c) => c
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| format!("--- node {} ---\n{}", i + 1, n.log_tail()))
                .collect(),
        }
    }
}

async fn run_scenario(runner: &Runner, file: &Path) -> Outcome {
    let text = std::fs::read_to_string(file).expect("scenario file");
    let scenario: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", file.display()));
    let id = scenario["id"].as_str().unwrap_or("?").to_string();
    let timeout =
        Duration::from_millis(scenario["params"]["timeout_ms"].as_u64().unwrap_or(60_000)) + MARGIN;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut brokers, addrs) = brokers(&scenario, dir.path()).await;
    let started = Instant::now();
    let stderr_path = dir.path().join("runner.stderr");
    let mut cmd = Command::new(&runner.program);
    cmd.args(&runner.args)
        .arg(file)
        .arg("--addrs")
        .arg(addrs.join(","))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .kill_on_drop(true);
    if let Some(cwd) = &runner.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start the {} runner {:?}: {e}",
            runner.sdk, runner.program
        )
    });
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut last: Option<Value> = None;
    let mut killed = Vec::new();
    let mut problem = None;
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{} {id}] {line}", runner.sdk);
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                problem = Some(format!("stdout line is not JSON: {line:?}"));
                continue;
            };
            if v["control"] == "kill_leader" {
                match brokers.kill_leader(&killed).await {
                    Ok(node) => {
                        killed.push(node);
                        let answer = format!("{}\n", json!({ "killed": node }));
                        let _ = stdin.write_all(answer.as_bytes()).await;
                        let _ = stdin.flush().await;
                    }
                    Err(e) => {
                        problem = Some(format!("could not kill the leader: {e}"));
                        break;
                    }
                }
            }
            last = Some(v);
        }
    };
    let finished = tokio::time::timeout(timeout, read).await.is_ok();
    let status = if finished {
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    let _ = child.kill().await;
    let took = started.elapsed();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let stderr_tail = &stderr[stderr.len().saturating_sub(3000)..];
    let (result, mut reason) = match (&last, finished) {
        (_, false) => ("fail".to_string(), format!("no result within {timeout:?}")),
        (Some(v), true) if v.get("result").is_some() => (
            v["result"].as_str().unwrap_or("?").to_string(),
            v["reason"].as_str().unwrap_or("").to_string(),
        ),
        _ => (
            "fail".to_string(),
            format!("the runner's last stdout line is not a result (exit {status:?})"),
        ),
    };
    let want_code = match result.as_str() {
        "pass" => Some(0),
        "fail" => Some(1),
        "unsupported" => Some(2),
        _ => None,
    };
    let mut result = result;
    if finished && status.and_then(|s| s.code()) != want_code {
        reason = format!("{reason} (result {result:?} but exit status {status:?})");
        result = "fail".into();
    }
    if let Some(p) = problem {
        reason = format!("{reason}; {p}");
        result = "fail".into();
    }
    if result != "pass" {
        reason = format!(
            "{reason}\n--- runner stderr (tail) ---\n{stderr_tail}\n--- broker logs (tail) ---\n{}",
            brokers.log_tails()
        );
    }
    Outcome {
        scenario: id,
        result,
        reason,
        took,
    }
}

/// Runs every scenario with `runner` and fails unless all pass.
async fn conformance(runner: Runner) {
    let _turn = TURN.lock().await;
    let mut outcomes = Vec::new();
    for file in scenario_files() {
        outcomes.push(run_scenario(&runner, &file).await);
    }
    let mut table = format!(
        "\nconformance: {} SDK\n{:<20} {:<12} {:>8}\n",
        runner.sdk, "scenario", "result", "seconds"
    );
    for o in &outcomes {
        table.push_str(&format!(
            "{:<20} {:<12} {:>8.1}\n",
            o.scenario,
            o.result,
            o.took.as_secs_f64()
        ));
    }
    let passed = outcomes.iter().filter(|o| o.result == "pass").count();
    table.push_str(&format!(
        "{passed} passed, {} failed\n",
        outcomes.len() - passed
    ));
    eprintln!("{table}");
    let failures: Vec<String> = outcomes
        .iter()
        .filter(|o| o.result != "pass")
        .map(|o| {
            format!(
                "== {} / {}: {}\n{}",
                runner.sdk, o.scenario, o.result, o.reason
            )
        })
        .collect();
    assert!(failures.is_empty(), "{table}\n{}", failures.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_passes_every_conformance_scenario() {
    conformance(Runner {
        sdk: "rust",
        program: env!("CARGO_BIN_EXE_conformance-rust").into(),
        args: vec![],
        cwd: None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_passes_every_conformance_scenario() {
    let dir = node::typescript_sdk();
    conformance(Runner {
        sdk: "typescript",
        program: "node".into(),
        args: vec![dir
            .join("dist")
            .join("conformance.js")
            .display()
            .to_string()],
        cwd: Some(dir),
    })
    .await;
}

// ---- Python ----------------------------------------------------------------------
//
// The Python SDK and its runner live in `worker-sdk/python` (the sdk-python branch until
// it is merged). This section uses the same virtualenv as `tests/sdk_python.rs`
// (`worker-sdk/python/.venv`, built from `requirements-test.txt` once per machine),
// installs the package into it under the same lock (the install regenerates the stubs
// in the source tree), and runs `python -m taskraft.conformance`. Without the package it
// fails and says so.

/// The interpreter of the Python SDK's virtualenv, with the package of this checkout
/// installed (once per test process).
fn python_sdk_env() -> PathBuf {
    static INSTALLED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let package = repo_root().join("worker-sdk").join("python");
            let requirements = package.join("requirements-test.txt");
            assert!(
                package.join("pyproject.toml").exists() && requirements.exists(),
                "the Python SDK is not in this tree ({} has no pyproject.toml and \
                 requirements-test.txt), so its conformance runner cannot run: merge the \
                 sdk-python branch",
                package.display()
            );
            let venv = package.join(".venv");
            let python = setup::python_venv(&venv, &requirements, "import grpc, grpc_tools.protoc");
            let installed = std::cell::Cell::new(false);
            setup::ensure(
                "the Python SDK into its virtualenv",
                &venv.with_extension("checks.lock"),
                || installed.get(),
                || {
                    setup::run(
                        std::process::Command::new(&python)
                            .args(["-m", "pip", "install", "--quiet"])
                            .args(["--disable-pip-version-check", "--no-input", "--no-deps"])
                            .args(["--no-build-isolation", "--force-reinstall"])
                            .arg(&package),
                    )?;
                    installed.set(true);
                    Ok(())
                },
                &format!(
                    "{} -m pip install --no-deps --no-build-isolation {}",
                    python.display(),
                    package.display()
                ),
            );
            python
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_passes_every_conformance_scenario() {
    let python = python_sdk_env();
    conformance(Runner {
        sdk: "python",
        program: python,
        args: vec!["-m".into(), "taskraft.conformance".into()],
        cwd: None,
    })
    .await;
}
