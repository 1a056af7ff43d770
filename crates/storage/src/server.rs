//! `StorageNode`: opens the block store, serves `Kind::Storage` frames over TCP, and runs
//! the background tasks (batch syncer, registration + heartbeats) until its cancellation
//! token fires. Handlers run in a span carrying the node and block ids; writes are bounded
//! by a semaphore plus a bounded wait queue.

use crate::config::{StorageConfig, SyncPolicy};
use crate::copy_gate::CopyGate;
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
    /// Repair copies: full width while clients are quiet, `copies_while_busy` otherwise.
    copy_gate: CopyGate,
    /// Connections to peer storage nodes (sources of repair copies).
    peers: RpcClient,
    /// Metrics and the metadata-link state (`ops.rs`).
    pub ops: crate::ops::StorageMetrics,
    /// The configuration in force: the start-up one plus keys reloaded since (SIGHUP).
    tunables: std::sync::RwLock<StorageConfig>,
    /// TLS and compression of the connections this node opens.
    pub transport: ClientTransport,
}

impl Shared {
    /// The configuration in force.
    pub fn tunables(&self) -> StorageConfig {
        self.tunables.read().expect("tunables lock").clone()
    }

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
    /// Cancels only the serving loop: a shutdown stops accepting first.
    serve_cancel: CancellationToken,
    tasks: TaskTracker,
    data_dir: std::path::PathBuf,
    http: Option<SocketAddr>,
    http_stop: CancellationToken,
    http_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// How long a shutdown waits for requests in flight.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

impl StorageNode {
    /// Validates `config`, opens and scans the store, binds the listener and starts serving,
    /// registering and heartbeating. Everything stops when `shutdown` (or `shutdown()`)
    /// is cancelled.
    pub async fn start(config: StorageConfig, shutdown: CancellationToken) -> Result<StorageNode, StorageError> {
        let disk = StdDisk { direct_io: config.direct_io };
        Self::start_with_disk(config, shutdown, Arc::new(disk)).await
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
        let token = node_id::token(&*disk, &config.data_dir)?;
        let tls_err = |e: distfs_proto::TlsError| StorageError::Config { key: "tls", reason: e.to_string() };
        let server_transport = config.tls.server_transport(&config.compression).map_err(tls_err)?;
        let transport = config.tls.client_transport(PeerKind::Storage, &config.compression).map_err(tls_err)?;

        let listener = distfs_proto::transport::bind_listener(&config.listen)
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
        let http_listener = match distfs_ops::http::http_listen(config.http_addr.as_deref(), &config.listen) {
            None => None,
            Some(a) => Some(
                distfs_ops::http::bind(&a)
                    .await
                    .map_err(|e| StorageError::Config { key: "http_addr", reason: e.to_string() })?,
            ),
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
            copy_gate: CopyGate::new(
                config.max_concurrent_copies,
                config.copies_while_busy,
                f64::from(config.copy_percent_while_busy) / 100.0,
            ),
            peers: RpcClient::new(RpcConfig {
                connect_timeout: std::time::Duration::from_secs(1),
                request_timeout: std::time::Duration::from_secs(20),
                transport: transport.clone(),
                ..RpcConfig::default()
            }),
            ops: Default::default(),
            tunables: std::sync::RwLock::new(config.clone()),
            transport,
        });
        let cancel = shutdown.child_token();
        let serve_cancel = cancel.child_token();
        let tasks = TaskTracker::new();

        let handler = Arc::new(Service { shared: shared.clone() });
        let serve = distfs_proto::serve_with(
            listener,
            Arc::new(server_transport),
            handler,
            Limits::default(),
            serve_cancel.clone(),
        );
        spawn_named(&tasks, "serve", serve);
        if config.sync == SyncPolicy::Batch {
            let (s, c) = (store.clone(), cancel.clone());
            spawn_named(&tasks, "batch-syncer", async move { s.run_syncer(c).await });
        }
        let link = MetaLink::new(&config, advertise.clone(), (previous, token), shared.clone(), disk);
        spawn_named(&tasks, "meta-link", link.run(cancel.clone()));
        if config.scrub_bandwidth.0 > 0 {
            let scrub = crate::scrub::Scrubber::new(&config, shared.clone());
            spawn_named(&tasks, "scrubber", scrub.run(cancel.clone()));
        }
        tasks.close();
        let http_stop = CancellationToken::new();
        let (http, http_task) = match http_listener {
            None => (None, None),
            Some(l) => {
                let addr = l.local_addr().ok();
                let probe = Arc::new(crate::ops::StorageProbe(shared.clone()));
                let task = tokio::spawn(
                    distfs_ops::http::serve(l, probe, http_stop.clone()).instrument(info_span!("task", name = "http")),
                );
                (addr, Some(task))
            }
        };

