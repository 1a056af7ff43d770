//! The scrubber: a named, cancellable task that re-reads every block at a bounded rate
//! and verifies every checksum. A corrupt copy is quarantined by the verified read itself
//! and reported to the metadata service (`ReportBadReplica`), which drops it from the
//! replica list and has the repair worker re-create it from a good copy.

use crate::config::StorageConfig;
use crate::error::StorageError;
use crate::server::Shared;
use distfs_proto::{BadReplica, MetaClient, MetaRequest, RpcClient, RpcConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub(crate) struct Scrubber {
    shared: Arc<Shared>,
    meta: MetaClient,
    interval: Duration,
}

impl Scrubber {
    pub fn new(config: &StorageConfig, shared: Arc<Shared>) -> Scrubber {
        let rpc = RpcClient::new(RpcConfig {
            connect_timeout: Duration::from_secs(1),
            transport: shared.transport.clone(),
            ..RpcConfig::default()
        });
        let meta = MetaClient::new(rpc, config.meta.clone()).with_deadline(Duration::from_secs(30));
        Scrubber { shared, meta, interval: config.scrub_interval.0 }
    }

    pub async fn run(self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            if let Err(e) = self.pass(&cancel).await {
                warn!(error = %e, "scrub pass failed; trying again after the interval");
            }
        }
    }

    /// One pass over every block.
    async fn pass(&self, cancel: &CancellationToken) -> Result<(), StorageError> {
        let started = Instant::now();
        let ids = self.shared.store.list_blocks().await?;
        let (mut bytes, mut bad) = (0u64, 0u64);
        for id in ids {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let t = Instant::now();
            let read = match self.shared.store.get(id, 0, u64::MAX).await {
                Ok(r) => r.data.len() as u64,
                // Deleted meanwhile (garbage collection): nothing to check.
                Err(StorageError::NotFound { .. }) => 0,
                Err(StorageError::Corrupt { kind, .. }) => {
                    bad += 1;
                    self.report(id, format!("scrubber: {kind}")).await;
                    0
                }
                Err(e) => {
                    warn!(block = %id, error = %e, "scrubber cannot read a block");
                    0
                }
            };
            bytes += read;
            // Pace: this block's bytes at the rate in force (reloadable; 0 pauses),
            // minus the time the read took.
            let mut rate = self.shared.tunables().scrub_bandwidth.0;
            while rate == 0 {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                rate = self.shared.tunables().scrub_bandwidth.0;
            }
            let budget = Duration::from_secs_f64(read as f64 / rate as f64);
            if let Some(wait) = budget.checked_sub(t.elapsed()) {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        info!(bytes, corrupt = bad, took_ms = started.elapsed().as_millis() as u64, "scrub pass done");
        Ok(())
    }

    async fn report(&self, block: distfs_types::BlockId, reason: String) {
        let node = *self.shared.registered.borrow();
        let Some(node) = node else {
            warn!(block = %block, "corrupt copy found before registration; the block report will tell");
            return;
        };
        let req = MetaRequest::ReportBadReplica { bad: BadReplica { block, node, reason } };
        match self.meta.call(&req).await {
            Ok(_) => debug!(block = %block, "corrupt copy reported"),
            Err(e) => warn!(block = %block, error = %e, "cannot report a corrupt copy"),
        }
    }
}
