//! `StorageNode`: opens the block store, serves `Kind::Storage` frames over TCP, and runs
//! the background tasks (batch syncer, registration + heartbeats) until its cancellation
//! token fires. Handlers run in a span carrying the node and block ids; writes are bounded
//! by a semaphore plus a bounded wait queue.

use crate::config::{StorageConfig, SyncPolicy};
use crate::disk::{Disk, StdDisk};
use crate::error::StorageError;
use crate::meta_link::MetaLink;
use crate::node_id;
use crate::store::{BlockStore, StoreOptions};
use distfs_proto::{
    ClientTransport, Handler, Incoming, Kind, Limits, PeerKind, Reply, RpcClient, RpcConfig, StorageRequest,
    StorageResponse,
};
use distfs_types::{BlockId, FsError, NodeId};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

/// How many writes may wait for a slot, as a multiple of `max_concurrent_writes`.
const QUEUE_FACTOR: usize = 4;

/// State shared by the request handler and the background tasks.
pub(crate) struct Shared {
    pub store: BlockStore,
    /// The id confirmed by the metadata service in this run (`None` until registered).
    pub registered: watch::Sender<Option<NodeId>>,
    /// Best id known for logs and errors: registered, else persisted, else 0.
    pub known_id: AtomicU64,
    /// Requests being handled (reported as `load`).
    pub in_flight: AtomicU32,
    write_slots: Semaphore,
    writes_queued: AtomicUsize,
    max_writes: usize,
    /// Repair copies: fewer slots than client writes.
    copy_slots: Semaphore,
    /// Connections to peer storage nodes (sources of repair copies).
    peers: RpcClient,
    /// TLS and compression of the connections this node opens.
    pub transport: ClientTransport,
}

impl Shared {
    pub fn wire_id(&self) -> NodeId {
        NodeId(self.known_id.load(Ordering::Relaxed))
    }
}

/// A running storage node.
pub struct StorageNode {
    local_addr: SocketAddr,
    advertise: String,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl StorageNode {
    /// Validates `config`, opens and scans the store, binds the listener and starts serving,
    /// registering and heartbeating. Everything stops when `shutdown` (or `shutdown()`)
    /// is cancelled.
    pub async fn start(config: StorageConfig, shutdown: CancellationToken) -> Result<StorageNode, StorageError> {
        Self::start_with_disk(config, shutdown, Arc::new(StdDisk)).await
    }

    /// `start` with another disk implementation (fault injection, simulation).
    pub async fn start_with_disk(
        config: StorageConfig,
        shutdown: CancellationToken,
        disk: Arc<dyn Disk>,
    ) -> Result<StorageNode, StorageError> {
        config.validate()?;
        let opts = StoreOptions {
            data_dir: config.data_dir.clone(),
            sync: config.sync,
            capacity: config.capacity.map(|c| c.0),
            reserve: config.reserve.0,
        };
        let (store, _report) = BlockStore::open(opts, disk.clone()).await?;
        let previous = node_id::load(&*disk, &config.data_dir)?;
        let tls_err = |e: distfs_proto::TlsError| StorageError::Config { key: "tls", reason: e.to_string() };
        let server_transport = config.tls.server_transport(&config.compression).map_err(tls_err)?;
        let transport = config.tls.client_transport(PeerKind::Storage, &config.compression).map_err(tls_err)?;

        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|source| StorageError::Bind { addr: config.listen.clone(), source })?;
        let local_addr =
            listener.local_addr().map_err(|source| StorageError::Bind { addr: config.listen.clone(), source })?;
        let advertise = match &config.advertise {
            Some(a) => a.clone(),
            None if local_addr.ip().is_unspecified() => {
                return Err(StorageError::Config {
                    key: "advertise",
                    reason: format!(
                        "`listen` is {local_addr}, which peers cannot dial; set `advertise` to a reachable host:port"
                    ),
                })
            }
            None => local_addr.to_string(),
        };

        let (registered, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            store: store.clone(),
            registered,
            known_id: AtomicU64::new(previous.map(|n| n.0).unwrap_or(0)),
            in_flight: AtomicU32::new(0),
            write_slots: Semaphore::new(config.max_concurrent_writes),
            writes_queued: AtomicUsize::new(0),
            max_writes: config.max_concurrent_writes,
            copy_slots: Semaphore::new(config.max_concurrent_copies),
            peers: RpcClient::new(RpcConfig {
                connect_timeout: std::time::Duration::from_secs(1),
                request_timeout: std::time::Duration::from_secs(20),
                transport: transport.clone(),
                ..RpcConfig::default()
            }),
            transport,
        });
        let cancel = shutdown.child_token();
        let tasks = TaskTracker::new();

