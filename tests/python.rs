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

/// Written into the venv after a successful install; holds the requirements it was built from.
const STAMP: &str = ".taskraft-requirements";

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

/// The venv's interpreter, creating the venv and installing the pinned packages when it
/// is missing, broken, or was built from other pins.
fn venv_python() -> PathBuf {
    let python_dir = manifest_dir().join("python");
    let venv = python_dir.join(".venv");
    let python = venv.join("bin").join("python");
    let requirements = python_dir.join("requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).expect("tests/python/requirements.txt");

    let stamp_ok = std::fs::read_to_string(venv.join(STAMP)).is_ok_and(|s| s == wanted);
    if stamp_ok
        && Command::new(&python)
            .args(["-c", "import grpc, grpc_tools.protoc"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    {
        return python;
    }

    let version = Command::new("python3").arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "python3 is required by the polyglot test (tests/python.rs) and was not found on PATH; \
         install it (Debian: apt-get install python3 python3-venv). Error: {version:?}"
    );
    if venv.exists() {
        std::fs::remove_dir_all(&venv).expect("removing a stale tests/python/.venv");
    }
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        "python3 -m venv (Debian needs the python3-venv package)",
    );
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(&requirements),
        "pip install -r tests/python/requirements.txt",
    );
    std::fs::write(venv.join(STAMP), wanted).expect("writing the venv stamp");
    python
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
