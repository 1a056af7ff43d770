//! `LogDir`: the directory the Raft log lives in, the seam through which the disk enters
//! the log store. `FsLogDir` is a real directory; `MemLogDir` is the simulator's
//! crash-aware directory in memory, where only what was synced survives `after_crash`:
//! file contents at `sync` (fdatasync), names (create, remove, rename) at `sync_dir`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The file operations the log store needs, by file name inside one directory.
pub trait LogDir: Send + Sync + 'static {
    /// Names of the files in the directory, in no order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Length of a file in bytes.
    fn len(&self, name: &str) -> io::Result<u64>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Creates an empty file (an existing one is emptied); the name is durable after `sync_dir`.
    fn create(&self, name: &str) -> io::Result<()>;
    /// Writes all of `data` at `offset`, extending the file if needed.
    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes the file's contents durable (fdatasync).
    fn sync(&self, name: &str) -> io::Result<()>;
    /// Cuts or extends (with zeros) a file to `len` bytes; durable after `sync`.
    fn set_len(&self, name: &str, len: u64) -> io::Result<()>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Replaces `to` by `from` atomically.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creates, removes and renames durable (fsync of the directory).
    fn sync_dir(&self) -> io::Result<()>;
    /// Where a file is, for error messages.
    fn describe(&self, name: &str) -> String;
}

/// A real directory; open files are kept for the next call.
pub struct FsLogDir {
    path: PathBuf,
    files: Mutex<HashMap<String, Arc<File>>>,
}

impl FsLogDir {
    /// Opens (creating it if missing) the directory at `path`.
    pub fn open(path: &Path) -> io::Result<FsLogDir> {
        std::fs::create_dir_all(path)?;
        Ok(FsLogDir { path: path.to_path_buf(), files: Mutex::new(HashMap::new()) })
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<String, Arc<File>>> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn file(&self, name: &str) -> io::Result<Arc<File>> {
        if let Some(f) = self.cache().get(name) {
            return Ok(f.clone());
        }
        let f = Arc::new(OpenOptions::new().read(true).write(true).open(self.path.join(name))?);
        self.cache().insert(name.to_string(), f.clone());
        Ok(f)
    }
}

impl LogDir for FsLogDir {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.path)? {
            let e = e?;
            if e.file_type()?.is_file() {
                if let Some(n) = e.file_name().to_str() {
                    out.push(n.to_string());
                }
            }
        }
        Ok(out)
    }

    fn len(&self, name: &str) -> io::Result<u64> {
        Ok(self.file(name)?.metadata()?.len())
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file(name)?.read_exact_at(buf, offset)
    }

    fn create(&self, name: &str) -> io::Result<()> {
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(self.path.join(name))?;
        self.cache().insert(name.to_string(), Arc::new(f));
        Ok(())
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file(name)?.write_all_at(data, offset)
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        self.file(name)?.sync_data()
    }

    fn set_len(&self, name: &str, len: u64) -> io::Result<()> {
        self.file(name)?.set_len(len)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.cache().remove(name);
        std::fs::remove_file(self.path.join(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut c = self.cache();
        c.remove(from);
        c.remove(to);
        std::fs::rename(self.path.join(from), self.path.join(to))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }

    fn describe(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }
}

#[derive(Clone, Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    dirty: bool,
}

#[derive(Debug, Default)]
struct MemState {
    inodes: HashMap<u64, Inode>,
    /// What a directory listing shows now.
    names: HashMap<String, u64>,
    /// The names a crash keeps (as of the last `sync_dir`).
    durable_names: HashMap<String, u64>,
    next_inode: u64,
    syncs: u64,
}

/// A directory in memory that knows what a crash keeps; clones share it.
#[derive(Clone, Debug, Default)]
pub struct MemLogDir {
    state: Arc<Mutex<MemState>>,
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name} in the simulated log directory"))
}

fn to_usize(v: u64) -> io::Result<usize> {
    usize::try_from(v).map_err(|_| io::Error::other("offset beyond the simulated disk"))
}

