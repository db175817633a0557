//! Things a test needs installed (Chromium, a Python virtualenv, npm packages), done once
//! per machine and safely under concurrency.
//!
//! `cargo test` runs the test binaries one after another but the tests inside a binary on
//! many threads, and a developer may run two `cargo test` at once. So every install goes
//! through two locks:
//!
//! ```text
//!   ready()? ── yes ──> done (no lock taken: the common, warm case)
//!      │ no
//!   process lock (std Mutex: one thread of this binary at a time)
//!   file lock    (flock on a lock file: one process of this machine at a time)
//!   ready()? ── yes ──> done (someone else installed it while we waited)
//!      │ no
//!   install() ──> ready()? ── no ──> panic naming the command to run by hand
//! ```
//!
//! apt itself is told to wait for the dpkg lock (`DPkg::Lock::Timeout`), so an install
//! that an unrelated process holds the lock for waits instead of failing.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

/// Serializes installs between the threads of one test binary. `flock` on separately
/// opened files would too, but `File::lock` does not promise that on every platform.
static PROCESS_LOCK: Mutex<()> = Mutex::new(());

/// Makes sure something is installed: returns at once when `ready()` holds, otherwise
/// takes the process and file locks, checks again, and runs `install`.
///
/// `lock_file` names the machine-wide lock (created when missing); `manual` is the
/// command a person would run to do the install by hand, quoted in the panic message
/// when the install fails.
pub fn ensure(
    what: &str,
    lock_file: &Path,
    ready: impl Fn() -> bool,
    install: impl FnOnce() -> Result<(), String>,
    manual: &str,
) {
    if ready() {
        return;
    }
    // A previous test that panicked while holding the lock poisons it; the install
    // state is re-checked below, so the poison carries no information worth failing on.
    let _process = PROCESS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let _file = lock(lock_file);
    if ready() {
        return;
    }
    if let Err(e) = install() {
        panic!("could not install {what}: {e}\nInstall it by hand with:\n    {manual}");
    }
    assert!(
        ready(),
        "installing {what} reported success but it is still not usable.\n\
         Install it by hand with:\n    {manual}"
    );
}

/// Opens (creating if needed) and exclusively locks `path`; the lock lasts as long as
/// the returned file is open, and the kernel drops it if the process dies.
pub fn lock(path: &Path) -> File {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("creating lock directory {}: {e}", dir.display()));
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening lock file {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
    file
}

/// The machine-wide lock for apt installs: every test binary of every checkout on this
/// machine shares it.
fn apt_lock_file() -> PathBuf {
    std::env::temp_dir().join("taskraft-tests").join("apt.lock")
}

/// Runs a command to completion, with its output captured, and turns a failure into a
/// message with that output.
pub fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs Debian `packages` with apt-get until `ready()` holds: first without, then
/// after an `apt-get update` (a fresh machine has no package lists yet). Needs root.
pub fn apt_install(packages: &[&str], ready: impl Fn() -> bool) {
    let manual = format!(
        "apt-get update && apt-get install -y {}",
        packages.join(" ")
    );
    ensure(
        &packages.join(" "),
        &apt_lock_file(),
        ready,
        || {
            if !is_root() {
                return Err("the tests are not running as root, so they cannot use apt-get".into());
            }
            let apt = |args: &[&str]| {
                run(Command::new("apt-get")
                    .args(["-o", "DPkg::Lock::Timeout=600", "-q"])
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive"))
            };
            let mut install = vec!["install", "-y", "--no-install-recommends"];
            install.extend_from_slice(packages);
            match apt(&install) {
                Ok(_) => Ok(()),
                Err(_) => {
                    apt(&["update"])?;
                    apt(&install).map(|_| ())
                }
            }
        },
        &manual,
    );
}

/// Headless Chromium, installed from Debian's packages when missing.
pub fn chromium() -> PathBuf {
    let found = || {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    apt_install(&["chromium"], || found().is_some());
    found().expect("chromium is installed")
}

/// libfaketime's preload library (`LD_PRELOAD` it with `FAKETIME=+2h` to run a process
/// with its wall clock off), installed from Debian's `faketime` package when missing.
pub fn faketime() -> PathBuf {
    let found = || -> Option<PathBuf> {
        let usual = Path::new("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1");
        if usual.exists() {
            return Some(usual.to_path_buf());
        }
        // Other architectures: ask dpkg where the package put it.
        let out = Command::new("dpkg")
            .args(["-L", "libfaketime"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(PathBuf::from)
            .find(|p| p.ends_with("libfaketime.so.1") && p.exists())
    };
    apt_install(&["faketime"], || found().is_some());
    found().expect("libfaketime is installed")
}

/// A Python virtualenv at `venv` with the packages of `requirements` installed; rebuilt
/// when it is missing, broken (`check_import` fails), or was built from other pins.
/// Returns the venv's interpreter.
pub fn python_venv(venv: &Path, requirements: &Path, check_import: &str) -> PathBuf {
    /// Written into the venv after a successful install; holds the requirements it was
    /// built from.
    const STAMP: &str = ".taskraft-requirements";
    let python = venv.join("bin").join("python");
    let wanted = std::fs::read_to_string(requirements)
        .unwrap_or_else(|e| panic!("reading {}: {e}", requirements.display()));
    let ready = || {
        std::fs::read_to_string(venv.join(STAMP)).is_ok_and(|s| s == wanted)
            && Command::new(&python)
                .args(["-c", check_import])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    };
    let lock_file = venv.with_extension("lock");
    let manual = format!(
        "python3 -m venv {v} && {v}/bin/pip install -r {r}",
        v = venv.display(),
        r = requirements.display()
    );
    ensure(
        &format!("the Python virtualenv {}", venv.display()),
        &lock_file,
        ready,
        || {
            run(Command::new("python3").arg("--version")).map_err(|e| {
                format!(
                    "python3 is needed on PATH (Debian: apt-get install python3 python3-venv): {e}"
                )
            })?;
            if venv.exists() {
                std::fs::remove_dir_all(venv)
                    .map_err(|e| format!("removing the stale {}: {e}", venv.display()))?;
            }
            run(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
            run(Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(["--no-input", "-r"])
                .arg(requirements))?;
            std::fs::write(venv.join(STAMP), &wanted)
                .map_err(|e| format!("writing the venv stamp: {e}"))
        },
        &manual,
    );
    python
}
