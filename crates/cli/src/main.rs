//! `distfs`: the client tool. See `distfs --help`.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = distfs::cmd::Cli::parse();
    let server = matches!(cli.command, distfs::cmd::Command::Local { .. } | distfs::cmd::Command::Mount { .. });
    distfs::runtime::init_logging(if server { "info" } else { "warn" });
    distfs::runtime::block_on_main("distfs", server, distfs::cmd::run(cli))
}
