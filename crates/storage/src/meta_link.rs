//! The node's link to the metadata service: registration (retried with backoff while the
//! service is unreachable; the issued id is persisted and reused, and the node's token
//! makes a registration whose answer was lost get the same id) and the heartbeat loop,
//! which carries capacity, usage and load, executes the garbage-collection deletes the
//! answer asks for and acknowledges them in the next heartbeat.

use crate::config::StorageConfig;
use crate::disk::Disk;
use crate::error::StorageError;
use crate::node_id;
use crate::server::{delete_all, Shared};
use crate::store::StoreStats;
use distfs_proto::{MetaClient, MetaRequest, MetaResponse, RpcClient, RpcConfig, RpcError};
use distfs_types::error::Retry;
use distfs_types::{BlockId, NodeId};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Block ids per block-report page (16 bytes each: well under the header limit).
const REPORT_PAGE: usize = 8192;

pub(crate) struct MetaLink {
    meta: MetaClient,
    advertise: String,
    zone: String,
    interval: Duration,
    data_dir: PathBuf,
    previous: Option<NodeId>,
    /// The registration token (`node_id::token`).
    token: u128,
    shared: Arc<Shared>,
    disk: Arc<dyn Disk>,
    last_stats: StoreStats,
    report_every: Duration,
    /// When the next block report is due (right after each registration).
    next_report: Option<tokio::time::Instant>,
}

impl MetaLink {
    pub fn new(
        config: &StorageConfig,
        advertise: String,
        (previous, token): (Option<NodeId>, u128),
        shared: Arc<Shared>,
        disk: Arc<dyn Disk>,
    ) -> MetaLink {
        let interval = config.heartbeat_interval.0;
        // A heartbeat that cannot get through within a few intervals is not worth more.
        let deadline = (interval * 3).clamp(Duration::from_secs(1), Duration::from_secs(10));
        let rpc = RpcClient::new(RpcConfig {
            connect_timeout: Duration::from_secs(1),
            request_timeout: deadline,
            transport: shared.transport.clone(),
            ..RpcConfig::default()
        });
        let mut meta = MetaClient::new(rpc, config.meta.clone()).with_deadline(deadline);
        meta.attempt_timeout = deadline;
        MetaLink {
            meta,
            advertise,
            zone: config.zone.clone(),
            interval,
            data_dir: config.data_dir.clone(),
            previous,
            token,
            last_stats: StoreStats { capacity: 0, used: shared.store.used(), blocks: shared.store.block_count() },
            shared,
            disk,
            report_every: config.block_report_interval.0,
            next_report: None,
        }
    }

