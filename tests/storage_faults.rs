//! Storage faults on a stopped node's files: a torn or truncated tail, a flipped byte.
//! At the next start the node either refuses to start with an error that names the
//! file, or serves every acknowledged job exactly as it was written. Never a panic,
//! never a wrong payload served silently.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use taskraft_proto::v1 as pb;
use taskraft_tests::*;

/// A one-node cluster that acknowledged jobs with distinct 1 KiB payloads, then was
/// stopped: by SIGTERM (files closed cleanly, which redb would trust without a check)
/// or by SIGKILL (files as a crash leaves them).
async fn stopped_node_with_jobs(
    dir: &Path,
    clean: bool,
) -> (ProcessNode, BTreeMap<String, Vec<u8>>) {
    let mut node = ProcessNode::spawn(dir, &[]).await;
    node.wait_ready().await;
    let mut c = node.clients().await;
    let mut jobs = BTreeMap::new();
    for b in 0..8 {
        let reqs: Vec<pb::EnqueueRequest> = (0..50)
            .map(|i| {
                let mut j = job("faults", "");
                j.payload = format!("{b:03}-{i:03}-").repeat(128).into_bytes().into();
                j
            })
            .collect();
        let payloads: Vec<Vec<u8>> = reqs.iter().map(|j| j.payload.to_vec()).collect();
        let r = c
            .broker
            .enqueue_batch(pb::EnqueueBatchRequest { jobs: reqs })
            .await
            .expect("enqueue")
            .into_inner();
        for (res, p) in r.results.into_iter().zip(payloads) {
            jobs.insert(res.job_id, p);
        }
    }
    if clean {
        assert!(node.terminate().success(), "clean stop");
    } else {
        node.kill9();
    }
    (node, jobs)
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Refused,
    Served,
}

/// Starts the node again and judges it: refused with an error naming `file`, or serves
/// every job unchanged.
async fn restart_and_judge(
    node: &mut ProcessNode,
    jobs: &BTreeMap<String, Vec<u8>>,
    file: &str,
    what: &str,
) -> Verdict {
    node.restart().await;
    let http = node.http;
    // Some(exit status) when it refused to start, None when it serves.
    let outcome = poll_until(SOON, || {
        let exited = node.exited();
        async move {
            if exited.is_some() {
                return Ok(exited);
            }
            match http_get(http, "/readyz").await {
                Some((200, _)) => Ok(None),
                _ => Err(()),
            }
        }
    })
    .await;
    match outcome {
        Ok(Some(status)) => {
            let log = node.log_text();
            assert!(!status.success(), "{what}: exited with success");
            assert!(
                !log.contains("panicked"),
                "{what}: the node panicked instead of reporting the fault:\n{log}"
            );
            assert!(
                log.contains(file),
                "{what}: the error does not name {file}:\n{log}"
            );
            return Verdict::Refused;
        }
        Ok(None) => {}
        Err(()) => panic!(
            "{what}: neither ready nor exited; log:\n{}",
            node.log_tail()
        ),
    }
    let mut c = node.clients().await;
    assert_all_served(&mut c, jobs, what).await;
    node.kill9();
    Verdict::Served
}

fn flip_byte(path: &Path, at: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x5a;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
}

/// Offset of the first occurrence of `pattern` in the file.
fn find(path: &Path, pattern: &[u8]) -> Option<u64> {
    let data = std::fs::read(path).unwrap();
    data.windows(pattern.len())
        .position(|w| w == pattern)
        .map(|p| p as u64)
}

