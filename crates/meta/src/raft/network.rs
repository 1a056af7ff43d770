//! Raft RPCs over the DistFS protocol: `RaftRpc`/`RaftReply` are the typed headers of
//! `Kind::Raft` frames. The client side implements openraft's `RaftNetwork`; the server
//! side (`handle_raft_rpc`) hands requests to the local `Raft`.

use super::{MetaRaft, TypeConfig};
use distfs_proto::{Kind, RpcClient, RpcError};
use distfs_types::FsError;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, LogId};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// A Raft request between metadata servers.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer, carrying openraft's own error so the caller sees a `RemoteError`.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
}

/// Serves one `Kind::Raft` request.
pub async fn handle_raft_rpc(raft: &MetaRaft, rpc: RaftRpc) -> RaftReply {
    match rpc {
        RaftRpc::Append(r) => RaftReply::Append(raft.append_entries(r).await),
        RaftRpc::Vote(r) => RaftReply::Vote(raft.vote(r).await),
        RaftRpc::Snapshot(r) => RaftReply::Snapshot(raft.install_snapshot(r).await),
    }
}

/// The most encoded entry bytes one AppendEntries carries: frames refuse a typed header over
/// `Limits::max_header` (1 MiB), and the request around the entries needs a little room.
pub(crate) fn append_budget() -> usize {
    distfs_proto::Limits::default().max_header as usize * 3 / 4
}

/// Cuts `rpc` to the entries whose encoding fits in `budget` bytes (at least one entry).
/// Returns the log id of the last entry kept when it cut any: the caller then answers
/// openraft `PartialSuccess` up to it, and openraft sends the rest in the next request.
/// Without this a follower that missed more than 1 MiB of log (up to 300 entries of up to
/// 64 KiB of inline file data each) was sent one oversized request, refused, forever.
pub(crate) fn fit_append(rpc: &mut AppendEntriesRequest<TypeConfig>, budget: usize) -> Option<LogId<u64>> {
    let mut used = 0;
    let mut keep = 0;
    for e in &rpc.entries {
        let n = postcard::to_stdvec(e).map(|v| v.len()).unwrap_or(usize::MAX);
        if keep > 0 && used + n > budget {
            break;
        }
        used = used.saturating_add(n);
        keep += 1;
    }
    if keep == rpc.entries.len() {
        return None;
    }
    rpc.entries.truncate(keep);
    rpc.entries.last().map(|e| e.log_id)
}

/// Creates one client per peer; all share the connection pool.
#[derive(Clone)]
pub struct Network {
    pub rpc: RpcClient,
}

pub struct Peer {
    rpc: RpcClient,
    target: u64,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer { rpc: self.rpc.clone(), target, addr: node.addr.clone() }
    }
}

/// The reply did not match the request: a protocol problem, not a Raft one.
#[derive(Debug, thiserror::Error)]
#[error("unexpected raft reply from {0}")]
struct Mismatch(String);

impl Peer {
    async fn send<E: std::error::Error + DeserializeOwned>(
        &self,
        rpc: RaftRpc,
        option: &RPCOption,
    ) -> Result<RaftReply, RPCError<u64, BasicNode, E>> {
        let r: Result<(RaftReply, _), RpcError> =
            self.rpc.call(&self.addr, Kind::Raft, &rpc, bytes::Bytes::new(), Some(option.hard_ttl())).await;
        match r {
            Ok((reply, _)) => Ok(reply),
            Err(e @ (RpcError::Connect { .. } | RpcError::ConnectionLost { .. })) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(RpcError::Remote(FsError::Unavailable { reason })) => {
                Err(RPCError::Unreachable(Unreachable::new(&FsError::Unavailable { reason })))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn mismatch<E: std::error::Error>(&self) -> RPCError<u64, BasicNode, E> {
        RPCError::Network(NetworkError::new(&Mismatch(self.addr.clone())))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let mut rpc = rpc;
        let cut = fit_append(&mut rpc, append_budget());
        match self.send(RaftRpc::Append(rpc), &option).await? {
            RaftReply::Append(Ok(AppendEntriesResponse::Success)) if cut.is_some() => {
                Ok(AppendEntriesResponse::PartialSuccess(cut))
            }
            RaftReply::Append(Ok(r)) => Ok(r),
            RaftReply::Append(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.mismatch()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        match self.send(RaftRpc::Snapshot(rpc), &option).await? {
            RaftReply::Snapshot(Ok(r)) => Ok(r),
            RaftReply::Snapshot(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.mismatch()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self.send(RaftRpc::Vote(rpc), &option).await? {
            RaftReply::Vote(Ok(r)) => Ok(r),
            RaftReply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.mismatch()),
        }
    }
}
