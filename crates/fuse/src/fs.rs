//! The `fuser::Filesystem` implementation. Each kernel request is a future that answers
//! its `Reply*` itself; it runs on the FUSE thread until it first waits and then as a task
//! of the tokio runtime (`lazy.rs`), so the FUSE thread never waits on the network and
//! many operations run at once. Namespace operations are thin calls into the client;
//! file data goes through `data.rs`; errors become errno values only via `errno.rs`.

use crate::attr::{file_attr, kind_of, time_or_now};
use crate::data::{gone_is_stale, MAX_FILE_SIZE};
use crate::errno::{errno_of, errno_of_client, local};
use crate::statahead::{OwnedChange, Touch};
use crate::state::Inner;
use crate::xattr::{mode_of, reply_sized, unsupported};
use distfs_client::Result;
use distfs_proto::RenameMode;
use distfs_types::{Attr, DirEntry, FileKind, FsError, InodeId, SetAttr};
use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{debug_span, warn, Instrument, Span};

/// Longest name of a directory entry, in bytes (`NAME_MAX`).
pub(crate) const NAME_MAX: usize = 255;
/// Size unit reported by `statfs`.
const STATFS_BLOCK: u64 = 4096;

const GEN: Generation = Generation(0);

pub(crate) struct DistFs {
    pub inner: Arc<Inner>,
    pub rt: tokio::runtime::Handle,
}

/// A directory entry name as DistFS stores it: UTF-8, at most `NAME_MAX` bytes.
fn name_of(name: &OsStr) -> std::result::Result<String, Errno> {
    if name.len() > NAME_MAX {
        return Err(errno_of(&FsError::NameTooLong { len: name.len(), max: NAME_MAX }));
    }
    name.to_str().map(str::to_string).ok_or(local::BAD_NAME)
}

/// An extended attribute name: UTF-8 (the kernel already bounds its length).
fn xattr_name(name: &OsStr) -> std::result::Result<String, Errno> {
    name.to_str().map(str::to_string).ok_or(local::BAD_NAME)
}

fn ino(i: INodeNo) -> InodeId {
    InodeId(i.0)
}

/// The kernel's uid/gid of the caller, to own what it creates.
#[derive(Clone, Copy)]
struct Caller {
    uid: u32,
    gid: u32,
}

impl Caller {
    fn of(req: &Request) -> Caller {
        Caller { uid: req.uid(), gid: req.gid() }
    }
}

impl DistFs {
    /// Runs a request: on this (FUSE) thread until it first waits, then on the runtime
    /// (`lazy.rs`), so that the request goes out without waking a runtime worker.
    fn spawn<F>(&self, span: Span, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        crate::lazy::run_here_then_spawn(&self.rt, fut.instrument(span));
    }

    /// Runs a request as a task of the runtime at once: for writes, whose first steps
    /// (copying and checksumming the data) would hold up the FUSE thread.
    fn spawn_task<F>(&self, span: Span, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(fut.instrument(span));
    }

    fn entry(inner: &Inner, reply: ReplyEntry, r: Result<Attr>) {
        match r {
            Ok(a) => inner.tell(&a, || reply.entry_with_ttls(&inner.attr_ttl, &inner.entry_ttl, &file_attr(&a), GEN)),
            Err(e) => reply.error(errno_of_client(&e)),
        }
    }

    fn empty(reply: ReplyEmpty, r: Result<()>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno_of_client(&e)),
        }
    }
}

impl Inner {
    /// The client creates as the mount's own uid/gid; a caller with other ids gets the
    /// new inode chowned to it (`default_permissions` checks against these owners).
    async fn own(&self, attr: Attr, who: Caller) -> Result<Attr> {
        if attr.uid == who.uid && attr.gid == who.gid {
            return Ok(attr);
        }
        let set = SetAttr { uid: Some(who.uid), gid: Some(who.gid), ..SetAttr::default() };
        self.client.setattr(attr.ino, set).await
    }

