//! `distfs local up`: one metadata server and N storage nodes in this process, with all
//! data under one directory, in the foreground until Ctrl-C. The embedded default: the
//! same server code as the separate programs, wired on loopback.

use anyhow::Context;
use distfs_client::{Client, ClientConfig};
use distfs_meta::{MetaConfig, MetaServer};
use distfs_proto::{ClientTls, ClientTransport, Identity, Role, TlsPaths, TlsSettings};
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
    /// First HTTP port (see `distfs local up --help`); `None`: listen port + 80; 0: off.
    pub http_port: Option<u16>,
    /// TLS with certificates made in `dir/tls`.
    pub tls: bool,
}

/// The `[tls]` settings of server `name` for `local up` (certificates made on first use),
/// and the client transport for the admin.
fn local_tls(
    dir: &std::path::Path,
    on: bool,
) -> anyhow::Result<(impl Fn(&str) -> anyhow::Result<TlsSettings>, ClientTransport)> {
    let ca = dir.join("tls");
    if on {
        if !ca.join("ca.pem").exists() {
            crate::cert::init(&ca, "local", crate::cert::DEFAULT_CA_DAYS)?;
        }
        let admin = crate::cert::default_out(&ca, &Identity { role: Role::Admin, ..Identity::node("admin") });
        if !admin.join("client.pem").exists() {
            let id = Identity { role: Role::Admin, ..Identity::node("admin") };
            crate::cert::issue(&ca, &crate::cert::Request::new(id, vec![], crate::cert::DEFAULT_DAYS), &admin)?;
        }
    }
    let settings = {
        let ca = ca.clone();
        move |name: &str| -> anyhow::Result<TlsSettings> {
            if !on {
                // `local up` is a development cluster on loopback: plain TCP, said explicitly.
                return Ok(TlsSettings::off());
            }
            let id = Identity::node(name);
            let out = crate::cert::default_out(&ca, &id);
            if !out.join("node.pem").exists() {
                let req = crate::cert::Request::new(id, crate::cert::default_hosts(name), crate::cert::DEFAULT_DAYS);
                crate::cert::issue(&ca, &req, &out)?;
            }
            Ok(TlsSettings::on(ca.join("ca.pem"), out.join("node.pem"), out.join("node.key")))
        }
    };
    let transport = if on {
        let admin = ca.join("clients").join("admin");
        let paths = TlsPaths {
            ca: ca.join("ca.pem"),
            cert: Some(admin.join("client.pem")),
            key: Some(admin.join("client.key")),
        };
        ClientTransport { tls: Some(std::sync::Arc::new(ClientTls::load(&paths)?)), ..ClientTransport::default() }
    } else {
        ClientTransport::default()
    };
    Ok((settings, transport))
}

pub async fn up(opts: LocalOptions) -> anyhow::Result<()> {
    anyhow::ensure!(opts.storage >= 1, "--storage must be at least 1");
    let sync = SyncPolicy::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(&opts.sync))
        .map_err(|_| anyhow::anyhow!("--sync must be always, batch or none (got `{}`)", opts.sync))?;
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create data directory {}", opts.dir.display()))?;
    let dir = opts.dir.canonicalize()?;
    let (tls_for, transport) = local_tls(&dir, opts.tls)?;
    let shutdown = CancellationToken::new();

    anyhow::ensure!(
        matches!(opts.meta_servers, 1 | 3 | 5),
        "--meta must be 1, 3 or 5 metadata servers (got {})",
        opts.meta_servers
    );
    let first: std::net::SocketAddr =
        opts.listen.parse().with_context(|| format!("--listen `{}` is not an IP:PORT address", opts.listen))?;
    let http_base = match opts.http_port {
        Some(0) => None,
        Some(p) => Some(p),
        None => Some(
            first.port().checked_add(80).context("--listen port too high to derive the HTTP port; give --http-port")?,
        ),
    };
    let http = |offset: u16| -> anyhow::Result<Option<String>> {
        Ok(match http_base {
            None => Some(String::new()),
            Some(b) => {
                let port = b.checked_add(offset).context("--http-port too high")?;
                Some(std::net::SocketAddr::new(first.ip(), port).to_string())
            }
        })
    };
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
            http_addr: http(i as u16)?,
            tls: tls_for(&format!("meta-{}", i + 1))?,
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
            http_addr: http(100 + i as u16)?,
            tls: tls_for(&format!("storage-{}", i + 1))?,
            ..StorageConfig::default()
        };
        let node = StorageNode::start(cfg, shutdown.child_token())
            .await
            .with_context(|| format!("cannot start storage node {}", i + 1))?;
        nodes.push(node);
    }

    // Ready when every storage node is registered and up.
    let client = Client::new(ClientConfig { meta: addrs.clone(), transport, ..ClientConfig::default() });
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
    if let Some(a) = metas.first().and_then(|m| m.http_addr()) {
        println!(
            "Dashboard: http://{a}/ (metrics at /metrics on every server; storage nodes from port {}).",
            a.port() + 100
        );
    }
    if opts.tls {
        println!(
            "TLS is on: clients need export DISTFS_TLS_DIR={} (an admin certificate; more with \
             `distfs cert issue --dir {} --client NAME`).",
            dir.join("tls").join("clients").join("admin").display(),
            dir.join("tls").display()
        );
    }

    crate::runtime::shutdown_signal().await;
    info!("stopping");
    // Each server shuts down gracefully in turn (storage nodes first: they drain,
    // flush and deregister while the metadata service still runs).
    for n in &nodes {
        n.shutdown().await;
    }
    for m in metas {
        m.shutdown().await?;
    }
    println!("DistFS stopped; data kept in {}.", dir.display());
    Ok(())
}
