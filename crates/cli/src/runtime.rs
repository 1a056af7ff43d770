//! Plumbing shared by the three programs: logging setup, waiting for SIGINT/SIGTERM, and
//! the one place where errors become exit codes.

use distfs_client::ClientError;
use distfs_types::FsError;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// Logs to stderr; `RUST_LOG` overrides `default` (e.g. `RUST_LOG=distfs_meta=debug`).
pub fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Resolves when the process gets SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Exit codes of `distfs` (documented in the README):
/// 0 ok, 1 other error, 2 usage, 3 not found, 4 already exists, 5 wrong kind of file
/// (not a directory, is a directory, not empty), 6 cluster unavailable, 7 data error
/// (replicas missing, corrupt, not enough acknowledgements), 8 no space.
pub fn exit_code(e: &anyhow::Error) -> ExitCode {
    let fs = e.downcast_ref::<ClientError>().map(|c| c.as_fs()).or_else(|| e.downcast_ref::<FsError>().cloned());
    let code = match fs {
        Some(FsError::NotFound { .. } | FsError::StaleInode { .. }) => 3,
        Some(FsError::AlreadyExists { .. }) => 4,
        Some(FsError::NotADirectory { .. } | FsError::IsADirectory { .. } | FsError::DirectoryNotEmpty { .. }) => 5,
        Some(FsError::Unavailable { .. } | FsError::NotLeader { .. }) => 6,
        Some(
            FsError::NotEnoughReplicas { .. }
            | FsError::Corrupt { .. }
            | FsError::BlockNotFound { .. }
            | FsError::Io { .. },
        ) => 7,
        Some(FsError::NoSpace { .. }) => 8,
        Some(FsError::InvalidArgument { .. } | FsError::NameTooLong { .. }) => 2,
        _ => 1,
    };
    ExitCode::from(code)
}

/// The body of every `main`: builds the runtime, runs `fut`, prints an error as
/// `<program>: <error chain>` and maps it to an exit code.
pub fn block_on_main<F>(program: &str, fut: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            exit_code(&e)
        }
    }
}
