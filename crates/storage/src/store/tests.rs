//! Unit tests of the block store on a real temp directory: round trips at odd ranges,
//! checksum rejections, on-disk corruption (data, header, truncation) and quarantine,
//! idempotent puts, deletes, the start-up scan, space limits and the batch syncer.

use super::format::piece_crcs;
use super::*;
use crate::error::NoSpaceWhy;
use bytes::Bytes;
use distfs_types::CRC_CHUNK;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const PIECE: usize = CRC_CHUNK as usize;

fn opts(dir: &Path, sync: SyncPolicy) -> StoreOptions {
    StoreOptions { data_dir: dir.to_path_buf(), sync, capacity: None, reserve: 0 }
}

async fn open(dir: &Path, sync: SyncPolicy) -> (BlockStore, ScanReport) {
    BlockStore::open(opts(dir, sync), Arc::new(crate::disk::StdDisk::default())).await.expect("open store")
}

fn data(len: usize, seed: u8) -> Bytes {
    Bytes::from((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<_>>())
}

async fn put(store: &BlockStore, id: BlockId, body: &Bytes) -> Result<PutOutcome, StorageError> {
    store.put(id, piece_crcs(body), body.clone()).await
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn flip_byte(path: &Path, at: usize) {
    let mut b = std::fs::read(path).expect("read block file");
    b[at] ^= 0x40;
    std::fs::write(path, b).expect("write block file");
}

#[tokio::test]
async fn round_trip_with_odd_ranges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), SyncPolicy::Always).await;
    let id = BlockId(0xabcd_0000_0000_0000_0000_0000_0000_0001);
    let body = data(3 * PIECE + 1234, 1);
    assert_eq!(put(&store, id, &body).await.expect("put"), PutOutcome::Stored);
    assert!(store.block_path(id).to_string_lossy().contains("blocks/ab/cd/abcd"));
    assert_eq!(store.block_count(), 1);

    for (offset, len) in [
        (0u64, body.len() as u64),
        (1, 1),
        (PIECE as u64 - 1, 2),
        (2 * PIECE as u64 + 17, 5000),
        (3 * PIECE as u64 + 1000, 10_000_000),
        (body.len() as u64, 0),
        (5, 0),
    ] {
        let r = store.get(id, offset, len).await.expect("get");
        assert_eq!(r.offset % PIECE as u64, 0);
        assert!(r.offset <= offset);
        let end = r.offset as usize + r.data.len();
        assert_eq!(&body[r.offset as usize..end], &r.data[..], "range {offset}+{len}");
        if len > 0 {
            assert!(end as u64 >= (offset + len).min(body.len() as u64));
        }
        assert_eq!(r.crcs, piece_crcs(&r.data));
        assert_eq!(r.block_len, body.len() as u64);
    }
    let e = store.get(id, body.len() as u64 + 1, 1).await.unwrap_err();
    assert!(matches!(e, StorageError::BadRange { .. }), "{e}");
    let e = store.get(BlockId(9), 0, 1).await.unwrap_err();
    assert!(matches!(e, StorageError::NotFound { .. }), "{e}");

    let empty = BlockId(0x77);
    put(&store, empty, &Bytes::new()).await.expect("empty put");
    let r = store.get(empty, 0, 100).await.expect("empty get");
    assert!(r.data.is_empty() && r.crcs.is_empty());
}

#[tokio::test]
async fn crc_mismatch_on_put_is_rejected_and_nothing_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), SyncPolicy::None).await;
    let id = BlockId(5);
    let body = data(2 * PIECE, 2);
    let mut crcs = piece_crcs(&body);
    crcs[1] ^= 1;
    let e = store.put(id, crcs, body.clone()).await.unwrap_err();
    assert!(matches!(e, StorageError::BodyChecksum { piece: 1, .. }), "{e}");
    let e = store.put(id, vec![1], body).await.unwrap_err();
    assert!(matches!(e, StorageError::CrcCount { .. }), "{e}");
    assert!(!store.block_path(id).exists());
    assert_eq!(files_in(store.tmp_dir()), 0);
    assert_eq!((store.used(), store.block_count()), (0, 0));
}

