//! openraft's `RaftStateMachine` over `StateStore`: each entry applied in its own redb
//! write transaction together with the applied log id. The state database is its own
//! snapshot: building one makes it durable and records the point; a `Dump` blob is made
//! only when a snapshot is read (sent to a follower that lags behind the purged log).

use super::{any, TypeConfig};
use crate::state::{CommandResponse, CommandResult, StateStore};
use distfs_types::FsError;
use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use std::io::Cursor;

type SErr = StorageError<u64>;

/// The state machine; clones share the store (a clone is the snapshot builder).
#[derive(Clone)]
pub struct StateMachine {
    store: StateStore,
}

impl StateMachine {
    pub fn new(store: StateStore) -> StateMachine {
        StateMachine { store }
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }
}

/// The id of the snapshot of the state at `last`: the same state always gets the same id.
fn snapshot_id(last: &Option<LogId<u64>>) -> String {
    match last {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
        None => "none".into(),
    }
}

/// The current state as a snapshot: one consistent read of every table. The state
/// database is the snapshot: nothing is dumped until a follower needs one.
fn dump_now(store: &StateStore) -> Result<Snapshot<TypeConfig>, FsError> {
    let (blob, last, membership) = store.dump()?;
    let meta = SnapshotMeta { snapshot_id: snapshot_id(&last), last_log_id: last, last_membership: membership };
    Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(blob)) })
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// Makes the applied state durable (so the log up to it may be purged) and notes
    /// that a snapshot exists. The state database itself is the snapshot: no copy of it
    /// is made here (a full dump every `snapshot_after_logs` entries cost time and
    /// memory in proportion to the whole namespace; see docs/BENCHMARKS.md).
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let err = |e: FsError| -> SErr { StorageIOError::write_snapshot(None, any(e)).into() };
        self.store.flush().map_err(err)?;
        let (last, membership) = self.store.applied_state().map_err(err)?;
        let meta = SnapshotMeta { snapshot_id: snapshot_id(&last), last_log_id: last, last_membership: membership };
        let meta_bytes = postcard::to_stdvec(&meta).map_err(|e| err(FsError::internal(e)))?;
        self.store.save_snapshot(&meta_bytes).map_err(err)?;
        tracing::info!(snapshot = %meta.snapshot_id, "state snapshot point (applied state durable)");
        // openraft keeps only the meta of a built snapshot; the data is read when sent.
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(Vec::new())) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, openraft::BasicNode>), SErr> {
        self.store.applied_state().map_err(|e| StorageIOError::read_state_machine(any(e)).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let err = |e: FsError| -> SErr { StorageIOError::apply(log_id, any(e)).into() };
            let resp = match &entry.payload {
                EntryPayload::Blank => {
                    self.store.apply_entry(Some(log_id), None, None).map_err(err)?;
                    CommandResponse(Ok(CommandResult::Done))
                }
                EntryPayload::Normal(cmd) => {
                    let r = self.store.apply_entry(Some(log_id), None, Some(cmd)).map_err(err)?;
                    CommandResponse(r.unwrap_or(Ok(CommandResult::Done)))
                }
                EntryPayload::Membership(m) => {
                    let sm = StoredMembership::new(Some(log_id), m.clone());
                    self.store.apply_entry(Some(log_id), Some(&sm), None).map_err(err)?;
                    CommandResponse(Ok(CommandResult::Done))
                }
            };
            out.push(resp);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let err = |e: FsError| -> SErr { StorageIOError::read_snapshot(Some(meta.signature()), any(e)).into() };
        let blob = snapshot.into_inner();
        self.store.install(&blob, meta.last_log_id, &meta.last_membership).map_err(err)?;
        let meta_bytes = postcard::to_stdvec(meta).map_err(|e| err(FsError::internal(e)))?;
        self.store.save_snapshot(&meta_bytes).map_err(err)?;
        tracing::info!(snapshot = %meta.snapshot_id, "installed state snapshot");
        Ok(())
    }

    /// The state as it is now, once a snapshot point exists (before the first one there
    /// is none, as openraft expects): it reflects at least every entry the last
    /// snapshot point covered, so the log purged up to that point is never missed.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let err = |e: FsError| -> SErr { StorageIOError::read_snapshot(None, any(e)).into() };
        if !self.store.has_snapshot().map_err(err)? {
            return Ok(None);
        }
        let snap = dump_now(&self.store).map_err(err)?;
        tracing::info!(snapshot = %snap.meta.snapshot_id, "dumped the state for a snapshot");
        Ok(Some(snap))
    }
}