    /// Attributes with this mount's buffered bytes counted. An inode removed while this
    /// handle keeps it open (unlinked, renamed over) answers with what the handle saw.
    async fn getattr_local(&self, ino: InodeId, fh: Option<u64>) -> Result<Attr> {
        if let Some(a) = self.fresh_dirs.take(ino) {
            return Ok(a);
        }
        match self.client.getattr(ino).await {
            Ok(a) => Ok(self.with_pending(a)),
            Err(e) => {
                if let Some(f) = fh.and_then(|fh| self.file(fh)) {
                    let io = f.io.lock().await;
                    if let Some((_, r)) = &io.reader {
                        return Ok(Attr { nlink: 0, ..r.attr().clone() });
                    }
                }
                Err(gone_is_stale(ino, e))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn setattr(
        &self,
        ino: InodeId,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Result<Attr> {
        if size.is_some_and(|s| s > MAX_FILE_SIZE) {
            return Err(FsError::invalid("size past the largest file size").into());
        }
        let set = SetAttr {
            perm: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(time_or_now),
            mtime: mtime.map(time_or_now),
        };
        let mut set = set;
        if set.size.is_none() && set.atime.is_none() && set.mtime.is_none() {
            // chmod/chown to what the inode already has (`cp -a`, `tar`, `rsync` do it for
            // every file): a read instead of a replicated metadata write.
            let cur = self.client.getattr(ino).await.map_err(|e| gone_is_stale(ino, e))?;
            set.perm = set.perm.filter(|&p| p != cur.perm & 0o7777);
            set.uid = set.uid.filter(|&u| u != cur.uid);
            set.gid = set.gid.filter(|&g| g != cur.gid);
            if set == SetAttr::default() {
                return Ok(self.with_pending(cur));
            }
        }
        if size.is_some() {
            // A truncate changes the pages: no read-around may store older ones after it.
            self.around.start_writing(ino).await;
        }
        let r = self.setattr_counted(ino, set).await;
        if size.is_some() {
            self.around.stop_writing(ino);
        }
        r
    }

    async fn setattr_counted(&self, ino: InodeId, set: SetAttr) -> Result<Attr> {
        let size = set.size;
        if set.size.is_some() || set.mtime.is_some() || set.atime.is_some() {
            // Buffered writes come first: their commit would undo the truncate or the
            // mtime otherwise.
            self.commit_all(ino).await?;
        }
        let attr = self.client.setattr(ino, set).await.map_err(|e| gone_is_stale(ino, e));
        if size.is_some() {
            self.changed(ino);
        }
        Ok(self.with_pending(attr?))
    }

    async fn create_file(
        &self,
        parent: InodeId,
        name: &str,
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> Result<(Attr, u64)> {
        let exclusive = flags & libc::O_EXCL != 0;
        // Held from here: a failure below gives the hold back.
        let mut attr = self.create_held(parent, name, mode & 0o7777, exclusive).await?;
        let ino = attr.ino;
        self.around.start_writing(ino).await;
        let rest = async {
            attr = self.own(attr, who).await?;
            if flags & libc::O_TRUNC != 0 && attr.size > 0 {
                self.commit_all(attr.ino).await?;
                attr = self.client.truncate(attr.ino, 0).await?;
                self.changed(attr.ino);
            }
            Ok(attr)
        };
        match rest.await {
            Ok(attr) => {
                let fh = self.open_created(&attr, flags & libc::O_APPEND != 0);
                if exclusive {
                    // Made by this call (O_EXCL): a new inode has no extended attributes,
                    // so the kernel's question before the first write needs no round trip.
                    self.has_no_xattrs(attr.ino, crate::xattr::Absent::All);
                }
                Ok((attr, fh))
            }
            Err(e) => {
                self.around.stop_writing(ino);
                self.unhold(ino).await;
                Err(e)
            }
        }
    }

    /// Runs a statahead fetch (`statahead.rs`).
    async fn stat_ahead(self: std::sync::Arc<Self>, f: crate::statahead::Fetch) {
        let page = match self.client.readdir_plus_page(f.dir, Some(f.after.clone()), crate::statahead::PAGE).await {
            Ok((entries, _)) => entries,
            Err(e) => {
                tracing::debug!(dir = %f.dir, error = %e, "statahead fetch failed");
                self.statahead.fetched(f, None);
                return;
            }
        };
        let bare: Vec<InodeId> = page.iter().filter(|(_, _, has)| !has).map(|(e, _, _)| e.ino).collect();
        // Only what the page kept: a change that overlapped the fetch (a setxattr) may
        // have made its answer old.
        let kept = self.statahead.fetched(f, Some(page.into_iter().map(|(e, a, _)| (e.name, a)).collect()));
        for ino in bare.into_iter().filter(|i| kept.contains(i)) {
            self.has_no_xattrs(ino, crate::xattr::Absent::All);
        }
    }

    /// One READDIR (`plus` false) or READDIRPLUS reply from `offset` on: `add` takes
    /// each entry with its offset and, for `plus`, its attributes (`.` and `..` have
    /// none: the kernel links no dentry for them); true from `add` means full.
    async fn list(
        &self,
        fh: u64,
        offset: u64,
        plus: bool,
        mut add: impl FnMut(&DirEntry, Option<&Attr>, u64) -> bool,
    ) -> Result<()> {
        let Some(d) = self.dir(fh) else {
            return Err(FsError::invalid("unknown directory handle").into());
        };
        let mut d = d.lock().await;
        if offset == 0 {
            // First call or rewinddir: start a fresh listing.
            let me = d.ino;
            d.entries = vec![
                (DirEntry { name: ".".into(), ino: me, kind: FileKind::Dir }, None),
                (DirEntry { name: "..".into(), ino: me, kind: FileKind::Dir }, None),
            ];
            d.after = None;
            d.done = false;
        }
        let mut i = offset as usize;
        loop {
            while i >= d.entries.len() && !d.done {
                let (page, more): (Vec<(DirEntry, Option<Attr>)>, bool) = if plus {
                    let (page, more) = self.client.readdir_plus_page(d.ino, d.after.clone(), 1000).await?;
                    for (e, _, has) in &page {
                        if !has {
                            self.has_no_xattrs(e.ino, crate::xattr::Absent::All);
                        }
                    }
                    (page.into_iter().map(|(e, a, _)| (e, Some(self.with_pending(a)))).collect(), more)
                } else {
                    let (page, more) = self.client.readdir_page(d.ino, d.after.clone(), 1000).await?;
                    (page.into_iter().map(|e| (e, None)).collect(), more)
                };
                d.after = page.last().map(|(e, _)| e.name.clone());
                d.done = !more || d.after.is_none();
                d.entries.extend(page);
            }
            let Some((e, a)) = d.entries.get(i) else { return Ok(()) };
            let fetched;
            let a = match (plus, a, i < 2) {
                // Fetched by a plain READDIR of this stream earlier (the kernel mixes them).
                (true, None, false) => {
                    fetched = self.getattr_local(e.ino, None).await?;
                    Some(&fetched)
                }
                (_, a, _) => a.as_ref(),
            };
            if add(e, a, i as u64 + 1) {
                return Ok(());
            }
            i += 1;
        }
    }

    async fn readdir(&self, fh: u64, offset: u64, reply: &mut ReplyDirectory) -> Result<()> {
        self.list(fh, offset, false, |e, _, off| reply.add(INodeNo(e.ino.0), off, kind_of(e.kind), &e.name)).await
    }
}

impl Filesystem for DistFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Lookups and creates in one directory need not be serialized by the kernel:
        // every namespace operation is atomic in the metadata service.
        if config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS).is_err() {
            warn!("the kernel cannot run directory operations in parallel");
        }
        // fcntl locks (POSIX and OFD) come here, so they hold across mounts (locks.rs).
        // flock stays with the kernel: fuser does not pass FUSE_LK_FLOCK on, and flock and
        // fcntl locks must not conflict with each other.
        if config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS).is_err() {
            warn!("the kernel does not route fcntl locks to the file system: they are local to this machine");
        }
        // READDIRPLUS when the kernel sees lookups follow a listing (`ls -l`, `find`,
        // `rm -rf`): the attributes come with the names, one request per page.
        if config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO).is_err() {
            warn!("the kernel cannot list directories with attributes (READDIRPLUS)");
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn destroy(&mut self) {
        let inner = self.inner.clone();
        // Called on the thread that ran the session (not a runtime worker).
        self.rt.block_on(async move {
            inner.commit_everything().await;
            inner.close_session().await;
        });
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) if e == local::BAD_NAME => return reply.error(local::BAD_NAME_LOOKUP),
            Err(e) => return reply.error(e),
        };
        let inner = self.inner.clone();
        self.spawn(debug_span!("lookup", parent = parent.0, %name), async move {
            let ttl = inner.entry_ttl.min(inner.attr_ttl);
            if let Some((a, left)) = inner.statahead.get(ino(parent), &name, ttl) {
                let a = inner.with_pending(a);
                return inner.tell(&a, || reply.entry_with_ttls(&left, &left, &file_attr(&a), GEN));
            }
            let r = inner.client.lookup(ino(parent), &name).await;
            if r.is_ok() {
                if let Some(f) = inner.statahead.found(ino(parent), &name) {
                    tokio::spawn(Inner::stat_ahead(inner.clone(), f));
                }
            }
            DistFs::entry(&inner, reply, r.map(|a| inner.with_pending(a)));
        });
    }