#[tokio::test]
async fn flipped_data_bit_is_corrupt_and_quarantined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), SyncPolicy::None).await;
    let id = BlockId(0x1234);
    let body = data(2 * PIECE + 10, 3);
    put(&store, id, &body).await.expect("put");
    let path = store.block_path(id);
    let file_len = std::fs::metadata(&path).expect("stat").len() as usize;
    // Last byte of the file: inside the third piece.
    flip_byte(&path, file_len - 1);
    // A read of the first piece only does not see the damage...
    store.get(id, 0, 10).await.expect("first piece is fine");
    // ...a read of the last piece does.
    let e = store.get(id, 2 * PIECE as u64, 1).await.unwrap_err();
    match &e {
        StorageError::Corrupt { kind: CorruptKind::DataChecksum { piece: 2, .. }, .. } => {}
        other => panic!("expected data corruption, got {other}"),
    }
    assert!(matches!(
        e.to_fs(distfs_types::NodeId(4)),
        distfs_types::FsError::Corrupt { block, .. } if block == id
    ));
    assert!(!path.exists(), "corrupt file must leave the block tree");
    assert_eq!(files_in(store.quarantine_dir()), 1);
    assert_eq!((store.used(), store.block_count()), (0, 0));
    let e = store.get(id, 0, 1).await.unwrap_err();
    assert!(matches!(e, StorageError::NotFound { .. }), "{e}");
    // A fresh put of the block stores a good copy again.
    put(&store, id, &body).await.expect("re-put");
    assert_eq!(store.get(id, 0, 0).await.expect("get").block_len, body.len() as u64);
}

#[tokio::test]
async fn flipped_header_bit_is_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), SyncPolicy::None).await;
    let id = BlockId(0x42);
    put(&store, id, &data(1000, 4)).await.expect("put");
    let path = store.block_path(id);
    flip_byte(&path, 33); // inside the CRC list
    let e = store.get(id, 0, 1).await.unwrap_err();
    assert!(matches!(e, StorageError::Corrupt { kind: CorruptKind::HeaderChecksum { .. }, .. }), "{e}");
    assert!(!path.exists());
    assert_eq!(files_in(store.quarantine_dir()), 1);
}

#[tokio::test]
async fn truncated_file_is_corrupt_without_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), SyncPolicy::None).await;
    for (i, keep) in [0usize, 10, 40, 5000].into_iter().enumerate() {
        let id = BlockId(0x100 + i as u128);
        put(&store, id, &data(PIECE + 7, 5)).await.expect("put");
        let path = store.block_path(id);
        let f = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
        f.set_len(keep as u64).expect("truncate");
        let e = store.get(id, 0, 1).await.unwrap_err();
        assert!(matches!(e, StorageError::Corrupt { .. }), "keep {keep}: {e}");
        assert!(!path.exists());
    }
    assert_eq!(store.block_count(), 0);
}

#[tokio::test]
async fn idempotent_put_conflict_and_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), SyncPolicy::Always).await;
    let id = BlockId(0xfeed);
    let body = data(PIECE * 2, 6);
    assert_eq!(put(&store, id, &body).await.expect("put"), PutOutcome::Stored);
    let used = store.used();
    assert_eq!(put(&store, id, &body).await.expect("put again"), PutOutcome::AlreadyPresent);
    assert_eq!((store.used(), store.block_count()), (used, 1));
    let e = put(&store, id, &data(PIECE * 2, 7)).await.unwrap_err();
    assert!(matches!(e, StorageError::Conflict { .. }), "{e}");

    assert!(store.delete(id).await.expect("delete"));
    assert!(!store.delete(id).await.expect("delete again is fine"));
    assert_eq!((store.used(), store.block_count()), (0, 0));
    assert!(matches!(store.get(id, 0, 1).await.unwrap_err(), StorageError::NotFound { .. }));
}

