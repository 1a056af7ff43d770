//! The request handlers: every `MetaRequest` variant. Mutations become `Command`s through
//! `raft.client_write`; reads run on the leader's local state after `ensure_linearizable`;
//! block allocation and liveness are leader-local. Raft frames go to `raft::handle_raft_rpc`.

use crate::config::MetaConfig;
use crate::liveness::{Clock, Liveness, Report};
use crate::placement::{place, Ring, RingNode};
use crate::raft::{handle_raft_rpc, MetaRaft, RaftRpc};
use crate::state::{Command, CommandResult, Format, Reader, StateStore};
use distfs_proto::{
    BlockReplicas, BlockTarget, ChunkLayout, ClusterStatus, Handler, Incoming, Kind, Layout, MetaRequest, MetaResponse,
    NodeAddr, Reply, StatFs, StorageRequest,
};
use distfs_types::{Attr, BlockId, FileKind, FsError, FsResult, InodeId, NodeId, NodeInfo, NodeState, Timestamp};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tracing::Instrument;

/// Most blocks handed to a node for deletion per heartbeat.
pub const GC_BATCH: usize = 1000;
/// Most blocks one `AllocateBlocks` may ask for.
pub const MAX_ALLOCATE: u32 = 4096;
/// Most chunks one `GetLayout` may span.
pub const MAX_LAYOUT_CHUNKS: u64 = 4096;
/// Most entries one `ReadDir` returns.
pub const MAX_READDIR: u32 = 10_000;
/// Most symlinks followed while resolving a path.
const MAX_SYMLINKS: usize = 40;

/// How long the dial of a node whose connection closed may take.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(300);
/// Dials of a node whose connection closed, `PROBE_TIMEOUT / 4` apart.
const PROBE_ATTEMPTS: usize = 4;
/// How long a leadership round waits for the state machine to apply the leader's log.
const READ_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) struct Service {
    pub id: u64,
    pub raft: MetaRaft,
    pub store: StateStore,
    pub config: MetaConfig,
    pub clock: Arc<dyn Clock>,
    live: Arc<Mutex<Liveness>>,
    ring: Mutex<Option<(Vec<RingNode>, Arc<Ring>)>>,
    /// Which storage node heartbeats over which connection (to notice a closed one).
    peers: Mutex<HashMap<SocketAddr, NodeId>>,
    /// Repair progress, block reports and orphans: leader soft state.
    pub(crate) heal: Mutex<crate::service_heal::HealState>,
    /// Something changed that the repair worker should look at now.
    pub(crate) kicked: AtomicBool,
    /// Request metrics and the in-flight count (`ops.rs`).
    pub(crate) ops: crate::ops::MetaMetrics,
    /// The configuration in force: `config` plus the keys reloaded since (SIGHUP).
    tunables: std::sync::RwLock<MetaConfig>,
    /// TLS and compression of the connections this server opens (repair copies).
    pub(crate) transport: distfs_proto::ClientTransport,
    /// Which session holds which inode open: leader soft state (`opens.rs`).
    opens: Mutex<crate::opens::OpenTable>,
    /// Writes waiting to be proposed together (`batch.rs`).
    batch: Arc<crate::batch::Batcher>,
    /// While valid, reads are answered without a quorum round (`lease.rs`).
    lease: Mutex<Option<crate::lease::ReadLease>>,
    /// A read found the lease past its half: `renew_read_lease` renews it.
    lease_wanted: tokio::sync::Notify,
}

tokio::task_local! {
    /// The request id of the write being handled (`MetaRequest::Once`); the first
    /// command it proposes takes it (`Service::write`).
    static ONCE: std::cell::Cell<Option<crate::state::once::OnceKey>>;
}

/// Proposes what the batcher has queued, batch after batch, until the queue is empty: a
/// task of its own, so that no caller's going away leaves the queue without a driver.
fn drive(raft: MetaRaft, batch: Arc<crate::batch::Batcher>) {
    tokio::spawn(async move {
        while let Some((cmd, txs)) = batch.next() {
            let answers = crate::batch::split(txs.len(), Service::propose(&raft, cmd).await);
            for (tx, r) in txs.into_iter().zip(answers) {
                let _ = tx.send(r);
            }
        }
    });
}

/// Renews the read lease when reads ask for it (`Service::read_barrier`), one round at a
/// time, so that a steady stream of reads never waits for a round itself.
pub(crate) async fn renew_read_lease(service: Arc<Service>, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = service.lease_wanted.notified() => {}
        }
        if let Err(e) = service.leadership_round().await {
            tracing::debug!(error = %e, "read lease not renewed");
        }
    }
}

/// `Batcher::hand_off` when a caller's own proposal ends, however it ends.
struct HandOff {
    raft: MetaRaft,
    batch: Arc<crate::batch::Batcher>,
}

impl Drop for HandOff {
    fn drop(&mut self) {
        if self.batch.hand_off() {
            drive(self.raft.clone(), self.batch.clone());
        }
    }
}

pub(crate) fn not_leader<N: Into<Option<openraft::BasicNode>>>(node: N) -> FsError {
    FsError::NotLeader { leader: node.into().map(|n| n.addr) }
}

impl Service {
    pub fn new(
        id: u64,
        raft: MetaRaft,
        store: StateStore,
        config: MetaConfig,
        clock: Arc<dyn Clock>,
        transport: distfs_proto::ClientTransport,
    ) -> Service {
        let live = Liveness::new(config.suspect_after.0, config.dead_after.0, clock.now())
            .with_disconnect_grace(config.dead_after_disconnect.0.min(config.dead_after.0));
        let started = clock.now();
        Service {
            id,
            raft,
            store,
            clock,
            live: Arc::new(Mutex::new(live)),
            ring: Mutex::new(None),
            peers: Mutex::new(HashMap::new()),
            heal: Mutex::new(Default::default()),
            kicked: AtomicBool::new(true),
            ops: Default::default(),
            tunables: std::sync::RwLock::new(config.clone()),
            opens: Mutex::new(crate::opens::OpenTable::new(crate::opens::ORPHAN_GRACE, started)),
            batch: Arc::default(),
            lease: Mutex::new(None),
            lease_wanted: tokio::sync::Notify::new(),
            config,
            transport,
        }
    }

