//! The durable write: verify the body against the client's CRCs, reserve space, write
//! `tmp/<id>.<random>`, make it durable per the sync policy, rename it into the fan-out
//! tree. `run_syncer` is the group-commit loop of `SyncPolicy::Batch`: one syncfs makes
//! every queued temp file durable, the files are renamed, a second syncfs makes the
//! renames durable, then every put of the batch is acknowledged.

use super::format::{piece_crcs, pieces, Header, Packed, MAX_BLOCK};
use super::{run_blocking, BlockStore, Inner};
use crate::config::SyncPolicy;
use crate::disk::Disk;
use crate::error::{NoSpaceWhy, StorageError};
use bytes::Bytes;
use distfs_types::BlockId;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Most puts made durable by one batch.
const MAX_BATCH: usize = 256;

/// How a put ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    /// The same block (same length and CRCs, data verified) was already stored.
    AlreadyPresent,
}

/// A written temp file waiting for the batch syncer.
pub(super) struct SyncJob {
    id: BlockId,
    size: u64,
    tmp: TempFile,
    _space: Reservation,
    reply: oneshot::Sender<Result<(), StorageError>>,
}

enum Prepared {
    Done(PutOutcome),
    Batch(SyncJob, oneshot::Receiver<Result<(), StorageError>>),
}

impl BlockStore {
    /// Stores `body` as block `id`. `crcs` are the client's CRC32C of each 64 KiB piece;
    /// the body is checked against them first. Returns once the block is durable per
    /// the sync policy.
    pub async fn put(&self, id: BlockId, crcs: Vec<u32>, body: Bytes) -> Result<PutOutcome, StorageError> {
        self.put_received(id, crcs, body, None, None).await
    }

    /// `put` of a compressed block: `body` is the stored (compressed) bytes with `crcs`
    /// over them, `packed` says how they decompress; see `packed.rs`.
    pub async fn put_packed(
        &self,
        id: BlockId,
        crcs: Vec<u32>,
        body: Bytes,
        packed: Packed,
    ) -> Result<PutOutcome, StorageError> {
        self.put_received(id, crcs, body, Some(packed), None).await
    }

    /// `put` (`packed`: `put_packed`) of a body whose pieces' CRC32C were computed from its
    /// bytes as they arrived (`Incoming::pieces`): checked against `crcs` without reading
    /// the body again.
    pub async fn put_received(
        &self,
        id: BlockId,
        crcs: Vec<u32>,
        body: Bytes,
        packed: Option<Packed>,
        pieces: Option<Arc<[u32]>>,
    ) -> Result<PutOutcome, StorageError> {
        let this = self.clone();
        match run_blocking(move || this.prepare(id, crcs, body, packed, pieces)).await? {
            Prepared::Done(o) => Ok(o),
            Prepared::Batch(job, rx) => {
                self.inner.batch_tx.send(job).await.map_err(|_| StorageError::ShuttingDown)?;
                rx.await.map_err(|_| StorageError::ShuttingDown)??;
                Ok(PutOutcome::Stored)
            }
        }
    }

    fn prepare(
        &self,
        id: BlockId,
        crcs: Vec<u32>,
        body: Bytes,
        packed: Option<Packed>,
        received: Option<Arc<[u32]>>,
    ) -> Result<Prepared, StorageError> {
        let len = body.len() as u64;
        if len > MAX_BLOCK {
            return Err(StorageError::TooLarge { block: id, len, max: MAX_BLOCK });
        }
        if crcs.len() != pieces(len) {
            return Err(StorageError::CrcCount { block: id, len, got: crcs.len(), expected: pieces(len) });
        }
        // The pieces computed as the body arrived are of these very bytes (the frame's
        // checksum was verified with them); anything else is computed here.
        let computed: Arc<[u32]> = match received {
            Some(p) if p.len() == crcs.len() => p,
            _ => piece_crcs(&body).into(),
        };
        if let Some(i) = (0..crcs.len()).find(|&i| crcs[i] != computed[i]) {
            return Err(StorageError::BodyChecksum {
                block: id,
                piece: i as u32,
                sent: crcs[i],
                computed: computed[i],
            });
        }

        if let Some(p) = &packed {
            super::packed::check_put(id, &body, p)?;
        }
        // A block is the same block when its plain bytes are (stored plain or packed).
        let (plain_len, plain_crcs) = match &packed {
            Some(p) => (p.plain_len, &p.plain_crcs),
            None => (len, &crcs),
        };
        let path = self.block_path(id);
        match self.verify_existing(id, &path) {
            Ok(None) => {}
            Ok(Some((l, c))) if l == plain_len && &c == plain_crcs => {
                debug!(block = %id, "block already stored; put acknowledged idempotently");
                return Ok(Prepared::Done(PutOutcome::AlreadyPresent));
            }
            Ok(Some(_)) => return Err(StorageError::Conflict { block: id }),
            // The stored copy is bad: move it aside and store the good one.
            Err(StorageError::Corrupt { kind, .. }) => {
                self.quarantine(id, &path, kind, true);
            }
            Err(e) => return Err(e),
        }

        let header = Header { id, len, crcs, packed }.encode();
        let size = header.len() as u64 + len;
        let space = self.reserve_space(id, size)?;
        let tmp = TempFile {
            path: self.inner.tmp_dir.join(format!("{id}.{:016x}", rand::random::<u64>())),
            disk: self.inner.disk.clone(),
            armed: true,
        };
        let sync = self.inner.sync;
        self.inner
            .disk
            .write_new(&tmp.path, &[&header, &body], sync == SyncPolicy::Always)
            .map_err(|e| write_error(id, size, "write", &tmp.path, e))?;
        if sync == SyncPolicy::Batch {
            let (reply, rx) = oneshot::channel();
            let job = SyncJob { id, size, tmp, _space: space, reply };
            return Ok(Prepared::Batch(job, rx));
        }
        self.commit(id, tmp, size, sync == SyncPolicy::Always)?;
        drop(space);
        Ok(Prepared::Done(PutOutcome::Stored))
    }

