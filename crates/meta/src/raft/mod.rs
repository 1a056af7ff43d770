//! Raft wiring (openraft 0.9, storage v2): the type configuration, the redb log store,
//! the state machine adapter over `StateStore`, and the network that carries Raft RPCs
//! as `Kind::Raft` frames.

mod log_store;
mod network;
mod state_machine;

pub use log_store::LogStore;
pub use network::{handle_raft_rpc, Network, RaftReply, RaftRpc};
pub use state_machine::StateMachine;

use crate::state::{Command, CommandResponse};
use std::io::Cursor;

openraft::declare_raft_types!(
    /// The openraft type configuration of the metadata service.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
);

pub type MetaRaft = openraft::Raft<TypeConfig>;
pub type NodeIdT = u64;

/// Maps any displayable error into openraft's `AnyError` (for `StorageIOError`).
pub(crate) fn any(e: impl std::fmt::Display) -> openraft::AnyError {
    openraft::AnyError::error(e.to_string())
}