fn truncate_to(path: &Path, len: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    f.set_len(len).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_or_truncated_files_are_refused_or_served_intact() {
    let mut verdicts = Vec::new();
    for (file, clean) in [
        ("raft-log.redb", false),
        ("raft-log.redb", true),
        ("state.redb", false),
        ("state.redb", true),
    ] {
        for fault in [
            "flip payload",
            "flip 1/2",
            "flip 3/4",
            "flip end-512",
            "truncate -4096",
            "truncate 1/2",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("node");
            let (mut node, jobs) = stopped_node_with_jobs(&data, clean).await;
            let path = data.join(file);
            let len = std::fs::metadata(&path).unwrap().len();
            match fault {
                // Inside a stored payload: served unchecked, this would be a wrong job.
                "flip payload" => match find(&path, b"003-017-003-017-") {
                    Some(at) => flip_byte(&path, at + 5),
                    // The log is purged behind a snapshot, and a state store killed
                    // within a second of a write holds it only in the log; a cleanly
                    // stopped store holds every payload.
                    None => {
                        assert!(file == "raft-log.redb" || !clean, "no payload in {file}");
                        continue;
                    }
                },
                "flip 1/2" => flip_byte(&path, len / 2),
                "flip 3/4" => flip_byte(&path, len * 3 / 4),
                "flip end-512" => flip_byte(&path, len - 512),
                "truncate -4096" => truncate_to(&path, len - 4096),
                "truncate 1/2" => truncate_to(&path, len / 2),
                _ => unreachable!(),
            }
            let stop = if clean { "SIGTERM" } else { "SIGKILL" };
            let what = format!("{file} {fault} (of {len} bytes) after {stop}");
            let v = restart_and_judge(&mut node, &jobs, file, &what).await;
            eprintln!("{what}: {v:?}");
            if fault == "flip payload" {
                assert_eq!(
                    v,
                    Verdict::Refused,
                    "{what}: a damaged payload was not detected"
                );
            }
            verdicts.push((what, v));
        }
    }
    eprintln!("{verdicts:#?}");
    assert!(verdicts.iter().any(|(_, v)| *v == Verdict::Refused));
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a {mib} MiB tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(self.path())
            .output()
            .expect("df");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df output")
    }

    /// Leaves about `left` bytes free by writing a filler file.
    fn fill_leaving(&self, left: u64) -> std::path::PathBuf {
        let filler = self.path().join("filler");
        let size = self.free().saturating_sub(left);
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 1 << 20];
        let mut written = 0;
        while written < size {
            let n = chunk.len().min((size - written) as usize);
            f.write_all(&chunk[..n]).unwrap();
            written += n as u64;
        }
        f.sync_all().unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Enqueues batches of 4 KiB jobs until one is refused; returns what was acknowledged
/// and the refusal.
async fn enqueue_until_refused(
    c: &mut Clients,
    tag: &str,
) -> (BTreeMap<String, Vec<u8>>, tonic::Status) {
    let mut jobs = BTreeMap::new();
    for b in 0..100_000 {
        let reqs: Vec<pb::EnqueueRequest> = (0..50)
            .map(|i| {
                let mut j = job("disk", "");
                j.payload = format!("{tag}-{b:05}-{i:02}-")
                    .repeat(300)
                    .into_bytes()
                    .into();
                j
            })
            .collect();
        let payloads: Vec<Vec<u8>> = reqs.iter().map(|j| j.payload.to_vec()).collect();
        match c
            .broker
            .enqueue_batch(pb::EnqueueBatchRequest { jobs: reqs })
            .await
        {
            Ok(r) => {
                for (res, p) in r.into_inner().results.into_iter().zip(payloads) {
                    jobs.insert(res.job_id, p);
                }
            }
            Err(s) => return (jobs, s),
        }
    }
    panic!("the disk never filled up");
}

async fn assert_all_served(c: &mut Clients, jobs: &BTreeMap<String, Vec<u8>>, what: &str) {
    for (id, payload) in jobs {
        let j = c
            .broker
            .get_job(pb::GetJobRequest { job_id: id.clone() })
            .await
            .unwrap_or_else(|e| panic!("{what}: acknowledged job {id} not served: {e}"))
            .into_inner();
        assert!(
            j.payload.as_ref() == payload.as_slice(),
            "{what}: job {id} changed"
        );
    }
}

/// The free-space guard: enqueues are refused with a clear UNAVAILABLE before the disk
/// is full, leases and acks go on, and enqueues resume by themselves when space returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_refuses_enqueues_clearly_and_recovers_when_space_returns() {
    let fs = Tmpfs::mount(128);
    let mut node = ProcessNode::spawn(&fs.path().join("node"), &["--min-free-disk-mb", "32"]).await;
    node.wait_ready().await;
    let filler = fs.fill_leaving(56 << 20);
    let mut c = node.clients().await;
    let (jobs, refusal) = enqueue_until_refused(&mut c, "a").await;
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    assert!(
        refusal.message().contains("disk nearly full"),
        "the refusal says why: {}",
        refusal.message()
    );
    assert!(jobs.len() > 1_000, "only {} jobs fit", jobs.len());
    // Workers go on while enqueues are refused.
    let leased = c
        .broker
        .lease(lease("disk", 10, 30_000, 0))
        .await
        .expect("lease")
        .into_inner()
        .jobs;
    assert_eq!(leased.len(), 10);
    for j in &leased {
        let ack = pb::AckRequest {
            job_id: j.job_id.clone(),
            lease_id: j.lease_id.clone(),
            result: Default::default(),
        };
        c.broker
            .ack(ack)
            .await
            .expect("ack while the disk is nearly full");
    }
    assert_all_served(&mut c, &jobs, "while refusing").await;
    // Space returns: enqueues resume without a restart.
    std::fs::remove_file(filler).unwrap();
    let again = eventually("enqueues resume once space returns", SOON, || {
        let mut c = c.clone();
        async move { c.broker.enqueue(job("disk", "after")).await.ok() }
    })
    .await;
    node.restart().await;
    node.wait_ready().await;
    let mut c = node.clients().await;
    assert_all_served(&mut c, &jobs, "after a restart").await;
    get_job(&mut c, &again.into_inner().job_id).await;
}

/// Without the guard the disk really fills in the middle of writes: the writes fail,
/// the node stops (openraft cannot go on after a failed append), and once space
/// returns a restart serves every acknowledged job unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_corrupts_nothing_and_a_restart_recovers() {
    let fs = Tmpfs::mount(128);
    let mut node = ProcessNode::spawn(&fs.path().join("node"), &["--min-free-disk-mb", "0"]).await;
    node.wait_ready().await;
    let filler = fs.fill_leaving(24 << 20);
    let mut c = node.clients().await;
    let (jobs, refusal) = enqueue_until_refused(&mut c, "b").await;
    eprintln!("refused after {} jobs: {refusal:?}", jobs.len());
    assert!(jobs.len() > 500, "only {} jobs fit", jobs.len());
    std::fs::remove_file(filler).unwrap();
    node.restart().await;
    node.wait_ready().await;
    let mut c = node.clients().await;
    assert_all_served(&mut c, &jobs, "after the disk was full").await;
    c.broker
        .enqueue(job("disk", "after"))
        .await
        .expect("writes work again");
    eprintln!("log:\n{}", node.log_tail());
}