    /// Makes a written temp file visible as block `id`; with `sync`, fsyncs the directory.
    fn commit(&self, id: BlockId, mut tmp: TempFile, size: u64, sync: bool) -> Result<(), StorageError> {
        let dir = self.ensure_dirs(id, sync)?;
        let dest = self.block_path(id);
        {
            let _g = self.stripe(id);
            let existed = self.inner.disk.exists(&dest).map_err(|e| StorageError::io("stat", &dest, e))?;
            self.inner.disk.rename(&tmp.path, &dest).map_err(|e| write_error(id, size, "rename", &tmp.path, e))?;
            tmp.armed = false;
            if !existed {
                self.inner.used.fetch_add(size, Ordering::AcqRel);
                self.inner.blocks.fetch_add(1, Ordering::AcqRel);
            }
        }
        if sync {
            self.inner.disk.sync_dir(&dir).map_err(|e| StorageError::io("fsync directory", &dir, e))?;
        }
        Ok(())
    }

    /// Holds `size` bytes for a write in progress, or refuses with NoSpace.
    fn reserve_space(&self, id: BlockId, size: u64) -> Result<Reservation, StorageError> {
        let pending = self.inner.pending.fetch_add(size, Ordering::AcqRel) + size;
        let r = Reservation { inner: self.inner.clone(), size };
        let used = self.used();
        if let Some(capacity) = self.inner.capacity {
            if used.saturating_add(pending) > capacity {
                return Err(StorageError::NoSpace {
                    block: id,
                    needed: size,
                    why: NoSpaceWhy::Capacity { used, capacity },
                });
            }
        }
        let st =
            self.inner.disk.stat_fs(&self.inner.root).map_err(|e| StorageError::io("statvfs", &self.inner.root, e))?;
        if st.available < pending.saturating_add(self.inner.reserve) {
            return Err(StorageError::NoSpace {
                block: id,
                needed: size,
                why: NoSpaceWhy::Reserve { available: st.available, reserve: self.inner.reserve },
            });
        }
        Ok(r)
    }

    /// The group-commit loop of `SyncPolicy::Batch`; returns when `cancel` fires. Puts
    /// still queued then fail with `ShuttingDown` (their temp files are removed).
    pub async fn run_syncer(&self, cancel: CancellationToken) {
        let rx = self.inner.batch_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut rx) = rx else {
            warn!("batch syncer already running for this store");
            return;
        };
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => break,
                j = rx.recv() => match j { Some(j) => j, None => break },
            };
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let this = self.clone();
            let n = jobs.len();
            let r = run_blocking(move || {
                this.commit_batch(jobs);
                Ok(())
            })
            .await;
            if let Err(e) = r {
                warn!(error = %e, jobs = n, "batch commit task failed");
            }
        }
        rx.close();
        while rx.try_recv().is_ok() {}
    }

    fn commit_batch(&self, jobs: Vec<SyncJob>) {
        let root = &self.inner.root;
        let disk = &self.inner.disk;
        debug!(jobs = jobs.len(), "group commit");
        if let Err(e) = disk.sync_fs(root) {
            for j in jobs {
                let _ = j.reply.send(Err(copy_io("syncfs", root, &e)));
            }
            return;
        }
        let mut done = Vec::with_capacity(jobs.len());
        for j in jobs {
            let r = self.commit(j.id, j.tmp, j.size, false);
            done.push((j.reply, r, j._space));
        }
        let synced = disk.sync_fs(root);
        for (reply, r, space) in done {
            let r = match (&synced, r) {
                (Err(e), Ok(())) => Err(copy_io("syncfs", root, e)),
                (_, r) => r,
            };
            drop(space);
            let _ = reply.send(r);
        }
    }
}

fn copy_io(op: &'static str, path: &std::path::Path, e: &io::Error) -> StorageError {
    StorageError::io(op, path, io::Error::new(e.kind(), e.to_string()))
}

fn write_error(id: BlockId, size: u64, op: &'static str, path: &std::path::Path, e: io::Error) -> StorageError {
    if StorageError::is_disk_full(&e) {
        StorageError::NoSpace { block: id, needed: size, why: NoSpaceWhy::Disk }
    } else {
        StorageError::io(op, path, e)
    }
}

/// A temp file removed on drop unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    disk: Arc<dyn Disk>,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.disk.remove(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!(path = %self.path.display(), error = %e, "cannot remove temp file");
                }
            }
        }
    }
}

/// Space held by a write in progress.
struct Reservation {
    inner: Arc<Inner>,
    size: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.inner.pending.fetch_sub(self.size, Ordering::AcqRel);
    }
}
