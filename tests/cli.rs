//! The real `taskraft` binary's client commands against an in-process node: output
//! (tables and `--json`), every command group, and the exit codes scripts rely on
//! (0 ok, 1 refused, 2 usage, 3 unreachable, 4 unauthenticated).

use std::process::Stdio;

use serde_json::Value;
use taskraft_tests::*;
use tokio::io::AsyncWriteExt;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.stdout))
    }
}

/// Runs `taskraft <args>` with no TASKRAFT_* settings from the outer environment,
/// plus `env`, feeding `stdin`.
async fn taskraft_with(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Out {
    let mut cmd = tokio::process::Command::new(taskraft_bin());
    cmd.args(args)
        .env_remove("TASKRAFT_SERVER")
        .env_remove("TASKRAFT_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawning taskraft");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).await.expect("writing stdin");
    drop(input);
    let out = tokio::time::timeout(SOON, child.wait_with_output())
        .await
        .expect("taskraft finishes in time")
        .expect("taskraft output");
    Out {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn taskraft(args: &[&str]) -> Out {
    taskraft_with(args, &[], b"").await
}

/// Runs and asserts exit 0.
async fn ok(args: &[&str]) -> Out {
    let out = taskraft(args).await;
    assert_eq!(
        out.code, 0,
        "taskraft {args:?} failed: {}{}",
        out.stdout, out.stderr
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_inspect_and_manage_jobs_and_queues() {
    let node = InProcNode::start().await;
    let server = node.addr().to_string();
    let s = server.as_str();

    // Global flags before the subcommand; plain output is just the id.
    let id = ok(&[
        "--server",
        s,
        "enqueue",
        "emails",
        "hello",
        "--priority",
        "3",
        "--job-type",
        "send",
        "-H",
        "trace=abc",
    ])
    .await
    .stdout
    .trim()
    .to_string();
    assert_eq!(id.len(), 36, "{id:?}");

    // Payload from stdin, global flags after the subcommand.
    let out = taskraft_with(
        &["enqueue", "emails", "-", "--server", s, "--json"],
        &[],
        b"from stdin",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let piped = out.json()["job_id"].as_str().unwrap().to_string();

    // --server from the environment; a delayed job.
    let out = taskraft_with(
        &["enqueue", "emails", "later", "--delay", "1h"],
        &[("TASKRAFT_SERVER", s)],
        b"",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let queues = ok(&["queues", "--server", s, "--json"]).await.json();
    let arr = queues.as_array().expect("array");
    assert_eq!(arr.len(), 1, "{queues}");
    let q = arr[0].as_object().unwrap();
    let mut keys: Vec<&str> = q.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "cancelled",
            "dead",
            "leased",
            "paused",
            "queue",
            "ready",
            "scheduled",
            "succeeded"
        ]
    );
    assert_eq!(q["queue"], "emails");
    assert_eq!(
        (q["ready"].as_u64(), q["scheduled"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(q["paused"], false);
    let table = ok(&["queues", "--server", s]).await.stdout;
    assert!(table.starts_with("QUEUE"), "{table}");
    assert!(table.contains("emails"), "{table}");

    let job = ok(&["job", "get", &id, "--server", s, "--json"])
        .await
        .json();
    assert_eq!(job["job_id"], id.as_str());
    assert_eq!(job["state"], "ready");
    assert_eq!(job["payload"], "hello");
    assert_eq!(job["priority"], 3);
    assert_eq!(job["job_type"], "send");
    assert_eq!(job["headers"]["trace"], "abc");
    let job = ok(&["job", "get", &piped, "--server", s, "--json"])
        .await
        .json();
    assert_eq!(job["payload"], "from stdin");
    let human = ok(&["--server", s, "job", "get", &id]).await.stdout;
    assert!(
        human.contains("state:") && human.contains("ready"),
        "{human}"
    );

    let scheduled = ok(&[
        "--server",
        s,
        "--json",
        "jobs",
        "list",
        "--queue",
        "emails",
        "--state",
        "scheduled",
    ])
    .await
    .json();
    assert_eq!(scheduled.as_array().unwrap().len(), 1, "{scheduled}");
    assert_eq!(scheduled[0]["payload"], "later");

    // Pause and resume.
    let paused = ok(&["--server", s, "--json", "queue", "pause", "emails"])
        .await
        .json();
    assert_eq!(paused["paused"], true);
    let queues = ok(&["--server", s, "--json", "queues"]).await.json();
    assert_eq!(queues[0]["paused"], true);
    ok(&["--server", s, "queue", "resume", "emails"]).await;

    // Cancel, then retry brings it back.
    let out = ok(&["--server", s, "job", "cancel", &id]).await;
    assert!(out.stdout.contains("cancelled"), "{}", out.stdout);
    let job = ok(&["--server", s, "--json", "job", "retry", &id])
        .await
        .json();
    assert_eq!(job["state"], "ready");
    let out = ok(&["--server", s, "--json", "queue", "redrive", "emails"]).await;
    assert_eq!(out.json()["count"], 0);

    let status = ok(&["--server", s, "--json", "cluster", "status"])
        .await
        .json();
    assert_eq!(status["leader_id"], 1);
    assert_eq!(status["nodes"][0]["role"], "leader");
    ok(&["--server", s, "cluster", "status"]).await;
    ok(&["--server", s, "workers"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refusals_exit_1_with_the_reason() {
    let node = InProcNode::start().await;
    let s = node.addr().to_string();
    let out = taskraft(&[
        "--server",
        &s,
        "job",
        "get",
        "01900000-0000-7000-8000-000000000000",
    ])
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
    let out = taskraft(&["--server", &s, "enqueue", "bad queue", "x"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("queue"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_exits_3_and_says_what_to_do() {
    let addr = format!("127.0.0.1:{}", free_port());
    let out = taskraft(&["--server", &addr, "queues"]).await;
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains(&addr), "{}", out.stderr);
    assert!(
        out.stderr.contains("is `taskraft serve` running?")
            && out.stderr.contains("TASKRAFT_SERVER"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_token_exits_4_and_the_right_one_works() {
    let node = InProcNode::start_with(|c| c.token = Some("s3cret".into())).await;
    let s = node.addr().to_string();
    let out = taskraft(&["--server", &s, "--token", "wrong", "queues"]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("TASKRAFT_TOKEN"), "{}", out.stderr);
    let out = taskraft(&["--server", &s, "queues"]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    let out = taskraft_with(
        &["--server", &s, "queues"],
        &[("TASKRAFT_TOKEN", "s3cret")],
        b"",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    ok(&["queues", "--token", "s3cret", "--server", &s]).await;
}

#[tokio::test]
async fn usage_errors_exit_2() {
    assert_eq!(taskraft(&["enqueue"]).await.code, 2);
    assert_eq!(
        taskraft(&["jobs", "list", "--state", "nope", "--queue", "q"])
            .await
            .code,
        2
    );
    assert_eq!(taskraft(&["no-such-command"]).await.code, 2);
    assert_eq!(taskraft(&["enqueue", "q", "--delay", "soon"]).await.code, 2);
}
