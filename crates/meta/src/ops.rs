//! Operations side of the metadata server: request metrics, the `Probe` behind its HTTP
//! endpoints (metrics computed from the state when scraped, readiness, the dashboard's
//! JSON), and the in-flight count that a graceful shutdown waits on.

use crate::service::Service;
use distfs_ops::{Counter, Encoder, OpStats, Probe, ReloadCounters};
use distfs_proto::ClusterStatus;
use distfs_types::{AdminState, NodeState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters of the metadata server (state-derived values are computed when scraped).
#[derive(Default)]
pub(crate) struct MetaMetrics {
    pub ops: OpStats,
    pub heartbeats: Counter,
    pub registrations: Counter,
    pub reloads: ReloadCounters,
    in_flight: AtomicU64,
    idle: tokio::sync::Notify,
    /// Set when a shutdown began: `/ready` answers 503 from then on.
    pub shutting_down: AtomicBool,
}

/// Counts one client request as in flight while it lives.
pub(crate) struct InFlight<'a>(&'a MetaMetrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl MetaMetrics {
    pub fn begin(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Waits until no client request is in flight, at most `limit`; returns how many
    /// were still running then.
    pub async fn drained(&self, limit: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.idle.notified();
            let n = self.in_flight();
            if n == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.in_flight();
            }
        }
    }
}

/// The metadata server's answers to `/metrics`, `/ready` and `/api/status`.
pub(crate) struct MetaProbe(pub Arc<Service>, std::sync::Mutex<Option<(Instant, ClusterStatus)>>);

/// How long a computed cluster status serves dashboard refreshes (it scans the block
/// map: many open dashboards cost one scan per this period). Scrapes compute it fresh.
const STATUS_TTL: Duration = Duration::from_millis(500);

impl MetaProbe {
    pub fn new(service: Arc<Service>) -> MetaProbe {
        MetaProbe(service, std::sync::Mutex::new(None))
    }

    fn is_leader(&self) -> bool {
        self.0.is_leader()
    }

    /// The leader's cluster status, at most `STATUS_TTL` old.
    fn status_cached(&self) -> distfs_types::FsResult<ClusterStatus> {
        let mut cache = self.1.lock().expect("status cache lock");
        if let Some((at, s)) = cache.as_ref() {
            if at.elapsed() < STATUS_TTL {
                return Ok(s.clone());
            }
        }
        let s = self.0.status()?;
        *cache = Some((Instant::now(), s.clone()));
        Ok(s)
    }
}

fn node_state_name(s: NodeState) -> &'static str {
    match s {
        NodeState::Up => "up",
        NodeState::Suspect => "suspect",
        NodeState::Dead => "dead",
    }
}

fn admin_name(a: AdminState) -> &'static str {
    match a {
        AdminState::Normal => "normal",
        AdminState::Draining => "draining",
        AdminState::Drained => "drained",
        AdminState::Maintenance { .. } => "maintenance",
    }
}

