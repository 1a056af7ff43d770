//! The FUSE adapter: serves a DistFS cluster at a mount point. `Mounted::new` mounts and
//! completes the kernel handshake; `Mounted::run` serves until the file system is
//! unmounted (by `Unmounter`, `umount` or `fusermount3 -u`). `mount` does both. The
//! callbacks are in `fs`, file data in `data`, errno mapping in `errno`.

mod around;
mod attr;
mod data;
pub mod errno;
mod fs;
mod lazy;
mod locks;
mod opens;
mod statahead;
mod state;
mod xattr;

pub use data::MAX_FILE_SIZE;
use distfs_client::Client;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The default readahead window of a mount (`MountOptions::readahead`).
pub const DEFAULT_READAHEAD: u64 = 8 << 20;

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
    /// The kernel's readahead window for files on the mount (`read_ahead_kb` of the
    /// mount's device; set when mounting as root, else left at the kernel's 128 KiB).
    /// Sequential reads then reach the mount as READs of up to 1 MiB, several of one
    /// handle in flight at once. `None` leaves the kernel's default.
    pub readahead: Option<u64>,
    /// Hand the rest of each verified 64 KiB piece a small read fetched, and a small
    /// file whose bytes came with its open, to the kernel's page cache (`around.rs`,
    /// `Inner::store_at_open`).
    pub read_around: bool,
    /// Fetch a directory's next entries after a run of lookups in it (`statahead.rs`).
    pub statahead: bool,
}

impl MountOptions {
    pub fn new(mountpoint: impl Into<PathBuf>) -> MountOptions {
        MountOptions {
            mountpoint: mountpoint.into(),
            allow_other: false,
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            threads: 1,
            readahead: Some(DEFAULT_READAHEAD),
            read_around: true,
            statahead: true,
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
        let inner =
            Arc::new(state::Inner::new(client, opts.attr_ttl, opts.entry_ttl, opts.read_around, opts.statahead));
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
        if let Err(e) = inner.around.start(session.notifier()) {
            tracing::warn!(error = %e, "cannot start the read-around thread; small reads go without it");
        }
        inner.start_renewer(&rt_for_renewer);
        if let Some(bytes) = opts.readahead {
            match set_readahead(&path, bytes) {
                Ok(dev) => tracing::debug!(%dev, kib = bytes >> 10, "readahead window set"),
                Err(e) => tracing::info!(error = %e, "cannot set the readahead window; the kernel's default stays"),
            }
        }
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

/// Sets the readahead window of the file system mounted at `path` (the `read_ahead_kb`
/// of its device in sysfs; needs root). Returns the device (`major:minor`).
fn set_readahead(path: &Path, bytes: u64) -> std::io::Result<String> {
    let path = std::fs::canonicalize(path)?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dev = mount_device(&info, &path).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} is not in /proc/self/mountinfo", path.display()))
    })?;
    std::fs::write(format!("/sys/class/bdi/{dev}/read_ahead_kb"), (bytes >> 10).to_string())?;
    Ok(dev)
}

/// The device (`major:minor`) of the last mount at `path` in a mountinfo listing: read
/// there rather than from `stat(path)`, which would ask the mount before it serves.
fn mount_device(mountinfo: &str, path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let want = path.as_os_str().as_bytes();
    mountinfo
        .lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let dev = f.nth(2)?;
            let point = f.nth(1)?;
            (unescape_mountinfo(point) == want).then(|| dev.to_string())
        })
        .next_back()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash, ...).
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_device_is_found_by_its_escaped_path_and_the_last_mount_wins() {
        let info = "22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
                    90 22 0:53 / /tmp/my\\040mnt rw,nosuid,nodev - fuse.distfs distfs rw,user_id=0\n\
                    91 22 0:54 / /tmp/a rw - fuse.distfs distfs rw\n\
                    92 91 0:55 / /tmp/a rw - fuse.distfs distfs rw\n";
        assert_eq!(mount_device(info, Path::new("/tmp/my mnt")).as_deref(), Some("0:53"));
        assert_eq!(mount_device(info, Path::new("/tmp/a")).as_deref(), Some("0:55"));
        assert_eq!(mount_device(info, Path::new("/")).as_deref(), Some("253:1"));
        assert_eq!(mount_device(info, Path::new("/tmp/b")), None);
        assert_eq!(mount_device("garbage\n\n1 2", Path::new("/")), None);
        assert_eq!(unescape_mountinfo("a\\134b\\9"), b"a\\b\\9".to_vec());
    }
}
