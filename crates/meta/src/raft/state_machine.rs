//! openraft's `RaftStateMachine` over `StateStore`: each entry applied in its own redb
//! write transaction together with the applied log id; snapshots are `Dump` blobs kept
//! in the state database.

use super::{any, TypeConfig};
use crate::state::{CommandResponse, CommandResult, StateStore};
use distfs_types::FsError;
use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

type SErr = StorageError<u64>;

/// The state machine; clones share the store (a clone is the snapshot builder).
#[derive(Clone)]
pub struct StateMachine {
    store: StateStore,
    builds: Arc<AtomicU64>,
}

impl StateMachine {
    pub fn new(store: StateStore) -> StateMachine {
        StateMachine { store, builds: Arc::new(AtomicU64::new(0)) }
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let err = |e: FsError| -> SErr { StorageIOError::write_snapshot(None, any(e)).into() };
        // The snapshot lets the log be purged: the state it shows must be durable first.
        self.store.flush().map_err(err)?;
        let (blob, last, membership) = self.store.dump().map_err(err)?;
        let n = self.builds.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last {
            Some(l) => format!("{}-{}-{n}", l.leader_id.term, l.index),
            None => format!("none-{n}"),
        };
        let meta = SnapshotMeta { last_log_id: last, last_membership: membership, snapshot_id };
        let meta_bytes = postcard::to_stdvec(&meta).map_err(|e| err(FsError::internal(e)))?;
        self.store.save_snapshot(&meta_bytes, &blob).map_err(err)?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = blob.len(), "built state snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(blob)) })
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
        self.store.save_snapshot(&meta_bytes, &blob).map_err(err)?;
        tracing::info!(snapshot = %meta.snapshot_id, "installed state snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let err = |e: FsError| -> SErr { StorageIOError::read_snapshot(None, any(e)).into() };
        let Some((meta_bytes, blob)) = self.store.load_snapshot().map_err(err)? else {
            return Ok(None);
        };
        let meta: SnapshotMeta<u64, openraft::BasicNode> =
            postcard::from_bytes(&meta_bytes).map_err(|e| err(FsError::internal(e)))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(blob)) }))
    }
}