#[tokio::test]
async fn scan_after_restart_counts_blocks_and_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids: Vec<BlockId> = (1..=5u128).map(|i| BlockId(i << 100 | i)).collect();
    let used = {
        let (store, report) = open(dir.path(), SyncPolicy::Always).await;
        assert_eq!(report, ScanReport::default());
        for (i, id) in ids.iter().enumerate() {
            put(&store, *id, &data(1000 * (i + 1), i as u8)).await.expect("put");
        }
        // A crash mid-write leaves a temp file; a bad header is found at scan.
        std::fs::write(store.tmp_dir().join("deadbeef.1234"), b"partial").expect("tmp");
        flip_byte(&store.block_path(ids[4]), 0);
        store.used()
    };
    let (store, report) = open(dir.path(), SyncPolicy::Always).await;
    assert_eq!(report.blocks, 4);
    assert_eq!(report.quarantined, 1);
    assert_eq!(report.temp_removed, 1);
    assert_eq!(store.block_count(), 4);
    assert!(store.used() < used && store.used() > 0);
    assert_eq!(files_in(store.tmp_dir()), 0);
    assert_eq!(files_in(store.quarantine_dir()), 1);
    for id in &ids[..4] {
        store.get(*id, 0, 1).await.expect("block survives restart");
    }
}

#[tokio::test]
async fn full_disk_is_no_space_with_nothing_left_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = opts(dir.path(), SyncPolicy::Always);
    o.capacity = Some(100 << 10);
    let (store, _) = BlockStore::open(o, Arc::new(crate::disk::StdDisk::default())).await.expect("open");
    put(&store, BlockId(1), &data(PIECE, 1)).await.expect("first block fits");
    let e = put(&store, BlockId(2), &data(PIECE, 2)).await.unwrap_err();
    assert!(matches!(e, StorageError::NoSpace { why: NoSpaceWhy::Capacity { .. }, .. }), "{e}");
    assert!(matches!(e.to_fs(distfs_types::NodeId(1)), distfs_types::FsError::NoSpace { .. }));
    assert!(!store.block_path(BlockId(2)).exists());
    assert_eq!(files_in(store.tmp_dir()), 0);
    assert_eq!(store.block_count(), 1);

    // The reserve: keep more free space than the file system has.
    let mut o = opts(dir.path(), SyncPolicy::None);
    o.reserve = u64::MAX / 2;
    let (store, _) = BlockStore::open(o, Arc::new(crate::disk::StdDisk::default())).await.expect("open");
    let e = put(&store, BlockId(3), &data(10, 3)).await.unwrap_err();
    assert!(matches!(e, StorageError::NoSpace { why: NoSpaceWhy::Reserve { .. }, .. }), "{e}");
    assert_eq!(files_in(store.tmp_dir()), 0);
}

#[tokio::test]
async fn batch_policy_group_commits_concurrent_puts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), SyncPolicy::Batch).await;
    let cancel = CancellationToken::new();
    let syncer = tokio::spawn({
        let (s, c) = (store.clone(), cancel.clone());
        async move { s.run_syncer(c).await }
    });
    let mut puts = Vec::new();
    for i in 0..32u128 {
        let s = store.clone();
        puts.push(tokio::spawn(async move {
            let body = data(5000 + i as usize, i as u8);
            put(&s, BlockId(i + 1), &body).await
        }));
    }
    for p in puts {
        p.await.expect("join").expect("batched put");
    }
    assert_eq!(store.block_count(), 32);
    store.get(BlockId(7), 0, 10).await.expect("get");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), syncer).await.expect("syncer stops").expect("join");
    // After the syncer stopped, a put fails instead of hanging.
    let e = tokio::time::timeout(Duration::from_secs(5), put(&store, BlockId(99), &data(10, 0)))
        .await
        .expect("put does not hang")
        .unwrap_err();
    assert!(matches!(e, StorageError::ShuttingDown), "{e}");
    assert_eq!(files_in(store.tmp_dir()), 0);
}

