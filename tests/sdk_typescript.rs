//! The TypeScript SDK (`worker-sdk/typescript`): `npm ci` (once per machine, see
//! `taskraft_tests::node`), `npm run build`, a strict type check of the sources and
//! tests (`tsc --noEmit`), and its `node --test` suite against a real `taskraft serve`
//! (the binary of this build, passed in `TASKRAFT_BIN`).
//!
//! It never skips: without Node.js 20+ and npm (installed from Debian's packages when
//! missing) it fails and says so.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use taskraft_tests::{node, taskraft_bin};
use tokio::process::Command;

/// Bound on `npm test` (the suite takes well under a minute on a quiet machine).
const TEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Bound on the type check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(300);

fn show(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `npm <args>` in `dir`, killing it after `limit`; panics with its output unless
/// it succeeds.
async fn npm(dir: &Path, args: &[&str], limit: Duration, envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new("npm");
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("npm {args:?} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("cannot run npm {args:?}: {e}"));
    assert!(out.status.success(), "npm {args:?} failed:\n{}", show(&out));
    out
}

#[tokio::test]
async fn typescript_sdk_builds_and_type_checks_strictly() {
    let dir = node::typescript_sdk();
    for file in ["index.js", "index.d.ts", "conformance.js", "client.d.ts"] {
        assert!(
            dir.join("dist").join(file).exists(),
            "npm run build did not produce dist/{file}"
        );
    }
    // dist/ and src/gen/ were just built; check the sources and the tests strictly.
    npm(
        &dir,
        &["exec", "--", "tsc", "-p", "tsconfig.check.json"],
        CHECK_TIMEOUT,
        &[],
    )
    .await;
}

#[tokio::test]
async fn typescript_sdk_tests_pass_against_a_real_broker() {
    let dir = node::typescript_sdk();
    let bin = taskraft_bin();
    let out = npm(&dir, &["test"], TEST_TIMEOUT, &[("TASKRAFT_BIN", &bin)]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let count = |key: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# {key} ")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no `# {key}` line in the node --test output:\n{}",
                    show(&out)
                )
            })
    };
    let (tests, pass, fail) = (count("tests"), count("pass"), count("fail"));
    assert!(
        tests >= 30 && pass == tests && fail == 0,
        "node --test ran {tests} tests, {pass} passed, {fail} failed:\n{}",
        show(&out)
    );
    eprintln!("TypeScript SDK: {pass} node tests passed");
}
