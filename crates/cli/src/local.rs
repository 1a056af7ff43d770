//! `distfs local up`: one metadata server and N storage nodes in this process, with all
//! data under one directory, in the foreground until Ctrl-C. The embedded default: the
//! same server code as the separate programs, wired on loopback.

use anyhow::Context;
use distfs_client::{Client, ClientConfig};
use distfs_meta::{MetaConfig, MetaServer};
use distfs_storage::{StorageConfig, StorageNode, SyncPolicy};
use distfs_types::NodeState;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub struct LocalOptions {
    pub dir: PathBuf,
    pub listen: String,
    pub storage: usize,
    pub meta_servers: usize,
    pub replication: u32,
    pub sync: String,
}

pub async fn up(opts: LocalOptions) -> anyhow::Result<()> {
    anyhow::ensure!(opts.storage >= 1, "--storage must be at least 1");
    let sync = SyncPolicy::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(&opts.sync))
        .map_err(|_| anyhow::anyhow!("--sync must be always, batch or none (got `{}`)", opts.sync))?;
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create data directory {}", opts.dir.display()))?;
    let dir = opts.dir.canonicalize()?;
    let shutdown = CancellationToken::new();

    anyhow::ensure!(
        matches!(opts.meta_servers, 1 | 3 | 5),
        "--meta must be 1, 3 or 5 metadata servers (got {})",
        opts.meta_servers
    );
    let first: std::net::SocketAddr =
        opts.listen.parse().with_context(|| format!("--listen `{}` is not an IP:PORT address", opts.listen))?;
    let addrs: Vec<String> = (0..opts.meta_servers as u16)
        .map(|i| std::net::SocketAddr::new(first.ip(), first.port() + i).to_string())
        .collect();
    let initial_members: Vec<String> = if opts.meta_servers == 1 {
        Vec::new()
    } else {
        addrs.iter().enumerate().map(|(i, a)| format!("{}@{a}", i + 1)).collect()
    };
    let mut metas = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let data_dir = if opts.meta_servers == 1 { dir.join("meta") } else { dir.join(format!("meta-{}", i + 1)) };
        let cfg = MetaConfig {
            id: i as u64 + 1,
            listen: addr.clone(),
            data_dir,
            replication: opts.replication,
            initial_members: initial_members.clone(),
            // `local up` is a development cluster on loopback: plain TCP, said explicitly.
            tls: distfs_proto::TlsSettings::off(),
            ..MetaConfig::default()
        };
        let server = MetaServer::start(cfg, shutdown.child_token())
            .await
            .with_context(|| format!("cannot start metadata server {} on {addr}", i + 1))?;
        metas.push(server);
    }
    let meta_addr = addrs.join(",");

    let mut nodes = Vec::new();
    for i in 0..opts.storage {
        let cfg = StorageConfig {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.join(format!("storage-{}", i + 1)),
            meta: addrs.clone(),
            zone: format!("local-{}", i + 1),
            sync,
            tls: distfs_proto::TlsSettings::off(),
            ..StorageConfig::default()
        };
        let node = StorageNode::start(cfg, shutdown.child_token())
            .await
            .with_context(|| format!("cannot start storage node {}", i + 1))?;
        nodes.push(node);
    }

    // Ready when every storage node is registered and up.
    let client = Client::new(ClientConfig { meta: addrs.clone(), ..ClientConfig::default() });
    let start = Instant::now();
    loop {
        if let Ok(s) = client.cluster_status().await {
            if s.nodes.iter().filter(|n| n.state == NodeState::Up).count() >= opts.storage {
                break;
            }
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "storage nodes did not come up within 60s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    info!(meta = %meta_addr, storage = opts.storage, dir = %dir.display(), "DistFS local cluster is up");
    println!(
        "DistFS is up: metadata at {meta_addr}, {} storage nodes, data in {}.\n\
         Try `distfs put FILE /FILE`, `distfs ls -l /`, `distfs cluster status`. Ctrl-C stops.",
        opts.storage,
        dir.display()
    );
    if opts.meta_servers > 1 {
        println!("Clients should know every metadata server: export DISTFS_META={meta_addr}");
    }

    crate::runtime::shutdown_signal().await;
    info!("stopping");
    shutdown.cancel();
    for n in &nodes {
        n.shutdown().await;
    }
    for m in metas {
        m.shutdown().await?;
    }
    println!("DistFS stopped; data kept in {}.", dir.display());
    Ok(())
}
