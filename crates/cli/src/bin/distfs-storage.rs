//! `distfs-storage`: a storage node. Configured by one TOML file (see
//! `crates/storage/storage.example.toml`); flags override single keys. SIGHUP reloads the
//! file's reloadable keys; SIGTERM/SIGINT shut down gracefully.

use clap::Parser;
use distfs::server_main::{init_logging, load, serve_until_signal, ServerArgs};
use distfs_storage::{StorageConfig, StorageNode};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "distfs-storage", version, about = "DistFS storage node")]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// Override `meta` (comma separated metadata server addresses).
    #[arg(long, value_delimiter = ',')]
    meta: Option<Vec<String>>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    distfs::runtime::block_on_main("distfs-storage", true, run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    distfs::runtime::catch_hangups();
    let meta = args.meta.clone();
    let tweak = move |c: &mut StorageConfig| {
        if let Some(m) = &meta {
            c.meta = m.clone();
        }
    };
    let Some(config) = load::<StorageConfig>(&args.server, &tweak)? else { return Ok(()) };
    let log = init_logging(&args.server, &config)?;
    let node = StorageNode::start(config, CancellationToken::new()).await?;
    serve_until_signal(node.local_addr(), &args.server, &tweak, &node, &log).await;
    node.shutdown().await;
    Ok(())
}
