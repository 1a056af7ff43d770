//! Read-around. A storage node answers a small read with the whole 64 KiB checksum
//! piece(s) holding it (the unit of its CRC32C), which the client verifies; the kernel
//! asked for 4 KiB of it. After the reply, the rest goes into the kernel's page cache
//! (`FUSE_NOTIFY_STORE`), so the next small reads near it are page-cache hits instead of
//! a FUSE round trip and a storage RPC each. It costs no extra disk or network I/O: the
//! bytes had already arrived and been checked.
//!
//! A store must never put bytes older than this mount's own writes into the page
//! cache. This mount's writes need a writable handle or a truncate, and both go through
//! `start_writing`, which counts the inode as written and then waits until no
//! read-around of it is between its fetch and its store (a read lock held from before
//! the fetch until the store is done, per inode shard). A read-around begins only when
//! the inode has no writer and its shard's lock is free. Other clients' writes reach
//! this mount's cached pages as any cached page does: at the next open that sees a new
//! version (close-to-open).
//!
//! Stores run on their own thread: the kernel locks each page it stores into, and a page
//! locked by a READ in flight stays locked until a runtime worker sends that READ's
//! reply, so a worker must never wait on a store.
//!
//! A store also moves the kernel's size of the file up to its end when it reaches past
//! it (`fuse_notify_store`), so the end of every store is remembered per inode: an open
//! that stores a whole small file (`Inner::store_at_open`) relies on the kernel having no
//! pages past the file's size.

use bytes::Bytes;
use distfs_types::InodeId;
use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

/// Inode shards of the read-around locks.
const SHARDS: usize = 64;

/// Stores queued for the store thread; more are dropped (they only save later reads).
const QUEUE: usize = 64;

const PAGE: u64 = 4096;

/// Inodes whose store ends are remembered; past it, inodes not yet remembered count as
/// possibly stored past any size.
const MAX_STORED: usize = 100_000;

/// Whether to read around, and the state that keeps it safe.
pub(crate) struct ReadAround {
    enabled: bool,
    /// Inodes this mount is writing (writable handles open, truncates in progress).
    writers: Mutex<HashMap<InodeId, u32>>,
    gates: Vec<Arc<RwLock<()>>>,
    tx: OnceLock<SyncSender<Store>>,
    stored: Mutex<Stored>,
}

/// The furthest end of a store queued, per inode.
#[derive(Default)]
struct Stored {
    ends: HashMap<InodeId, u64>,
    /// `ends` was full once: an inode not in it may have been stored to.
    full: bool,
}

/// Bytes `[start, start + bytes.len())` of `ino`, fetched for a read of `[asked)` that
/// has been answered; the pass keeps writers of the inode out until they are stored.
pub(crate) struct Store {
    ino: InodeId,
    start: u64,
    bytes: Bytes,
    asked: std::ops::Range<u64>,
    _pass: OwnedRwLockReadGuard<()>,
}

/// A read-around may begin (see `ReadAround::pass`).
pub(crate) struct Pass(OwnedRwLockReadGuard<()>);

impl ReadAround {
    pub fn new(enabled: bool) -> ReadAround {
        ReadAround {
            enabled,
            writers: Mutex::default(),
            gates: (0..SHARDS).map(|_| Arc::new(RwLock::new(()))).collect(),
            tx: OnceLock::new(),
            stored: Mutex::default(),
        }
    }

    /// Starts the store thread once the session's notifier exists.
    pub fn start(&self, notifier: fuser::Notifier) -> std::io::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let (tx, rx) = sync_channel::<Store>(QUEUE);
        std::thread::Builder::new().name("distfs-store".into()).spawn(move || {
            for s in rx {
                for (offset, bytes) in s.parts() {
                    if let Err(e) = notifier.store(fuser::INodeNo(s.ino.0), offset, &bytes) {
                        tracing::debug!(ino = %s.ino, offset, error = %e, "read-around store refused");
                        break;
                    }
                }
            }
        })?;
        let _ = self.tx.set(tx);
        Ok(())
    }

    fn gate(&self, ino: InodeId) -> &Arc<RwLock<()>> {
        &self.gates[(ino.0 % SHARDS as u64) as usize]
    }

    /// A pass for one read-around of `ino`: `None` when read-around is off, this mount
    /// writes the inode, or a writer waits for the inode's shard.
    pub fn pass(&self, ino: InodeId) -> Option<Pass> {
        self.tx.get()?;
        let guard = self.gate(ino).clone().try_read_owned().ok()?;
        if self.writers.lock().expect("writers lock").contains_key(&ino) {
            return None;
        }
        Some(Pass(guard))
    }

    /// Counts `ino` as written by this mount from now until `stop_writing`, once every
    /// read-around of it already under way has been stored.
    pub async fn start_writing(&self, ino: InodeId) {
        *self.writers.lock().expect("writers lock").entry(ino).or_default() += 1;
        drop(self.gate(ino).write().await);
    }

    pub fn stop_writing(&self, ino: InodeId) {
        let mut w = self.writers.lock().expect("writers lock");
        if let Some(n) = w.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                w.remove(&ino);
            }
        }
    }

    /// A pass to store the whole of `ino` (`size` bytes) as it is opened: as `pass`, and
    /// no store of it has reached past `size`.
    pub fn pass_whole(&self, ino: InodeId, size: u64) -> Option<Pass> {
        let pass = self.pass(ino)?;
        let s = self.stored.lock().expect("stored lock");
        match s.ends.get(&ino) {
            Some(&end) if end > size => None,
            None if s.full => None,
            _ => Some(pass),
        }
    }

    /// Queues the bytes around an answered read of `asked` for the page cache.
    pub fn store(&self, ino: InodeId, start: u64, bytes: Bytes, asked: std::ops::Range<u64>, pass: Pass) {
        if let Some(tx) = self.tx.get() {
            let end = start + bytes.len() as u64;
            let mut s = self.stored.lock().expect("stored lock");
            if s.ends.len() >= MAX_STORED && !s.ends.contains_key(&ino) {
                s.ends.clear();
                s.full = true;
            }
            let e = s.ends.entry(ino).or_default();
            *e = (*e).max(end);
            drop(s);
            // A full queue drops the store (and its pass): it would only save later reads.
            let _ = tx.try_send(Store { ino, start, bytes, asked, _pass: pass.0 });
        }
    }
}