    /// Registers, then heartbeats every interval, until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut node: Option<NodeId> = None;
        let mut to_ack: Vec<BlockId> = Vec::new();
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0u32;
        loop {
            let interval = self.shared.tunables().heartbeat_interval.0;
            if interval != self.interval {
                info!(from = ?self.interval, to = ?interval, "heartbeat interval changed");
                self.interval = interval;
            }
            let shared = self.shared.clone();
            let ops = &shared.ops;
            let wait = match node {
                None => match self.register().await {
                    Ok(id) => {
                        ops.registrations.inc();
                        ops.meta_connected(true);
                        node = Some(id);
                        self.next_report = Some(tokio::time::Instant::now());
                        failures = 0;
                        backoff = Duration::from_millis(100);
                        Duration::ZERO
                    }
                    Err(e) => {
                        ops.meta_connected(false);
                        failures += 1;
                        if failures % 10 == 1 {
                            warn!(error = %e, attempts = failures, meta = ?self.meta.leader_addr(),
                                "cannot register with the metadata service; serving blocks meanwhile and retrying");
                        }
                        let b = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        b
                    }
                },
                Some(id) => match self.heartbeat(id, &to_ack).await {
                    Ok(delete) => {
                        ops.heartbeats_sent.inc();
                        ops.meta_connected(true);
                        if failures > 0 {
                            info!(node = %id, "heartbeats reach the metadata service again");
                        }
                        failures = 0;
                        to_ack.clear();
                        if !delete.is_empty() {
                            to_ack = self.delete(delete).await;
                        }
                        if self.next_report.is_some_and(|t| t <= tokio::time::Instant::now()) {
                            match self.block_report(id).await {
                                Ok(n) => {
                                    info!(node = %id, blocks = n, "block report sent");
                                    self.next_report = Some(tokio::time::Instant::now() + self.report_every);
                                }
                                Err(e) => warn!(node = %id, error = %e, "block report failed; will retry"),
                            }
                        }
                        self.interval
                    }
                    Err(RpcError::Remote(e)) if e.retry() == Retry::Never => {
                        ops.heartbeat_failures.inc();
                        ops.meta_connected(false);
                        warn!(node = %id, error = %e, "metadata service refused the heartbeat; registering again");
                        node = None;
                        Duration::ZERO
                    }
                    Err(e) => {
                        ops.heartbeat_failures.inc();
                        ops.meta_connected(false);
                        failures += 1;
                        if failures % 10 == 1 {
                            warn!(node = %id, error = %e, missed = failures, "heartbeat failed");
                        }
                        self.interval
                    }
                },
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // The node is stopping (requests drained, so nothing more is acknowledged): tell
        // the metadata service, so it places no new writes here.
        if let Some(id) = node {
            let req = MetaRequest::Deregister { node: id };
            match tokio::time::timeout(Duration::from_secs(2), self.meta.call(&req)).await {
                Ok(Ok(_)) => info!(node = %id, "deregistered from the metadata service"),
                Ok(Err(e)) => warn!(node = %id, error = %e, "cannot deregister; the metadata service will notice"),
                Err(_) => warn!(node = %id, "deregistration timed out; the metadata service will notice"),
            }
        }
    }

    async fn stats(&mut self) -> StoreStats {
        match self.shared.store.stats().await {
            Ok(s) => self.last_stats = s,
            Err(e) => {
                warn!(error = %e, "cannot read file-system usage; reporting the last known capacity");
                self.last_stats.used = self.shared.store.used();
                self.last_stats.blocks = self.shared.store.block_count();
            }
        }
        self.last_stats
    }

    async fn register(&mut self) -> Result<NodeId, String> {
        let st = self.stats().await;
        let req = MetaRequest::RegisterNode {
            node: self.previous,
            token: Some(self.token),
            addr: self.advertise.clone(),
            zone: self.zone.clone(),
            capacity: st.capacity,
            used: st.used,
            blocks: st.blocks,
        };
        let id = match self.meta.call(&req).await {
            Ok(MetaResponse::Registered { node }) => node,
            Ok(other) => return Err(format!("unexpected answer to RegisterNode: {other:?}")),
            Err(e) => return Err(e.to_string()),
        };
        if self.previous != Some(id) {
            if let Some(old) = self.previous {
                warn!(old = %old, new = %id, "metadata service issued a different node id");
            }
            let (disk, dir) = (self.disk.clone(), self.data_dir.clone());
            tokio::task::spawn_blocking(move || node_id::store(&*disk, &dir, id))
                .await
                .map_err(|e| StorageError::Internal(format!("persist task failed: {e}")))
                .and_then(|r| r)
                .map_err(|e| {
                    error!(node = %id, error = %e, "cannot persist the node id; will register again");
                    e.to_string()
                })?;
            self.previous = Some(id);
        }
        self.shared.known_id.store(id.0, Ordering::Relaxed);
        self.shared.registered.send_replace(Some(id));
        info!(node = %id, addr = %self.advertise, blocks = st.blocks, used = st.used,
            capacity = st.capacity, "registered with the metadata service");
        Ok(id)
    }

    async fn heartbeat(&mut self, node: NodeId, deleted: &[BlockId]) -> Result<Vec<BlockId>, RpcError> {
        let st = self.stats().await;
        let req = MetaRequest::Heartbeat {
            node,
            capacity: st.capacity,
            used: st.used,
            blocks: st.blocks,
            load: self.shared.in_flight.load(Ordering::Relaxed),
            deleted: deleted.to_vec(),
        };
        match self.meta.call(&req).await? {
            MetaResponse::HeartbeatAck { delete } => Ok(delete),
            other => Err(RpcError::Unexpected {
                addr: self.meta.leader_addr().unwrap_or_default(),
                what: format!("{other:?} in answer to Heartbeat"),
            }),
        }
    }

    /// Sends the full block list in pages; returns how many blocks it listed.
    async fn block_report(&self, node: NodeId) -> Result<usize, String> {
        let ids = self.shared.store.list_blocks().await.map_err(|e| e.to_string())?;
        let pages: Vec<&[BlockId]> = if ids.is_empty() { vec![&[]] } else { ids.chunks(REPORT_PAGE).collect() };
        let n = pages.len();
        for (i, page) in pages.into_iter().enumerate() {
            let req = MetaRequest::BlockReport { node, blocks: page.to_vec(), first: i == 0, last: i + 1 == n };
            self.meta.call(&req).await.map_err(|e| e.to_string())?;
        }
        Ok(ids.len())
    }

    /// Deletes what the metadata service asked for; returns the blocks now gone (deleted
    /// or already missing). Blocks that failed to delete are not acknowledged, so the
    /// metadata service asks again.
    async fn delete(&self, blocks: Vec<BlockId>) -> Vec<BlockId> {
        let mut gone = Vec::with_capacity(blocks.len());
        for b in blocks {
            if delete_all(&self.shared.store, &[b]).await.is_ok() {
                gone.push(b);
            }
        }
        debug!(count = gone.len(), "garbage-collected blocks");
        gone
    }
}
