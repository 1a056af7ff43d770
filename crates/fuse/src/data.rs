//! File data through open handles: write-back buffering (one `FileWriter` per handle,
//! committed by flush, fsync, release, a read on the same handle, or a change of the
//! file's attributes), reads through one `FileReader` per handle, and the page-cache
//! decision at open (close-to-open consistency).

use crate::opens::Held;
use crate::state::{FileIo, Inner, OpenFile};
use bytes::Bytes;
use distfs_client::{ClientError, Result};
use distfs_types::{Attr, FileKind, FsError, InodeId, CRC_CHUNK};
use std::sync::atomic::Ordering;
use tracing::debug;

/// Largest file stored whole into the page cache as it is opened (`store_at_open`): the
/// most a small file keeps inline.
const STORE_AT_OPEN: u64 = distfs_types::INLINE_MAX;

/// Largest size a file on the mount may reach (1 PiB); writes and truncates past it get
/// EFBIG. The kernel's own limit is far higher, and a sparse write at 2^62 would only
/// create chunk indexes nobody can fill.
pub const MAX_FILE_SIZE: u64 = 1 << 50;

/// The verified bytes `[start, start + bytes.len())` around a small read.
pub(crate) struct Around {
    pub start: u64,
    pub bytes: Bytes,
    pub pass: crate::around::Pass,
}

/// What `open` decided.
pub(crate) struct Opened {
    pub fh: u64,
    pub keep_cache: bool,
}

/// An inode the kernel holds that the metadata no longer knows is stale, not missing:
/// `ESTALE` makes the kernel look the name up again instead of failing the call.
pub(crate) fn gone_is_stale(ino: InodeId, e: ClientError) -> ClientError {
    match e {
        ClientError::Fs(FsError::NotFound { .. }) => ClientError::Fs(FsError::StaleInode { ino }),
        e => e,
    }
}

impl Inner {
    /// Opens `ino`: revalidates its attributes (close-to-open), opens the handle's reader
    /// when it may read (size and layout fixed now), and says whether the kernel's cached
    /// pages are still those of the current version.
    pub async fn open(&self, ino: InodeId, truncate: bool, append: bool, read: bool, write: bool) -> Result<Opened> {
        if write {
            self.around.start_writing(ino).await;
        }
        let r = self.open_counted(ino, truncate, append, read, write).await;
        if r.is_err() && write {
            self.around.stop_writing(ino);
        }
        r
    }

    async fn open_counted(
        &self,
        ino: InodeId,
        truncate: bool,
        append: bool,
        read: bool,
        write: bool,
    ) -> Result<Opened> {
        let changes = self.changes(ino);
        // Counted before the reader is made: a read-around by a handle opened earlier
        // stops from here on, and this one's reader is at least as new as this count.
        let opens = self.opened(ino);
        // Registered first: from now on an unlink anywhere leaves the data in place.
        let held = self.hold(ino, read && !truncate).await?;
        let r = self.open_held(ino, truncate, read, held).await;
        if r.is_err() {
            self.unhold(ino).await;
        }
        let (mut attr, mut reader) = r?;
        if attr.kind == FileKind::Dir {
            self.unhold(ino).await;
            return Err(FsError::IsADirectory { what: format!("inode {ino}") }.into());
        }
        if attr.nlink == 0 {
            // Opened through a name the kernel still caches but that was unlinked or
            // renamed over (on another mount): ESTALE makes it look the name up again.
            self.unhold(ino).await;
            return Err(FsError::StaleInode { ino }.into());
        }
        if truncate && attr.size != 0 {
            let cut = async {
                self.commit_all(ino).await?;
                self.client.truncate(ino, 0).await
            };
            match cut.await {
                Ok(a) => attr = a,
                Err(e) => {
                    self.unhold(ino).await;
                    return Err(e);
                }
            }
            self.changed(ino);
            reader = None;
        }
        // Handles of this mount that are still dirty make the file differ from `attr`.
        let dirty = self.pending_end(ino) != 0;
        let keep_cache = self.keep_cache(&attr) && !dirty;
        let stored = read && !write && !dirty && self.store_at_open(&attr, reader.as_ref(), changes, opens);
        // The kernel's attributes are the ones this mount last gave it (plus its own
        // writes, which make `pending_end` non-zero): only when those differ from what
        // the open found must they go. A first open after a lookup keeps them, so its
        // fstat costs no GETATTR.
        if !keep_cache && (dirty || self.kernel_may_differ(&attr)) {
            self.forget_attrs(ino);
        }
        let fh = self.add_file(ino, append, write, reader.map(|r| (changes, std::sync::Arc::new(r))), opens);
        debug!(%ino, fh, keep_cache, stored, "opened");
        // The pages stored hold the version opened: the kernel keeps them.
        Ok(Opened { fh, keep_cache: keep_cache || stored })
    }

