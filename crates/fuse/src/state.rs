//! State of one mount shared by every operation: the client, the TTLs, the open file and
//! directory handles, and what this mount knows locally about inodes (a change counter
//! that invalidates per-handle readers, and the version whose pages the kernel caches).

use distfs_client::{Client, FileReader, FileWriter};
use distfs_types::{Attr, DirEntry, FsError, InodeId, Timestamp};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Remembered page-cache versions beyond this are forgotten (the next open of those
/// files simply drops their cached pages).
const MAX_CACHED_VERSIONS: usize = 100_000;

/// Directories remembered by `FreshDirs` beyond this: the expired ones are dropped first,
/// then all.
const MAX_FRESH_DIRS: usize = 10_000;

/// Directory attributes that this mount's namespace changes brought back, kept until the
/// kernel asks for them or the attribute TTL passes. The kernel drops a directory's
/// cached attributes after every change in it and asks again (GETATTR) before its next
/// permission check there; this answers that without a round trip, with what the
/// metadata service had just after the change (no staler than the kernel's own cache).
pub(crate) struct FreshDirs {
    ttl: Duration,
    map: Mutex<HashMap<InodeId, Fresh>>,
}

/// What `FreshDirs` holds of one directory.
struct Fresh {
    /// Its attributes, until the kernel takes them.
    attr: Option<Attr>,
    /// The newest version answered (an older answer arriving later is ignored).
    seen: u64,
    until: Instant,
}

impl FreshDirs {
    pub fn new(ttl: Duration) -> FreshDirs {
        FreshDirs { ttl, map: Mutex::default() }
    }

    /// Remembers `dirs`; an answer that arrives after a newer one (two changes in one
    /// directory racing) is ignored.
    pub fn put(&self, dirs: &[Attr]) {
        let now = Instant::now();
        let mut map = self.map.lock().expect("fresh dirs lock");
        if map.len() >= MAX_FRESH_DIRS {
            map.retain(|_, f| f.until > now);
            if map.len() >= MAX_FRESH_DIRS {
                map.clear();
            }
        }
        for a in dirs {
            match map.get(&a.ino) {
                Some(f) if f.seen >= a.version && f.until > now => {}
                _ => {
                    map.insert(a.ino, Fresh { attr: Some(a.clone()), seen: a.version, until: now + self.ttl });
                }
            }
        }
    }

    /// The remembered attributes of `ino`, once, if still within the TTL.
    pub fn take(&self, ino: InodeId) -> Option<Attr> {
        let mut map = self.map.lock().expect("fresh dirs lock");
        let f = map.get_mut(&ino)?;
        if f.until <= Instant::now() {
            map.remove(&ino);
            return None;
        }
        f.attr.take()
    }

    /// Forgets `ino`'s attributes (changed in a way no answer reported: an xattr).
    pub fn forget(&self, ino: InodeId) {
        self.map.lock().expect("fresh dirs lock").remove(&ino);
    }

    /// The kernel was just given `attr`: remembered attributes no newer are moot.
    fn told(&self, attr: &Attr) {
        let mut map = self.map.lock().expect("fresh dirs lock");
        if let Some(f) = map.get_mut(&attr.ino) {
            if f.attr.as_ref().is_some_and(|h| h.version <= attr.version) {
                f.attr = None;
            }
        }
    }
}

/// One open file (a kernel file handle).
pub(crate) struct OpenFile {
    pub ino: InodeId,
    /// Opened with `O_APPEND`: every write goes to the current end of the file.
    pub append: bool,
    /// Opened for writing (counted in `ReadAround`'s writers until removed).
    pub writable: bool,
    /// Highest offset (exclusive) written through this handle and not committed yet;
    /// 0 when the handle is clean. Read without the lock by `getattr`.
    pub pending_end: AtomicU64,
    pub io: tokio::sync::Mutex<FileIo>,
}

/// The I/O state of an open file; one operation at a time uses it.
#[derive(Default)]
pub(crate) struct FileIo {
    /// Buffers writes since the last commit; created at the first write.
    pub writer: Option<FileWriter>,
    /// File ranges written since the last commit, sorted and merged: a write overlapping
    /// one of them commits first (two blocks for the same bytes in one commit would carry
    /// the same sequence number, and which wins would be undefined).
    pub written: Vec<(u64, u64)>,
    /// The reader of this handle and the local change counter of the inode when it was
    /// opened; a newer counter means this mount changed the file since.
    pub reader: Option<(u64, Arc<FileReader>)>,
    /// The inode's open counter when the reader was made: read-around only while no
    /// open came after it.
    pub reader_opens: u64,
    /// A write that failed after `write` had returned success for earlier bytes: reported
    /// by the next `flush`/`fsync`.
    pub failed: Option<FsError>,
}

impl FileIo {
    /// Records `[start, end)` as written; returns false if it overlaps an earlier range.
    pub fn note_written(&mut self, start: u64, end: u64) -> bool {
        if self.written.iter().any(|&(s, e)| start < e && s < end) {
            return false;
        }
        let i = self.written.partition_point(|&(s, _)| s < start);
        self.written.insert(i, (start, end));
        // Merge with the neighbours it touches.
        if i + 1 < self.written.len() && self.written[i + 1].0 == end {
            self.written[i].1 = self.written[i + 1].1;
            self.written.remove(i + 1);
        }
        if i > 0 && self.written[i - 1].1 == start {
            self.written[i - 1].1 = self.written[i].1;
            self.written.remove(i);
        }
        true
    }
}

/// One open directory: a listing fetched page by page and kept for the handle's life, so
/// offsets stay valid while entries are added or removed.
pub(crate) struct DirStream {
    pub ino: InodeId,
    /// `.`, `..`, then the entries fetched so far, with their attributes when a
    /// READDIRPLUS fetched them.
    pub entries: Vec<(DirEntry, Option<Attr>)>,
    /// Name to continue the listing after; `None` with `done` when complete.
    pub after: Option<String>,
    pub done: bool,
}

#[derive(Default)]
struct InodeLocal {
    /// Bumped whenever this mount commits to or truncates the inode.
    changes: u64,
    /// Bumped at every open of the inode on this mount (where it may learn of another
    /// mount's change and drop the kernel's pages).
    opens: u64,
}

/// Everything one mount shares between operations.
pub(crate) struct Inner {
    pub client: Client,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
    next_fh: AtomicU64,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirStream>>>>,
    inodes: Mutex<HashMap<InodeId, InodeLocal>>,
    /// (mtime, size) of each file as the kernel's page cache holds it.
    cached: Mutex<HashMap<InodeId, (Timestamp, u64)>>,
    /// (mtime, size) of each inode in the last attributes this mount handed the kernel
    /// (`told`): what the kernel's attribute cache can hold, besides its own writes.
    told: Mutex<HashMap<InodeId, (Timestamp, u64)>>,
    /// Directory attributes from this mount's namespace changes, for the kernel's next
    /// GETATTR (shared with the client's `on_dirs_changed`).
    pub fresh_dirs: Arc<FreshDirs>,
    /// Tells the kernel to drop cached attributes; set once the session exists.
    pub notifier: std::sync::OnceLock<fuser::Notifier>,
    /// This mount's client session and the inodes it holds open.
    pub session: crate::opens::Session,
    /// Inodes known to have no extended attribute at all, or no `security.capability`,
    /// and until when (the kernel asks for that one before every write, `ls -l` for two or
    /// three per entry; see `xattr.rs`).
    pub no_xattrs: Mutex<HashMap<InodeId, (std::time::Instant, crate::xattr::Absent)>>,
    /// Read-around into the kernel's page cache, and the writers it must stay clear of.
    pub around: crate::around::ReadAround,
    /// Entries fetched ahead of a run of lookups in one directory.
    pub statahead: crate::statahead::Statahead,
}

impl Inner {
    pub fn new(client: Client, attr_ttl: Duration, entry_ttl: Duration, read_around: bool, statahead: bool) -> Inner {
        let fresh_dirs = Arc::new(FreshDirs::new(attr_ttl));
        let sink = fresh_dirs.clone();
        let client = client.on_dirs_changed(move |dirs| sink.put(dirs));
        Inner {
            fresh_dirs,
            client,
            attr_ttl,
            entry_ttl,
            next_fh: AtomicU64::new(1),
            files: Mutex::default(),
            dirs: Mutex::default(),
            inodes: Mutex::default(),
            cached: Mutex::default(),
            told: Mutex::default(),
            notifier: std::sync::OnceLock::new(),
            session: crate::opens::Session::new(),
            no_xattrs: Mutex::default(),
            around: crate::around::ReadAround::new(read_around),
            statahead: crate::statahead::Statahead::new(statahead),
        }
    }

    /// Registers a handle; a `writable` one must have been counted by
    /// `around.start_writing`, and `release` ends that.
    pub fn add_file(
        &self,
        ino: InodeId,
        append: bool,
        writable: bool,
        reader: Option<(u64, Arc<FileReader>)>,
        reader_opens: u64,
    ) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let io = FileIo { reader, reader_opens, ..FileIo::default() };
        let f = OpenFile { ino, append, writable, pending_end: AtomicU64::new(0), io: tokio::sync::Mutex::new(io) };
        self.files.lock().expect("files lock").insert(fh, Arc::new(f));
        fh
    }

    pub fn file(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.files.lock().expect("files lock").get(&fh).cloned()
    }

    pub fn remove_file(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.files.lock().expect("files lock").remove(&fh)
    }

    /// Every open handle of `ino`.
    pub fn files_of(&self, ino: InodeId) -> Vec<Arc<OpenFile>> {
        self.files.lock().expect("files lock").values().filter(|f| f.ino == ino).cloned().collect()
    }

    /// Every open handle (for the final commit at unmount).
    pub fn all_files(&self) -> Vec<(u64, Arc<OpenFile>)> {
        self.files.lock().expect("files lock").iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// Highest uncommitted end offset over the open handles of `ino` (0 if all clean).
    pub fn pending_end(&self, ino: InodeId) -> u64 {
        let files = self.files.lock().expect("files lock");
        files.values().filter(|f| f.ino == ino).map(|f| f.pending_end.load(Ordering::Acquire)).max().unwrap_or(0)
    }

    /// `attr` as this mount sees it: the size includes bytes buffered in open handles.
    pub fn with_pending(&self, mut attr: Attr) -> Attr {
        let pending = self.pending_end(attr.ino);
        if pending > attr.size {
            attr.size = pending;
        }
        attr
    }

    pub fn add_dir(&self, ino: InodeId) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let d = DirStream { ino, entries: Vec::new(), after: None, done: false };
        self.dirs.lock().expect("dirs lock").insert(fh, Arc::new(tokio::sync::Mutex::new(d)));
        fh
    }

    pub fn dir(&self, fh: u64) -> Option<Arc<tokio::sync::Mutex<DirStream>>> {
        self.dirs.lock().expect("dirs lock").get(&fh).cloned()
    }

    pub fn remove_dir(&self, fh: u64) {
        self.dirs.lock().expect("dirs lock").remove(&fh);
    }

    /// The local change counter of `ino`.
    pub fn changes(&self, ino: InodeId) -> u64 {
        self.inodes.lock().expect("inodes lock").get(&ino).map(|i| i.changes).unwrap_or(0)
    }

    /// Notes that this mount changed the content of `ino` (readers opened before are stale).
    pub fn changed(&self, ino: InodeId) {
        self.inodes.lock().expect("inodes lock").entry(ino).or_default().changes += 1;
    }

    /// Decides whether the kernel may keep its cached pages of a file being opened with
    /// attributes `attr`, and records `attr` as the version the cache will hold.
    pub fn keep_cache(&self, attr: &Attr) -> bool {
        let now = (attr.mtime, attr.size);
        let mut cached = self.cached.lock().expect("cached lock");
        if cached.len() >= MAX_CACHED_VERSIONS && !cached.contains_key(&attr.ino) {
            cached.clear();
        }
        cached.insert(attr.ino, now) == Some(now)
    }

    /// Counts an open of `ino`; returns the count.
    pub fn opened(&self, ino: InodeId) -> u64 {
        let mut inodes = self.inodes.lock().expect("inodes lock");
        let i = inodes.entry(ino).or_default();
        i.opens += 1;
        i.opens
    }

    /// The open counter of `ino`.
    pub fn opens(&self, ino: InodeId) -> u64 {
        self.inodes.lock().expect("inodes lock").get(&ino).map(|i| i.opens).unwrap_or(0)
    }

    /// Hands the kernel attributes through `send` (a `reply.attr`/`entry`/`created`
    /// call) and records their (mtime, size). Both happen under one lock: the kernel
    /// applies replies in the order they are written, so the record is the kernel's
    /// latest even when two replies for one inode race.
    pub fn tell<R>(&self, attr: &Attr, send: impl FnOnce() -> R) -> R {
        self.tell_all(std::slice::from_ref(attr), send)
    }

    /// `tell` for a reply that hands over several inodes' attributes (READDIRPLUS).
    pub fn tell_all<R>(&self, attrs: &[Attr], send: impl FnOnce() -> R) -> R {
        let mut told = self.told.lock().expect("told lock");
        if told.len() + attrs.len() > MAX_CACHED_VERSIONS {
            told.clear();
        }
        for attr in attrs {
            told.insert(attr.ino, (attr.mtime, attr.size));
            self.fresh_dirs.told(attr);
        }
        send()
    }

    /// Whether the kernel may cache attributes of `attr.ino` other than `attr`'s (mtime,
    /// size): it never had any from this mount, or had others.
    pub fn kernel_may_differ(&self, attr: &Attr) -> bool {
        self.told.lock().expect("told lock").get(&attr.ino) != Some(&(attr.mtime, attr.size))
    }

    /// Drops the kernel's cached attributes of `ino` (not its pages): an open that found
    /// the file changed must not keep reading up to a stale size.
    pub fn forget_attrs(&self, ino: InodeId) {
        if let Some(n) = self.notifier.get() {
            if let Err(e) = n.inval_inode(fuser::INodeNo(ino.0), -1, 0) {
                tracing::debug!(%ino, error = %e, "could not invalidate cached attributes");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_ranges_merge_and_detect_overlap() {
        let mut io = FileIo::default();
        assert!(io.note_written(0, 10));
        assert!(io.note_written(10, 20));
        assert_eq!(io.written, vec![(0, 20)]);
        assert!(io.note_written(30, 40));
        assert!(io.note_written(20, 30));
        assert_eq!(io.written, vec![(0, 40)]);
        assert!(!io.note_written(39, 41));
        assert!(!io.note_written(5, 6));
        assert!(io.note_written(100, 110));
        assert!(io.note_written(50, 60));
        assert_eq!(io.written, vec![(0, 40), (50, 60), (100, 110)]);
        assert!(!io.note_written(45, 55));
    }

    fn dir(ino: u64, version: u64) -> Attr {
        let t = Timestamp::default();
        Attr {
            ino: InodeId(ino),
            kind: distfs_types::FileKind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 2 + version as u32,
            atime: t,
            mtime: t,
            ctime: t,
            version,
        }
    }

    #[test]
    fn fresh_directory_attributes_are_answered_once_and_the_newest_wins() {
        let f = FreshDirs::new(Duration::from_secs(60));
        assert_eq!(f.take(InodeId(5)), None, "nothing remembered");
        f.put(&[dir(5, 3)]);
        assert_eq!(f.take(InodeId(5)), Some(dir(5, 3)));
        assert_eq!(f.take(InodeId(5)), None, "answered once: the next GETATTR asks the service");
        // Two changes in one directory whose answers arrive out of order.
        f.put(&[dir(5, 7)]);
        f.put(&[dir(5, 6)]);
        assert_eq!(f.take(InodeId(5)), Some(dir(5, 7)));
        f.put(&[dir(5, 6)]);
        assert_eq!(f.take(InodeId(5)), None, "an older answer after the newest was used");
        // The kernel was handed something at least as new (a lookup, a setattr).
        f.put(&[dir(5, 8), dir(9, 1)]);
        f.told(&dir(5, 8));
        assert_eq!(f.take(InodeId(5)), None);
        f.forget(InodeId(9));
        assert_eq!(f.take(InodeId(9)), None, "forgotten (an xattr changed its ctime)");
    }

    #[test]
    fn fresh_directory_attributes_expire_with_the_ttl() {
        let f = FreshDirs::new(Duration::ZERO);
        f.put(&[dir(5, 1)]);
        assert_eq!(f.take(InodeId(5)), None);
    }
}
