//! The disk seam: every file operation of the block store goes through `Disk`, so a
//! simulator can inject faults (EIO, ENOSPC, torn writes, lost fsyncs). The calls are
//! synchronous; the store runs them inside `spawn_blocking`. `StdDisk` is the production
//! implementation on std::fs and libc.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// File-system totals from statvfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsStats {
    pub total: u64,
    /// Bytes an unprivileged writer may still use.
    pub available: u64,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
}

/// A file opened for reading.
pub trait ReadFile: Send {
    fn size(&self) -> io::Result<u64>;
    /// Reads into `buf` from `offset` until `buf` is full or the file ends; returns the
    /// number of bytes read.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

pub trait Disk: Send + Sync + 'static {
    /// Creates `path`, which must not exist, writes `parts` in order, and fsyncs the file
    /// before closing it when `sync` is set.
    fn write_new(&self, path: &Path, parts: &[&[u8]], sync: bool) -> io::Result<()>;
    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Creates a directory and any missing parents; `Ok(false)` when it already existed.
    fn create_dir(&self, path: &Path) -> io::Result<bool>;
    fn list(&self, dir: &Path) -> io::Result<Vec<Entry>>;
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// fsyncs a directory, making the entries created or renamed in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Flushes everything written to the file system that holds `path` (syncfs).
    fn sync_fs(&self, path: &Path) -> io::Result<()>;
    fn stat_fs(&self, path: &Path) -> io::Result<FsStats>;
}

/// The real disk.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdDisk;

struct StdFile(File);

impl ReadFile for StdFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

impl Disk for StdDisk {
    fn write_new(&self, path: &Path, parts: &[&[u8]], sync: bool) -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
        for p in parts {
            f.write_all(p)?;
        }
        if sync {
            f.sync_all()?;
        }
        Ok(())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        Ok(Box::new(StdFile(File::open(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<bool> {
        if path.is_dir() {
            return Ok(false);
        }
        match std::fs::create_dir_all(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            out.push(Entry { name: e.file_name().to_string_lossy().into_owned(), is_dir: e.file_type()?.is_dir() });
        }
        Ok(out)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    #[cfg(target_os = "linux")]
    fn sync_fs(&self, path: &Path) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let f = File::open(path)?;
        // SAFETY: `f` is an open descriptor for the duration of the call.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn sync_fs(&self, _path: &Path) -> io::Result<()> {
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        Ok(())
    }

    fn stat_fs(&self, path: &Path) -> io::Result<FsStats> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        // SAFETY: statvfs is plain old data; zeroed is a valid value for it.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let frsize = st.f_frsize as u64;
        Ok(FsStats {
            total: (st.f_blocks as u64).saturating_mul(frsize),
            available: (st.f_bavail as u64).saturating_mul(frsize),
        })
    }
}
