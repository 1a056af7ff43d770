//! The segmented log store against real files (a temp dir) and the crash-aware
//! in-memory directory: what a restarted node reads back.

use super::*;
use crate::state::Command;
use distfs_types::{InodeId, Timestamp};
use openraft::testing::log_id;
use openraft::EntryPayload;

fn ent(term: u64, index: u64) -> Entry<TypeConfig> {
    let name = format!("dir-{index}-{}", "x".repeat((index % 7) as usize * 10));
    let cmd = Command::Mkdir { parent: InodeId::ROOT, name, perm: 0o755, uid: 0, gid: 0, now: Timestamp::default() };
    Entry { log_id: log_id(term, 1, index), payload: EntryPayload::Normal(cmd) }
}

/// Real-size segments without the zero-fill (64 MiB of zeros per test is slow).
fn plain() -> LogOptions {
    LogOptions { preallocate: false, ..LogOptions::default() }
}

fn small() -> LogOptions {
    LogOptions { segment_size: 512, preallocate: false }
}

fn open_fs(dir: &Path, opts: LogOptions) -> Result<LogStore, MetaError> {
    LogStore::open_on(Arc::new(FsLogDir::open(dir).expect("log dir")), opts)
}

fn append(log: &LogStore, entries: impl IntoIterator<Item = Entry<TypeConfig>>) {
    log.append_batch(entries).expect("append");
}

/// (term, index) of every entry the log returns for `range`.
async fn ids(log: &LogStore, range: std::ops::RangeInclusive<u64>) -> Vec<(u64, u64)> {
    let mut r = log.clone();
    let es = r.try_get_log_entries(range).await.expect("read");
    es.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect()
}

fn expect(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<(u64, u64)> {
    range.map(|i| (term, i)).collect()
}

async fn state(log: &LogStore) -> (Option<u64>, Option<u64>) {
    let s = log.clone().get_log_state().await.expect("state");
    (s.last_purged_log_id.map(|l| l.index), s.last_log_id.map(|l| l.index))
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn appended_entries_read_back_after_a_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = open_fs(tmp.path(), plain()).expect("open");
    append(&log, (1..=3).map(|i| ent(1, i)));
    append(&log, (4..=10).map(|i| ent(1, i)));
    assert_eq!(ids(&log, 1..=10).await, expect(1, 1..=10));
    assert_eq!(ids(&log, 4..=6).await, expect(1, 4..=6));
    drop(log);
    let log = open_fs(tmp.path(), plain()).expect("reopen");
    assert_eq!(state(&log).await, (None, Some(10)));
    let es = log.clone().try_get_log_entries(5..6).await.expect("read");
    assert_eq!(es, vec![ent(1, 5)], "the entry comes back byte for byte");
    assert_eq!(segment_files(tmp.path()), vec!["00000000000000000001.seg".to_string()]);
}

#[tokio::test]
async fn a_batch_of_many_entries_costs_one_fdatasync() {
    let dir = MemLogDir::new();
    let log = LogStore::open_on(Arc::new(dir.clone()), plain()).expect("open");
    append(&log, [ent(1, 1)]);
    let before = dir.syncs();
    append(&log, (2..=1001).map(|i| ent(1, i)));
    assert_eq!(dir.syncs() - before, 1, "one sync for a batch of 1000 entries");
    assert_eq!(ids(&log, 1..=1001).await, expect(1, 1..=1001));
    // The batch survives a crash: it was synced before append returned.
    let log = LogStore::open_on(Arc::new(dir.after_crash()), plain()).expect("after crash");
    assert_eq!(state(&log).await, (None, Some(1001)));
}

#[tokio::test]
async fn segments_roll_over_and_read_back_across_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = open_fs(tmp.path(), small()).expect("open");
    for b in 0..20 {
        append(&log, (b * 10 + 1..=b * 10 + 10).map(|i| ent(1, i)));
    }
    let files = segment_files(tmp.path());
    assert!(files.len() >= 5, "200 entries in 512-byte segments: {files:?}");
    assert_eq!(files[0], "00000000000000000001.seg");
    assert_eq!(log.segments(), files.len());
    assert_eq!(ids(&log, 1..=200).await, expect(1, 1..=200));
    drop(log);
    let log = open_fs(tmp.path(), small()).expect("reopen");
    assert_eq!(ids(&log, 1..=200).await, expect(1, 1..=200));
    assert_eq!(ids(&log, 95..=105).await, expect(1, 95..=105));
}

