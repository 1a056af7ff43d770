//! `distfs-storage`: a storage node. Configured by one TOML file (see
//! `crates/storage/storage.example.toml`); flags override single keys.

use anyhow::Context;
use clap::Parser;
use distfs_storage::{StorageConfig, StorageNode};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "distfs-storage", version, about = "DistFS storage node")]
struct Args {
    /// TOML configuration file; without it, defaults apply.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override `listen`.
    #[arg(long)]
    listen: Option<String>,
    /// Override `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Override `meta` (comma separated metadata server addresses).
    #[arg(long, value_delimiter = ',')]
    meta: Option<Vec<String>>,
    /// Validate the configuration, print it and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    distfs::runtime::init_logging("info");
    distfs::runtime::block_on_main("distfs-storage", run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(p) => StorageConfig::from_file(p).with_context(|| format!("bad config file {}", p.display()))?,
        None => StorageConfig::default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(m) = args.meta {
        config.meta = m;
    }
    config.validate().context("invalid configuration")?;
    if args.check_config {
        println!("{config:#?}");
        return Ok(());
    }
    let shutdown = CancellationToken::new();
    let node = StorageNode::start(config, shutdown.clone()).await?;
    tracing::info!(addr = %node.local_addr(), "storage node serving");
    distfs::runtime::shutdown_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}
