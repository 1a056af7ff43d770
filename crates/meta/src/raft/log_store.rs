//! The Raft log as an append-only segmented log (format in `wal`) in a `LogDir`.
//!
//! `append` writes the whole batch with one write and makes it durable with one
//! fdatasync before reporting the flush (a follower's AppendEntries batch is one flush;
//! openraft 0.9 hands a leader's client writes over one at a time). Memory holds only
//! where each live entry is (segment,
//! offset, length). Vote, committed and last-purged ids live in the small file `state`,
//! replaced atomically (write `state.tmp`, fsync, rename, fsync the directory).

use super::log_dir::{FsLogDir, LogDir, MemLogDir};
use super::wal::{self, Header, HEADER};
use super::{any, TypeConfig};
use crate::error::MetaError;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tracing::warn;

type SErr = StorageError<u64>;

const STATE: &str = "state";
const STATE_TMP: &str = "state.tmp";
const STATE_MAGIC: &[u8; 8] = b"DFSLOGS1";
/// The state file is a few dozen bytes; anything larger is not one.
const STATE_MAX: u64 = 4096;
static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

/// Deliberately wrong behaviour the simulator must catch, compiled only with the
/// `sim-bugs` feature and off unless a test switches it on at run time.
#[cfg(feature = "sim-bugs")]
pub mod sim_bugs {
    use std::sync::atomic::AtomicBool;

    /// The log store reports entries and votes saved without making them durable (no
    /// fsync): a crash loses them.
    pub static LOG_SKIPS_FSYNC: AtomicBool = AtomicBool::new(false);

    /// The vote is reported saved but never written: a node that restarts has forgotten
    /// whom it voted for (and its term) and can grant a second vote in a term.
    pub static VOTE_NOT_SAVED: AtomicBool = AtomicBool::new(false);
}

fn skips_fsync() -> bool {
    #[cfg(feature = "sim-bugs")]
    if sim_bugs::LOG_SKIPS_FSYNC.load(std::sync::atomic::Ordering::Relaxed) {
        return true;
    }
    false
}

fn forgets_vote() -> bool {
    #[cfg(feature = "sim-bugs")]
    if sim_bugs::VOTE_NOT_SAVED.load(std::sync::atomic::Ordering::Relaxed) {
        return true;
    }
    false
}

/// How segments are laid out.
#[derive(Clone, Copy, Debug)]
pub struct LogOptions {
    /// A new segment is started once the active one holds this many bytes.
    pub segment_size: u64,
    /// Zero-fill a new segment to `segment_size` (and sync it) before the first append, so
    /// that an append's fdatasync does not also commit a new file size.
    pub preallocate: bool,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions { segment_size: 64 << 20, preallocate: true }
    }
}

/// What the `state` file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMeta {
    pub vote: Option<Vote<u64>>,
    pub committed: Option<LogId<u64>>,
    pub purged: Option<LogId<u64>>,
}

#[derive(Debug)]
struct Segment {
    first: u64,
    name: String,
    /// Where the next record goes (the end of the valid records).
    end: u64,
}

/// Where one live entry is.
#[derive(Clone, Copy, Debug)]
struct Loc {
    /// The first index of its segment (the segment's name).
    seg: u64,
    offset: u64,
    len: u32,
}

struct Inner {
    dir: Arc<dyn LogDir>,
    opts: LogOptions,
    segs: Vec<Segment>,
    /// Entries after the purged point, from `first_live` on.
    locs: VecDeque<Loc>,
    first_live: u64,
    /// The last record on disk, purged or not (what the next append must follow).
    last_index: Option<u64>,
    /// The id of the last live entry.
    last_live: Option<LogId<u64>>,
    meta: LogMeta,
}

/// The log store; cheap to clone (the reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn io_err(dir: &dyn LogDir, name: &str) -> impl FnOnce(std::io::Error) -> MetaError {
    let path = dir.describe(name);
    move |source| MetaError::Io { path, source }
}

fn corrupt(dir: &dyn LogDir, name: &str, offset: u64, reason: impl Into<String>) -> MetaError {
    MetaError::LogCorrupt { file: dir.describe(name), offset, reason: reason.into() }
}