        let handler = Arc::new(Service { shared: shared.clone() });
        let serve =
            distfs_proto::serve_with(listener, Arc::new(server_transport), handler, Limits::default(), cancel.clone());
        spawn_named(&tasks, "serve", serve);
        if config.sync == SyncPolicy::Batch {
            let (s, c) = (store.clone(), cancel.clone());
            spawn_named(&tasks, "batch-syncer", async move { s.run_syncer(c).await });
        }
        let link = MetaLink::new(&config, advertise.clone(), previous, shared.clone(), disk);
        spawn_named(&tasks, "meta-link", link.run(cancel.clone()));
        if config.scrub_bandwidth.0 > 0 {
            let scrub = crate::scrub::Scrubber::new(&config, shared.clone());
            spawn_named(&tasks, "scrubber", scrub.run(cancel.clone()));
        }
        tasks.close();

        info!(addr = %local_addr, advertise = %advertise, zone = %config.zone,
            sync = ?config.sync, node = ?previous, "storage node serving");
        Ok(StorageNode { local_addr, advertise, shared, cancel, tasks })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address announced to the metadata service.
    pub fn advertise_addr(&self) -> &str {
        &self.advertise
    }

    /// The id issued by the metadata service, once this run has registered.
    pub fn node_id(&self) -> Option<NodeId> {
        *self.shared.registered.borrow()
    }

