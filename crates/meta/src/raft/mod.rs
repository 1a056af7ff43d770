//! Raft wiring (openraft 0.9, storage v2): the type configuration, the segmented log store,
//! the state machine adapter over `StateStore`, and the network that carries Raft RPCs
//! as `Kind::Raft` frames.

pub mod log_dir;
mod log_store;
mod migrate;
pub(crate) mod network;
mod runtime;
mod state_machine;
mod wal;

pub use log_dir::{FsLogDir, LogDir, MemLogDir};
#[cfg(feature = "sim-bugs")]
pub use log_store::sim_bugs;
pub use log_store::{LogMeta, LogOptions, LogStore};
pub use migrate::open_log;
pub use network::{handle_raft_rpc, Network, RaftReply, RaftRpc};
pub use runtime::{seed_raft_rng, MetaRuntime, RaftRng};
pub use state_machine::StateMachine;

use crate::state::{Command, CommandResponse};
use std::io::Cursor;

openraft::declare_raft_types!(
    /// The openraft type configuration of the metadata service.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        AsyncRuntime = MetaRuntime,
);

pub type MetaRaft = openraft::Raft<TypeConfig>;
pub type NodeIdT = u64;

/// Maps any displayable error into openraft's `AnyError` (for `StorageIOError`).
pub(crate) fn any(e: impl std::fmt::Display) -> openraft::AnyError {
    openraft::AnyError::error(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateStore;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::StorageError;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for Builder {
        async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<u64>> {
            let log = LogStore::in_memory().expect("in-memory log store");
            let sm = StateMachine::new(StateStore::in_memory().expect("in-memory state store"));
            Ok(((), log, sm))
        }
    }

    /// openraft's storage conformance suite against the redb log and state machine.
    #[test]
    fn openraft_storage_conformance() {
        Suite::test_all(Builder).expect("storage suite passes");
    }
}