    /// The configuration in force (reloadable keys as last reloaded).
    pub(crate) fn tunables(&self) -> MetaConfig {
        self.tunables.read().expect("tunables lock").clone()
    }

    /// The repair settings in force.
    pub(crate) fn repair_config(&self) -> crate::config::RepairConfig {
        self.tunables.read().expect("tunables lock").repair.clone()
    }

    /// `suspect_after` and `dead_after` as the liveness table applies them.
    pub(crate) fn liveness_timings(&self) -> (std::time::Duration, std::time::Duration) {
        self.live.lock().expect("liveness lock").timings()
    }

    /// Applies the reloadable keys of `new` (already validated).
    pub(crate) fn reload(&self, new: &MetaConfig) -> distfs_ops::Reloaded {
        let mut t = self.tunables.write().expect("tunables lock");
        let (changed, needs_restart) = t.apply_reloadable(new);
        self.live.lock().expect("liveness lock").set_timings(
            t.suspect_after.0,
            t.dead_after.0,
            t.dead_after_disconnect.0,
        );
        drop(t);
        self.kick();
        distfs_ops::Reloaded { changed, needs_restart }
    }

    /// Asks the repair worker to look at the cluster now.
    pub(crate) fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
    }

    /// A heartbeat of `node` arrived over the connection from `peer`.
    fn note_peer(&self, peer: SocketAddr, node: NodeId) {
        self.peers.lock().expect("peers lock").insert(peer, node);
    }

    /// A connection closed: if a storage node heartbeated over it, it is suspect now.
    pub(crate) fn peer_closed(&self, peer: SocketAddr) {
        let node = self.peers.lock().expect("peers lock").remove(&peer);
        if let Some(node) = node {
            tracing::info!(node = %node, %peer, "storage node's connection to the leader closed; suspect now");
            let now = self.clock.now();
            self.live.lock().expect("liveness lock").disconnected(node, now);
            self.kick();
            self.probe_after_disconnect(node, now);
        }
    }

    /// A closed connection means a crash (the kernel reset it) or just a dropped
    /// connection. Dial the node's own port once: a node still listening is alive and
    /// goes back to the silence rules (no repair storm for a transient drop); a refused
    /// dial means the process is gone (Dead now); a dial that times out (a hung host)
    /// leaves it Suspect, Dead after `dead_after_disconnect`.
    fn probe_after_disconnect(&self, node: NodeId, at: std::time::Instant) {
        let addr = match self.store.read().and_then(|r| r.node(node)) {
            Ok(Some(n)) => n.addr,
            _ => return,
        };
        let live = self.live.clone();
        let transport = self.transport.clone();
        tokio::spawn(async move {
            let rpc = distfs_proto::RpcClient::new(distfs_proto::RpcConfig {
                connect_timeout: PROBE_TIMEOUT,
                conns_per_peer: 1,
                transport,
                ..Default::default()
            });
            for _ in 0..PROBE_ATTEMPTS {
                // A dying process may still hold its listening socket for a moment (the
                // kernel completes handshakes from the backlog), so only an answer to a
                // Ping counts as alive, and only a refused dial as gone.
                match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        // The repair worker sees the state change on its next round.
                        tracing::info!(node = %node, %addr, "storage node's port refuses connections: dead now");
                        live.lock().expect("liveness lock").refused(node, at);
                        return;
                    }
                    Ok(Ok(_)) => {
                        let ping = rpc.storage(&addr, &StorageRequest::Ping, bytes::Bytes::new(), Some(PROBE_TIMEOUT));
                        if ping.await.is_ok() {
                            tracing::info!(node = %node, %addr, "storage node still answers after its connection closed");
                            live.lock().expect("liveness lock").still_listening(node, at);
                            return;
                        }
                    }
                    _ => {}
                }
                tokio::time::sleep(PROBE_TIMEOUT / 4).await;
            }
            tracing::info!(node = %node, %addr, "storage node does not answer: dead after the grace");
        });
    }

    /// Proposes a command and waits until it is applied. The first command a client's
    /// write proposes carries the write's request id, so it is applied at most once.
    pub async fn write(&self, cmd: Command) -> FsResult<CommandResult> {
        let cmd = match ONCE.try_with(|k| k.take()).ok().flatten() {
            Some(k) => {
                Command::Once { client: k.client, slot: k.slot, seq: k.seq, now: Timestamp::now(), cmd: Box::new(cmd) }
            }
            None => cmd,
        };
        self.write_unkeyed(cmd).await
    }

    /// Proposes an idempotent command a write needs before its own (a session's lease):
    /// it does not take the write's request id. Writes that overlap share one log entry
    /// (`batch.rs`).
    pub(crate) async fn write_unkeyed(&self, cmd: Command) -> FsResult<CommandResult> {
        if self.batch.try_lead() {
            // Hands what queued meanwhile to a driver when done, also if this caller
            // goes away mid-proposal (its client hung up).
            let _hand_off = HandOff { raft: self.raft.clone(), batch: self.batch.clone() };
            return Self::propose(&self.raft, cmd).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.batch.push(cmd, tx) {
            drive(self.raft.clone(), self.batch.clone());
        }
        rx.await.unwrap_or_else(|_| Err(FsError::Unavailable { reason: "the metadata write queue stopped".into() }))
    }

    async fn propose(raft: &MetaRaft, cmd: Command) -> FsResult<CommandResult> {
        match raft.client_write(cmd).await {
            Ok(resp) => resp.data.0,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(not_leader(f.leader_node)),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => Err(FsError::internal(e)),
            Err(RaftError::Fatal(e)) => Err(FsError::Unavailable { reason: format!("metadata raft stopped: {e}") }),
        }
    }

    /// Makes a following local read linearizable; a follower answers `NotLeader`. Within
    /// the leader's read lease this costs no round (`lease.rs`).
    pub(crate) async fn read_barrier(&self) -> FsResult<()> {
        let (term, leads) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_term, m.current_leader == Some(self.id))
        };
        let lease = *self.lease.lock().expect("lease lock");
        match crate::lease::check(lease, term, leads, self.clock.now()) {
            crate::lease::LeaseCheck::Local => Ok(()),
            crate::lease::LeaseCheck::LocalRenew => {
                self.lease_wanted.notify_one();
                Ok(())
            }
            crate::lease::LeaseCheck::Round => self.leadership_round().await,
        }
    }

    /// Confirms leadership with a quorum and waits until the state machine holds every
    /// entry of the leader's log (`lease::leadership_round`), then extends the read lease
    /// from when the round began.
    pub(crate) async fn leadership_round(&self) -> FsResult<()> {
        use crate::lease::RoundError;
        let started = self.clock.now();
        let term = self.raft.metrics().borrow().current_term;
        match crate::lease::leadership_round(&self.raft, READ_SETTLE).await {
            Ok(()) => {
                let new = crate::lease::after_round(started, term, self.config.raft.election_timeout_min.0);
                let mut lease = self.lease.lock().expect("lease lock");
                *lease = Some(crate::lease::keep(*lease, new));
                Ok(())
            }
            Err(RoundError::Raft(e)) => match *e {
                RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => Err(not_leader(f.leader_node)),
                RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)) => {
                    Err(FsError::Unavailable { reason: format!("no quorum of metadata servers: {e}") })
                }
                RaftError::Fatal(e) => Err(FsError::Unavailable { reason: format!("metadata raft stopped: {e}") }),
            },
            Err(RoundError::Unsettled { waited }) => Err(FsError::Unavailable {
                reason: format!("the metadata leader has not applied its log within {waited:?}; retry"),
            }),
        }
    }

    /// The open-file table, reset for a new term.
    pub(crate) fn opens(&self) -> std::sync::MutexGuard<'_, crate::opens::OpenTable> {
        let term = self.raft.metrics().borrow().current_term;
        let mut t = self.opens.lock().expect("open table lock");
        t.observe_term(term, self.clock.now());
        t
    }

    /// Whether this server believes it leads (no quorum round).
    pub(crate) fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// `NotLeader` unless this server believes it leads (no quorum round: for requests
    /// whose effect is leader soft state only).
    pub(crate) fn leader_here(&self) -> FsResult<()> {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(l) if l == self.id => Ok(()),
            Some(l) => Err(not_leader(m.membership_config.membership().get_node(&l).cloned())),
            None => Err(not_leader(None)),
        }
    }

    /// The liveness table, reset for a new term.
    pub(crate) fn live(&self) -> std::sync::MutexGuard<'_, Liveness> {
        let term = self.raft.metrics().borrow().current_term;
        let mut l = self.live.lock().expect("liveness lock");
        l.observe_term(term, self.clock.now());
        l
    }

    pub(crate) fn ring(&self, nodes: &[(NodeId, crate::state::NodeRec)]) -> Arc<Ring> {
        let want: Vec<RingNode> =
            nodes.iter().map(|(id, n)| RingNode { id: *id, zone: n.zone.clone(), capacity: n.capacity }).collect();
        let mut cache = self.ring.lock().expect("ring lock");
        if let Some((have, ring)) = cache.as_ref() {
            if *have == want {
                return ring.clone();
            }
        }
        let ring = Arc::new(Ring::new(want.clone()));
        *cache = Some((want, ring.clone()));
        ring
    }

    fn attr(r: &impl Reader, ino: InodeId) -> FsResult<Attr> {
        r.inode(ino)?.map(|i| i.attr).ok_or_else(|| FsError::not_found(format!("inode {ino}")))
    }

    pub(crate) fn attr_of(res: CommandResult) -> FsResult<MetaResponse> {
        Self::attr_in(res).map(MetaResponse::Attr)
    }

    fn attr_in(res: CommandResult) -> FsResult<Attr> {
        match res {
            CommandResult::Attr(a) => Ok(a),
            other => Err(FsError::internal(format!("unexpected apply result {other:?}"))),
        }
    }

    /// The answer to a namespace change: `attr` and the directories `dirs` as they are
    /// now, just after it was applied here (a directory removed since is left out).
    fn changed(&self, attr: Option<Attr>, dirs: &[InodeId]) -> FsResult<MetaResponse> {
        let r = self.store.read()?;
        let mut out: Vec<Attr> = Vec::with_capacity(dirs.len());
        for &d in dirs {
            if out.iter().all(|a| a.ino != d) {
                out.extend(r.inode(d)?.map(|i| i.attr));
            }
        }
        Ok(MetaResponse::Changed { attr, dirs: out })
    }

    /// The directories a namespace change touches (`None`: not a namespace change).
    fn dirs_changed_by(req: &MetaRequest) -> Option<Vec<InodeId>> {
        match req {
            MetaRequest::Mkdir { parent, .. }
            | MetaRequest::Create { parent, .. }
            | MetaRequest::Symlink { parent, .. }
            | MetaRequest::Unlink { parent, .. }
            | MetaRequest::Rmdir { parent, .. } => Some(vec![*parent]),
            MetaRequest::Link { new_parent, .. } => Some(vec![*new_parent]),
            MetaRequest::Rename { parent, new_parent, .. } => Some(vec![*parent, *new_parent]),
            _ => None,
        }
    }

    pub async fn handle_meta(&self, req: MetaRequest, peer: Option<SocketAddr>) -> FsResult<MetaResponse> {
        let now = Timestamp::now();
        // Empty (no allocation) unless `req` is a namespace change.
        let touched = Self::dirs_changed_by(&req).unwrap_or_default();
        match req {
            MetaRequest::Lookup { parent, name } => {
                self.read_barrier().await?;
                let r = self.store.read()?;
                let p = Self::attr(&r, parent)?;
                if p.kind != FileKind::Dir {
                    return Err(FsError::NotADirectory { what: format!("inode {parent}") });
                }
                let d = r
                    .dentry(parent, &name)?
                    .ok_or_else(|| FsError::not_found(format!("`{name}` in directory {parent}")))?;
                Ok(MetaResponse::Attr(Self::attr(&r, d.ino)?))
            }
            MetaRequest::ResolvePath { path } => {
                self.read_barrier().await?;
                let r = self.store.read()?;
                Ok(MetaResponse::Attr(resolve_path(&r, &path)?))
            }
            MetaRequest::GetAttr { ino } => {
                self.read_barrier().await?;
                Ok(MetaResponse::Attr(Self::attr(&self.store.read()?, ino)?))
            }
            MetaRequest::SetAttr { ino, set } => Self::attr_of(self.write(Command::SetAttr { ino, set, now }).await?),
            MetaRequest::Mkdir { parent, name, perm, uid, gid } => {
                let made = self.write(Command::Mkdir { parent, name, perm, uid, gid, now }).await?;
                self.changed(Some(Self::attr_in(made)?), &touched)
            }
            MetaRequest::Create { parent, name, perm, uid, gid, exclusive, open_session } => {
                let create = Command::Create { parent, name, perm, uid, gid, exclusive, now, open: None };
                let made = match open_session {
                    None => Self::attr_in(self.write(create).await?)?,
                    Some(session) => self.create_open(create, session, now).await?,
                };
                self.changed(Some(made), &touched)
            }
            MetaRequest::Symlink { parent, name, target, uid, gid } => {
                let made = self.write(Command::Symlink { parent, name, target, uid, gid, now }).await?;
                self.changed(Some(Self::attr_in(made)?), &touched)
            }
            MetaRequest::Readlink { ino } => {
                self.read_barrier().await?;
                let r = self.store.read()?;
                let i = r.inode(ino)?.ok_or_else(|| FsError::not_found(format!("inode {ino}")))?;
                i.target
                    .map(MetaResponse::Target)
                    .ok_or_else(|| FsError::invalid(format!("inode {ino} is not a symlink")))
            }
            MetaRequest::Link { ino, new_parent, new_name } => {
                let linked = self.write(Command::Link { ino, new_parent, new_name, now }).await?;
                self.changed(Some(Self::attr_in(linked)?), &touched)
            }
            MetaRequest::Unlink { parent, name } => {
                self.write(Command::Unlink { parent, name, now }).await?;
                self.changed(None, &touched)
            }
            MetaRequest::Rmdir { parent, name } => {
                self.write(Command::Rmdir { parent, name, now }).await?;
                self.changed(None, &touched)
            }
            MetaRequest::Rename { parent, name, new_parent, new_name, mode } => {
                self.write(Command::Rename { parent, name, new_parent, new_name, mode, now }).await?;
                self.changed(None, &touched)
            }
            MetaRequest::ReadDir { ino, after, limit, attrs } => {
                self.read_barrier().await?;
                let r = self.store.read()?;
                let d = Self::attr(&r, ino)?;
                if d.kind != FileKind::Dir {
                    return Err(FsError::NotADirectory { what: format!("inode {ino}") });
                }
                let limit = limit.clamp(1, MAX_READDIR) as usize;
                let (entries, more) = r.readdir(ino, after.as_deref(), limit)?;
                let (attrs, has_xattrs) = match attrs {
                    true => (
                        entries.iter().map(|e| Self::attr(&r, e.ino)).collect::<FsResult<Vec<_>>>()?,
                        entries.iter().map(|e| r.has_xattrs(e.ino)).collect::<FsResult<Vec<_>>>()?,
                    ),
                    false => (Vec::new(), Vec::new()),
                };
                Ok(MetaResponse::Entries { entries, more, attrs, has_xattrs })
            }
            MetaRequest::StatFs => {
                self.read_barrier().await?;
                self.statfs().map(MetaResponse::StatFs)
            }
            MetaRequest::AllocateBlocks { ino, count } => {
                crate::state::snapshots::check_writable(ino)?;
                self.read_barrier().await?;
                self.allocate(ino, count)
            }
            MetaRequest::CommitWrite { ino, slices, min_size, mtime, bad } => {
                if !bad.is_empty() {
                    self.kick();
                }
                Self::attr_of(self.write(Command::CommitWrite { ino, slices, min_size, mtime, bad, now }).await?)
            }
            MetaRequest::GetLayout { ino, first_chunk, last_chunk } => {
                self.read_barrier().await?;
                self.layout(ino, first_chunk, last_chunk).map(MetaResponse::Layout)
            }
            MetaRequest::ReportBadReplica { bad } => {
                tracing::warn!(block = %bad.block, node = %bad.node, reason = %bad.reason, "bad replica reported");
                self.write(Command::ReportBadReplica { bad }).await?;
                self.kick();
                Ok(MetaResponse::Done)
            }
            MetaRequest::RegisterNode { node, token, addr, zone, capacity, used, blocks } => {
                let cmd = match token {
                    Some(token) => Command::RegisterNodeToken { token, node, addr, zone, capacity },
                    None => Command::RegisterNode { node, addr, zone, capacity },
                };
                let res = self.write(cmd).await?;
                let CommandResult::Registered(id) = res else {
                    return Err(FsError::internal(format!("unexpected apply result {res:?}")));
                };
                let report = Report { capacity, used, blocks, load: 0 };
                self.live().heartbeat(id, self.clock.now(), Some(report));
                tracing::info!(node = %id, "storage node registered");
                Ok(MetaResponse::Registered { node: id })
            }
            MetaRequest::Heartbeat { node, capacity, used, blocks, load, deleted } => {
                self.read_barrier().await?;
                if self.store.read()?.node(node)?.is_none() {
                    return Err(FsError::NotFound {
                        what: format!("storage node {node} is not registered; register again"),
                    });
                }
                let report = Report { capacity, used, blocks, load };
                if let Some(peer) = peer {
                    self.note_peer(peer, node);
                }
                self.live().heartbeat(node, self.clock.now(), Some(report));
                if !deleted.is_empty() {
                    self.write(Command::GcAck { node, blocks: deleted }).await?;
                }
                let delete = self.store.read()?.gc_for_node(node, GC_BATCH)?;
                Ok(MetaResponse::HeartbeatAck { delete })
            }
            MetaRequest::ClusterStatus => {
                self.read_barrier().await?;
                self.status().map(MetaResponse::Status)
            }
            MetaRequest::MetaServerInfo => Ok(self.server_info()),
            MetaRequest::AddMetaServer { addr } => self.add_meta_server(&addr).await,
            MetaRequest::RemoveMetaServer { id } => self.remove_meta_server(id).await,
            MetaRequest::MetaStatus => Ok(MetaResponse::MetaStatus(self.meta_status())),
            MetaRequest::BlockReport { node, blocks, first, last } => {
                self.block_report(node, blocks, first, last).await
            }
            MetaRequest::NodeDrain { node, dry_run } => self.drain(node, dry_run).await,
            MetaRequest::NodeRemove { node } => self.remove_node(node).await,
            MetaRequest::NodeMaintenance { node, on, window_ms } => self.maintenance(node, on, window_ms).await,
            MetaRequest::Fsck { repair } => self.fsck(repair).await.map(MetaResponse::Fsck),
            MetaRequest::Deregister { node } => {
                // Liveness is the leader's: a follower answers NotLeader and the node retries there.
                self.read_barrier().await?;
                let now = self.clock.now();
                self.live().disconnected(node, now);
                self.kick();
                tracing::info!(node = %node, "storage node deregistered (clean shutdown); suspect now");
                Ok(MetaResponse::Done)
            }
            req @ (MetaRequest::OpenFile { .. }
            | MetaRequest::OpenRead { .. }
            | MetaRequest::HoldFiles { .. }
            | MetaRequest::ReleaseFile { .. }
            | MetaRequest::RenewSession { .. }
            | MetaRequest::CloseSession { .. }
            | MetaRequest::SetLock { .. }
            | MetaRequest::GetLock { .. }
            | MetaRequest::GetXattr { .. }
            | MetaRequest::ListXattr { .. }
            | MetaRequest::SetXattr { .. }
            | MetaRequest::RemoveXattr { .. }) => self.handle_sessions_xattrs(req, now).await,
            MetaRequest::Snapshot(op) => self.snapshot(op, now).await,
            MetaRequest::Dedup(d) => self.handle_dedup(d, now).await,
            MetaRequest::Once { .. } => Err(FsError::Protocol { reason: "a request id inside another".into() }),
        }
    }

    /// The answer to a retried write whose first attempt is applied already (in this
    /// server's state), without running its handler again: the handler's own checks
    /// would now fail (a retried `NodeRemove` finds no node). `None`: run the handler
    /// (not applied yet, or a request whose answer only its handler builds; the command
    /// it proposes is still applied at most once).
    fn replay(&self, key: crate::state::once::OnceKey, req: &MetaRequest) -> FsResult<Option<FsResult<MetaResponse>>> {
        use distfs_proto::SnapshotOp;
        let Some(result) = crate::state::once::applied(&self.store.read()?, key)? else { return Ok(None) };
        let answer = match (req, result) {
            (_, Err(e)) => Err(e),
            (MetaRequest::Snapshot(SnapshotOp::Delete { .. }), Ok(_)) => Ok(MetaResponse::Snapshots(Vec::new())),
            // A create-and-open registers its open in the leader's memory: its handler
            // runs again (its create answers from the stored result).
            (
                MetaRequest::Snapshot(_)
                | MetaRequest::NodeDrain { .. }
                | MetaRequest::RegisterNode { .. }
                | MetaRequest::Create { open_session: Some(_), .. },
                _,
            ) => return Ok(None),
            (req, Ok(CommandResult::Attr(a))) => match Self::dirs_changed_by(req) {
                Some(dirs) => self.changed(Some(a), &dirs),
                None => Ok(MetaResponse::Attr(a)),
            },
            (req, Ok(CommandResult::Done)) => match Self::dirs_changed_by(req) {
                Some(dirs) => self.changed(None, &dirs),
                None => Ok(MetaResponse::Done),
            },
            (_, Ok(CommandResult::Registered(node))) => Ok(MetaResponse::Registered { node }),
            // Never stored: a request id is inside a batch's command, not around a batch.
            (_, Ok(CommandResult::Batch(_))) => return Ok(None),
        };
        Ok(Some(answer))
    }

    pub(crate) fn node_infos(&self, r: &impl Reader) -> FsResult<Vec<NodeInfo>> {
        let nodes = r.nodes()?;
        let admin = crate::state::node_admin(r)?;
        let live = self.live();
        let now = self.clock.now();
        Ok(nodes
            .into_iter()
            .map(|(id, n)| {
                let rep = live.report(id).unwrap_or_default();
                NodeInfo {
                    id,
                    addr: n.addr,
                    zone: n.zone,
                    capacity: if rep.capacity > 0 { rep.capacity } else { n.capacity },
                    used: rep.used,
                    blocks: rep.blocks,
                    state: live.state(id, now),
                    last_heartbeat_ms: live.silence(id, now).as_millis() as u64,
                    admin: admin.get(&id).copied().unwrap_or_default(),
                }
            })
            .collect())
    }

    fn statfs(&self) -> FsResult<StatFs> {
        let r = self.store.read()?;
        let fmt = r.format_or_unavailable()?;
        let nodes = self.node_infos(&r)?;
        let live = nodes.iter().filter(|n| n.state != NodeState::Dead);
        let (capacity, used) = live.fold((0u64, 0u64), |(c, u), n| (c + n.capacity, u + n.used));
        Ok(StatFs {
            capacity,
            used,
            available: capacity.saturating_sub(used),
            files: r.inode_count()?,
            block_size: fmt.block_size,
        })
    }

    pub(crate) fn status(&self) -> FsResult<ClusterStatus> {
        let r = self.store.read()?;
        let fmt = r.format_or_unavailable()?;
        let stats = r.stats(fmt.replication)?;
        let health = self.health(&r)?;
        let m = self.raft.metrics().borrow().clone();
        Ok(ClusterStatus {
            leader: m.current_leader,
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            replication: fmt.replication,
            chunk_size: fmt.chunk_size,
            block_size: fmt.block_size,
            nodes: self.node_infos(&r)?,
            files: stats.files,
            directories: stats.directories,
            blocks: stats.blocks,
            logical_bytes: stats.logical_bytes,
            under_replicated: health.under_replicated,
            bad_replicas: r.bad_replicas()?,
            gc_pending: stats.gc_pending,
            missing: health.missing.len() as u64,
            repair: self.progress(),
        })
    }

    fn allocate(&self, ino: InodeId, count: u32) -> FsResult<MetaResponse> {
        if count == 0 || count > MAX_ALLOCATE {
            return Err(FsError::invalid(format!("can allocate 1..={MAX_ALLOCATE} blocks at once, asked for {count}")));
        }
        let r = self.store.read()?;
        let fmt: Format = r.format_or_unavailable()?;
        match r.inode(ino)? {
            None => return Err(FsError::StaleInode { ino }),
            Some(i) if i.attr.kind != FileKind::File => {
                return Err(FsError::invalid(format!("inode {ino} is not a regular file")))
            }
            Some(_) => {}
        }
        let nodes = r.nodes()?;
        let admin = crate::state::node_admin(&r)?;
        let (up, addrs): (HashSet<NodeId>, BTreeMap<NodeId, String>) = {
            let live = self.live();
            let now = self.clock.now();
            // Draining, drained and (open-window) maintenance nodes take no new writes.
            let now_ms = crate::service_heal::wall_ms();
            let takes_writes = |id: &NodeId| match admin.get(id) {
                None | Some(distfs_types::AdminState::Normal) => true,
                Some(distfs_types::AdminState::Maintenance { until_ms }) => *until_ms <= now_ms,
                Some(_) => false,
            };
            let up = nodes
                .iter()
                .filter(|(id, _)| live.state(*id, now) == NodeState::Up && takes_writes(id))
                .map(|(id, _)| *id)
                .collect();
            (up, nodes.iter().map(|(id, n)| (*id, n.addr.clone())).collect())
        };
        let rf = fmt.replication as usize;
        let w = rf / 2 + 1;
        if up.len() < w {
            return Err(FsError::Unavailable {
                reason: format!(
                    "only {} of {} storage nodes {} up; writes need {w}",
                    up.len(),
                    nodes.len().max(rf),
                    if up.len() == 1 { "is" } else { "are" }
                ),
            });
        }
        let ring = self.ring(&nodes);
        let blocks = (0..count)
            .map(|_| {
                let id = BlockId(rand::random::<u128>().max(1));
                let targets = place(&ring, id, rf, |n| up.contains(&n))
                    .into_iter()
                    .map(|n| NodeAddr { id: n, addr: addrs.get(&n).cloned().unwrap_or_default(), healthy: true })
                    .collect();
                BlockTarget { id, targets }
            })
            .collect();
        Ok(MetaResponse::Allocated { blocks })
    }

    fn layout(&self, ino: InodeId, first: u64, last: u64) -> FsResult<Layout> {
        self.layout_in(&self.store.read()?, ino, first, last)
    }

    /// The layout of chunks `[first, last]` of file `ino` as `r` sees it.
    fn layout_in(&self, r: &impl Reader, ino: InodeId, first: u64, last: u64) -> FsResult<Layout> {
        self.layout_of(r, Self::attr(r, ino)?, first, last)
    }

    /// The layout of chunks `[first, last]` of the file whose attributes `r` holds as `attr`.
    pub(crate) fn layout_of(&self, r: &impl Reader, attr: Attr, first: u64, last: u64) -> FsResult<Layout> {
        let ino = attr.ino;
        if last < first || last - first >= MAX_LAYOUT_CHUNKS {
            return Err(FsError::invalid(format!(
                "layout range [{first}, {last}] must be non-empty and span at most {MAX_LAYOUT_CHUNKS} chunks"
            )));
        }
        let fmt = r.format_or_unavailable()?;
        match attr.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(FsError::IsADirectory { what: format!("inode {ino}") }),
            _ => return Err(FsError::invalid(format!("inode {ino} is not a regular file"))),
        }
        let chunks: Vec<ChunkLayout> =
            r.chunks(ino, first, last)?.into_iter().map(|(index, slices)| ChunkLayout { index, slices }).collect();
        let ids: BTreeSet<BlockId> =
            chunks.iter().flat_map(|c| c.slices.iter().flat_map(|s| s.blocks.iter().map(|b| b.id))).collect();
        let mut blocks = Vec::with_capacity(ids.len());
        let mut node_ids = BTreeSet::new();
        for id in ids {
            let replicas = r.block(id)?.map(|b| b.replicas).unwrap_or_default();
            node_ids.extend(replicas.iter().copied());
            blocks.push(BlockReplicas { id, replicas });
        }
        let live = self.live();
        let now = self.clock.now();
        let mut nodes = Vec::with_capacity(node_ids.len());
        for id in node_ids {
            if let Some(n) = r.node(id)? {
                nodes.push(NodeAddr { id, addr: n.addr, healthy: live.state(id, now) == NodeState::Up });
            }
        }
        Ok(Layout { attr, chunk_size: fmt.chunk_size, chunks, blocks, nodes })
    }
}