    /// Waits until the node has registered (wrap it in a timeout).
    pub async fn registered(&self) -> NodeId {
        let mut rx = self.shared.registered.subscribe();
        loop {
            if let Some(id) = *rx.borrow_and_update() {
                return id;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self.shared`, so this cannot happen while we wait.
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn store(&self) -> &BlockStore {
        &self.shared.store
    }

    /// Waits until every task of the node has stopped (after cancellation).
    pub async fn stopped(&self) {
        self.tasks.wait().await;
    }

    /// Stops the node and waits for its tasks to finish.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.wait().await;
        info!(addr = %self.local_addr, "storage node stopped");
    }
}

/// Spawns a background task that logs under its name.
fn spawn_named<F>(tasks: &TaskTracker, name: &'static str, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    tasks.spawn(
        async move {
            debug!("task started");
            fut.await;
            debug!("task stopped");
        }
        .instrument(info_span!("task", name)),
    );
}

/// The `distfs_proto::Handler` of the storage service.
struct Service {
    shared: Arc<Shared>,
}

impl Handler for Service {
    async fn handle(&self, req: Incoming) -> Result<Reply, FsError> {
        let node = self.shared.wire_id();
        let request: StorageRequest = match req.kind {
            Kind::Storage => distfs_proto::decode(&req.header)
                .map_err(|e| StorageError::BadRequest { reason: e.to_string() }.to_fs(node))?,
            Kind::Meta => return Err(StorageError::WrongService { kind: "metadata" }.to_fs(node)),
            Kind::Raft => return Err(StorageError::WrongService { kind: "raft" }.to_fs(node)),
            Kind::Hello => {
                return Err(StorageError::BadRequest { reason: "a Hello after the handshake".into() }.to_fs(node))
            }
        };
        // Internal requests only from cluster members (node certificates); block reads and
        // writes from any certificate of the cluster CA (the TLS layer refused the rest).
        if matches!(request, StorageRequest::DeleteBlocks { .. } | StorageRequest::CopyBlock { .. })
            && !req.identity.is_member()
        {
            warn!(identity = %req.identity, peer = %req.peer, "refused an internal request from a non-member");
            return Err(FsError::PermissionDenied {
                what: format!(
                    "{} may not delete or copy blocks on storage node {node} (needs a node certificate)",
                    req.identity
                ),
            });
        }
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let _load = InFlight(&self.shared.in_flight);
        let (op, block) = match &request {
            StorageRequest::PutBlock { block, .. } => ("put", Some(*block)),
            StorageRequest::GetBlock { block, .. } => ("get", Some(*block)),
            StorageRequest::DeleteBlocks { .. } => ("delete", None),
            StorageRequest::Ping => ("ping", None),
            StorageRequest::CopyBlock { block, .. } => ("copy", Some(*block)),
        };
        let span = info_span!("storage", %node, op, block = %block.map(|b| b.to_string()).unwrap_or_default(), peer = %req.peer);
        async {
            self.serve(request, req.body).await.map_err(|e| {
                match &e {
                    StorageError::NotFound { .. } => debug!(error = %e, "request failed"),
                    // Already logged at ERROR with the path when the file was quarantined.
                    StorageError::Corrupt { .. } => {}
                    _ => warn!(error = %e, "request failed"),
                }
                e.to_fs(self.shared.wire_id())
            })
        }
        .instrument(span)
        .await
    }
}

impl Service {
    async fn serve(&self, req: StorageRequest, body: bytes::Bytes) -> Result<Reply, StorageError> {
        let store = &self.shared.store;
        match req {
            StorageRequest::PutBlock { block, crcs } => {
                let _slot = self.write_slot().await?;
                let outcome = store.put(block, crcs, body).await?;
                debug!(?outcome, "block stored");
                Ok(Reply::new(&StorageResponse::Stored))
            }
            StorageRequest::GetBlock { block, offset, len } => {
                let r = store.get(block, offset.into(), len.into()).await?;
                let offset = u32::try_from(r.offset)
                    .map_err(|_| StorageError::Internal(format!("offset {} of block {block} exceeds u32", r.offset)))?;
                Ok(Reply::with_body(&StorageResponse::Block { offset, crcs: r.crcs }, r.data))
            }
            StorageRequest::DeleteBlocks { blocks } => {
                let count = delete_all(store, &blocks).await?;
                Ok(Reply::new(&StorageResponse::Deleted { count }))
            }
            StorageRequest::Ping => Ok(Reply::new(&StorageResponse::Pong { node: *self.shared.registered.borrow() })),
            StorageRequest::CopyBlock { block, from } => {
                let _slot = self.shared.copy_slots.acquire().await.map_err(|_| StorageError::ShuttingDown)?;
                self.copy(block, from).await?;
                Ok(Reply::new(&StorageResponse::Stored))
            }
        }
    }

    /// Fetches `block` from the first source that delivers a verified copy and stores it
    /// durably (the put checks every piece's CRC32C again before anything is written).
    async fn copy(&self, block: BlockId, from: Vec<distfs_proto::NodeAddr>) -> Result<(), StorageError> {
        let mut why = Vec::new();
        for src in from {
            let req = StorageRequest::GetBlock { block, offset: 0, len: u32::MAX };
            match self.shared.peers.storage(&src.addr, &req, bytes::Bytes::new(), None).await {
                Ok((StorageResponse::Block { offset: 0, crcs }, body)) => {
                    match self.shared.store.put(block, crcs, body).await {
                        Ok(outcome) => {
                            debug!(source = %src.id, ?outcome, "block copied from a peer");
                            return Ok(());
                        }
                        Err(e @ StorageError::NoSpace { .. }) => return Err(e),
                        Err(e) => why.push(format!("from node {}: {e}", src.id)),
                    }
                }
                Ok((other, _)) => why.push(format!("from node {}: unexpected answer {other:?}", src.id)),
                Err(e) => why.push(format!("from node {}: {e}", src.id)),
            }
        }
        if why.is_empty() {
            why.push("no source given".into());
        }
        Err(StorageError::CopyFailed { block, reason: why.join("; ") })
    }

    /// A write slot; refuses at once when too many writes already wait, so the bodies
    /// held in memory stay bounded.
    async fn write_slot(&self) -> Result<WriteSlot<'_>, StorageError> {
        let s = &self.shared;
        let queued = s.writes_queued.fetch_add(1, Ordering::AcqRel) + 1;
        let mut slot = WriteSlot { queued: &s.writes_queued, _permit: None };
        if queued > s.max_writes * (1 + QUEUE_FACTOR) {
            return Err(StorageError::Overloaded { limit: s.max_writes });
        }
        let permit = s.write_slots.acquire().await.map_err(|_| StorageError::ShuttingDown)?;
        slot._permit = Some(permit);
        Ok(slot)
    }
}

/// Deletes blocks, continuing past failures; returns how many existed, or the first error.
pub(crate) async fn delete_all(store: &BlockStore, blocks: &[BlockId]) -> Result<u32, StorageError> {
    let mut count = 0;
    let mut first_err = None;
    for &b in blocks {
        match store.delete(b).await {
            Ok(true) => count += 1,
            Ok(false) => {}
            Err(e) => {
                warn!(block = %b, error = %e, "delete failed");
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(count),
    }
}

struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct WriteSlot<'a> {
    queued: &'a AtomicUsize,
    _permit: Option<tokio::sync::SemaphorePermit<'a>>,
}

impl Drop for WriteSlot<'_> {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }
}
