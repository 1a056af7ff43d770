//! Operations side of the storage node: request and byte counters, the state of its link
//! to the metadata service, and the `Probe` behind its HTTP endpoints.

use crate::server::Shared;
use distfs_ops::{Counter, Encoder, OpStats, Probe, ReloadCounters};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Counters of the storage node (stored blocks and bytes are read when scraped).
#[derive(Debug, Default)]
pub(crate) struct StorageMetrics {
    pub ops: OpStats,
    /// Request body bytes received (block data of puts).
    pub bytes_in: Counter,
    /// Reply body bytes sent (block data of gets).
    pub bytes_out: Counter,
    /// Block bytes stored by client puts and repair copies.
    pub bytes_written: Counter,
    pub heartbeats_sent: Counter,
    pub heartbeat_failures: Counter,
    pub registrations: Counter,
    pub reloads: ReloadCounters,
    /// The last registration or heartbeat got through.
    connected: AtomicBool,
    /// Set when a shutdown began: `/ready` answers 503 from then on.
    pub shutting_down: AtomicBool,
}

impl StorageMetrics {
    pub fn meta_connected(&self, yes: bool) {
        let was = self.connected.swap(yes, Ordering::AcqRel);
        if was && !yes {
            tracing::warn!("lost the link to the metadata service; not ready until a heartbeat gets through");
        }
    }
    pub fn is_meta_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// The storage node's answers to `/metrics` and `/ready`.
pub(crate) struct StorageProbe(pub Arc<Shared>);

impl Probe for StorageProbe {
    fn metrics(&self, enc: &mut Encoder) {
        let s = &self.0;
        let m = &s.ops;
        m.ops.encode(enc, "distfs_storage");
        enc.counter("distfs_storage_bytes_in_total", "Request body bytes received (block data).", m.bytes_in.get());
        enc.counter("distfs_storage_bytes_out_total", "Reply body bytes sent (block data).", m.bytes_out.get());
        enc.counter(
            "distfs_storage_bytes_written_total",
            "Block bytes stored (client puts and repair copies).",
            m.bytes_written.get(),
        );
        enc.gauge("distfs_storage_blocks_stored", "Blocks in the store.", s.store.block_count() as f64);
        enc.gauge("distfs_storage_bytes_stored", "Bytes of the blocks in the store.", s.store.used() as f64);
        enc.gauge(
            "distfs_storage_requests_in_flight",
            "Requests being handled now.",
            s.in_flight.load(Ordering::Relaxed) as f64,
        );
        enc.counter(
            "distfs_storage_heartbeats_sent_total",
            "Heartbeats the metadata leader answered.",
            m.heartbeats_sent.get(),
        );
        enc.counter(
            "distfs_storage_heartbeat_failures_total",
            "Heartbeats that failed or were refused.",
            m.heartbeat_failures.get(),
        );
        enc.counter("distfs_storage_registrations_total", "Successful registrations.", m.registrations.get());
        enc.gauge(
            "distfs_storage_meta_connected",
            "1 when the last registration or heartbeat got through.",
            if m.is_meta_connected() { 1.0 } else { 0.0 },
        );
        enc.gauge("distfs_storage_node_id", "Id issued by the metadata service (0: none yet).", s.wire_id().0 as f64);
        m.reloads.encode(enc, "distfs_storage");
        let t = s.tunables();
        enc.gauge(
            "distfs_storage_config_heartbeat_interval_seconds",
            "heartbeat_interval in force.",
            t.heartbeat_interval.0.as_secs_f64(),
        );
        enc.gauge(
            "distfs_storage_config_scrub_bandwidth_bytes",
            "scrub_bandwidth in force (bytes per second).",
            t.scrub_bandwidth.0 as f64,
        );
    }

    fn ready(&self) -> Result<(), String> {
        let m = &self.0.ops;
        if m.shutting_down.load(Ordering::Acquire) {
            return Err("shutting down".into());
        }
        if self.0.registered.borrow().is_none() {
            return Err("not registered with the metadata service yet".into());
        }
        if !m.is_meta_connected() {
            return Err("no working link to the metadata service (heartbeats fail)".into());
        }
        Ok(())
    }
}