/// Resolves an absolute path, following symlinks except a final one.
pub(crate) fn resolve_path(r: &impl Reader, path: &str) -> FsResult<Attr> {
    if !path.starts_with('/') {
        return Err(FsError::invalid(format!("path `{path}` is not absolute")));
    }
    let mut todo: Vec<String> = path.split('/').filter(|c| !c.is_empty()).rev().map(String::from).collect();
    let mut cur = r.inode(InodeId::ROOT)?.ok_or_else(|| FsError::not_found("root directory"))?;
    let mut followed = 0;
    while let Some(comp) = todo.pop() {
        if cur.attr.kind != FileKind::Dir {
            return Err(FsError::NotADirectory { what: path.to_string() });
        }
        let next = match comp.as_str() {
            "." => continue,
            ".." => cur.parent,
            name => r.dentry(cur.attr.ino, name)?.ok_or_else(|| FsError::not_found(path))?.ino,
        };
        let inode = r.inode(next)?.ok_or_else(|| FsError::not_found(path))?;
        if inode.attr.kind == FileKind::Symlink && !todo.is_empty() {
            followed += 1;
            if followed > MAX_SYMLINKS {
                return Err(FsError::invalid(format!("too many levels of symbolic links in `{path}`")));
            }
            let target = inode.target.clone().unwrap_or_default();
            if target.starts_with('/') {
                cur = r.inode(InodeId::ROOT)?.ok_or_else(|| FsError::not_found("root directory"))?;
            }
            todo.extend(target.split('/').filter(|c| !c.is_empty()).rev().map(String::from));
            continue;
        }
        cur = inode;
    }
    Ok(cur.attr)
}