impl MemLogDir {
    pub fn new() -> MemLogDir {
        MemLogDir::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The directory a node finds after a crash: the synced names with their synced
    /// contents, nothing else. The old value keeps serving the dying process.
    pub fn after_crash(&self) -> MemLogDir {
        let g = self.lock();
        let mut s = MemState { next_inode: g.next_inode, ..MemState::default() };
        for (name, ino) in &g.durable_names {
            let durable = g.inodes.get(ino).map(|i| i.durable.clone()).unwrap_or_default();
            s.inodes.insert(*ino, Inode { current: durable.clone(), durable, dirty: false });
            s.names.insert(name.clone(), *ino);
            s.durable_names.insert(name.clone(), *ino);
        }
        MemLogDir { state: Arc::new(Mutex::new(s)) }
    }

    /// fsyncs (of files and of the directory) on this incarnation of the directory.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    fn with_inode<T>(&self, name: &str, f: impl FnOnce(&mut Inode) -> io::Result<T>) -> io::Result<T> {
        let mut g = self.lock();
        let ino = *g.names.get(name).ok_or_else(|| not_found(name))?;
        let inode = g.inodes.get_mut(&ino).ok_or_else(|| not_found(name))?;
        f(inode)
    }
}

impl LogDir for MemLogDir {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.lock().names.keys().cloned().collect())
    }

    fn len(&self, name: &str) -> io::Result<u64> {
        self.with_inode(name, |i| Ok(i.current.len() as u64))
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with_inode(name, |i| {
            let start = to_usize(offset)?;
            let src = start.checked_add(buf.len()).and_then(|end| i.current.get(start..end));
            let src = src.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of file"))?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    fn create(&self, name: &str) -> io::Result<()> {
        let mut g = self.lock();
        if let Some(ino) = g.names.get(name).copied() {
            if let Some(i) = g.inodes.get_mut(&ino) {
                i.current.clear();
                i.dirty = true;
            }
            return Ok(());
        }
        g.next_inode += 1;
        let ino = g.next_inode;
        g.inodes.insert(ino, Inode::default());
        g.names.insert(name.to_string(), ino);
        Ok(())
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with_inode(name, |i| {
            let start = to_usize(offset)?;
            let end = start.checked_add(data.len()).ok_or_else(|| io::Error::other("write past the simulated disk"))?;
            if end > i.current.len() {
                i.current.resize(end, 0);
            }
            i.current[start..end].copy_from_slice(data);
            i.dirty = true;
            Ok(())
        })
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        self.with_inode(name, |i| {
            if i.dirty {
                i.durable.clone_from(&i.current);
                i.dirty = false;
            }
            Ok(())
        })?;
        self.lock().syncs += 1;
        Ok(())
    }

    fn set_len(&self, name: &str, len: u64) -> io::Result<()> {
        let len = to_usize(len)?;
        self.with_inode(name, |i| {
            i.current.resize(len, 0);
            i.dirty = true;
            Ok(())
        })
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.lock().names.remove(name).map(|_| ()).ok_or_else(|| not_found(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut g = self.lock();
        let ino = g.names.remove(from).ok_or_else(|| not_found(from))?;
        g.names.insert(to.to_string(), ino);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut g = self.lock();
        g.durable_names = g.names.clone();
        let live: std::collections::HashSet<u64> = g.names.values().copied().collect();
        g.inodes.retain(|ino, _| live.contains(ino));
        g.syncs += 1;
        Ok(())
    }

    fn describe(&self, name: &str) -> String {
        format!("<simulated log dir>/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_synced_contents_under_synced_names_only() {
        let d = MemLogDir::new();
        d.create("a").expect("create");
        d.write_at("a", 0, b"durable").expect("write");
        d.sync("a").expect("sync");
        d.sync_dir().expect("sync dir");
        d.write_at("a", 7, b"-tail").expect("write");
        d.create("b").expect("create");
        d.write_at("b", 0, b"b").expect("write");
        d.sync("b").expect("sync");
        let after = d.after_crash();
        assert_eq!(after.list().expect("list"), vec!["a".to_string()], "b was never in a synced directory");
        let mut buf = vec![0u8; usize::try_from(after.len("a").expect("len")).expect("small")];
        after.read_at("a", 0, &mut buf).expect("read");
        assert_eq!(buf, b"durable");
        // A rename is durable only with the directory.
        after.create("t").expect("create");
        after.sync("t").expect("sync");
        after.rename("t", "a").expect("rename");
        let again = after.after_crash();
        let mut buf = [0u8; 7];
        again.read_at("a", 0, &mut buf).expect("old a is back");
        assert_eq!(&buf, b"durable");
    }
}
