//! The Python SDK (`worker-sdk/python`) checked by its own tools: the package is
//! installed into a virtualenv (regenerating its gRPC stubs from `proto/`), `mypy
//! --strict` must pass on it, and its pytest suite must pass against real
//! `taskraft serve` processes started from the binary this harness built.
//!
//! ```text
//! worker-sdk/python/requirements-test.txt --pip--> worker-sdk/python/.venv (once per machine)
//! pip install --no-build-isolation worker-sdk/python   (setup.py runs grpc_tools.protoc)
//! mypy (strict, from pyproject.toml)                   -> must be clean
//! pytest worker-sdk/python/tests  (TASKRAFT_BIN=<built binary>) -> must pass
//! ```
//!
//! The install and the checks run under a machine-wide file lock, because they write
//! the generated stubs into the package's source tree. It never skips: a missing
//! `python3` fails with the command to fix it.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Bound on installing the package (the stub build takes a few seconds).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on mypy (a cold cache takes ~15 s).
const MYPY_TIMEOUT: Duration = Duration::from_secs(240);
/// Bound on the pytest suite (about a minute on a quiet machine).
const PYTEST_TIMEOUT: Duration = Duration::from_secs(420);

fn package_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../worker-sdk/python")
}

/// Runs `cmd` in `dir` with a time bound; returns (success, combined output).
fn run_bounded(cmd: &mut Command, dir: &Path, limit: Duration) -> (bool, String) {
    let log = tempfile::NamedTempFile::new().expect("output file");
    let out = log.reopen().expect("output file");
    cmd.current_dir(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out);
    let status = taskraft_tests::output_within(cmd, limit).map(|o| o.status);
    let mut text = String::new();
    let _ = File::open(log.path()).and_then(|mut f| f.read_to_string(&mut text));
    match status {
        Some(s) => (s.success(), format!("{cmd:?}: {s}\n{text}")),
        None => (false, format!("{cmd:?} ran longer than {limit:?}\n{text}")),
    }
}

/// Exclusive machine-wide lock for as long as the returned file lives.
fn lock(path: &Path) -> File {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    f.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
    f
}

#[test]
fn python_sdk_installs_type_checks_and_passes_its_tests_against_a_real_broker() {
    let pkg = package_dir();
    let python = taskraft_tests::setup::python_venv(
        &pkg.join(".venv"),
        &pkg.join("requirements-test.txt"),
        "import grpc, grpc_tools.protoc, pytest, mypy, setuptools",
    );
    let bin = taskraft_tests::taskraft_bin();
    let _guard = lock(&pkg.join(".venv").with_extension("checks.lock"));

    let (ok, out) = run_bounded(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "--no-deps",
            "--no-build-isolation",
            "--force-reinstall",
            ".",
        ]),
        &pkg,
        INSTALL_TIMEOUT,
    );
    assert!(ok, "installing worker-sdk/python failed:\n{out}");
    assert!(
        pkg.join("taskraft/v1/taskraft_pb2_grpc.py").exists(),
        "the install did not generate taskraft/v1/taskraft_pb2_grpc.py from proto/:\n{out}"
    );

    let (ok, out) = run_bounded(
        Command::new(&python).args(["-m", "mypy", "--strict"]),
        &pkg,
        MYPY_TIMEOUT,
    );
    assert!(
        ok,
        "mypy --strict found problems in worker-sdk/python:\n{out}"
    );

    let (ok, out) = run_bounded(
        Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
            .env("TASKRAFT_BIN", &bin),
        &pkg,
        PYTEST_TIMEOUT,
    );
    assert!(
        ok,
        "the Python SDK's tests failed (TASKRAFT_BIN={}):\n{out}",
        bin.display()
    );
    println!("{out}");
}
