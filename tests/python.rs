//! Polyglot check: a Python client, with stubs generated from the public `.proto` by a
//! stock protoc (`grpc_tools`), drives a real `taskraft serve` process.
//!
//! ```text
//! tests/python/requirements.txt --pip--> tests/python/.venv (reused while the pins match)
//! proto/taskraft/v1/taskraft.proto --grpc_tools.protoc--> <tempdir>/stubs/taskraft/v1/*.py
//! tests/python/client_test.py --gRPC--> taskraft serve (ProcessNode)
//! ```
//!
//! It never skips: without `python3` (with `venv` and `pip`) it fails and says so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use taskraft_tests::ProcessNode;

/// Bound on the Python script itself (a run takes well under a second).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn show(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{what} failed:\n{}", show(&out));
    out
}

/// The test venv's interpreter (created or rebuilt once per machine, see `setup`).
fn venv_python() -> PathBuf {
    let python_dir = manifest_dir().join("python");
    taskraft_tests::setup::python_venv(
        &python_dir.join(".venv"),
        &python_dir.join("requirements.txt"),
        "import grpc, grpc_tools.protoc",
    )
}

/// Generates the Python stubs of the public API into `out`.
fn generate_stubs(python: &Path, out: &Path) {
    let proto_root = manifest_dir().join("../proto");
    std::fs::create_dir_all(out).expect("stub dir");
    run(
        Command::new(python)
            .args(["-m", "grpc_tools.protoc"])
            .arg(format!("-I{}", proto_root.display()))
            .arg(format!("--python_out={}", out.display()))
            .arg(format!("--grpc_python_out={}", out.display()))
            .arg(proto_root.join("taskraft/v1/taskraft.proto")),
        "python -m grpc_tools.protoc",
    );
    assert!(
        out.join("taskraft/v1/taskraft_pb2_grpc.py").exists(),
        "protoc wrote no taskraft/v1/taskraft_pb2_grpc.py under {}",
        out.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_enqueues_leases_by_priority_acks_and_sees_validation_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let stubs = tmp.path().join("stubs");
    let python = tokio::task::spawn_blocking(move || {
        let python = venv_python();
        generate_stubs(&python, &stubs);
        (python, stubs)
    })
    .await
    .expect("python setup");
    let (python, stubs) = python;

    let node = ProcessNode::spawn(&tmp.path().join("node"), &[]).await;
    node.wait_ready().await;

    let script = manifest_dir().join("python/client_test.py");
    let child = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(node.addr.to_string())
        .env("PYTHONPATH", &stubs)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the Python client");
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the Python client ran longer than {SCRIPT_TIMEOUT:?}; node log:\n{}",
                node.log_tail()
            )
        })
        .expect("waiting for the Python client");
    assert!(
        out.status.success(),
        "the Python client failed:\n{}\n--- node log ---\n{}",
        show(&out),
        node.log_tail()
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
}