#[tokio::test]
async fn truncate_then_append_replaces_the_suffix_across_segments() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut log = open_fs(tmp.path(), small()).expect("open");
    for b in 0..5 {
        append(&log, (b * 10 + 1..=b * 10 + 10).map(|i| ent(1, i)));
    }
    let before = segment_files(tmp.path()).len();
    log.truncate(log_id(1, 1, 20)).await.expect("truncate");
    assert_eq!(state(&log).await, (None, Some(19)));
    assert!(segment_files(tmp.path()).len() < before, "later segments removed");
    append(&log, (20..=30).map(|i| ent(2, i)));
    let want: Vec<(u64, u64)> = expect(1, 1..=19).into_iter().chain(expect(2, 20..=30)).collect();
    assert_eq!(ids(&log, 1..=50).await, want);
    drop(log);
    let log = open_fs(tmp.path(), small()).expect("reopen");
    assert_eq!(ids(&log, 1..=50).await, want);
    assert_eq!(state(&log).await, (None, Some(30)));
}

#[tokio::test]
async fn purge_deletes_whole_segments_and_survives_a_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut log = open_fs(tmp.path(), small()).expect("open");
    for b in 0..10 {
        append(&log, (b * 10 + 1..=b * 10 + 10).map(|i| ent(1, i)));
    }
    let before = segment_files(tmp.path());
    log.purge(log_id(1, 1, 60)).await.expect("purge");
    let after = segment_files(tmp.path());
    assert!(after.len() < before.len(), "{before:?} -> {after:?}");
    let first: u64 = after[0].trim_end_matches(".seg").parse().expect("name");
    assert!(first <= 61, "the segment holding entry 61 is kept: {after:?}");
    assert_eq!(ids(&log, 1..=100).await, expect(1, 61..=100));
    drop(log);
    let mut log = open_fs(tmp.path(), small()).expect("reopen");
    assert_eq!(state(&log).await, (Some(60), Some(100)));
    assert_eq!(ids(&log, 1..=100).await, expect(1, 61..=100), "the purged prefix of the first segment is skipped");
    // A follower that installed a snapshot beyond its log: everything purged, then the
    // log continues after the snapshot.
    log.purge(log_id(1, 1, 150)).await.expect("purge all");
    assert_eq!(state(&log).await, (Some(150), Some(150)));
    append(&log, (151..=155).map(|i| ent(2, i)));
    drop(log);
    let log = open_fs(tmp.path(), small()).expect("reopen");
    assert_eq!(state(&log).await, (Some(150), Some(155)));
    assert_eq!(ids(&log, 0..=200).await, expect(2, 151..=155));
}

#[tokio::test]
async fn an_append_that_leaves_a_gap_is_refused() {
    let log = LogStore::in_memory().expect("open");
    append(&log, (1..=3).map(|i| ent(1, i)));
    let err = log.append_batch([ent(1, 5)]).expect_err("gap");
    assert!(err.to_string().contains("does not follow"), "{err}");
    assert_eq!(state(&log).await, (None, Some(3)));
}