impl Probe for MetaProbe {
    fn metrics(&self, enc: &mut Encoder) {
        let s = &self.0;
        let m = &s.ops;
        m.ops.encode(enc, "distfs_meta");
        enc.gauge("distfs_meta_requests_in_flight", "Client requests being handled now.", m.in_flight() as f64);
        enc.counter("distfs_meta_heartbeats_received_total", "Storage-node heartbeats answered.", m.heartbeats.get());
        enc.counter("distfs_meta_registrations_total", "Storage-node registrations answered.", m.registrations.get());
        m.reloads.encode(enc, "distfs_meta");
        let cfg = s.tunables();
        let (suspect_after, dead_after) = s.liveness_timings();
        enc.gauge(
            "distfs_meta_config_suspect_after_seconds",
            "suspect_after in force (as the liveness table applies it).",
            suspect_after.as_secs_f64(),
        );
        enc.gauge(
            "distfs_meta_config_dead_after_seconds",
            "dead_after in force (as the liveness table applies it).",
            dead_after.as_secs_f64(),
        );
        enc.gauge(
            "distfs_meta_config_repair_bandwidth_bytes",
            "repair.bandwidth in force (bytes per second).",
            cfg.repair.bandwidth.0 as f64,
        );
        enc.gauge(
            "distfs_meta_config_repair_concurrency",
            "repair.concurrency in force.",
            cfg.repair.concurrency as f64,
        );

        let rm = s.raft.metrics().borrow().clone();
        enc.gauge("distfs_meta_raft_term", "Current Raft term.", rm.current_term as f64);
        enc.gauge("distfs_meta_raft_last_log_index", "Last Raft log index.", rm.last_log_index.unwrap_or(0) as f64);
        enc.gauge(
            "distfs_meta_raft_last_applied_index",
            "Last Raft log index applied to the state machine.",
            rm.last_applied.map(|l| l.index).unwrap_or(0) as f64,
        );
        enc.gauge(
            "distfs_meta_raft_snapshot_index",
            "Log index of the last snapshot.",
            rm.snapshot.map(|l| l.index).unwrap_or(0) as f64,
        );
        enc.gauge(
            "distfs_meta_raft_leader",
            "Id of the known leader (0: none).",
            rm.current_leader.unwrap_or(0) as f64,
        );
        enc.gauge(
            "distfs_meta_raft_is_leader",
            "1 when this server leads.",
            if rm.current_leader == Some(s.id) { 1.0 } else { 0.0 },
        );
        enc.gauge("distfs_meta_server_id", "Raft id of this server.", s.id as f64);
        if let Some(ms) = rm.millis_since_quorum_ack {
            enc.gauge(
                "distfs_meta_raft_quorum_ack_age_seconds",
                "Leader only: time since a quorum last acknowledged it.",
                ms as f64 / 1000.0,
            );
        }

        // Cluster state: only the leader knows liveness, so only it reports it.
        if rm.current_leader != Some(s.id) {
            return;
        }
        let Ok(c) = s.status() else { return };
        enc.family("distfs_meta_storage_nodes", "gauge", "Storage nodes by liveness state.");
        for st in [NodeState::Up, NodeState::Suspect, NodeState::Dead] {
            let n = c.nodes.iter().filter(|x| x.state == st).count();
            enc.sample("distfs_meta_storage_nodes", &[("state", node_state_name(st))], n as f64);
        }
        enc.family("distfs_meta_storage_nodes_admin", "gauge", "Storage nodes by operator state.");
        for a in ["normal", "draining", "drained", "maintenance"] {
            let n = c.nodes.iter().filter(|x| admin_name(x.admin) == a).count();
            enc.sample("distfs_meta_storage_nodes_admin", &[("state", a)], n as f64);
        }
        let ids: Vec<String> = c.nodes.iter().map(|n| n.id.0.to_string()).collect();
        enc.family("distfs_meta_node_up", "gauge", "1 when the storage node is up.");
        for (n, id) in c.nodes.iter().zip(&ids) {
            let v = if n.state == NodeState::Up { 1.0 } else { 0.0 };
            enc.sample("distfs_meta_node_up", &[("node", id), ("zone", &n.zone)], v);
        }
        enc.family("distfs_meta_node_capacity_bytes", "gauge", "Capacity the storage node reports.");
        for (n, id) in c.nodes.iter().zip(&ids) {
            enc.sample("distfs_meta_node_capacity_bytes", &[("node", id)], n.capacity as f64);
        }
        enc.family("distfs_meta_node_used_bytes", "gauge", "Bytes the storage node reports used.");
        for (n, id) in c.nodes.iter().zip(&ids) {
            enc.sample("distfs_meta_node_used_bytes", &[("node", id)], n.used as f64);
        }
        enc.family("distfs_meta_node_blocks", "gauge", "Blocks the storage node reports stored.");
        for (n, id) in c.nodes.iter().zip(&ids) {
            enc.sample("distfs_meta_node_blocks", &[("node", id)], n.blocks as f64);
        }
        enc.gauge("distfs_meta_files", "Regular files.", c.files as f64);
        enc.gauge("distfs_meta_directories", "Directories.", c.directories as f64);
        enc.gauge("distfs_meta_blocks", "Blocks referenced by files.", c.blocks as f64);
        enc.gauge("distfs_meta_logical_bytes", "Bytes referenced by files (one copy).", c.logical_bytes as f64);
        enc.gauge(
            "distfs_meta_under_replicated_blocks",
            "Blocks with fewer live copies than R.",
            c.under_replicated as f64,
        );
        enc.gauge("distfs_meta_missing_blocks", "Blocks with no live copy.", c.missing as f64);
        enc.gauge("distfs_meta_gc_pending_blocks", "Blocks waiting for deletion.", c.gc_pending as f64);
        enc.gauge("distfs_meta_bad_replicas", "Bad replicas reported (bounded list).", c.bad_replicas.len() as f64);
        let p = &c.repair;
        enc.gauge("distfs_meta_repair_queued_blocks", "Repair copies planned, not done.", p.queued_blocks as f64);
        enc.gauge("distfs_meta_repair_queued_bytes", "Bytes of the planned repair copies.", p.queued_bytes as f64);
        enc.gauge("distfs_meta_repair_in_flight", "Repair copies running.", p.in_flight as f64);
        enc.counter("distfs_meta_repair_done_blocks_total", "Copies made since this leader took over.", p.done_blocks);
        enc.counter("distfs_meta_repair_done_bytes_total", "Bytes copied since this leader took over.", p.done_bytes);
        enc.counter("distfs_meta_repair_failed_total", "Repair copies that failed.", p.failed);
        enc.counter("distfs_meta_repair_trimmed_total", "Copies above R trimmed.", p.trimmed);
        enc.counter("distfs_meta_repair_rebalanced_total", "Copies moved by the rebalancer.", p.rebalanced);
        enc.gauge("distfs_meta_repair_rate_bytes", "Repair throughput, bytes per second.", p.rate_bytes_per_sec as f64);
    }

