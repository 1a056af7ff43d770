//! `BlockStore`: blocks as files in a fan-out tree `blocks/ab/cd/<32 hex id>` under the
//! data directory, with `tmp/` for writes in progress and `quarantine/` for corrupt files.
//! This file owns the layout, space accounting, delete, quarantine and the start-up scan;
//! `write.rs` the durable write path (and the batch syncer), `read.rs` the verified read.

pub mod format;
mod packed;
mod read;
mod write;

pub use read::BlockRange;
pub use write::PutOutcome;

use crate::config::SyncPolicy;
use crate::disk::Disk;
use crate::error::{CorruptKind, StorageError};
use distfs_types::BlockId;
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// How a store is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub data_dir: PathBuf,
    pub sync: SyncPolicy,
    /// Bytes offered for blocks; `None` = the file system's size.
    pub capacity: Option<u64>,
    /// Free bytes kept back on the file system.
    pub reserve: u64,
}

/// What the start-up scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub blocks: u64,
    /// Bytes of block files (headers included).
    pub bytes: u64,
    pub quarantined: u64,
    pub temp_removed: u64,
}

/// Capacity and usage as reported to the metadata service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes this node can hold: the configured capacity (or file-system size), lowered
    /// to what still fits on the file system above the reserve.
    pub capacity: u64,
    pub used: u64,
    pub blocks: u64,
}

/// A cheap-to-clone handle to one data directory.
#[derive(Clone)]
pub struct BlockStore {
    inner: Arc<Inner>,
}

const STRIPES: usize = 64;

struct Inner {
    root: PathBuf,
    blocks_dir: PathBuf,
    tmp_dir: PathBuf,
    quarantine_dir: PathBuf,
    disk: Arc<dyn Disk>,
    sync: SyncPolicy,
    capacity: Option<u64>,
    reserve: u64,
    used: AtomicU64,
    blocks: AtomicU64,
    /// Bytes reserved by writes in progress.
    pending: AtomicU64,
    /// Fan-out directories known to exist durably (key: 1 + level-1 byte, or 0x1_0000 +
    /// both bytes), so the parent directory is fsynced only when a directory is new.
    durable_dirs: Mutex<HashSet<u32>>,
    /// Serialises what changes a block's visibility (commit, delete, quarantine) per
    /// block, so the counters stay exact.
    stripes: Vec<Mutex<()>>,
    /// Block files kept open for reads (`read.rs`).
    open_blocks: read::OpenBlocks,
    /// Queue of the batch syncer (`SyncPolicy::Batch` only).
    batch_tx: mpsc::Sender<write::SyncJob>,
    batch_rx: Mutex<Option<mpsc::Receiver<write::SyncJob>>>,
}

impl BlockStore {
    /// Opens (creating if needed) the data directory and scans it: counts blocks, checks
    /// every header, quarantines bad files and removes leftover temp files.
    pub async fn open(opts: StoreOptions, disk: Arc<dyn Disk>) -> Result<(BlockStore, ScanReport), StorageError> {
        tokio::task::spawn_blocking(move || Self::open_blocking(opts, disk))
            .await
            .map_err(|e| StorageError::Internal(format!("store open task failed: {e}")))?
    }

