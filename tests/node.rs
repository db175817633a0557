//! The TypeScript SDK (`worker-sdk/typescript`) made ready for tests: Node.js present,
//! `npm ci` done once per machine (again only when `package-lock.json` changes), and
//! `npm run build` done once per test process, all under `setup::ensure`'s locks.
//!
//! ```text
//!   node >= 20 on PATH? ── no ──> apt-get install nodejs npm
//!   node_modules/.taskraft-lock == package-lock.json? ── no ──> npm ci
//!   (once per process, under the same file lock) npm run build ──> dist/
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::setup;

/// Written into `node_modules` after a successful `npm ci`; holds the lock file it
/// installed.
const STAMP: &str = ".taskraft-lock";

/// `worker-sdk/typescript` of this checkout.
pub fn typescript_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("worker-sdk")
        .join("typescript")
}

fn node_major() -> Option<u32> {
    let out = Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout);
    v.trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn npm_works() -> bool {
    Command::new("npm")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Node.js 20+ and npm, installed from Debian's packages when missing.
pub fn ensure_node() {
    let ready = || node_major().is_some_and(|m| m >= 20) && npm_works();
    setup::apt_install(&["nodejs", "npm"], ready);
}

/// The TypeScript SDK with its dependencies installed and `dist/` built from the
/// current sources; returns its directory.
pub fn typescript_sdk() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            ensure_node();
            let dir = typescript_dir();
            let lock_file = dir.join("node_modules.lock");
            let lock = std::fs::read_to_string(dir.join("package-lock.json"))
                .expect("worker-sdk/typescript/package-lock.json");
            let stamp = dir.join("node_modules").join(STAMP);
            setup::ensure(
                "the TypeScript SDK's npm packages",
                &lock_file,
                || std::fs::read_to_string(&stamp).is_ok_and(|s| s == lock),
                || {
                    setup::run(
                        Command::new("npm")
                            .args(["ci", "--no-audit", "--no-fund"])
                            .current_dir(&dir),
                    )?;
                    std::fs::write(&stamp, &lock).map_err(|e| format!("writing {STAMP}: {e}"))
                },
                &format!("cd {} && npm ci", dir.display()),
            );
            // Build every time a test process starts (the sources may have changed), under
            // the same lock so two test binaries never write dist/ at once.
            let built = std::cell::Cell::new(false);
            setup::ensure(
                "the TypeScript SDK's dist/",
                &lock_file,
                || built.get(),
                || {
                    setup::run(Command::new("npm").args(["run", "build"]).current_dir(&dir))?;
                    built.set(true);
                    Ok(())
                },
                &format!("cd {} && npm run build", dir.display()),
            );
            dir
        })
        .clone()
}