fn describe(req: &MetaRequest) -> tracing::Span {
    use MetaRequest as R;
    match req {
        R::Lookup { parent, .. }
        | R::Mkdir { parent, .. }
        | R::Create { parent, .. }
        | R::Symlink { parent, .. }
        | R::Unlink { parent, .. }
        | R::Rmdir { parent, .. } => tracing::debug_span!("meta", op = op_name(req), parent = %parent),
        R::Rename { parent, new_parent, .. } => {
            tracing::debug_span!("meta", op = "rename", parent = %parent, new_parent = %new_parent)
        }
        R::GetAttr { ino }
        | R::SetAttr { ino, .. }
        | R::Readlink { ino }
        | R::Link { ino, .. }
        | R::ReadDir { ino, .. }
        | R::AllocateBlocks { ino, .. }
        | R::CommitWrite { ino, .. }
        | R::GetLayout { ino, .. }
        | R::OpenFile { ino, .. }
        | R::OpenRead { ino, .. }
        | R::ReleaseFile { ino, .. }
        | R::GetXattr { ino, .. }
        | R::ListXattr { ino }
        | R::SetXattr { ino, .. }
        | R::RemoveXattr { ino, .. }
        | R::SetLock { ino, .. }
        | R::GetLock { ino, .. } => {
            tracing::debug_span!("meta", op = op_name(req), inode = %ino)
        }
        R::RenewSession { .. } | R::CloseSession { .. } | R::HoldFiles { .. } => {
            tracing::debug_span!("meta", op = op_name(req))
        }
        R::ReportBadReplica { bad } => {
            tracing::debug_span!("meta", op = "report_bad", block = %bad.block, node_id = %bad.node)
        }
        R::Heartbeat { node, .. } => tracing::debug_span!("meta", op = "heartbeat", node_id = %node),
        R::RegisterNode { node, .. } => tracing::debug_span!("meta", op = "register", node_id = ?node),
        R::ResolvePath { .. }
        | R::StatFs
        | R::ClusterStatus
        | R::MetaServerInfo
        | R::AddMetaServer { .. }
        | R::MetaStatus
        | R::Fsck { .. }
        | R::Snapshot(_) => tracing::debug_span!("meta", op = op_name(req)),
        R::RemoveMetaServer { id } => tracing::debug_span!("meta", op = "meta_remove", server = id),
        R::Dedup(_) => tracing::debug_span!("meta", op = op_name(req)),
        R::Once { req, .. } => describe(req),
        R::BlockReport { node, .. }
        | R::NodeDrain { node, .. }
        | R::NodeRemove { node }
        | R::NodeMaintenance { node, .. }
        | R::Deregister { node } => tracing::debug_span!("meta", op = op_name(req), node_id = %node),
    }
}

