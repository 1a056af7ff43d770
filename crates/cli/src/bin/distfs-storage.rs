//! `distfs-storage`: a storage node. Configured by one TOML file (see
//! `crates/storage/storage.example.toml`); flags override single keys.

use clap::Parser;
use distfs::server_main::{load, serve_until_signal, ServerArgs};
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
    distfs::runtime::init_logging("info");
    distfs::runtime::block_on_main("distfs-storage", true, run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let meta = args.meta;
    let tweak = |c: &mut StorageConfig| {
        if let Some(m) = meta {
            c.meta = m;
        }
    };
    let Some(config) = load::<StorageConfig>(&args.server, tweak)? else { return Ok(()) };
    let node = StorageNode::start(config, CancellationToken::new()).await?;
    serve_until_signal(node.local_addr(), || async {
        node.shutdown().await;
        Ok(())
    })
    .await
}