/// A disk whose writes fail with ENOSPC after `budget` successful ones.
struct FullDisk {
    budget: std::sync::atomic::AtomicUsize,
}

impl crate::disk::Disk for FullDisk {
    fn write_new(&self, path: &Path, parts: &[&[u8]], sync: bool) -> io::Result<()> {
        let left = self.budget.load(Ordering::SeqCst);
        if left == 0 {
            // A torn write: part of the file exists when the error comes back.
            std::fs::write(path, parts.first().copied().unwrap_or_default())?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.budget.store(left - 1, Ordering::SeqCst);
        crate::disk::StdDisk::default().write_new(path, parts, sync)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn crate::disk::ReadFile>> {
        crate::disk::StdDisk::default().open(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        crate::disk::StdDisk::default().rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        crate::disk::StdDisk::default().remove(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<bool> {
        crate::disk::StdDisk::default().create_dir(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<crate::disk::Entry>> {
        crate::disk::StdDisk::default().list(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        crate::disk::StdDisk::default().exists(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        crate::disk::StdDisk::default().sync_dir(dir)
    }
    fn sync_fs(&self, path: &Path) -> io::Result<()> {
        crate::disk::StdDisk::default().sync_fs(path)
    }
    fn stat_fs(&self, path: &Path) -> io::Result<crate::disk::FsStats> {
        crate::disk::StdDisk::default().stat_fs(path)
    }
}

#[tokio::test]
async fn enospc_from_the_disk_is_no_space_and_the_temp_file_is_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = Arc::new(FullDisk { budget: 1.into() });
    let (store, _) = BlockStore::open(opts(dir.path(), SyncPolicy::Always), disk).await.expect("open");
    put(&store, BlockId(1), &data(1000, 1)).await.expect("first write fits");
    let e = put(&store, BlockId(2), &data(1000, 2)).await.unwrap_err();
    assert!(matches!(e, StorageError::NoSpace { why: NoSpaceWhy::Disk, .. }), "{e}");
    assert!(matches!(e.to_fs(distfs_types::NodeId(1)), distfs_types::FsError::NoSpace { .. }));
    assert_eq!(files_in(store.tmp_dir()), 0);
    assert!(!store.block_path(BlockId(2)).exists());
    assert_eq!(store.block_count(), 1);
}

#[tokio::test]
async fn an_open_block_is_read_from_the_page_cache_without_reopening_and_a_delete_closes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), SyncPolicy::Always).await;
    let id = BlockId(0x77);
    let body = data(3 * PIECE + 5, 9);
    put(&store, id, &body).await.expect("put");
    // The first read opens the file, verifies it and keeps it open; its pages are cached.
    let r = store.get(id, 0, body.len() as u64).await.expect("first read");
    assert!(r.data[..] == body[..]);
    // Moved behind the store's back: only a read through the open file still finds it,
    // and it still checks every piece.
    let path = store.block_path(id);
    let aside = dir.path().join("aside");
    std::fs::rename(&path, &aside).expect("move aside");
    let r = store.get(id, 2 * PIECE as u64 + 3, 10).await.expect("read through the open file");
    assert_eq!(r.offset, 2 * PIECE as u64);
    assert!(r.data[..] == body[2 * PIECE..3 * PIECE]);
    std::fs::rename(&aside, &path).expect("move back");
    assert!(matches!(store.get(id, 10 * PIECE as u64, 1).await, Err(StorageError::BadRange { .. })));
    // A delete closes it: the block is gone for every reader.
    assert!(store.delete(id).await.expect("delete"));
    assert!(matches!(store.get(id, 0, 1).await, Err(StorageError::NotFound { .. })));
}