    /// `open` for callers outside a runtime.
    pub fn open_blocking(opts: StoreOptions, disk: Arc<dyn Disk>) -> Result<(BlockStore, ScanReport), StorageError> {
        let root = opts.data_dir.clone();
        let (batch_tx, batch_rx) = mpsc::channel(1024);
        let inner = Inner {
            blocks_dir: root.join("blocks"),
            tmp_dir: root.join("tmp"),
            quarantine_dir: root.join("quarantine"),
            root,
            disk,
            sync: opts.sync,
            capacity: opts.capacity,
            reserve: opts.reserve,
            used: AtomicU64::new(0),
            blocks: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            durable_dirs: Mutex::new(HashSet::new()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            open_blocks: read::OpenBlocks::default(),
            batch_tx,
            batch_rx: Mutex::new(Some(batch_rx)),
        };
        for d in [&inner.root, &inner.blocks_dir, &inner.tmp_dir, &inner.quarantine_dir] {
            inner.disk.create_dir(d).map_err(|e| StorageError::io("create directory", d, e))?;
        }
        let store = BlockStore { inner: Arc::new(inner) };
        let report = store.scan()?;
        if store.inner.sync != SyncPolicy::None {
            // Whatever the scan found (and removed) is now durable.
            let root = &store.inner.root;
            store.inner.disk.sync_fs(root).map_err(|e| StorageError::io("syncfs", root, e))?;
        }
        info!(
            dir = %store.inner.root.display(),
            blocks = report.blocks,
            bytes = report.bytes,
            quarantined = report.quarantined,
            temp_removed = report.temp_removed,
            "block store opened"
        );
        Ok((store, report))
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.root
    }

    pub fn sync_policy(&self) -> SyncPolicy {
        self.inner.sync
    }

    /// Where block `id` lives.
    pub fn block_path(&self, id: BlockId) -> PathBuf {
        let hex = id.to_string();
        self.inner.blocks_dir.join(&hex[0..2]).join(&hex[2..4]).join(hex)
    }

    pub fn quarantine_dir(&self) -> &Path {
        &self.inner.quarantine_dir
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.inner.tmp_dir
    }

    /// Bytes of block files (headers included).
    pub fn used(&self) -> u64 {
        self.inner.used.load(Ordering::Acquire)
    }

    pub fn block_count(&self) -> u64 {
        self.inner.blocks.load(Ordering::Acquire)
    }

    /// Capacity, usage and block count (asks the file system for its free space).
    pub async fn stats(&self) -> Result<StoreStats, StorageError> {
        let this = self.clone();
        run_blocking(move || this.stats_blocking()).await
    }

    fn stats_blocking(&self) -> Result<StoreStats, StorageError> {
        let st =
            self.inner.disk.stat_fs(&self.inner.root).map_err(|e| StorageError::io("statvfs", &self.inner.root, e))?;
        let used = self.used();
        let offered = self.inner.capacity.unwrap_or(st.total);
        let fits = used.saturating_add(st.available.saturating_sub(self.inner.reserve));
        Ok(StoreStats { capacity: offered.min(fits), used, blocks: self.block_count() })
    }

    /// Every block id in the fan-out tree (for the scrubber and block reports).
    pub async fn list_blocks(&self) -> Result<Vec<BlockId>, StorageError> {
        let this = self.clone();
        run_blocking(move || {
            let disk = &this.inner.disk;
            let list = |dir: &Path| disk.list(dir).map_err(|e| StorageError::io("list directory", dir, e));
            let mut out = Vec::new();
            for a in list(&this.inner.blocks_dir)?.into_iter().filter(|e| e.is_dir) {
                let adir = this.inner.blocks_dir.join(&a.name);
                for c in list(&adir)?.into_iter().filter(|e| e.is_dir) {
                    for f in list(&adir.join(&c.name))? {
                        if let Some(id) = BlockId::from_hex(&f.name).filter(|_| !f.is_dir) {
                            out.push(id);
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Deletes a block; `Ok(false)` when it was not there (deleting is idempotent).
    pub async fn delete(&self, id: BlockId) -> Result<bool, StorageError> {
        let this = self.clone();
        run_blocking(move || this.delete_blocking(id)).await
    }

    fn delete_blocking(&self, id: BlockId) -> Result<bool, StorageError> {
        let path = self.block_path(id);
        let _g = self.stripe(id);
        let size = match self.inner.disk.open(&path).and_then(|f| f.size()) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StorageError::io("stat", &path, e)),
        };
        let removed = self.inner.disk.remove(&path);
        self.inner.open_blocks.evict(id);
        match removed {
            Ok(()) => {
                self.inner.used.fetch_sub(size, Ordering::AcqRel);
                self.inner.blocks.fetch_sub(1, Ordering::AcqRel);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io("remove", &path, e)),
        }
    }

    /// Moves a corrupt block file aside so it is never served again, and returns the
    /// error to answer with. `counted` says whether the file is in the counters.
    fn quarantine(&self, id: BlockId, path: &Path, kind: CorruptKind, counted: bool) -> StorageError {
        let millis =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| id.to_string());
        let dest = self.inner.quarantine_dir.join(format!("{name}.{millis}"));
        error!(block = %id, path = %path.display(), problem = %kind, quarantine = %dest.display(),
            "corrupt block file; moving it to quarantine");
        let _g = self.stripe(id);
        let size = self.inner.disk.open(path).and_then(|f| f.size()).ok();
        let renamed = self.inner.disk.rename(path, &dest);
        self.inner.open_blocks.evict(id);
        match renamed {
            Ok(()) => {
                if counted {
                    if let Some(size) = size {
                        self.inner.used.fetch_sub(size, Ordering::AcqRel);
                        self.inner.blocks.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                error!(block = %id, path = %path.display(), error = %e, "cannot quarantine corrupt block file")
            }
        }
        StorageError::Corrupt { block: id, path: path.to_path_buf(), kind }
    }

    fn stripe(&self, id: BlockId) -> std::sync::MutexGuard<'_, ()> {
        let i = (id.0 as usize) % STRIPES;
        // A panic while holding a stripe cannot leave the () inside inconsistent.
        self.inner.stripes[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Walks the fan-out tree; see `open`.
    fn scan(&self) -> Result<ScanReport, StorageError> {
        let disk = &self.inner.disk;
        let mut report = ScanReport::default();
        let list = |dir: &Path| disk.list(dir).map_err(|e| StorageError::io("list directory", dir, e));
        for t in list(&self.inner.tmp_dir)? {
            let p = self.inner.tmp_dir.join(&t.name);
            match disk.remove(&p) {
                Ok(()) => report.temp_removed += 1,
                Err(e) => warn!(path = %p.display(), error = %e, "cannot remove leftover temp file"),
            }
        }
        for a in list(&self.inner.blocks_dir)? {
            let Some(ab) = hex_byte(&a.name).filter(|_| a.is_dir) else {
                warn!(name = %a.name, "unexpected entry in blocks/; ignored");
                continue;
            };
            let adir = self.inner.blocks_dir.join(&a.name);
            self.mark_durable(1 + ab);
            for c in list(&adir)? {
                let Some(cd) = hex_byte(&c.name).filter(|_| c.is_dir) else {
                    warn!(dir = %adir.display(), name = %c.name, "unexpected entry; ignored");
                    continue;
                };
                let cdir = adir.join(&c.name);
                self.mark_durable(0x1_0000 + (ab << 8) + cd);
                for f in list(&cdir)? {
                    let path = cdir.join(&f.name);
                    let id = match BlockId::from_hex(&f.name) {
                        Some(id) if !f.is_dir && f.name[..4] == format!("{}{}", a.name, c.name) => id,
                        _ => {
                            warn!(path = %path.display(), "unexpected entry in the block tree; ignored");
                            continue;
                        }
                    };
                    match self.check_header(id, &path) {
                        Ok(size) => {
                            report.blocks += 1;
                            report.bytes += size;
                        }
                        Err(StorageError::Corrupt { kind, .. }) => {
                            self.quarantine(id, &path, kind, false);
                            report.quarantined += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        self.inner.used.store(report.bytes, Ordering::Release);
        self.inner.blocks.store(report.blocks, Ordering::Release);
        Ok(report)
    }

    /// Verifies a block file's header and size (not its data); returns the file size.
    fn check_header(&self, id: BlockId, path: &Path) -> Result<u64, StorageError> {
        let mut f = self.inner.disk.open(path).map_err(|e| StorageError::io("open", path, e))?;
        let (header, size) = read::read_header(&mut *f, id, path)?;
        Ok(size.max(header.encoded_len() as u64))
    }

    fn mark_durable(&self, key: u32) {
        self.inner.durable_dirs.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
    }

    fn is_durable(&self, key: u32) -> bool {
        self.inner.durable_dirs.lock().unwrap_or_else(|p| p.into_inner()).contains(&key)
    }

    /// Creates the two fan-out directories of `id` if needed; with `sync`, fsyncs the
    /// parent of each directory created so the new entry survives a crash.
    fn ensure_dirs(&self, id: BlockId, sync: bool) -> Result<PathBuf, StorageError> {
        let hex = id.to_string();
        let ab = hex_byte(&hex[0..2]).expect("BlockId displays as hex");
        let cd = hex_byte(&hex[2..4]).expect("BlockId displays as hex");
        let adir = self.inner.blocks_dir.join(&hex[0..2]);
        let cdir = adir.join(&hex[2..4]);
        for (key, dir, parent) in [(1 + ab, &adir, &self.inner.blocks_dir), (0x1_0000 + (ab << 8) + cd, &cdir, &adir)] {
            if self.is_durable(key) {
                continue;
            }
            self.inner.disk.create_dir(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
            if sync {
                self.inner.disk.sync_dir(parent).map_err(|e| StorageError::io("fsync directory", parent, e))?;
            }
            self.mark_durable(key);
        }
        Ok(cdir)
    }
}

fn hex_byte(s: &str) -> Option<u32> {
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

/// Runs blocking disk work off the async threads.
async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StorageError::Internal(format!("disk task failed: {e}")))?
}

#[cfg(test)]
mod tests;
