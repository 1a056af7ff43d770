//! `distfs mount`: serves the cluster at a mount point through `distfs-fuse`. In the
//! foreground until Ctrl-C/SIGTERM (unmount, exit 0) or an external `umount`; with
//! `--background` the program re-executes itself without that flag in a new session and
//! exits 0 once the mount answers.

use anyhow::Context;
use distfs_client::Client;
use distfs_fuse::{MountOptions, Mounted};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `f_type` of a FUSE file system in `statfs(2)`.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
/// How long `--background` waits for the detached mount to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The mount's caches that can be turned off.
pub struct Features {
    pub read_around: bool,
    pub statahead: bool,
}

pub async fn run(
    client: Client,
    mountpoint: PathBuf,
    background: bool,
    allow_other: bool,
    readahead: u64,
    features: Features,
) -> anyhow::Result<()> {
    check_mountpoint(&mountpoint)?;
    if background {
        return detach(&mountpoint).await;
    }
    let readahead = (readahead > 0).then_some(readahead);
    let Features { read_around, statahead } = features;
    let opts = MountOptions { allow_other, readahead, read_around, statahead, ..MountOptions::new(mountpoint.clone()) };
    let mut mounted = tokio::task::spawn_blocking(move || Mounted::new(client, opts)).await??;
    let mut unmounter = mounted.unmounter();
    eprintln!("distfs: mounted at {} (Ctrl-C or `fusermount3 -u` to unmount)", mountpoint.display());
    let mut serve = tokio::task::spawn_blocking(move || mounted.run());
    tokio::select! {
        r = &mut serve => {
            // Unmounted from outside (`umount`, `fusermount3 -u`).
            r??;
            return Ok(());
        }
        _ = crate::runtime::shutdown_signal() => {}
    }
    eprintln!("distfs: unmounting {}", mountpoint.display());
    tokio::task::spawn_blocking(move || unmounter.unmount()).await??;
    serve.await??;
    Ok(())
}

fn check_mountpoint(p: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => anyhow::bail!("mount point {} is not a directory", p.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("mount point {} does not exist (create it with mkdir first)", p.display())
        }
        Err(e) => Err(e).with_context(|| format!("cannot use {} as a mount point", p.display())),
    }
}

/// Starts this program again without `--background`, detached from the terminal, and
/// waits until a FUSE file system answers at `mountpoint`.
async fn detach(mountpoint: &Path) -> anyhow::Result<()> {
    let before = std::fs::metadata(mountpoint)?.dev();
    let exe = std::env::current_exe().context("cannot find this program to start it in the background")?;
    let args: Vec<_> = std::env::args_os().skip(1).filter(|a| a != "--background").collect();
    let log_path = match std::env::var_os("DISTFS_MOUNT_LOG") {
        Some(p) => PathBuf::from(p),
        None => std::env::temp_dir().join(format!("distfs-mount-{}.log", std::process::id())),
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open the mount log {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the background mount")?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            anyhow::bail!("the background mount exited ({status}) before it was ready:\n{}", log.trim_end());
        }
        if is_mounted(mountpoint, before) {
            eprintln!(
                "distfs: mounted at {} in the background (pid {}, log {})",
                mountpoint.display(),
                child.id(),
                log_path.display()
            );
            return Ok(());
        }
        if start.elapsed() > READY_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the background mount did not answer within {READY_TIMEOUT:?}; see {}", log_path.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True once `p` is the root of a FUSE mount that answers `stat` (a new device).
fn is_mounted(p: &Path, dev_before: u64) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else { return false };
    // SAFETY: `c` is NUL-terminated and `st` is a properly sized out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    st.f_type as i64 == FUSE_SUPER_MAGIC && std::fs::metadata(p).is_ok_and(|m| m.dev() != dev_before)
}
