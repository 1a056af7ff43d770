//! Storage nodes as the metadata service describes them to clients and operators.

use crate::ids::NodeId;
use serde::{Deserialize, Serialize};

/// Liveness of a storage node, decided by the metadata service from heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeState {
    /// Heartbeating normally.
    Up,
    /// Missed heartbeats for `suspect_after`: no new writes, read from last.
    Suspect,
    /// Missed heartbeats for `dead_after`.
    Dead,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::Up => "up",
            NodeState::Suspect => "suspect",
            NodeState::Dead => "dead",
        })
    }
}

/// What an operator decided about a storage node; kept in the Raft state, so it survives
/// leader changes and restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AdminState {
    /// Takes writes, counts towards replication.
    #[default]
    Normal,
    /// Being decommissioned: no new writes, its copies are made elsewhere.
    Draining,
    /// Every block it held is at R elsewhere; `node remove` may take it out.
    Drained,
    /// Planned restart: no new writes and no repair of its copies until `until_ms`
    /// (Unix milliseconds, decided by the metadata leader).
    Maintenance { until_ms: u64 },
}

impl std::fmt::Display for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminState::Normal => f.write_str("normal"),
            AdminState::Draining => f.write_str("draining"),
            AdminState::Drained => f.write_str("drained"),
            AdminState::Maintenance { .. } => f.write_str("maintenance"),
        }
    }
}

/// A storage node: its address, failure domain, capacity and last reported usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Address clients and peers use to reach the node's block service.
    pub addr: String,
    /// Failure domain label (zone or rack); replicas prefer distinct zones.
    pub zone: String,
    pub capacity: u64,
    pub used: u64,
    pub blocks: u64,
    pub state: NodeState,
    /// Milliseconds since the last heartbeat reached the metadata leader.
    pub last_heartbeat_ms: u64,
    /// Operator state (drain, maintenance); `Normal` for most nodes.
    #[serde(default)]
    pub admin: AdminState,
}
