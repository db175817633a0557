//! `taskraft probe`: an HTTP GET of a node's `/readyz` (or `/healthz`), for container
//! health checks where the image has no curl. Exit 0 on a 2xx answer, 1 otherwise.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `taskraft probe` flags.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// The node's HTTP address (host:port).
    #[arg(long, env = "TASKRAFT_PROBE_HTTP", default_value = "127.0.0.1:7071")]
    pub http: String,
    /// Path to ask.
    #[arg(long, default_value = "/readyz")]
    pub path: String,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// GETs `path` from `addr`; returns the status code and the body.
pub async fn get(addr: &str, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(timeout, async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf);
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("{addr} did not answer HTTP"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .trim()
            .to_string();
        Ok((code, body))
    })
    .await
    .with_context(|| format!("no answer from {addr} within {timeout:?}"))?
}

/// Runs the probe: Ok when the answer is 2xx.
pub async fn run(args: &ProbeArgs) -> anyhow::Result<()> {
    let (code, body) = get(&args.http, &args.path, args.timeout).await?;
    if !(200..300).contains(&code) {
        bail!("{}{} answered {code}: {body}", args.http, args.path);
    }
    println!("{body}");
    Ok(())
}
