//! `MetaServer`: starts one metadata server (stores, Raft, listener, formatting of a new
//! file system) and stops it cleanly. The handle exposes the bound and advertised
//! addresses, the Raft handle and readiness waits on observable state.

use crate::config::MetaConfig;
use crate::error::MetaError;
use crate::liveness::{Clock, TokioClock};
use crate::raft::{open_log, MetaRaft, Network, StateMachine};
use crate::service::{MetaHandler, Service};
use crate::state::{Command, Format, Reader, StateStore};
use distfs_proto::{Limits, PeerKind, RpcClient, RpcConfig};
use distfs_types::Timestamp;
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, RaftMetrics};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

/// A running metadata server.
pub struct MetaServer {
    service: Arc<Service>,
    local_addr: SocketAddr,
    advertised: String,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    http: Option<SocketAddr>,
    /// The HTTP endpoints stop last, so `/ready` reports the shutdown while it runs.
    http_stop: CancellationToken,
    http_task: Option<JoinHandle<()>>,
}

/// How long a shutdown waits for client requests in flight.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

impl MetaServer {
    /// Starts a server with the production clock and a TCP RPC client.
    pub async fn start(config: MetaConfig, shutdown: CancellationToken) -> Result<MetaServer, MetaError> {
        let transport = config
            .tls
            .client_transport(PeerKind::Meta, &config.compression)
            .map_err(|e| MetaError::Config { key: "tls".into(), reason: e.to_string() })?;
        let rpc = RpcClient::new(RpcConfig { transport, ..RpcConfig::default() });
        Self::start_with(config, shutdown, Arc::new(TokioClock), rpc).await
    }

    /// Starts a server with the given clock and RPC client (for Raft peers): the seams
    /// the test cluster and the simulator replace.
    pub async fn start_with(
        config: MetaConfig,
        shutdown: CancellationToken,
        clock: Arc<dyn Clock>,
        rpc: RpcClient,
    ) -> Result<MetaServer, MetaError> {
        config.validate()?;
        let tls_err = |e: distfs_proto::TlsError| MetaError::Config { key: "tls".into(), reason: e.to_string() };
        let server_transport = Arc::new(config.tls.server_transport(&config.compression).map_err(tls_err)?);
        let client_transport = rpc.config().transport.clone();
        let raft_config = Arc::new(config.openraft_config()?);
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| MetaError::Io { path: config.data_dir.display().to_string(), source })?;
        let mut log = open_log(&config.data_dir)?;
        let cache = usize::try_from(config.cache_size.0).unwrap_or(usize::MAX);
        let store = StateStore::open_with_cache(&config.data_dir.join("state.redb"), cache)?;
        let listener = distfs_proto::transport::bind_listener(&config.listen)
            .await
            .map_err(|source| MetaError::Bind { addr: config.listen.clone(), source })?;
        let local_addr =
            listener.local_addr().map_err(|source| MetaError::Bind { addr: config.listen.clone(), source })?;
        let advertised = config.advertise.clone().unwrap_or_else(|| local_addr.to_string());
        let http_listener = match distfs_ops::http::http_listen(config.http_addr.as_deref(), &config.listen) {
            None => None,
            Some(a) => Some(distfs_ops::http::bind(&a).await?),
        };

        let fresh = {
            let state = log.get_log_state().await.map_err(|e| MetaError::Raft { reason: e.to_string() })?;
            let vote = log.read_vote().await.map_err(|e| MetaError::Raft { reason: e.to_string() })?;
            state.last_log_id.is_none() && vote.is_none()
        };
        let sm = StateMachine::new(store.clone());
        let raft = MetaRaft::new(config.id, raft_config, Network { rpc }, log, sm)
            .await
            .map_err(|e| MetaError::Raft { reason: e.to_string() })?;
        if fresh {
            let initial = config.parse_initial_members()?;
            if config.join {
                info!(id = config.id, addr = %advertised, "waiting to be added to a metadata cluster (join = true)");
            } else if initial.is_empty() {
                let members = BTreeMap::from([(config.id, BasicNode { addr: advertised.clone() })]);
                raft.initialize(members)
                    .await
                    .map_err(|e| MetaError::Raft { reason: format!("initialize single-member cluster: {e}") })?;
                info!(id = config.id, addr = %advertised, "initialized a new single-member metadata cluster");
            } else if initial.iter().map(|(id, _)| *id).min() == Some(config.id) {
                let members: BTreeMap<u64, BasicNode> =
                    initial.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
                raft.initialize(members)
                    .await
                    .map_err(|e| MetaError::Raft { reason: format!("initialize metadata cluster: {e}") })?;
                info!(id = config.id, members = ?initial, "initialized a new metadata cluster");
            } else {
                info!(id = config.id, members = ?initial, "waiting for the lowest-id member to initialize the cluster");
            }
        }

