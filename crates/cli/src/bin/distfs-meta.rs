//! `distfs-meta`: the metadata server. Configured by one TOML file (see
//! `crates/meta/meta.example.toml`); flags override single keys.

use anyhow::Context;
use clap::Parser;
use distfs_meta::{MetaConfig, MetaServer};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "distfs-meta", version, about = "DistFS metadata server")]
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
    /// Validate the configuration, print it and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    distfs::runtime::init_logging("info");
    distfs::runtime::block_on_main("distfs-meta", run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(p) => MetaConfig::from_file(p).with_context(|| format!("bad config file {}", p.display()))?,
        None => MetaConfig::default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    config.validate().context("invalid configuration")?;
    if args.check_config {
        println!("{config:#?}");
        return Ok(());
    }
    let shutdown = CancellationToken::new();
    let server = MetaServer::start(config, shutdown.clone()).await?;
    tracing::info!(addr = %server.local_addr(), "metadata server serving");
    distfs::runtime::shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await?;
    Ok(())
}