    fn ready(&self) -> Result<(), String> {
        let s = &self.0;
        if s.ops.shutting_down.load(Ordering::Acquire) {
            return Err("shutting down".into());
        }
        let m = s.raft.metrics().borrow().clone();
        if m.current_leader.is_none() {
            return Err("no metadata leader is known (no quorum?)".into());
        }
        // A leader cut off from its quorum cannot commit: not ready either.
        let voters = m.membership_config.membership().voter_ids().count();
        let limit = 3 * s.config.raft.election_timeout_max.0.as_millis() as u64;
        if m.current_leader == Some(s.id) && voters > 1 {
            match m.millis_since_quorum_ack {
                Some(ms) if ms <= limit => {}
                Some(ms) => return Err(format!("leader without a quorum: no acknowledgement for {ms} ms")),
                None => return Err("leader not yet acknowledged by a quorum".into()),
            }
        }
        match s.store.read().and_then(|r| crate::state::Reader::format(&r)) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("the file system is not formatted yet".into()),
            Err(e) => Err(format!("cannot read the state: {e}")),
        }
    }

    fn state_digest(&self) -> Option<Result<serde_json::Value, String>> {
        // One read transaction: the blob and the applied index it reflects belong together.
        Some(self.0.store.dump().map_err(|e| e.to_string()).map(|(blob, last, _)| {
            serde_json::json!({
                "server": self.0.id,
                "applied_index": last.map(|l| l.index).unwrap_or(0),
                "applied_term": last.map(|l| l.leader_id.term).unwrap_or(0),
                "bytes": blob.len(),
                "crc32c": format!("{:08x}", crc32c::crc32c(&blob)),
            })
        }))
    }

    fn status(&self) -> Option<Result<serde_json::Value, String>> {
        if !self.is_leader() {
            let leader = self.0.raft.metrics().borrow().current_leader;
            return Some(Err(match leader {
                Some(l) => format!("server {} is a follower; open the dashboard of the leader (server {l})", self.0.id),
                None => "no metadata leader is known".into(),
            }));
        }
        Some(self.status_cached().map_err(|e| e.to_string()).and_then(|c| {
            let cluster = serde_json::to_value(&c).map_err(|e| e.to_string())?;
            Ok(serde_json::json!({
                "server": self.0.id,
                "cluster": cluster,
                "requests_total": self.0.ops.ops.total(),
            }))
        }))
    }
}
