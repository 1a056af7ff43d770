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

/// Set once SIGINT or SIGTERM arrived (when `catch_signals` installed the handlers).
static SHUTDOWN: std::sync::OnceLock<tokio::sync::watch::Receiver<bool>> = std::sync::OnceLock::new();
/// Counts SIGHUPs (when `catch_signals` installed the handler).
static HANGUPS: std::sync::OnceLock<tokio::sync::watch::Receiver<u64>> = std::sync::OnceLock::new();

/// Installs SIGINT/SIGTERM handlers for the life of the process, so a signal that
/// arrives before a server reaches its shutdown wait is not lost (and does not kill the
/// process half-way through start-up). Must run inside the runtime.
fn catch_signals() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return;
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    if SHUTDOWN.set(rx).is_err() {
        return;
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
}

/// Installs a SIGHUP handler for the life of the process (the servers: SIGHUP reloads
/// the configuration); call it first thing, so an early SIGHUP does not kill the
/// process. Other programs keep the default (a closed terminal ends them). Must run
/// inside the runtime.
pub fn catch_hangups() {
    use tokio::signal::unix::{signal, SignalKind};
    if let Ok(mut hup) = signal(SignalKind::hangup()) {
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        if HANGUPS.set(rx).is_ok() {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tx.send_modify(|n| *n += 1);
                }
            });
        }
    }
}

/// SIGHUPs received so far (`None` when the process does not catch signals).
pub fn hangups() -> Option<tokio::sync::watch::Receiver<u64>> {
    HANGUPS.get().cloned()
}

/// Resolves when the process gets SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    if let Some(rx) = SHUTDOWN.get() {
        let _ = rx.clone().wait_for(|got| *got).await;
        return;
    }
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
/// (replicas missing, corrupt, not enough acknowledgements), 8 no space, 9 permission
/// denied (refused certificate, missing permission, admin command without admin rights),
/// 10 read-only (a snapshot).
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
        Some(FsError::PermissionDenied { .. }) => 9,
        Some(FsError::ReadOnly { .. }) => 10,
        Some(FsError::InvalidArgument { .. } | FsError::NameTooLong { .. }) => 2,
        _ => 1,
    };
    ExitCode::from(code)
}

/// Lifts the open-files limit: servers with thousands of clients and the
/// many-connections benchmark need it. Failure leaves the limit as it was.
fn raise_fd_limit() {
    // A privileged process (root, CAP_SYS_RESOURCE) may raise the hard limit too, up to
    // the kernel's `fs.nr_open`: a metadata server with 10,000 clients needs more than
    // the usual 1,024/4,096/20,000. Anyone else gets the soft limit raised to the hard one.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(1 << 20)
        .min(1 << 20);
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_max < nr_open {
            let more = libc::rlimit { rlim_cur: nr_open, rlim_max: nr_open };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &more) == 0 {
                return;
            }
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The body of every `main`: builds the runtime, runs `fut`, prints an error as
/// `<program>: <error chain>` and maps it to an exit code. Servers (`serves = true`)
/// catch SIGINT/SIGTERM from the start and shut down cleanly; client commands keep the
/// default, so Ctrl-C stops them at once. A closed stdout (`| head`) ends the program
/// quietly instead of failing a write.
///
/// SIGPIPE stays ignored (Rust's default): a peer that closes its connection while we
/// write (a TLS close_notify to a client that already left, a refused client) must be
/// an EPIPE error on that connection, never the death of a server or of the CLI before
/// it prints why it was refused. A closed stdout is handled where it is written (`cat`)
/// and, for `println!`, by a panic hook that exits quietly with 141 (128 + SIGPIPE), as a
/// program killed by SIGPIPE would.
pub fn block_on_main<F>(program: &str, serves: bool, fut: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    raise_fd_limit();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info)
    }));
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let fut = async {
        if serves {
            catch_signals();
        }
        fut.await
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            exit_code(&e)
        }
    }
}