impl Store {
    /// The parts of the bytes outside the pages the reply already filled: before the
    /// first page of `asked` and from the page after its end.
    fn parts(&self) -> Vec<(u64, Bytes)> {
        let end = self.start + self.bytes.len() as u64;
        let before = (self.asked.start / PAGE * PAGE).clamp(self.start, end);
        let after = self.asked.end.div_ceil(PAGE).saturating_mul(PAGE).clamp(self.start, end);
        let slice = |a: u64, b: u64| self.bytes.slice((a - self.start) as usize..(b - self.start) as usize);
        [(self.start, before), (after, end)].into_iter().filter(|(a, b)| a < b).map(|(a, b)| (a, slice(a, b))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(start: u64, len: usize, asked: std::ops::Range<u64>) -> Store {
        let gate = Arc::new(RwLock::new(()));
        let bytes = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>());
        Store { ino: InodeId(1), start, bytes, asked, _pass: gate.try_read_owned().unwrap() }
    }

    #[test]
    fn the_stored_parts_leave_out_the_pages_of_the_reply() {
        let p = |s: &Store| s.parts().into_iter().map(|(o, b)| (o, b.len(), b[0])).collect::<Vec<_>>();
        // 4 KiB asked in the middle of a 64 KiB piece.
        assert_eq!(p(&store(65536, 65536, 69632..73728)), vec![(65536, 4096, 0), (73728, 57344, 0)]);
        // Unaligned ask: whole pages around it are left out.
        assert_eq!(p(&store(0, 65536, 5000..5100)), vec![(0, 4096, 0), (8192, 57344, 0)]);
        // Asked at the start, or everything asked: one part, or none.
        assert_eq!(p(&store(0, 65536, 0..4096)).len(), 1);
        assert!(store(0, 65536, 0..65536).parts().is_empty());
        // A piece cut short at the end of the file, starting off a page boundary.
        assert_eq!(p(&store(7, 10_000, 8000..8100)), vec![(7, 4089, 0), (8192, 1815, (8192 - 7) as u8)]);
    }

    #[test]
    fn a_whole_file_store_at_open_is_refused_where_a_store_reached_past_its_size() {
        let ra = ReadAround::new(true);
        let (tx, rx) = sync_channel(4);
        let _ = ra.tx.set(tx);
        let ino = InodeId(3);
        assert!(ra.pass_whole(ino, 100).is_some(), "never stored");
        let pass = ra.pass(ino).expect("pass");
        ra.store(ino, 0, Bytes::from(vec![7u8; 65536]), 0..4096, pass);
        drop(rx.recv().expect("queued"));
        // The store moved the kernel's size to 64 KiB: an open of a shorter version may
        // not trust the pages past its size.
        assert!(ra.pass_whole(ino, 4096).is_none());
        assert!(ra.pass_whole(ino, 65536).is_some());
        // Past the bound, inodes not remembered are refused too.
        ra.stored.lock().unwrap().full = true;
        assert!(ra.pass_whole(InodeId(4), 100).is_none());
    }

    #[tokio::test]
    async fn a_writer_waits_for_read_arounds_under_way_and_keeps_new_ones_out() {
        let ra = ReadAround::new(true);
        let (tx, rx) = sync_channel(1);
        let _ = ra.tx.set(tx);
        let ino = InodeId(7);
        let pass = ra.pass(ino).expect("no writer yet");
        let ra = Arc::new(ra);
        let w = {
            let ra = ra.clone();
            tokio::spawn(async move { ra.start_writing(ino).await })
        };
        // The writer is counted at once and waits for the pass.
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while ra.pass(ino).is_some() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("a new read-around is refused while a writer waits");
        tokio::task::yield_now().await;
        assert!(!w.is_finished(), "the writer went on while a read-around was under way");
        ra.store(ino, 0, Bytes::from_static(b"x"), 0..1, pass);
        drop(rx.recv().expect("queued"));
        tokio::time::timeout(std::time::Duration::from_secs(5), w).await.expect("writer let in").unwrap();
        assert!(ra.pass(ino).is_none(), "written inode");
        assert!(ra.pass(InodeId(7 + SHARDS as u64)).is_some(), "another inode of the shard");
        ra.stop_writing(ino);
        assert!(ra.pass(ino).is_some());
    }
}