    /// Puts the whole of a small file being opened for reading into the kernel's page
    /// cache before the open's reply, when every byte of it came with the open (inline
    /// data): the reads that follow are page-cache hits, not READs. The reply then keeps
    /// the cache, so the store must leave no page of it wrong:
    /// - the kernel's size is the one opened (the last size this mount told it, and no
    ///   store of read-around reached past it): it has no pages past it (learning a
    ///   smaller size truncates its cache), and the store covers every page below it;
    /// - this mount has not changed the file since the reader was made (`changes`), no
    ///   writer is counted and none starts until the store is done (`pass_whole`);
    /// - no other handle of the inode is open on this mount and no other open of it
    ///   began since this one, so no READ of it is in flight and the store, on this
    ///   thread, waits for no page lock.
    fn store_at_open(&self, attr: &Attr, reader: Option<&distfs_client::FileReader>, changes: u64, opens: u64) -> bool {
        let ino = attr.ino;
        let (Some(reader), Some(notifier)) = (reader, self.notifier.get()) else { return false };
        if self.kernel_may_differ(attr)
            || self.changes(ino) != changes
            || self.opens(ino) != opens
            || !self.files_of(ino).is_empty()
        {
            return false;
        }
        let Some(_pass) = self.around.pass_whole(ino, attr.size) else { return false };
        let Some(bytes) = reader.local_bytes(STORE_AT_OPEN) else { return false };
        match notifier.store(fuser::INodeNo(ino.0), 0, &bytes) {
            Ok(()) => true,
            Err(e) => {
                debug!(%ino, error = %e, "store at open refused");
                false
            }
        }
    }

    /// The attributes (and, when the handle may read, the reader) of an open inode.
    async fn open_held(
        &self,
        ino: InodeId,
        truncate: bool,
        read: bool,
        held: Option<Held>,
    ) -> Result<(Attr, Option<distfs_client::FileReader>)> {
        match held {
            Some(Held::Reader(r)) => Ok((r.attr().clone(), Some(*r))),
            Some(Held::Attr(a)) if !read || truncate => Ok((a, None)),
            _ if read && !truncate => {
                let r = self.client.reader(ino).await.map_err(|e| gone_is_stale(ino, e))?;
                Ok((r.attr().clone(), Some(r)))
            }
            _ => Ok((self.client.getattr(ino).await.map_err(|e| gone_is_stale(ino, e))?, None)),
        }
    }

    /// Registers a handle for a file just created (nothing cached, nothing to check),
    /// counted by `around.start_writing`.
    pub fn open_created(&self, attr: &Attr, append: bool) -> u64 {
        self.keep_cache(attr);
        let opens = self.opened(attr.ino);
        self.add_file(attr.ino, append, true, None, opens)
    }

    /// Writes `data` at `offset` (or at the end for `O_APPEND`) into the handle's buffer.
    pub async fn write(&self, f: &OpenFile, offset: u64, data: &[u8]) -> Result<u32> {
        let mut io = f.io.lock().await;
        let offset = if f.append { self.append_offset(f, &io).await? } else { offset };
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or_else(|| FsError::invalid("write past the largest file size"))?;
        if !io.note_written(offset, end) {
            // Rewriting bytes of this commit: commit what is there, then start afresh.
            self.commit_io(f, &mut io).await?;
            io.note_written(offset, end);
        }
        if io.writer.is_none() {
            io.writer = Some(self.client.writer(f.ino, offset).await?);
        }
        let w = io.writer.as_mut().expect("writer was just created");
        let r = async {
            w.seek(offset).await?;
            w.write(data).await
        }
        .await;
        if let Err(e) = r {
            // Earlier buffered bytes of this handle are lost with the writer: say so at the
            // next flush/fsync as well as now.
            io.writer = None;
            io.written.clear();
            io.failed = Some(e.as_fs());
            f.pending_end.store(0, Ordering::Release);
            return Err(e);
        }
        f.pending_end.fetch_max(end, Ordering::AcqRel);
        Ok(data.len() as u32)
    }

    /// Where an `O_APPEND` write goes: after this handle's buffered bytes, or at the end
    /// of the file as the cluster and the other handles of this mount see it.
    async fn append_offset(&self, f: &OpenFile, io: &FileIo) -> Result<u64> {
        if let Some(w) = &io.writer {
            return Ok(w.position());
        }
        let size = self.client.getattr(f.ino).await?.size;
        Ok(size.max(self.pending_end(f.ino)))
    }

