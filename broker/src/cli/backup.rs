//! `taskraft backup --out FILE`: streams `Admin.Backup` into a file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use taskraft_proto::v1 as pb;
use tokio::io::AsyncWriteExt;

use super::output::print_json;
use super::{CliError, Conn};

/// `taskraft backup`.
#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// The file to write. The backup goes to FILE.partial first and is renamed to FILE
    /// (after an fsync) only once complete.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `taskraft backup`.
pub async fn run(conn: &mut Conn, args: BackupArgs) -> Result<(), CliError> {
    let mut req = conn.req(pb::BackupRequest {});
    // A large state takes a while; the server stops when we stop reading.
    req.set_timeout(Duration::from_secs(24 * 3600));
    let mut stream = conn
        .admin
        .backup(req)
        .await
        .map_err(|s| conn.fail(s))?
        .into_inner();
    let partial = PathBuf::from(format!("{}.partial", args.out.display()));
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut bytes = 0u64;
    let mut applied = None;
    let outcome: Result<(), CliError> = async {
        while let Some(chunk) = stream.message().await.map_err(|s| conn.fail(s))? {
            file.write_all(&chunk.data)
                .await
                .with_context(|| format!("writing {}", partial.display()))?;
            bytes += chunk.data.len() as u64;
            if chunk.done {
                applied = Some(chunk.applied_index);
            }
        }
        Ok(())
    }
    .await;
    let applied = match (outcome, applied) {
        (Ok(()), Some(a)) => a,
        (Err(e), _) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        (Ok(()), None) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(anyhow::anyhow!("the backup stream ended before its last message").into());
        }
    };
    file.sync_all()
        .await
        .with_context(|| format!("syncing {}", partial.display()))?;
    drop(file);
    tokio::fs::rename(&partial, &args.out)
        .await
        .with_context(|| format!("renaming {} to {}", partial.display(), args.out.display()))?;
    if conn.json {
        print_json(&json!({
            "file": args.out.display().to_string(),
            "bytes": bytes,
            "applied_index": applied,
        }));
    } else {
        println!(
            "wrote {bytes} bytes to {} (consistent at log index {applied})",
            args.out.display()
        );
    }
    Ok(())
}