        info!(addr = %local_addr, advertise = %advertise, zone = %config.zone, http = ?http,
            sync = ?config.sync, node = ?previous, "storage node serving");
        Ok(StorageNode {
            local_addr,
            advertise,
            shared,
            cancel,
            serve_cancel,
            tasks,
            data_dir: config.data_dir.clone(),
            http,
            http_stop,
            http_task: std::sync::Mutex::new(http_task),
        })
    }

    /// The bound address of the HTTP endpoints (`http_addr`), if on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// Applies the reloadable keys of `new` (SIGHUP). An invalid `new` is rejected and
    /// nothing changes.
    pub fn reload(&self, new: &StorageConfig) -> Result<distfs_ops::Reloaded, StorageError> {
        if let Err(e) = new.validate() {
            self.reload_rejected();
            return Err(e);
        }
        let (changed, needs_restart) = self.shared.tunables.write().expect("tunables lock").apply_reloadable(new);
        self.shared.ops.reloads.applied.inc();
        Ok(distfs_ops::Reloaded { changed, needs_restart })
    }

    /// Counts a reload rejected before it reached the node (the file did not parse).
    pub fn reload_rejected(&self) {
        self.shared.ops.reloads.rejected.inc();
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

    /// Stops the node gracefully: not ready, stop accepting connections and requests,
    /// let requests in flight finish (at most `DRAIN_LIMIT`), flush the file system
    /// (syncfs), stop the background tasks (the heartbeat link deregisters, so the
    /// metadata leader marks the node suspect at once and places no new writes on it),
    /// stop the HTTP endpoints.
    pub async fn shutdown(&self) {
        self.shared.ops.shutting_down.store(true, Ordering::Release);
        self.serve_cancel.cancel();
        let start = std::time::Instant::now();
        while self.shared.in_flight.load(Ordering::Acquire) > 0 && start.elapsed() < DRAIN_LIMIT {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let left = self.shared.in_flight.load(Ordering::Acquire);
        if left > 0 {
            warn!(requests = left, "requests still in flight after {DRAIN_LIMIT:?}; stopping anyway");
        }
        let dir = self.data_dir.clone();
        match tokio::task::spawn_blocking(move || syncfs(&dir)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "final flush (syncfs) failed"),
            Err(e) => warn!(error = %e, "final flush task failed"),
        }
        // The heartbeat link deregisters as its last act.
        self.cancel.cancel();
        self.tasks.wait().await;
        self.http_stop.cancel();
        let task = self.http_task.lock().expect("http task lock").take();
        if let Some(t) = task {
            // A client that keeps a request open does not hold the shutdown up.
            let abort = t.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(2), t).await.is_err() {
                abort.abort();
            }
        }
        info!(addr = %self.local_addr, drained_in_ms = start.elapsed().as_millis() as u64, "storage node stopped");
    }
}

