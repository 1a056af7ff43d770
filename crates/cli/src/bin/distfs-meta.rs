//! `distfs-meta`: the metadata server. Configured by one TOML file (see
//! `crates/meta/meta.example.toml`); flags override single keys. SIGHUP reloads the
//! file's reloadable keys; SIGTERM/SIGINT shut down gracefully.

use clap::Parser;
use distfs::server_main::{init_logging, load, serve_until_signal, ServerArgs};
use distfs_meta::{MetaConfig, MetaServer};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "distfs-meta", version, about = "DistFS metadata server")]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    distfs::runtime::block_on_main("distfs-meta", true, run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    distfs::runtime::catch_hangups();
    let tweak = |_: &mut MetaConfig| {};
    let Some(config) = load::<MetaConfig>(&args.server, &tweak)? else { return Ok(()) };
    let log = init_logging(&args.server, &config)?;
    let server = MetaServer::start(config, CancellationToken::new()).await?;
    serve_until_signal(server.local_addr(), &args.server, &tweak, &server, &log).await;
    server.shutdown().await?;
    Ok(())
}
