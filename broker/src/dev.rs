//! `taskraft dev --nodes 3`: a local multi-node cluster in one process, for trying
//! things out. Node N listens on gRPC port `base + 10*(N-1)`, HTTP one above and the
//! peer service two above, with its data in `<data-dir>/node-N`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;

use crate::config::Config;
use crate::server;

/// Flags of `taskraft dev`.
#[derive(clap::Args, Clone, Debug)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// gRPC port of node 1; node N uses base + 10*(N-1), its HTTP port is one above and
    /// its peer port two above.
    #[arg(long, default_value_t = 7070)]
    pub base_port: u16,
    /// Parent directory of the nodes' data dirs.
    #[arg(long, default_value = "./taskraft-dev")]
    pub data_dir: PathBuf,
}

/// The configs of a dev cluster.
pub fn configs(args: &DevArgs) -> anyhow::Result<Vec<Config>> {
    anyhow::ensure!((1..=9).contains(&args.nodes), "--nodes must be 1 to 9");
    let port = |n: u64| args.base_port as u64 + 10 * (n - 1);
    let peers: BTreeMap<u64, String> = (1..=args.nodes)
        .map(|n| {
            (
                n,
                format!("127.0.0.1:{}/127.0.0.1:{}", port(n), port(n) + 2),
            )
        })
        .collect();
    (1..=args.nodes)
        .map(|n| {
            let mut c = Config::ephemeral(args.data_dir.join(format!("node-{n}")));
            c.id = n;
            c.listen = format!("127.0.0.1:{}", port(n)).parse()?;
            c.http = format!("127.0.0.1:{}", port(n) + 1).parse()?;
            c.peer_listen = format!("127.0.0.1:{}", port(n) + 2).parse()?;
            c.peers = if args.nodes > 1 {
                peers.clone()
            } else {
                BTreeMap::new()
            };
            c.advertise = Some(format!("127.0.0.1:{}", port(n)));
            c.peer_advertise = Some(format!("127.0.0.1:{}", port(n) + 2));
            Ok(c)
        })
        .collect()
}

/// Runs the cluster until `shutdown` resolves.
pub async fn run(args: DevArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut running = Vec::new();
    for config in configs(&args)? {
        let dir = config.data_dir.clone();
        let r = server::start(config).await?;
        println!(
            "node {}: grpc {}  http http://{}/  data {}",
            r.node.id(),
            r.grpc_addr,
            r.http_addr,
            dir.display()
        );
        running.push(r);
    }
    println!(
        "cluster of {} node(s) running; try: taskraft --server {} cluster status   (ctrl-c stops)",
        running.len(),
        running[0].grpc_addr
    );
    shutdown.await;
    for r in running {
        r.shutdown().await?;
    }
    Ok(())
}
