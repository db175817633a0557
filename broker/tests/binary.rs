//! The `taskraft` binary itself: it starts, answers `--help`, and refuses bad flags
//! with a clear message. (Building this test also makes cargo build the binary that
//! the end-to-end tests in `tests/` run as real processes.)

use std::process::Command;

#[test]
fn serve_help_lists_the_documented_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_taskraft"))
        .args(["serve", "--help"])
        .output()
        .expect("run taskraft");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--id",
        "--listen",
        "--http",
        "--data-dir",
        "--token",
        "--peers",
        "--max-payload",
        "--visibility-timeout",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}:\n{help}");
    }
}

#[test]
fn malformed_peers_flag_is_refused_with_a_message() {
    let dir = std::env::temp_dir().join(format!("taskraft-badflag-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_taskraft"))
        .args(["serve", "--peers", "one=127.0.0.1:1", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("run taskraft");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--peers"), "{err}");
}