        let service = Arc::new(Service::new(config.id, raft, store, config.clone(), clock, client_transport));
        let mut tasks = Vec::new();
        let handler = Arc::new(MetaHandler(service.clone()));
        tasks.push(tokio::spawn(
            distfs_proto::serve_with(listener, server_transport, handler, Limits::default(), shutdown.clone())
                .instrument(tracing::info_span!("meta_serve", id = config.id, addr = %local_addr)),
        ));
        tasks.push(tokio::spawn(
            crate::repair::worker::run(service.clone(), shutdown.clone())
                .instrument(tracing::info_span!("repair_worker", id = config.id)),
        ));
        tasks.push(tokio::spawn(
            format_when_leader(service.clone(), shutdown.clone())
                .instrument(tracing::info_span!("meta_format", id = config.id)),
        ));
        tasks.push(tokio::spawn(
            crate::sessions::expire_sessions_when_leader(service.clone(), shutdown.clone())
                .instrument(tracing::info_span!("meta_sessions", id = config.id)),
        ));
        tasks.push(tokio::spawn(
            crate::service::renew_read_lease(service.clone(), shutdown.clone())
                .instrument(tracing::info_span!("meta_read_lease", id = config.id)),
        ));
        tasks.push(tokio::spawn(
            crate::sessions::sweep_orphans_when_leader(service.clone(), shutdown.clone())
                .instrument(tracing::info_span!("meta_orphans", id = config.id)),
        ));
        let http_stop = CancellationToken::new();
        let (http, http_task) = match http_listener {
            None => (None, None),
            Some(l) => {
                let addr = l.local_addr().ok();
                let probe = Arc::new(crate::ops::MetaProbe::new(service.clone()));
                let task = tokio::spawn(
                    distfs_ops::http::serve(l, probe, http_stop.clone())
                        .instrument(tracing::info_span!("meta_http", id = config.id)),
                );
                (addr, Some(task))
            }
        };
        info!(id = config.id, addr = %local_addr, advertised = %advertised, http = ?http, "metadata server started");
        Ok(MetaServer { service, local_addr, advertised, shutdown, tasks, http, http_stop, http_task })
    }

    /// The bound address of the HTTP endpoints (`http_addr`), if on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// Applies the reloadable keys of `new` (SIGHUP). An invalid `new` is rejected and
    /// nothing changes.
    pub fn reload(&self, new: &MetaConfig) -> Result<distfs_ops::Reloaded, MetaError> {
        if let Err(e) = new.validate() {
            self.reload_rejected();
            return Err(e);
        }
        let r = self.service.reload(new);
        self.service.ops.reloads.applied.inc();
        Ok(r)
    }

    /// Counts a reload rejected before it reached the server (the file did not parse).
    pub fn reload_rejected(&self) {
        self.service.ops.reloads.rejected.inc();
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn advertised_addr(&self) -> &str {
        &self.advertised
    }

    pub fn id(&self) -> u64 {
        self.service.id
    }

    pub fn raft(&self) -> &MetaRaft {
        &self.service.raft
    }

    pub fn metrics(&self) -> RaftMetrics<u64, BasicNode> {
        self.service.raft.metrics().borrow().clone()
    }

    /// The state store (read-only use: inspection in tests and tools).
    pub fn state(&self) -> &StateStore {
        &self.service.store
    }

    /// Waits until a leader is known and the local state machine holds a formatted file
    /// system; returns the leader's id.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<u64, MetaError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.service.raft.metrics();
        loop {
            let leader = rx.borrow().current_leader;
            if let Some(l) = leader {
                if self.service.store.read().and_then(|r| r.format()).ok().flatten().is_some() {
                    return Ok(l);
                }
            }
            // Formatting is applied without a metrics change of its own in some cases: poll too.
            let changed = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(50)),
                rx.changed(),
            );
            if let Ok(Err(_)) = changed.await {
                return Err(MetaError::Raft { reason: "raft stopped".into() });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MetaError::Timeout { what: format!("a metadata leader (server {})", self.service.id) });
            }
        }
    }

    /// Waits until this server is the leader (and the file system is formatted).
    pub async fn wait_is_leader(&self, timeout: Duration) -> Result<(), MetaError> {
        let leader = self.wait_leader(timeout).await?;
        if leader == self.service.id {
            return Ok(());
        }
        self.service
            .raft
            .wait(Some(timeout))
            .current_leader(self.service.id, "wait for leadership")
            .await
            .map(|_| ())
            .map_err(|e| MetaError::Timeout { what: format!("leadership of server {}: {e}", self.service.id) })
    }

    /// Stops serving, shuts Raft down and makes the state durable.
    pub async fn shutdown(mut self) -> Result<(), MetaError> {
        self.shutdown.cancel();
        self.stop().await
    }

    /// Waits for the shutdown token, then stops like `shutdown`.
    pub async fn stopped(mut self) -> Result<(), MetaError> {
        self.shutdown.cancelled().await;
        self.stop().await
    }

    /// The shutdown sequence: not ready, stop accepting (the serving loop and the
    /// background tasks end with the token), let client requests in flight finish (at
    /// most `DRAIN_LIMIT`), stop Raft, flush the state, stop the HTTP endpoints.
    async fn stop(&mut self) -> Result<(), MetaError> {
        self.service.ops.shutting_down.store(true, std::sync::atomic::Ordering::Release);
        for t in self.tasks.drain(..) {
            if let Err(e) = t.await {
                warn!(error = %e, "metadata server task ended abnormally");
            }
        }
        let left = self.service.ops.drained(DRAIN_LIMIT).await;
        if left > 0 {
            warn!(requests = left, "requests still in flight after {DRAIN_LIMIT:?}; stopping anyway");
        }
        let r = self.service.raft.shutdown().await.map_err(|e| MetaError::Raft { reason: format!("shutdown: {e}") });
        let f = self.service.store.flush().map_err(|e| MetaError::Raft { reason: format!("final flush: {e}") });
        self.http_stop.cancel();
        if let Some(t) = self.http_task.take() {
            // A client that keeps a request open does not hold the shutdown up.
            let abort = t.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(2), t).await.is_err() {
                abort.abort();
            }
        }
        r?;
        f?;
        info!(id = self.service.id, "metadata server stopped");
        Ok(())
    }
}