/// A log of entries 1..=n on real files whose only segment then gets `tail` appended
/// behind the last record (what a crash mid-write leaves); returns the dir and segment.
fn log_with_tail(n: u64, tail: &[u8]) -> (tempfile::TempDir, std::path::PathBuf, u64) {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = open_fs(tmp.path(), plain()).expect("open");
    append(&log, (1..=n).map(|i| ent(1, i)));
    drop(log);
    let seg = tmp.path().join("00000000000000000001.seg");
    let good = std::fs::metadata(&seg).expect("stat").len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).expect("open seg");
    std::io::Write::write_all(&mut f, tail).expect("write");
    (tmp, seg, good)
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_the_log_goes_on() {
    // A crash in the middle of writing entry 11: its header and part of its payload.
    let mut rec = Vec::new();
    wal::encode_record(&mut rec, &postcard::to_stdvec(&ent(1, 11)).expect("enc")).expect("record");
    let (tmp, seg, good) = log_with_tail(10, &rec[..rec.len() / 2]);
    let log = open_fs(tmp.path(), plain()).expect("a torn tail is not an error");
    assert_eq!(state(&log).await, (None, Some(10)));
    assert_eq!(std::fs::metadata(&seg).expect("stat").len(), good, "the torn bytes are cut off");
    append(&log, (11..=12).map(|i| ent(1, i)));
    drop(log);
    let log = open_fs(tmp.path(), plain()).expect("reopen");
    assert_eq!(ids(&log, 1..=12).await, expect(1, 1..=12));
}

#[tokio::test]
async fn a_header_claiming_4_gib_is_a_torn_tail_not_an_allocation() {
    let (tmp, seg, good) = log_with_tail(2, &[0xff; 8]);
    let log = open_fs(tmp.path(), plain()).expect("open");
    assert_eq!(state(&log).await, (None, Some(2)));
    assert_eq!(std::fs::metadata(&seg).expect("stat").len(), good);
}

/// The byte offset of entry `index` in a segment that starts at `first`.
fn offset_of(seg: &Path, first: u64, index: u64) -> u64 {
    let bytes = std::fs::read(seg).expect("read seg");
    let mut pos = 0usize;
    for _ in first..index {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("len")) as usize;
        pos += 8 + len;
    }
    pos as u64
}

fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[at as usize] ^= 0x40;
    std::fs::write(path, bytes).expect("write");
}

#[tokio::test]
async fn a_damaged_record_before_valid_ones_refuses_to_start_naming_file_and_offset() {
    let (tmp, seg, _) = log_with_tail(10, &[]);
    let at = offset_of(&seg, 1, 4);
    flip(&seg, at + 12);
    let err = open_fs(tmp.path(), plain()).err().expect("refused");
    match &err {
        MetaError::LogCorrupt { file, offset, .. } => {
            assert!(file.ends_with("00000000000000000001.seg"), "{err}");
            assert_eq!(*offset, at, "{err}");
        }
        other => panic!("not a corruption error: {other}"),
    }
    assert!(err.to_string().contains("remove it and add the node back"), "says what to do: {err}");
    // Nothing was cut: the acknowledged entries are still in the file for a repair.
    assert!(std::fs::metadata(&seg).expect("stat").len() > at + 100);
}

#[tokio::test]
async fn a_damaged_length_inside_the_last_segment_is_refused_not_cut() {
    let (tmp, seg, len) = log_with_tail(10, &[]);
    // The length of entry 4 now points nowhere: the records behind it are still valid.
    let at = offset_of(&seg, 1, 4);
    flip(&seg, at + 2);
    let err = open_fs(tmp.path(), plain()).err().expect("refused");
    assert!(matches!(&err, MetaError::LogCorrupt { offset, .. } if *offset == at), "{err}");
    assert!(err.to_string().contains("a valid record of entry 5 follows"), "{err}");
    assert_eq!(std::fs::metadata(&seg).expect("stat").len(), len, "nothing cut");
}

#[tokio::test]
async fn damage_at_the_end_of_an_older_segment_or_a_missing_segment_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = open_fs(tmp.path(), small()).expect("open");
    for b in 0..10 {
        append(&log, (b * 10 + 1..=b * 10 + 10).map(|i| ent(1, i)));
    }
    drop(log);
    let files = segment_files(tmp.path());
    // The last record of the first segment: a torn tail anywhere but the last segment
    // would lose acknowledged entries.
    let first = tmp.path().join(&files[0]);
    let next: u64 = files[1].trim_end_matches(".seg").parse().expect("name");
    let at = offset_of(&first, 1, next - 1);
    flip(&first, at + 10);
    let err = open_fs(tmp.path(), small()).err().expect("refused");
    assert!(matches!(&err, MetaError::LogCorrupt { offset, .. } if *offset == at), "{err}");
    flip(&first, at + 10);
    open_fs(tmp.path(), small()).expect("repaired");
    std::fs::remove_file(tmp.path().join(&files[2])).expect("rm");
    let err = open_fs(tmp.path(), small()).err().expect("refused");
    assert!(err.to_string().contains("a gap in the log"), "{err}");
}

