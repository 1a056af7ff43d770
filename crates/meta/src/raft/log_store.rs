//! The Raft log in its own redb database: entries, vote, committed and last-purged ids.
//! `append` commits with `Durability::Immediate` before reporting the flush.

use super::{any, TypeConfig};
use crate::error::MetaError;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_logs");
const STORE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_store");
const K_VOTE: &str = "vote";
const K_COMMITTED: &str = "committed";
const K_PURGED: &str = "last_purged";

type SErr = StorageError<u64>;

/// Vote, committed id and entries are durable before openraft hears they are saved.
fn durability() -> Durability {
    #[cfg(feature = "sim-bugs")]
    if sim_bugs::LOG_SKIPS_FSYNC.load(std::sync::atomic::Ordering::Relaxed) {
        return Durability::None;
    }
    Durability::Immediate
}

/// Deliberately wrong behaviour the simulator must catch, compiled only with the
/// `sim-bugs` feature and off unless a test switches it on at run time.
#[cfg(feature = "sim-bugs")]
pub mod sim_bugs {
    use std::sync::atomic::AtomicBool;

    /// The log store reports entries and votes saved without making them durable (a
    /// commit without fsync): a crash loses them.
    pub static LOG_SKIPS_FSYNC: AtomicBool = AtomicBool::new(false);

    /// The vote is reported saved but never written: a node that restarts has forgotten
    /// whom it voted for (and its term) and can grant a second vote in a term.
    pub static VOTE_NOT_SAVED: AtomicBool = AtomicBool::new(false);
}

/// The log store; cheap to clone (the reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("postcard encoding of an in-memory raft value")
}

impl LogStore {
    pub fn open(path: &Path) -> Result<LogStore, MetaError> {
        let db = Database::create(path).map_err(|e| MetaError::storage("open raft log", e))?;
        Self::init(db)
    }

    pub fn in_memory() -> Result<LogStore, MetaError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| MetaError::storage("create in-memory raft log", e))?;
        Self::init(db)
    }

    /// A log store on any redb backend (the simulator's crash-aware in-memory disk).
    pub fn with_backend(backend: impl redb::StorageBackend) -> Result<LogStore, MetaError> {
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|e| MetaError::storage("open raft log on backend", e))?;
        Self::init(db)
    }

    fn init(db: Database) -> Result<LogStore, MetaError> {
        let txn = db.begin_write().map_err(|e| MetaError::storage("init raft log", e))?;
        txn.open_table(LOGS).map_err(|e| MetaError::storage("init raft log", e))?;
        txn.open_table(STORE).map_err(|e| MetaError::storage("init raft log", e))?;
        txn.commit().map_err(|e| MetaError::storage("init raft log", e))?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, redb::Error> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(STORE)?;
        let v = t.get(key)?;
        match v {
            Some(g) => postcard::from_bytes(g.value())
                .map(Some)
                .map_err(|e| redb::Error::Corrupted(format!("raft_store/{key}: {e}"))),
            None => Ok(None),
        }
    }

    fn put<T: Serialize>(&self, key: &str, v: &T) -> Result<(), redb::Error> {
        #[cfg(feature = "sim-bugs")]
        if key == K_VOTE && sim_bugs::VOTE_NOT_SAVED.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability())?;
        txn.open_table(STORE)?.insert(key, enc(v).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    fn last_entry(&self) -> Result<Option<Entry<TypeConfig>>, redb::Error> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(LOGS)?;
        let last = t.last()?;
        match last {
            Some((_, v)) => {
                postcard::from_bytes(v.value()).map(Some).map_err(|e| redb::Error::Corrupted(format!("raft_logs: {e}")))
            }
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let read = || -> Result<Vec<Entry<TypeConfig>>, redb::Error> {
            let start = match range.start_bound() {
                Bound::Included(i) => *i,
                Bound::Excluded(i) => i.saturating_add(1),
                Bound::Unbounded => 0,
            };
            let end = match range.end_bound() {
                Bound::Included(i) => Bound::Included(*i),
                Bound::Excluded(i) => Bound::Excluded(*i),
                Bound::Unbounded => Bound::Unbounded,
            };
            let txn = self.db.begin_read()?;
            let t = txn.open_table(LOGS)?;
            let mut out = Vec::new();
            for item in t.range::<u64>((Bound::Included(start), end))? {
                let (_, v) = item?;
                out.push(
                    postcard::from_bytes(v.value()).map_err(|e| redb::Error::Corrupted(format!("raft_logs: {e}")))?,
                );
            }
            Ok(out)
        };
        read().map_err(|e| StorageIOError::read_logs(any(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let purged: Option<LogId<u64>> = self.get(K_PURGED).map_err(|e| StorageIOError::read_logs(any(e)))?;
        let last = self.last_entry().map_err(|e| StorageIOError::read_logs(any(e)))?.map(|e| e.log_id).or(purged);
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SErr> {
        self.put(K_VOTE, vote).map_err(|e| StorageIOError::write_vote(any(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SErr> {
        self.get(K_VOTE).map_err(|e| StorageIOError::read_vote(any(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SErr> {
        self.put(K_COMMITTED, &committed).map_err(|e| StorageIOError::write(any(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, SErr> {
        let v: Option<Option<LogId<u64>>> = self.get(K_COMMITTED).map_err(|e| StorageIOError::read(any(e)))?;
        Ok(v.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let write = || -> Result<(), redb::Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(durability())?;
            {
                let mut t = txn.open_table(LOGS)?;
                for e in entries {
                    t.insert(e.log_id.index, enc(&e).as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        };
        match write() {
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
        let run = || -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            txn.open_table(LOGS)?.retain_in(log_id.index.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        };
        run().map_err(|e| StorageIOError::write_logs(any(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        let run = || -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            txn.open_table(STORE)?.insert(K_PURGED, enc(&log_id).as_slice())?;
            txn.open_table(LOGS)?.retain_in(..=log_id.index, |_, _| false)?;
            txn.commit()?;
            Ok(())
        };
        run().map_err(|e| StorageIOError::write_logs(any(e)).into())
    }
}