fn read_vec(dir: &dyn LogDir, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, MetaError> {
    let n = usize::try_from(len).map_err(|_| corrupt(dir, name, offset, "record larger than memory"))?;
    let mut buf = vec![0u8; n];
    dir.read_at(name, offset, &mut buf).map_err(io_err(dir, name))?;
    Ok(buf)
}

/// The state file's contents, `None` if there is none yet.
fn read_meta(dir: &dyn LogDir, names: &[String]) -> Result<Option<LogMeta>, MetaError> {
    if !names.iter().any(|n| n == STATE) {
        return Ok(None);
    }
    let len = dir.len(STATE).map_err(io_err(dir, STATE))?;
    if !(12..=STATE_MAX).contains(&len) {
        return Err(corrupt(dir, STATE, 0, format!("state file of {len} bytes")));
    }
    let buf = read_vec(dir, STATE, 0, len)?;
    let (head, body) = buf.split_at(12);
    let crc = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if &head[..8] != STATE_MAGIC || crc32c::crc32c(body) != crc {
        return Err(corrupt(dir, STATE, 0, "bad magic or checksum"));
    }
    postcard::from_bytes(body).map(Some).map_err(|e| corrupt(dir, STATE, 12, e.to_string()))
}

/// Replaces the state file, durably before it returns.
fn write_meta(dir: &dyn LogDir, meta: &LogMeta) -> Result<(), MetaError> {
    let body = postcard::to_stdvec(meta).map_err(|e| MetaError::Raft { reason: format!("encode log state: {e}") })?;
    let mut buf = Vec::with_capacity(12 + body.len());
    buf.extend_from_slice(STATE_MAGIC);
    buf.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    buf.extend_from_slice(&body);
    dir.create(STATE_TMP).map_err(io_err(dir, STATE_TMP))?;
    dir.write_at(STATE_TMP, 0, &buf).map_err(io_err(dir, STATE_TMP))?;
    dir.sync(STATE_TMP).map_err(io_err(dir, STATE_TMP))?;
    dir.rename(STATE_TMP, STATE).map_err(io_err(dir, STATE))?;
    dir.sync_dir().map_err(io_err(dir, STATE))?;
    Ok(())
}

/// A record read back from disk at `offset`.
enum Probe {
    Valid { log_id: LogId<u64>, len: u32 },
    End,
    Bad(String),
}

fn probe(dir: &dyn LogDir, name: &str, offset: u64, file_len: u64) -> Result<Probe, MetaError> {
    if offset >= file_len {
        return Ok(Probe::End);
    }
    if file_len - offset < HEADER {
        let rest = read_vec(dir, name, offset, file_len - offset)?;
        return Ok(if rest.iter().all(|b| *b == 0) { Probe::End } else { Probe::Bad("partial header".into()) });
    }
    let mut h = [0u8; HEADER as usize];
    dir.read_at(name, offset, &mut h).map_err(io_err(dir, name))?;
    let (len, crc) = match wal::parse_header(h) {
        Header::End => return Ok(Probe::End),
        Header::BadLength(l) => return Ok(Probe::Bad(format!("record length {l}"))),
        Header::Record { len, crc } => (len, crc),
    };
    if u64::from(len) > file_len - offset - HEADER {
        return Ok(Probe::Bad(format!("record of {len} bytes runs past the end of the file")));
    }
    let payload = read_vec(dir, name, offset + HEADER, u64::from(len))?;
    if !wal::crc_matches(len, crc, &payload) {
        return Ok(Probe::Bad("checksum mismatch".into()));
    }
    match wal::peek_log_id(&payload) {
        Ok(log_id) => Ok(Probe::Valid { log_id, len }),
        Err(e) => Err(corrupt(dir, name, offset, format!("record with a valid checksum does not decode: {e}"))),
    }
}

impl LogStore {
    /// Opens (creating it if missing) the log in the directory `path`.
    pub fn open(path: &Path) -> Result<LogStore, MetaError> {
        let dir = FsLogDir::open(path).map_err(|source| MetaError::Io { path: path.display().to_string(), source })?;
        Self::open_on(Arc::new(dir), LogOptions::default())
    }

    /// A log on a fresh in-memory directory.
    pub fn in_memory() -> Result<LogStore, MetaError> {
        Self::open_on(Arc::new(MemLogDir::new()), LogOptions { preallocate: false, ..LogOptions::default() })
    }

    /// Opens the log in `dir`: reads the state file, verifies every record of every
    /// segment, cuts a torn tail off the last segment and refuses a damaged or gapped log.
    pub fn open_on(dir: Arc<dyn LogDir>, opts: LogOptions) -> Result<LogStore, MetaError> {
        let d = &*dir;
        let names = d.list().map_err(io_err(d, ""))?;
        let meta = read_meta(d, &names)?.unwrap_or_default();
        let purged = meta.purged.map(|l| l.index);
        let mut segs: Vec<Segment> = names
            .iter()
            .filter_map(|n| wal::parse_segment_name(n).map(|first| Segment { first, name: n.clone(), end: 0 }))
            .collect();
        segs.sort_by_key(|s| s.first);
        // Segments wholly below the purged point (a purge interrupted by a crash).
        let mut dropped = false;
        while let (Some(p), true) = (purged, segs.len() > 1) {
            if segs[1].first > p.saturating_add(1) {
                break;
            }
            let s = segs.remove(0);
            d.remove(&s.name).map_err(io_err(d, &s.name))?;
            dropped = true;
        }
        let mut inner = Inner {
            dir: dir.clone(),
            opts,
            segs: Vec::new(),
            locs: VecDeque::new(),
            first_live: purged.map_or(0, |p| p.saturating_add(1)),
            last_index: None,
            last_live: None,
            meta,
        };
        let count = segs.len();
        for (i, mut seg) in segs.into_iter().enumerate() {
            inner.scan(&mut seg, i + 1 == count)?;
            inner.segs.push(seg);
        }
        // Trailing segments without a record (created, then a crash before the append).
        while inner.segs.last().is_some_and(|s| s.end == 0) {
            if let Some(s) = inner.segs.pop() {
                d.remove(&s.name).map_err(io_err(d, &s.name))?;
                dropped = true;
            }
        }
        if dropped {
            d.sync_dir().map_err(io_err(d, ""))?;
        }
        Ok(LogStore { inner: Arc::new(Mutex::new(inner)) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The vote, committed and purged ids as they are now.
    pub fn meta(&self) -> LogMeta {
        self.lock().meta.clone()
    }

    /// Number of segment files.
    pub fn segments(&self) -> usize {
        self.lock().segs.len()
    }

    /// Appends `entries` (contiguous, following the log) with one write and one
    /// fdatasync. Encoding and the flush happen outside the lock.
    fn append_batch(&self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> Result<(), MetaError> {
        let mut buf = Vec::new();
        let mut ids = Vec::new();
        for e in entries {
            let payload =
                postcard::to_stdvec(&e).map_err(|err| MetaError::Raft { reason: format!("encode entry: {err}") })?;
            wal::encode_record(&mut buf, &payload).map_err(|reason| MetaError::Raft { reason })?;
            // encode_record refused anything over MAX_RECORD, so the length fits.
            ids.push((e.log_id, payload.len() as u32));
        }
        let (dir, seg) = {
            let mut g = self.lock();
            (g.dir.clone(), g.write_batch(&buf, &ids)?)
        };
        match seg {
            Some(name) if !skips_fsync() => dir.sync(&name).map_err(io_err(&*dir, &name)),
            _ => Ok(()),
        }
    }

    /// Writes `entries` (contiguous, following the log) and `meta` into this log, durably:
    /// the import of a log from another store.
    pub fn import(&self, entries: Vec<Entry<TypeConfig>>, meta: LogMeta) -> Result<(), MetaError> {
        self.lock().meta = meta;
        self.append_batch(entries)?;
        let g = self.lock();
        write_meta(&*g.dir, &g.meta)
    }
}

impl Inner {
    /// Scans one segment, indexing its live records.
    fn scan(&mut self, seg: &mut Segment, last: bool) -> Result<(), MetaError> {
        let dir = self.dir.clone();
        let d = &*dir;
        let name = seg.name.as_str();
        let file_len = d.len(name).map_err(io_err(d, name))?;
        let purged = self.meta.purged.map(|l| l.index);
        let mut pos = 0u64;
        let bad = loop {
            let (log_id, len) = match probe(d, name, pos, file_len)? {
                Probe::End => break None,
                Probe::Bad(reason) => break Some(reason),
                Probe::Valid { log_id, len } => (log_id, len),
            };
            let index = log_id.index;
            if pos == 0 && index != seg.first {
                return Err(corrupt(d, name, 0, format!("first entry is {index}, the file name says {}", seg.first)));
            }
            if !wal::continues(self.last_index, purged, index) {
                let prev = self.last_index.map_or("none".to_string(), |p| p.to_string());
                return Err(corrupt(d, name, pos, format!("entry {index} after entry {prev}: a gap in the log")));
            }
            if purged.is_none_or(|p| index > p) {
                if self.locs.is_empty() {
                    self.first_live = index;
                }
                self.locs.push_back(Loc { seg: seg.first, offset: pos, len });
                self.last_live = Some(log_id);
            }
            self.last_index = Some(index);
            pos += HEADER + u64::from(len);
        };
        if let (Some(reason), false) = (&bad, last) {
            return Err(corrupt(d, name, pos, format!("{reason}, in a segment followed by others")));
        }
        if last && pos < file_len && (bad.is_some() || !self.is_zero(name, pos, file_len)?) {
            // Bytes after the last good record: a torn write is cut off, but a valid record
            // anywhere behind them means a damaged record inside the log: refuse rather
            // than drop what may have been acknowledged.
            let reason = bad.unwrap_or_else(|| "non-zero bytes after the last record".into());
            if let Some((at, index)) = self.valid_record_in(name, pos, file_len)? {
                return Err(corrupt(
                    d,
                    name,
                    pos,
                    format!("{reason}, but a valid record of entry {index} follows at byte {at}"),
                ));
            }
            warn!(file = %d.describe(name), offset = pos, %reason, "cutting a torn tail off the Raft log (a crash mid-write)");
            // Cut, so that stale bytes can never line up behind later appends.
            d.set_len(name, pos).map_err(io_err(d, name))?;
            if self.opts.preallocate {
                self.zero_fill(name, pos)?;
            }
            d.sync(name).map_err(io_err(d, name))?;
        }
        seg.end = pos;
        Ok(())
    }

    /// The first record in `(from, to)` of the file with a valid checksum and an index
    /// after the last one scanned, searching every byte offset (only after a bad record).
    fn valid_record_in(&self, name: &str, from: u64, to: u64) -> Result<Option<(u64, u64)>, MetaError> {
        let d = &*self.dir;
        // The real size of a file of the log, not a length read from it.
        let tail = read_vec(d, name, from, to - from)?;
        let after = self.last_index;
        for o in 1..tail.len().saturating_sub(HEADER as usize) {
            let h: [u8; HEADER as usize] = tail[o..o + HEADER as usize].try_into().unwrap_or_default();
            let Header::Record { len, crc } = wal::parse_header(h) else { continue };
            let Some(payload) = tail.get(o + HEADER as usize..o + HEADER as usize + len as usize) else { continue };
            if !wal::crc_matches(len, crc, payload) {
                continue;
            }
            if let Ok(id) = wal::peek_log_id(payload) {
                if after.is_none_or(|a| id.index > a) {
                    return Ok(Some((from + o as u64, id.index)));
                }
            }
        }
        Ok(None)
    }

    fn is_zero(&self, name: &str, from: u64, to: u64) -> Result<bool, MetaError> {
        let d = &*self.dir;
        let mut buf = vec![0u8; ZEROS.len()];
        let mut off = from;
        while off < to {
            // n <= ZEROS.len(), so the cast cannot truncate.
            let n = (to - off).min(ZEROS.len() as u64) as usize;
            d.read_at(name, off, &mut buf[..n]).map_err(io_err(d, name))?;
            if buf[..n].iter().any(|b| *b != 0) {
                return Ok(false);
            }
            off += n as u64;
        }
        Ok(true)
    }

    fn zero_fill(&self, name: &str, from: u64) -> Result<(), MetaError> {
        let d = &*self.dir;
        let mut off = from;
        while off < self.opts.segment_size {
            let n = (self.opts.segment_size - off).min(ZEROS.len() as u64);
            // n <= ZEROS.len(), so the cast cannot truncate.
            d.write_at(name, off, &ZEROS[..n as usize]).map_err(io_err(d, name))?;
            off += n;
        }
        Ok(())
    }

    /// Starts a new segment for entries from `first`.
    fn roll(&mut self, first: u64) -> Result<(), MetaError> {
        let name = wal::segment_name(first);
        let d = &*self.dir;
        d.create(&name).map_err(io_err(d, &name))?;
        if self.opts.preallocate {
            self.zero_fill(&name, 0)?;
            d.sync(&name).map_err(io_err(d, &name))?;
        }
        d.sync_dir().map_err(io_err(d, &name))?;
        self.segs.push(Segment { first, name, end: 0 });
        Ok(())
    }

    /// Writes an encoded batch (`ids`: each entry's id and payload length) with one write
    /// and indexes it; returns the segment to sync (the caller syncs outside the lock, so
    /// that readers are not held up by the flush).
    fn write_batch(&mut self, buf: &[u8], ids: &[(LogId<u64>, u32)]) -> Result<Option<String>, MetaError> {
        let purged = self.meta.purged.map(|l| l.index);
        let mut last = self.last_index;
        for (id, _) in ids {
            if !wal::continues(last, purged, id.index) {
                return Err(MetaError::Raft {
                    reason: format!("log append of entry {} does not follow entry {last:?}", id.index),
                });
            }
            last = Some(id.index);
        }
        let (Some((first, _)), Some((last_id, _))) = (ids.first(), ids.last()) else { return Ok(None) };
        if self.segs.last().is_none_or(|s| s.end >= self.opts.segment_size) {
            self.roll(first.index)?;
        }
        let d = &*self.dir;
        let seg = self.segs.last_mut().ok_or_else(|| MetaError::Raft { reason: "no active log segment".into() })?;
        d.write_at(&seg.name, seg.end, buf).map_err(io_err(d, &seg.name))?;
        let mut offset = seg.end;
        for (_, len) in ids {
            if self.locs.is_empty() {
                self.first_live = first.index;
            }
            self.locs.push_back(Loc { seg: seg.first, offset, len: *len });
            offset += HEADER + u64::from(*len);
        }
        seg.end = offset;
        self.last_index = last;
        self.last_live = Some(*last_id);
        Ok(Some(seg.name.clone()))
    }

    fn segment(&self, first: u64) -> Result<&Segment, MetaError> {
        let i = self.segs.binary_search_by_key(&first, |s| s.first);
        i.map(|i| &self.segs[i]).map_err(|_| MetaError::Raft { reason: format!("log segment {first} is not open") })
    }

    /// Reads and checks the records of live entries `[start, end)`.
    fn read(&self, start: u64, end: u64) -> Result<Vec<Entry<TypeConfig>>, MetaError> {
        let d = &*self.dir;
        let top = self.first_live + self.locs.len() as u64;
        let (start, end) = (start.max(self.first_live), end.min(top));
        let mut out = Vec::with_capacity(usize::try_from(end.saturating_sub(start)).unwrap_or(0));
        let mut i = start;
        while i < end {
            // One read for a run of entries in the same segment.
            let at = |i: u64| self.locs[(i - self.first_live) as usize];
            let head = at(i);
            let mut j = i + 1;
            while j < end && at(j).seg == head.seg {
                j += 1;
            }
            let tail = at(j - 1);
            let name = &self.segment(head.seg)?.name;
            let span = tail.offset + HEADER + u64::from(tail.len) - head.offset;
            let buf = read_vec(d, name, head.offset, span)?;
            for k in i..j {
                let loc = at(k);
                let s = (loc.offset - head.offset) as usize;
                let h: [u8; 8] = buf[s..s + 8].try_into().map_err(|_| corrupt(d, name, loc.offset, "short header"))?;
                let payload = &buf[s + 8..s + 8 + loc.len as usize];
                let ok = matches!(wal::parse_header(h), Header::Record { len, crc } if len == loc.len && wal::crc_matches(len, crc, payload));
                if !ok {
                    return Err(corrupt(d, name, loc.offset, "checksum mismatch on read"));
                }
                let e: Entry<TypeConfig> =
                    postcard::from_bytes(payload).map_err(|e| corrupt(d, name, loc.offset, e.to_string()))?;
                if e.log_id.index != k {
                    return Err(corrupt(d, name, loc.offset, format!("holds entry {}, expected {k}", e.log_id.index)));
                }
                out.push(e);
            }
            i = j;
        }
        Ok(out)
    }

    /// Removes entries from `index` on: later segments first, then the cut, each durable.
    fn truncate(&mut self, index: u64) -> Result<(), MetaError> {
        if index < self.first_live {
            return Err(MetaError::Raft { reason: format!("truncate at {index} is inside the purged log") });
        }
        let Some(loc) = self.locs.get((index - self.first_live) as usize).copied() else { return Ok(()) };
        let dir = self.dir.clone();
        let d = &*dir;
        let mut removed = false;
        while self.segs.last().is_some_and(|s| s.first > loc.seg) {
            if let Some(s) = self.segs.pop() {
                d.remove(&s.name).map_err(io_err(d, &s.name))?;
                removed = true;
            }
        }
        if removed {
            d.sync_dir().map_err(io_err(d, ""))?;
        }
        let seg = self.segs.last_mut().ok_or_else(|| MetaError::Raft { reason: "no log segment to cut".into() })?;
        d.set_len(&seg.name, loc.offset).map_err(io_err(d, &seg.name))?;
        if !skips_fsync() {
            d.sync(&seg.name).map_err(io_err(d, &seg.name))?;
        }
        seg.end = loc.offset;
        self.locs.truncate((index - self.first_live) as usize);
        self.last_index = index.checked_sub(1);
        self.last_live = match self.locs.back() {
            Some(_) => self.read(index - 1, index)?.pop().map(|e| e.log_id),
            None => None,
        };
        Ok(())
    }

    /// Records the purged point durably, then deletes the segments wholly below it.
    fn purge(&mut self, log_id: LogId<u64>) -> Result<(), MetaError> {
        self.meta.purged = Some(log_id);
        let dir = self.dir.clone();
        let d = &*dir;
        write_meta(d, &self.meta)?;
        let mut removed = false;
        while self.segs.len() > 1 && self.segs[1].first <= log_id.index.saturating_add(1) {
            let s = self.segs.remove(0);
            d.remove(&s.name).map_err(io_err(d, &s.name))?;
            removed = true;
        }
        if removed {
            d.sync_dir().map_err(io_err(d, ""))?;
        }
        while self.first_live <= log_id.index && self.locs.pop_front().is_some() {
            self.first_live += 1;
        }
        if self.locs.is_empty() {
            self.first_live = log_id.index.saturating_add(1);
            self.last_live = None;
        }
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.lock().read(start, end).map_err(|e| StorageIOError::read_logs(any(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let g = self.lock();
        let purged = g.meta.purged;
        Ok(LogState { last_purged_log_id: purged, last_log_id: g.last_live.or(purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Durable before it returns (state file replaced and the directory synced).
    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SErr> {
        if forgets_vote() {
            return Ok(());
        }
        let mut g = self.lock();
        g.meta.vote = Some(*vote);
        if skips_fsync() {
            // Like a write that never reached the disk: only a later state write keeps it.
            return Ok(());
        }
        let dir = g.dir.clone();
        write_meta(&*dir, &g.meta).map_err(|e| StorageIOError::write_vote(any(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SErr> {
        Ok(self.lock().meta.vote)
    }

    /// Kept in memory and written with the next vote or purge: the state machine is the
    /// durable record of what was applied, and a committed id that is older after a crash
    /// is never wrong (a committed entry is never truncated).
    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SErr> {
        self.lock().meta.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, SErr> {
        Ok(self.lock().meta.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let res = self.append_batch(entries);
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(any(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        self.lock().truncate(log_id.index).map_err(|e| StorageIOError::write_logs(any(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        self.lock().purge(log_id).map_err(|e| StorageIOError::write_logs(any(e)).into())
    }
}

#[cfg(test)]
#[path = "log_store_tests.rs"]
mod tests;