#[tokio::test]
async fn the_vote_survives_a_crash_and_unsynced_entries_do_not_come_back() {
    let dir = MemLogDir::new();
    let mut log = LogStore::open_on(Arc::new(dir.clone()), small()).expect("open");
    append(&log, (1..=5).map(|i| ent(1, i)));
    log.save_vote(&Vote::new(3, 2)).await.expect("vote");
    log.save_committed(Some(log_id(1, 1, 4))).await.expect("committed");
    // Bytes written but never synced (a crash before the append's fdatasync).
    let mut rec = Vec::new();
    wal::encode_record(&mut rec, &postcard::to_stdvec(&ent(1, 6)).expect("enc")).expect("record");
    let seg = log.lock().segs.last().map(|s| (s.name.clone(), s.end)).expect("segment");
    dir.write_at(&seg.0, seg.1, &rec).expect("write");
    let mut log = LogStore::open_on(Arc::new(dir.after_crash()), small()).expect("after crash");
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(3, 2)));
    assert_eq!(state(&log).await, (None, Some(5)));
    let committed = log.read_committed().await.expect("committed");
    assert!(committed.is_none_or(|c| c.index <= 5), "never beyond the log: {committed:?}");
    // A real restart keeps it too.
    let tmp = tempfile::tempdir().expect("tmp");
    let mut log = open_fs(tmp.path(), plain()).expect("open");
    log.save_vote(&Vote::new_committed(7, 1)).await.expect("vote");
    drop(log);
    let mut log = open_fs(tmp.path(), plain()).expect("reopen");
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new_committed(7, 1)));
}

#[tokio::test]
async fn preallocated_segments_read_back_and_roll_over() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = LogOptions { segment_size: 4096, preallocate: true };
    let log = open_fs(tmp.path(), opts).expect("open");
    for b in 0..20 {
        append(&log, (b * 10 + 1..=b * 10 + 10).map(|i| ent(1, i)));
    }
    let files = segment_files(tmp.path());
    assert!(files.len() > 1, "{files:?}");
    for f in &files {
        let len = std::fs::metadata(tmp.path().join(f)).expect("stat").len();
        assert!(len >= 4096, "{f} is zero-filled to the segment size: {len}");
    }
    drop(log);
    let log = open_fs(tmp.path(), opts).expect("reopen");
    assert_eq!(ids(&log, 1..=200).await, expect(1, 1..=200));
    append(&log, [ent(1, 201)]);
    drop(log);
    let log = open_fs(tmp.path(), opts).expect("reopen");
    assert_eq!(state(&log).await, (None, Some(201)));
}

#[tokio::test]
async fn appends_after_a_snapshot_past_the_log_survive_a_later_purge_and_restart() {
    let dir = MemLogDir::new();
    let mut log = LogStore::open_on(Arc::new(dir.clone()), plain()).expect("open");
    append(&log, (1..=4).map(|i| ent(1, i)));
    // openraft installs a snapshot up to 39, purges, and the log goes on from 40 in the
    // same segment; a later snapshot purges up to 60.
    log.purge(log_id(1, 1, 39)).await.expect("purge");
    append(&log, (40..=70).map(|i| ent(2, i)));
    log.purge(log_id(2, 1, 60)).await.expect("purge");
    let log = LogStore::open_on(Arc::new(dir.after_crash()), plain()).expect("after crash");
    assert_eq!(state(&log).await, (Some(60), Some(70)));
    assert_eq!(ids(&log, 0..=100).await, expect(2, 61..=70));
}