/// Formats a new file system (root directory, fixed chunk/block size and replication)
/// once this server leads a cluster whose state is not formatted yet.
async fn format_when_leader(service: Arc<Service>, shutdown: CancellationToken) {
    let mut rx = service.raft.metrics();
    loop {
        let is_leader = rx.borrow().current_leader == Some(service.id);
        if is_leader {
            match service.store.read().and_then(|r| r.format()) {
                Ok(Some(f)) => {
                    let c = &service.config;
                    if f.chunk_size != c.chunk_size.0
                        || f.block_size as u64 != c.block_size.0
                        || f.replication != c.replication
                    {
                        warn!(?f, "configured chunk_size/block_size/replication differ from the formatted ones; the formatted ones stay");
                    }
                    return;
                }
                Ok(None) => {
                    let c = &service.config;
                    let format = Format {
                        chunk_size: c.chunk_size.0,
                        block_size: c.block_size.0 as u32,
                        replication: c.replication,
                    };
                    match service.write(Command::Format { format, now: Timestamp::now() }).await {
                        Ok(_) => {
                            info!(?format, "formatted a new file system");
                            return;
                        }
                        Err(e) => warn!(error = %e, "formatting failed; will retry"),
                    }
                }
                Err(e) => warn!(error = %e, "cannot read the state; will retry"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
