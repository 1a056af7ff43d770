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
}