    /// Commits the handle's buffered writes (durable when this returns) and reports a
    /// write failure that happened since the last commit.
    pub async fn commit_io(&self, f: &OpenFile, io: &mut FileIo) -> Result<()> {
        if let Some(w) = io.writer.take() {
            let _change = self.statahead.change(crate::statahead::Touch::inode(f.ino));
            io.written.clear();
            let r = w.close().await;
            // A failed commit loses the buffered bytes either way; the handle is clean.
            f.pending_end.store(0, Ordering::Release);
            self.changed(f.ino);
            let attr = r?;
            debug!(ino = %f.ino, size = attr.size, "committed");
        }
        match io.failed.take() {
            Some(e) => Err(ClientError::Fs(e)),
            None => Ok(()),
        }
    }

    pub async fn commit(&self, f: &OpenFile) -> Result<()> {
        let mut io = f.io.lock().await;
        self.commit_io(f, &mut io).await
    }

    /// Commits every dirty handle of `ino`: before a change of its attributes (a later
    /// commit would otherwise undo a truncate or overwrite an mtime set by `utimens`).
    pub async fn commit_all(&self, ino: InodeId) -> Result<()> {
        let mut first_err = None;
        for f in self.files_of(ino) {
            if f.pending_end.load(Ordering::Acquire) == 0 && f.io.try_lock().is_ok_and(|io| io.failed.is_none()) {
                continue;
            }
            if let Err(e) = self.commit(&f).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Reads through the handle's reader; commits its own writes first (read-your-writes)
    /// and reopens the reader when this mount changed the file since it was opened. A
    /// small read may also return the verified bytes around it, for the page cache
    /// (`around.rs`): give them to `around.store` after the reply.
    pub async fn read(&self, f: &OpenFile, offset: u64, size: u32) -> Result<(Bytes, Option<Around>)> {
        let mut io = f.io.lock().await;
        if io.writer.is_some() || io.failed.is_some() {
            self.commit_io(f, &mut io).await?;
        }
        // Other handles of this mount with buffered bytes: read-your-writes across them.
        if self.pending_end(f.ino) > 0 {
            drop(io);
            self.commit_all(f.ino).await?;
            io = f.io.lock().await;
        }
        let changes = self.changes(f.ino);
        let reader = match &io.reader {
            Some((c, r)) if *c == changes => r.clone(),
            _ => {
                io.reader_opens = self.opens(f.ino);
                let r = std::sync::Arc::new(self.client.reader(f.ino).await.map_err(|e| gone_is_stale(f.ino, e))?);
                io.reader = Some((changes, r.clone()));
                r
            }
        };
        // The handle is free for other requests while this one waits on the network: the
        // kernel's readahead sends several READs of one handle at a time.
        let io_opens = io.reader_opens;
        drop(io);
        // Read-around only by a reader made after the inode's last open here (a handle
        // opened before another mount's change must not fill pages for handles opened
        // after it, which found the new version).
        let current = io_opens == self.opens(f.ino);
        if u64::from(size) < u64::from(CRC_CHUNK) && current {
            if let Some(pass) = self.around.pass(f.ino) {
                // Cut at the size at open: a store past the kernel's size would extend it.
                let (start, bytes) = reader.read_around(offset, size.into()).await?;
                let from = ((offset - start) as usize).min(bytes.len());
                let asked = bytes.slice(from..(from + size as usize).min(bytes.len()));
                let around = (bytes.len() > asked.len()).then_some(Around { start, bytes, pass });
                return Ok((asked, around));
            }
        }
        Ok((reader.read_at(offset, size as u64).await?, None))
    }

    /// Commits every handle still open at unmount (best effort; errors are logged).
    pub async fn commit_everything(&self) {
        for (fh, f) in self.all_files() {
            if let Err(e) = self.commit(&f).await {
                tracing::error!(ino = %f.ino, fh, error = %e, "buffered writes lost at unmount");
            }
        }
    }

    pub async fn release(&self, fh: u64) -> Result<()> {
        match self.remove_file(fh) {
            Some(f) => {
                let r = self.commit(&f).await;
                // Only once its bytes are committed: a read-around that began earlier
                // would fetch the bytes from before them.
                if f.writable {
                    self.around.stop_writing(f.ino);
                }
                self.unhold(f.ino).await;
                r
            }
            None => Ok(()),
        }
    }
}