    fn getattr(&self, _req: &Request, i: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let inner = self.inner.clone();
        self.spawn(debug_span!("getattr", ino = i.0), async move {
            match inner.getattr_local(ino(i), fh.map(|f| f.0)).await {
                Ok(a) => inner.tell(&a, || reply.attr(&inner.attr_ttl, &file_attr(&a))),
                Err(e) => reply.error(errno_of_client(&e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        i: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if size.is_some_and(|s| s > MAX_FILE_SIZE) {
            return reply.error(local::TOO_BIG);
        }
        let inner = self.inner.clone();
        let change = OwnedChange::new(&self.inner, Touch::inode(ino(i)));
        self.spawn(debug_span!("setattr", ino = i.0, ?size), async move {
            let _change = change;
            match inner.setattr(ino(i), mode, uid, gid, size, atime, mtime).await {
                Ok(a) => inner.tell(&a, || reply.attr(&inner.attr_ttl, &file_attr(&a))),
                Err(e) => reply.error(errno_of_client(&e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, i: INodeNo, reply: ReplyData) {
        let inner = self.inner.clone();
        self.spawn(debug_span!("readlink", ino = i.0), async move {
            match inner.client.readlink(ino(i)).await {
                Ok(t) => reply.data(t.as_bytes()),
                Err(e) => reply.error(errno_of_client(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let fmt = mode & libc::S_IFMT;
        if fmt != 0 && fmt != libc::S_IFREG {
            return reply.error(local::UNSUPPORTED_NODE);
        }
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (inner, who) = (self.inner.clone(), Caller::of(req));
        let change = OwnedChange::new(&self.inner, Touch::name(ino(parent), &name));
        self.spawn(debug_span!("mknod", parent = parent.0, %name), async move {
            let _change = change;
            let r = async {
                let a = inner.client.create(ino(parent), &name, mode & 0o7777, true).await?;
                inner.own(a, who).await
            }
            .await;
            DistFs::entry(&inner, reply, r);
        });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (inner, who) = (self.inner.clone(), Caller::of(req));
        let change = OwnedChange::new(&self.inner, Touch::name(ino(parent), &name));
        self.spawn(debug_span!("mkdir", parent = parent.0, %name), async move {
            let _change = change;
            let r = async {
                let a = inner.client.mkdir(ino(parent), &name, mode & 0o7777).await?;
                inner.own(a, who).await
            }
            .await;
            DistFs::entry(&inner, reply, r);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let inner = self.inner.clone();
        let change = OwnedChange::new(&self.inner, Touch::name(ino(parent), &name));
        self.spawn(debug_span!("unlink", parent = parent.0, %name), async move {
            let _change = change;
            DistFs::empty(reply, inner.client.unlink(ino(parent), &name).await);
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let inner = self.inner.clone();
        let change = OwnedChange::new(&self.inner, Touch::name(ino(parent), &name));
        self.spawn(debug_span!("rmdir", parent = parent.0, %name), async move {
            let _change = change;
            DistFs::empty(reply, inner.client.rmdir(ino(parent), &name).await);
        });
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let name = match name_of(link_name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let Some(target) = target.to_str().map(str::to_string) else {
            return reply.error(local::BAD_NAME);
        };
        let (inner, who) = (self.inner.clone(), Caller::of(req));
        let change = OwnedChange::new(&self.inner, Touch::name(ino(parent), &name));
        self.spawn(debug_span!("symlink", parent = parent.0, %name), async move {
            let _change = change;
            let r = async {
                let a = inner.client.symlink(ino(parent), &name, &target).await?;
                inner.own(a, who).await
            }
            .await;
            DistFs::entry(&inner, reply, r);
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else {
            // RENAME_WHITEOUT (overlayfs) or a combination.
            return reply.error(errno_of(&FsError::invalid("unsupported rename flags")));
        };
        let (name, newname) = match (name_of(name), name_of(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let inner = self.inner.clone();
        let span = debug_span!("rename", parent = parent.0, %name, newparent = newparent.0, %newname, ?mode);
        let change = OwnedChange::new(&self.inner, Touch::name(ino(parent), &name).and_name(ino(newparent), &newname));
        self.spawn(span, async move {
            let _change = change;
            DistFs::empty(reply, inner.client.rename(ino(parent), &name, ino(newparent), &newname, mode).await);
        });
    }

    fn link(&self, _req: &Request, i: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let name = match name_of(newname) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let inner = self.inner.clone();
        let change = OwnedChange::new(&self.inner, Touch::name(ino(newparent), &name).and_inode(ino(i)));
        self.spawn(debug_span!("link", ino = i.0, newparent = newparent.0, %name), async move {
            let _change = change;
            let r = async { Ok(inner.with_pending(inner.client.link(ino(i), ino(newparent), &name).await?)) }.await;
            DistFs::entry(&inner, reply, r);
        });
    }

    fn open(&self, _req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let inner = self.inner.clone();
        let (truncate, append) = (flags.0 & libc::O_TRUNC != 0, flags.0 & libc::O_APPEND != 0);
        let read = flags.0 & libc::O_ACCMODE != libc::O_WRONLY;
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || truncate;
        if (truncate || flags.0 & libc::O_ACCMODE != libc::O_RDONLY) && ino(i).in_snapshot() {
            return reply.error(errno_of(&FsError::ReadOnly { what: format!("inode {} is in a snapshot", i.0) }));
        }
        // A truncating open changes the file (the commits of writes are changes of their own).
        let change = truncate.then(|| OwnedChange::new(&self.inner, Touch::inode(ino(i))));
        self.spawn(debug_span!("open", ino = i.0, flags = flags.0), async move {
            let _change = change;
            match inner.open(ino(i), truncate, append, read, write).await {
                Ok(o) => {
                    let f = if o.keep_cache { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
                    reply.opened(FileHandle(o.fh), f)
                }
                Err(e) => reply.error(errno_of_client(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(f) = self.inner.file(fh.0) else { return reply.error(local::BAD_HANDLE) };
        let inner = self.inner.clone();
        self.spawn(debug_span!("read", ino = i.0, fh = fh.0, offset, size), async move {
            match inner.read(&f, offset, size).await {
                Ok((b, around)) => {
                    reply.data(&b);
                    if let Some(a) = around {
                        let asked = offset..offset + b.len() as u64;
                        inner.around.store(f.ino, a.start, a.bytes, asked, a.pass);
                    }
                }
                Err(e) => reply.error(errno_of_client(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(f) = self.inner.file(fh.0) else { return reply.error(local::BAD_HANDLE) };
        if offset.checked_add(data.len() as u64).is_none_or(|e| e > MAX_FILE_SIZE) {
            return reply.error(local::TOO_BIG);
        }
        let (inner, data) = (self.inner.clone(), data.to_vec());
        self.spawn_task(debug_span!("write", ino = i.0, fh = fh.0, offset, len = data.len()), async move {
            match inner.write(&f, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno_of_client(&e)),
            }
        });
    }

    fn flush(&self, _req: &Request, i: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        let Some(f) = self.inner.file(fh.0) else { return reply.error(local::BAD_HANDLE) };
        let inner = self.inner.clone();
        self.spawn(debug_span!("flush", ino = i.0, fh = fh.0), async move {
            let r = inner.commit(&f).await;
            // close(2) of any descriptor drops the process's POSIX locks on the file.
            inner.unlock_owner(ino(i), lock_owner.0).await;
            DistFs::empty(reply, r);
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        let Ok(Some(kind)) = crate::locks::kind_of(typ) else { return reply.error(Errno::EINVAL) };
        let inner = self.inner.clone();
        self.spawn(debug_span!("getlk", ino = i.0, fh = fh.0), async move {
            match inner.getlk(ino(i), lock_owner.0, start, end, kind).await {
                Ok(Some(l)) => reply.locked(l.start, l.end, crate::locks::typ_of(l.kind), l.pid),
                Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
                Err(e) => reply.error(errno_of_client(&e)),
            }
        });
    }

    fn setlk(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let Ok(kind) = crate::locks::kind_of(typ) else { return reply.error(Errno::EINVAL) };
        let inner = self.inner.clone();
        self.spawn(debug_span!("setlk", ino = i.0, fh = fh.0, sleep), async move {
            match inner.setlk(ino(i), lock_owner.0, start, end, kind, pid, sleep).await {
                Ok(()) => reply.ok(),
                Err(crate::locks::LockWait::TimedOut) => reply.error(Errno::EINTR),
                Err(crate::locks::LockWait::Failed(e)) => reply.error(errno_of_client(&e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let inner = self.inner.clone();
        self.spawn(debug_span!("release", ino = i.0, fh = fh.0), async move {
            // The kernel names an owner here only for flock, which it keeps itself; an
            // OFD lock's owner (the open file) is not named: this mount's last release of
            // the inode, or the session, drops it.
            let _ = lock_owner;
            let r = inner.release(fh.0).await;
            if let Err(e) = &r {
                // close(2) has already returned: nobody else hears of this.
                tracing::error!(error = %e, "buffered writes lost at release");
            }
            DistFs::empty(reply, r);
        });
    }

    fn fsync(&self, _req: &Request, i: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let Some(f) = self.inner.file(fh.0) else { return reply.error(local::BAD_HANDLE) };
        let inner = self.inner.clone();
        self.spawn(debug_span!("fsync", ino = i.0, fh = fh.0), async move {
            DistFs::empty(reply, inner.commit(&f).await);
        });
    }

    fn opendir(&self, _req: &Request, i: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.inner.add_dir(ino(i));
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, i: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let inner = self.inner.clone();
        self.spawn(debug_span!("readdir", ino = i.0, fh = fh.0, offset), async move {
            match inner.readdir(fh.0, offset, &mut reply).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno_of_client(&e)),
            }
        });
    }

    fn readdirplus(&self, _req: &Request, i: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let inner = self.inner.clone();
        self.spawn(debug_span!("readdirplus", ino = i.0, fh = fh.0, offset), async move {
            let mut told = Vec::new();
            let r = inner
                .list(fh.0, offset, true, |e, a, off| match a {
                    Some(a) => {
                        let full = reply.add(INodeNo(e.ino.0), off, &e.name, &inner.entry_ttl, &file_attr(a), GEN);
                        if !full {
                            told.push(a.clone());
                        }
                        full
                    }
                    // `.` and `..`: the kernel takes only the name and inode from these.
                    None => {
                        let dot = dot_attr(e.ino);
                        reply.add(INodeNo(e.ino.0), off, &e.name, &Duration::ZERO, &file_attr(&dot), GEN)
                    }
                })
                .await;
            match r {
                Ok(()) => inner.tell_all(&told, || reply.ok()),
                Err(e) => reply.error(errno_of_client(&e)),
            }
        });
    }

    fn releasedir(&self, _req: &Request, _i: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.inner.remove_dir(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _i: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Namespace changes are durable (Raft-committed) when their call returns.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _i: INodeNo, reply: ReplyStatfs) {
        let inner = self.inner.clone();
        self.spawn(debug_span!("statfs"), async move {
            match inner.client.statfs().await {
                Ok(s) => {
                    let b = STATFS_BLOCK;
                    let free = s.capacity.saturating_sub(s.used) / b;
                    let files_free = u32::MAX as u64;
                    reply.statfs(
                        s.capacity / b,
                        free,
                        (s.available / b).min(free),
                        s.files + files_free,
                        files_free,
                        b as u32,
                        NAME_MAX as u32,
                        b as u32,
                    )
                }
                Err(e) => reply.error(errno_of_client(&e)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        i: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (name, mode) = match (xattr_name(name), mode_of(flags)) {
            (Ok(n), Ok(m)) => (n, m),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if unsupported(&name) {
            return reply.error(local::XATTR_UNSUPPORTED);
        }
        let (inner, value) = (self.inner.clone(), value.to_vec());
        let change = OwnedChange::new(&self.inner, Touch::inode(ino(i)));
        self.spawn(debug_span!("setxattr", ino = i.0, %name, len = value.len()), async move {
            let _change = change;
            DistFs::empty(reply, inner.setxattr(ino(i), &name, &value, mode).await);
        });
    }

    fn getxattr(&self, _req: &Request, i: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = match xattr_name(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if unsupported(&name) {
            return reply.error(local::NO_ACL);
        }
        let inner = self.inner.clone();
        self.spawn(debug_span!("getxattr", ino = i.0, %name, size), async move {
            match inner.getxattr(ino(i), &name).await {
                Ok(v) => reply_sized(reply, &v, size),
                Err(e) => reply.error(errno_of_client(&e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        let inner = self.inner.clone();
        self.spawn(debug_span!("listxattr", ino = i.0, size), async move {
            match inner.listxattr(ino(i)).await {
                Ok(v) => reply_sized(reply, &v, size),
                Err(e) => reply.error(errno_of_client(&e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, i: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match xattr_name(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let inner = self.inner.clone();
        let change = OwnedChange::new(&self.inner, Touch::inode(ino(i)));
        self.spawn(debug_span!("removexattr", ino = i.0, %name), async move {
            let _change = change;
            DistFs::empty(reply, inner.removexattr(ino(i), &name).await);
        });
    }

    fn access(&self, req: &Request, i: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // With `default_permissions` the kernel checks itself and never calls this; kept
        // for mounts without it.
        let inner = self.inner.clone();
        let who = Caller::of(req);
        self.spawn(debug_span!("access", ino = i.0), async move {
            match inner.client.getattr(ino(i)).await {
                Ok(a) if allowed(&a, who, mask.bits()) => reply.ok(),
                Ok(_) => reply.error(errno_of(&FsError::PermissionDenied { what: format!("inode {}", i.0) })),
                Err(e) => reply.error(errno_of_client(&e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (inner, who) = (self.inner.clone(), Caller::of(req));
        let change = OwnedChange::new(&self.inner, Touch::name(ino(parent), &name));
        self.spawn(debug_span!("create", parent = parent.0, %name, flags), async move {
            let _change = change;
            match inner.create_file(ino(parent), &name, mode, flags, who).await {
                Ok((a, fh)) => inner.tell(&a, || {
                    reply.created(&inner.entry_ttl, &file_attr(&a), GEN, FileHandle(fh), FopenFlags::empty())
                }),
                Err(e) => reply.error(errno_of_client(&e)),
            }
        });
    }
}

/// Attributes to go with `.` and `..` in a READDIRPLUS answer, which the kernel does not
/// keep (it links no dentry for either).
pub(crate) fn dot_attr(ino: InodeId) -> Attr {
    let t = distfs_types::Timestamp::default();
    Attr {
        ino,
        kind: FileKind::Dir,
        perm: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        nlink: 2,
        atime: t,
        mtime: t,
        ctime: t,
        version: 0,
    }
}

/// `access(2)` by mode bits: root may read and write anything and execute what has an
/// execute bit; others by owner, group, then other bits.
fn allowed(a: &Attr, who: Caller, mask: i32) -> bool {
    let want = (mask & (libc::R_OK | libc::W_OK | libc::X_OK)) as u32;
    if want == 0 {
        return true;
    }
    if who.uid == 0 {
        return want & libc::X_OK as u32 == 0 || a.kind == FileKind::Dir || a.perm & 0o111 != 0;
    }
    let bits = if who.uid == a.uid {
        a.perm >> 6
    } else if who.gid == a.gid {
        a.perm >> 3
    } else {
        a.perm
    } & 0o7;
    bits & want == want
}

#[cfg(test)]
mod tests {
    use super::*;
    use distfs_types::Timestamp;

    fn attr(perm: u32, uid: u32, gid: u32) -> Attr {
        let t = Timestamp::default();
        Attr {
            ino: InodeId(2),
            kind: FileKind::File,
            perm,
            uid,
            gid,
            size: 0,
            nlink: 1,
            atime: t,
            mtime: t,
            ctime: t,
            version: 1,
        }
    }

    #[test]
    fn access_follows_owner_group_other_bits() {
        let a = attr(0o640, 10, 20);
        let r = libc::R_OK;
        let w = libc::W_OK;
        assert!(allowed(&a, Caller { uid: 10, gid: 99 }, r | w));
        assert!(allowed(&a, Caller { uid: 11, gid: 20 }, r));
        assert!(!allowed(&a, Caller { uid: 11, gid: 20 }, w));
        assert!(!allowed(&a, Caller { uid: 11, gid: 21 }, r));
        assert!(allowed(&a, Caller { uid: 0, gid: 0 }, r | w));
        assert!(!allowed(&a, Caller { uid: 0, gid: 0 }, libc::X_OK));
        assert!(allowed(&a, Caller { uid: 11, gid: 21 }, libc::F_OK));
    }

    #[test]
    fn names_are_checked_for_length_and_utf8() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(name_of(OsStr::new("a")), Ok("a".to_string()));
        let long = "x".repeat(256);
        assert_eq!(name_of(OsStr::new(&long)), Err(Errno::ENAMETOOLONG));
        assert_eq!(name_of(OsStr::from_bytes(&[0xff, 0xfe])), Err(local::BAD_NAME));
    }
}