fn op_name(req: &MetaRequest) -> &'static str {
    use MetaRequest as R;
    match req {
        R::Lookup { .. } => "lookup",
        R::ResolvePath { .. } => "resolve_path",
        R::GetAttr { .. } => "getattr",
        R::SetAttr { .. } => "setattr",
        R::Mkdir { .. } => "mkdir",
        R::Create { .. } => "create",
        R::Symlink { .. } => "symlink",
        R::Readlink { .. } => "readlink",
        R::Link { .. } => "link",
        R::Unlink { .. } => "unlink",
        R::Rmdir { .. } => "rmdir",
        R::Rename { .. } => "rename",
        R::ReadDir { .. } => "readdir",
        R::StatFs => "statfs",
        R::AllocateBlocks { .. } => "allocate",
        R::CommitWrite { .. } => "commit",
        R::GetLayout { .. } => "layout",
        R::ReportBadReplica { .. } => "report_bad",
        R::RegisterNode { .. } => "register",
        R::Heartbeat { .. } => "heartbeat",
        R::ClusterStatus => "status",
        R::MetaServerInfo => "meta_info",
        R::AddMetaServer { .. } => "meta_add",
        R::RemoveMetaServer { .. } => "meta_remove",
        R::MetaStatus => "meta_status",
        R::BlockReport { .. } => "block_report",
        R::NodeDrain { .. } => "node_drain",
        R::NodeRemove { .. } => "node_remove",
        R::NodeMaintenance { .. } => "node_maintenance",
        R::Fsck { .. } => "fsck",
        R::OpenFile { .. } => "open_file",
        R::OpenRead { .. } => "open_read",
        R::ReleaseFile { .. } => "release_file",
        R::RenewSession { .. } => "renew_session",
        R::HoldFiles { .. } => "hold_files",
        R::CloseSession { .. } => "close_session",
        R::GetXattr { .. } => "getxattr",
        R::ListXattr { .. } => "listxattr",
        R::SetXattr { .. } => "setxattr",
        R::RemoveXattr { .. } => "removexattr",
        R::SetLock { .. } => "setlk",
        R::GetLock { .. } => "getlk",
        R::Deregister { .. } => "deregister",
        R::Snapshot(_) => "snapshot",
        R::Dedup(distfs_proto::dedup::DedupRequest::Lookup { .. }) => "dedup_lookup",
        R::Dedup(distfs_proto::dedup::DedupRequest::CommitWrite { .. }) => "commit",
        R::Once { req, .. } => op_name(req),
    }
}