/// Makes everything written to the file system holding `dir` durable (even with
/// `sync = "none"`, a clean stop loses nothing acknowledged).
fn syncfs(dir: &std::path::Path) -> std::io::Result<()> {
    let f = std::fs::File::open(dir)?;
    // SAFETY: syncfs(2) on a descriptor we own for the duration of the call.
    let r = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
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
        if matches!(
            request,
            StorageRequest::DeleteBlocks { .. }
                | StorageRequest::CopyBlock { .. }
                | StorageRequest::FetchForCopy { .. }
        ) && !req.identity.is_member()
        {
            warn!(identity = %req.identity, peer = %req.peer, "refused an internal request from a non-member");
            return Err(FsError::PermissionDenied {
                what: format!(
                    "{} may not delete or copy blocks on storage node {node} (needs a node certificate)",
                    req.identity
                ),
            });
        }
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        let _load = InFlight(&self.shared.in_flight);
        let started = std::time::Instant::now();
        let ops = &self.shared.ops;
        ops.bytes_in.add(req.body.len() as u64);
        let (op, block) = match &request {
            StorageRequest::PutBlock { block, .. } => ("put", Some(*block)),
            StorageRequest::GetBlock { block, .. } => ("get", Some(*block)),
            StorageRequest::DeleteBlocks { .. } => ("delete", None),
            StorageRequest::Ping => ("ping", None),
            StorageRequest::CopyBlock { block, .. } => ("copy", Some(*block)),
            StorageRequest::FetchForCopy { block } => ("fetch_for_copy", Some(*block)),
            StorageRequest::PutPacked(p) => ("put", Some(p.block)),
        };
        let span = info_span!("storage", %node, op, block = %block.map(|b| b.to_string()).unwrap_or_default(), peer = %req.peer);
        let result = async {
            self.serve(request, req.body, req.pieces).await.map_err(|e| {
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
        .await;
        ops.ops.record(op, started.elapsed(), result.is_ok());
        if let Ok(r) = &result {
            ops.bytes_out.add(r.body.len() as u64);
        }
        result
    }
}

impl Service {
    /// `pieces`: the CRC32C of the body's 64 KiB pieces, computed as it arrived.
    async fn serve(
        &self,
        req: StorageRequest,
        body: bytes::Bytes,
        pieces: Option<std::sync::Arc<[u32]>>,
    ) -> Result<Reply, StorageError> {
        let store = &self.shared.store;
        match req {
            StorageRequest::PutBlock { block, crcs } => {
                let _client = self.shared.copy_gate.client();
                let _slot = self.write_slot().await?;
                let len = body.len() as u64;
                let outcome = store.put_received(block, crcs, body, None, pieces).await?;
                self.shared.ops.bytes_written.add(len);
                debug!(?outcome, "block stored");
                Ok(Reply::new(&StorageResponse::Stored))
            }
            StorageRequest::GetBlock { block, offset, len } => {
                let _client = self.shared.copy_gate.client();
                self.get(block, offset, len).await
            }
            StorageRequest::PutPacked(p) => {
                let _client = self.shared.copy_gate.client();
                let _slot = self.write_slot().await?;
                let len = body.len() as u64;
                let (block, crcs, packed) = unpack_put(p);
                let outcome = store.put_received(block, crcs, body, Some(packed), pieces).await?;
                self.shared.ops.bytes_written.add(len);
                debug!(?outcome, "compressed block stored");
                Ok(Reply::new(&StorageResponse::Stored))
            }
            StorageRequest::FetchForCopy { block } => match store.read_stored(block).await? {
                // A compressed block travels as stored: no decompression, no recompression.
                Some((crcs, stored, p)) => {
                    let put = distfs_proto::dedup::PackedPut {
                        block,
                        crcs,
                        codec: p.codec,
                        plain_len: p.plain_len as u32,
                        plain_crcs: p.plain_crcs,
                    };
                    let crcs = put.crcs.clone();
                    Ok(Reply::with_block(&StorageResponse::Packed(put), stored, &crcs))
                }
                None => self.get(block, 0, u32::MAX).await,
            },
            StorageRequest::DeleteBlocks { blocks } => {
                let count = delete_all(store, &blocks).await?;
                Ok(Reply::new(&StorageResponse::Deleted { count }))
            }
            StorageRequest::Ping => Ok(Reply::new(&StorageResponse::Pong { node: *self.shared.registered.borrow() })),
            StorageRequest::CopyBlock { block, from } => {
                let _slot = self.shared.copy_gate.acquire().await;
                self.copy(block, from).await?;
                Ok(Reply::new(&StorageResponse::Stored))
            }
        }
    }

    async fn get(&self, block: BlockId, offset: u32, len: u32) -> Result<Reply, StorageError> {
        let r = self.shared.store.get(block, offset.into(), len.into()).await?;
        let offset = u32::try_from(r.offset)
            .map_err(|_| StorageError::Internal(format!("offset {} of block {block} exceeds u32", r.offset)))?;
        Ok(Reply::with_block(&StorageResponse::Block { offset, crcs: r.crcs.clone() }, r.data, &r.crcs))
    }

    /// Fetches `block` from the first source that delivers a verified copy and stores it
    /// durably (the put checks every piece's CRC32C again before anything is written).
    async fn copy(&self, block: BlockId, from: Vec<distfs_proto::NodeAddr>) -> Result<(), StorageError> {
        let mut why = Vec::new();
        for src in from {
            let req = StorageRequest::FetchForCopy { block };
            // The pieces' CRCs computed as the answer arrived check it again in the put.
            let r = self.shared.peers.storage_with_pieces(&src.addr, &req, bytes::Bytes::new(), None).await;
            let (crcs, packed, body, pieces) = match r {
                Ok((StorageResponse::Block { offset: 0, crcs }, body, pieces)) => (crcs, None, body, pieces),
                Ok((StorageResponse::Packed(p), body, pieces)) if p.block == block => {
                    let (_, crcs, packed) = unpack_put(p);
                    (crcs, Some(packed), body, pieces)
                }
                Ok((other, _, _)) => {
                    why.push(format!("from node {}: unexpected answer {other:?}", src.id));
                    continue;
                }
                Err(e) => {
                    why.push(format!("from node {}: {e}", src.id));
                    continue;
                }
            };
            let (len, compressed) = (body.len() as u64, packed.is_some());
            match self.shared.store.put_received(block, crcs, body, packed, pieces).await {
                Ok(outcome) if compressed => {
                    self.shared.ops.bytes_written.add(len);
                    debug!(source = %src.id, ?outcome, "compressed block copied from a peer as stored");
                    return Ok(());
                }
                Ok(outcome) => {
                    self.shared.ops.bytes_written.add(len);
                    debug!(source = %src.id, ?outcome, "block copied from a peer");
                    return Ok(());
                }
                Err(e @ StorageError::NoSpace { .. }) => return Err(e),
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

fn unpack_put(p: distfs_proto::dedup::PackedPut) -> (BlockId, Vec<u32>, crate::store::format::Packed) {
    let packed =
        crate::store::format::Packed { codec: p.codec, plain_len: p.plain_len.into(), plain_crcs: p.plain_crcs };
    (p.block, p.crcs, packed)
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
        self.0.fetch_sub(1, Ordering::AcqRel);
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
