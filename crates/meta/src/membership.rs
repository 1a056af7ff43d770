//! Membership of the metadata Raft group: `distfs meta add/remove/status`. Adding a
//! server first makes it a learner and waits until it has caught up (from the log or a
//! snapshot), then makes it a voter, so a slow newcomer never weakens the quorum.

use crate::service::{not_leader, Service};
use distfs_proto::{MetaMember, MetaRequest, MetaResponse, MetaStatus, RpcClient};
use distfs_types::{FsError, FsResult};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use std::collections::BTreeSet;
use std::time::Duration;
use tracing::info;

/// How long a new server gets to answer who it is.
const INFO_TIMEOUT: Duration = Duration::from_secs(5);

fn map_write_err(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> FsError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(f.leader_node),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(_) => {
                FsError::Unavailable { reason: format!("another membership change is in progress: {c}") }
            }
            other => FsError::invalid(other),
        },
        RaftError::Fatal(f) => FsError::Unavailable { reason: format!("metadata raft stopped: {f}") },
    }
}

impl Service {
    pub(crate) fn server_info(&self) -> MetaResponse {
        let m = self.raft.metrics().borrow().clone();
        let addr = m.membership_config.membership().get_node(&self.id).map(|n| n.addr.clone());
        let fallback = || self.config.advertise.clone().unwrap_or_else(|| self.config.listen.clone());
        MetaResponse::ServerInfo { id: self.id, addr: addr.unwrap_or_else(fallback) }
    }

    pub(crate) async fn add_meta_server(&self, addr: &str) -> FsResult<MetaResponse> {
        self.require_leader()?;
        let rpc = RpcClient::default();
        let id = match rpc.meta(addr, &MetaRequest::MetaServerInfo, Some(INFO_TIMEOUT)).await {
            Ok(MetaResponse::ServerInfo { id, .. }) => id,
            Ok(other) => return Err(FsError::Protocol { reason: format!("{addr} answered {other:?}") }),
            Err(e) => return Err(FsError::Unavailable { reason: format!("cannot reach the new server {addr}: {e}") }),
        };
        let voters: BTreeSet<u64> = self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        if voters.contains(&id) {
            return Err(FsError::AlreadyExists { what: format!("metadata server {id} is already a member") });
        }
        info!(server = id, %addr, "adding metadata server as a learner");
        self.raft.add_learner(id, BasicNode { addr: addr.to_string() }, true).await.map_err(map_write_err)?;
        info!(server = id, "learner caught up; making it a voter");
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(map_write_err)?;
        Ok(MetaResponse::MetaStatus(self.meta_status()))
    }

    pub(crate) async fn remove_meta_server(&self, id: u64) -> FsResult<MetaResponse> {
        self.require_leader()?;
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if !voters.contains(&id) && membership.get_node(&id).is_none() {
            return Err(FsError::not_found(format!("metadata server {id} is not a member")));
        }
        if voters.len() == 1 && voters.contains(&id) {
            return Err(FsError::invalid("cannot remove the last metadata server"));
        }
        info!(server = id, "removing metadata server");
        // One membership change: with `retain = false` a removed voter also leaves the
        // node list. (A second change after the leader removed itself would be proposed
        // by a server that is no longer leader.)
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft.change_membership(change, false).await.map_err(map_write_err)?;
        Ok(MetaResponse::MetaStatus(self.meta_status()))
    }

    fn require_leader(&self) -> FsResult<()> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader == Some(self.id) {
            return Ok(());
        }
        let leader = m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).cloned());
        Err(not_leader(leader))
    }

    pub(crate) fn meta_status(&self) -> MetaStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let last = m.last_log_index;
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned())
                    .map(|l| l.map(|l| l.index).unwrap_or(0))
                    .or_else(|| (*id == self.id).then_some(m.last_applied.map(|l| l.index).unwrap_or(0)));
                let lag = match (last, matched) {
                    (Some(l), Some(mt)) if m.current_leader == Some(self.id) => Some(l.saturating_sub(mt)),
                    _ => None,
                };
                MetaMember { id: *id, addr: node.addr.clone(), voter: voters.contains(id), matched, lag }
            })
            .collect();
        let leader_addr = m.current_leader.and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()));
        MetaStatus {
            server: self.id,
            leader: m.current_leader,
            leader_addr,
            term: m.current_term,
            last_log_index: last,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            members,
        }
    }
}