/// The `Handler` the protocol server calls.
pub(crate) struct MetaHandler(pub Arc<Service>);

impl Handler for MetaHandler {
    async fn handle(&self, req: Incoming) -> Result<Reply, FsError> {
        match req.kind {
            Kind::Meta => {
                let m: MetaRequest =
                    distfs_proto::decode(&req.header).map_err(|e| FsError::Protocol { reason: e.to_string() })?;
                let (mut m, once) = match m {
                    MetaRequest::Once { client, slot, seq, req } => {
                        (*req, Some(crate::state::once::OnceKey { client, slot, seq }))
                    }
                    m => (m, None),
                };
                // Only writes are applied at most once; a read needs no id.
                let once = once.filter(|_| m.is_write());
                let span = describe(&m);
                let op = op_name(&m);
                let _in_flight = self.0.ops.begin();
                let started = std::time::Instant::now();
                let who = &req.identity;
                let allowed = async {
                    crate::authz::check_role(who, &m)?;
                    if let Some(key) = once {
                        if let Some(answer) = self.0.replay(key, &m)? {
                            return Ok(Some(answer));
                        }
                    }
                    self.0.check_permissions(who, &m).await.map(|()| None)
                };
                let replayed = match allowed.instrument(span.clone()).await {
                    Ok(r) => r,
                    Err(e) => {
                        span.in_scope(|| tracing::info!(identity = %who, error = %e, "request refused"));
                        self.0.ops.ops.record(op, started.elapsed(), false);
                        return Err(e);
                    }
                };
                crate::authz::own_inodes(who, &mut m);
                let resp = match replayed {
                    Some(answer) => {
                        span.in_scope(|| tracing::debug!("retried write answered from its stored result"));
                        answer
                    }
                    None => {
                        let handled = self.0.handle_meta(m, Some(req.peer)).instrument(span.clone());
                        ONCE.scope(std::cell::Cell::new(once), handled).await
                    }
                };
                self.0.ops.ops.record(op, started.elapsed(), resp.is_ok());
                match (op, &resp) {
                    ("heartbeat", Ok(_)) => self.0.ops.heartbeats.inc(),
                    ("register", Ok(_)) => self.0.ops.registrations.inc(),
                    _ => {}
                }
                if let Err(e) = &resp {
                    span.in_scope(|| tracing::debug!(error = %e, "request failed"));
                }
                Ok(Reply::new(&resp?))
            }
            Kind::Raft => {
                if !req.identity.is_member() {
                    return Err(FsError::PermissionDenied {
                        what: format!("{} may not send Raft messages (needs a node certificate)", req.identity),
                    });
                }
                let rpc: RaftRpc =
                    distfs_proto::decode(&req.header).map_err(|e| FsError::Protocol { reason: e.to_string() })?;
                let started = std::time::Instant::now();
                let reply = handle_raft_rpc(&self.0.raft, rpc)
                    .instrument(tracing::trace_span!("raft_rpc", peer = %req.peer))
                    .await;
                self.0.ops.ops.record("raft", started.elapsed(), true);
                Ok(Reply::new(&reply))
            }
            Kind::Storage => Err(FsError::Protocol { reason: "storage request sent to a metadata server".into() }),
            Kind::Hello => Err(FsError::Protocol { reason: "a Hello after the handshake".into() }),
        }
    }

    fn disconnected(&self, peer: SocketAddr) {
        self.0.peer_closed(peer);
    }
}
