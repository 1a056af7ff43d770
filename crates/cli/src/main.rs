//! `distfs`: the client tool. See `distfs --help`.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Behave like other Unix tools when the reader of our stdout goes away
    // (`distfs cat f | head`): end quietly instead of failing a write.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = distfs::cmd::Cli::parse();
    let server = matches!(cli.command, distfs::cmd::Command::Local { .. });
    distfs::runtime::init_logging(if server { "info" } else { "warn" });
    distfs::runtime::block_on_main("distfs", distfs::cmd::run(cli))
}
