//! The FUSE adapter: serves a DistFS cluster at a mount point. `Mounted::new` mounts and
//! completes the kernel handshake; `Mounted::run` serves until the file system is
//! unmounted (by `Unmounter`, `umount` or `fusermount3 -u`). `mount` does both. The
//! callbacks are in `fs`, file data in `data`, errno mapping in `errno`.

mod attr;
mod data;
pub mod errno;
mod fs;
mod locks;
mod opens;
mod state;
mod xattr;

pub use data::MAX_FILE_SIZE;
use distfs_client::Client;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    pub mountpoint: PathBuf,
    /// Let other users than the mounting one use the mount (`allow_other`).
    pub allow_other: bool,
    /// How long the kernel may trust attributes without asking again.
    pub attr_ttl: Duration,
    /// How long the kernel may trust a name-to-inode lookup without asking again.
    pub entry_ttl: Duration,
    /// Threads reading requests from `/dev/fuse` (the work itself runs on tokio).
    pub threads: usize,
}

impl MountOptions {
    pub fn new(mountpoint: impl Into<PathBuf>) -> MountOptions {
        MountOptions {
            mountpoint: mountpoint.into(),
            allow_other: false,
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            threads: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    #[error("mount point {path} does not exist")]
    NoMountPoint { path: PathBuf },
    #[error("mount point {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot mount at {path}: {source}")]
    Mount { path: PathBuf, source: std::io::Error },
    #[error("the FUSE session at {path} ended with an error: {source}")]
    Session { path: PathBuf, source: std::io::Error },
    #[error("cannot unmount {path}: {source}")]
    Unmount { path: PathBuf, source: std::io::Error },
    #[error("cannot start a runtime for the mount: {0}")]
    Runtime(std::io::Error),
}

/// A mounted, initialised file system that is not served yet.
pub struct Mounted {
    session: fuser::Session<fs::DistFs>,
    mountpoint: PathBuf,
    /// Owned only when the caller had no runtime of its own.
    _runtime: Option<tokio::runtime::Runtime>,
}

/// Unmounts a `Mounted` from any thread; `run` then returns.
pub struct Unmounter {
    inner: fuser::SessionUnmounter,
    mountpoint: PathBuf,
}

impl Unmounter {
    /// Unmounts. A busy mount point (open files, a shell inside) is detached lazily: it
    /// disappears from the namespace now and the session ends when the last user leaves.
    pub fn unmount(&mut self) -> Result<(), FuseError> {
        match self.inner.unmount() {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmount failed; detaching lazily");
                lazy_unmount(&self.mountpoint)
                    .map_err(|source| FuseError::Unmount { path: self.mountpoint.clone(), source })
            }
        }
    }
}

/// `umount2(path, MNT_DETACH)`.
pub fn lazy_unmount(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Mounted {
    /// Mounts `client`'s cluster at `opts.mountpoint`. Uses the current tokio runtime when
    /// called from inside one (for example in `spawn_blocking`), else starts its own.
    pub fn new(client: Client, opts: MountOptions) -> Result<Mounted, FuseError> {
        let path = opts.mountpoint.clone();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(FuseError::NotADirectory { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FuseError::NoMountPoint { path }),
            Err(source) => return Err(FuseError::Mount { path, source }),
        }
        let (rt, runtime) = match tokio::runtime::Handle::try_current() {
            Ok(h) => (h, None),
            Err(_) => {
                let r = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("distfs-fuse")
                    .build()
                    .map_err(FuseError::Runtime)?;
                (r.handle().clone(), Some(r))
            }
        };
        let inner = Arc::new(state::Inner::new(client, opts.attr_ttl, opts.entry_ttl));
        let rt_for_renewer = rt.clone();
        let filesystem = fs::DistFs { inner: inner.clone(), rt };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("distfs".into()),
            fuser::MountOption::Subtype("distfs".into()),
            fuser::MountOption::DefaultPermissions,
            fuser::MountOption::NoDev,
            fuser::MountOption::NoSuid,
            fuser::MountOption::RW,
        ];
        if opts.allow_other {
            config.acl = fuser::SessionACL::All;
        }
        config.n_threads = Some(opts.threads.max(1));
        let session = fuser::Session::new(filesystem, &path, &config)
            .map_err(|source| FuseError::Mount { path: path.clone(), source })?;
        let _ = inner.notifier.set(session.notifier());
        inner.start_renewer(&rt_for_renewer);
        tracing::info!(mountpoint = %path.display(), "mounted");
        Ok(Mounted { session, mountpoint: path, _runtime: runtime })
    }

    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter { inner: self.session.unmount_callable(), mountpoint: self.mountpoint.clone() }
    }

    /// Serves requests until the file system is unmounted. Blocks: call it from a thread
    /// that is not a runtime worker (for example inside `spawn_blocking`).
    pub fn run(self) -> Result<(), FuseError> {
        let path = self.mountpoint.clone();
        let r = self.session.run().map_err(|source| FuseError::Session { path: path.clone(), source });
        tracing::info!(mountpoint = %path.display(), "unmounted");
        r
    }
}

/// Serves `client`'s cluster at `opts.mountpoint` until it is unmounted.
pub fn mount(client: Client, opts: MountOptions) -> Result<(), FuseError> {
    Mounted::new(client, opts)?.run()
}
