//! Configuration reload (SIGHUP) bookkeeping shared by the servers.

use crate::metrics::{Counter, Encoder};

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Reloadable keys whose new values are in force now.
    pub changed: Vec<&'static str>,
    /// Keys that differ from the running configuration but only take effect after a
    /// restart (they were not applied).
    pub needs_restart: Vec<&'static str>,
}

/// Reloads applied and rejected.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    pub applied: Counter,
    pub rejected: Counter,
}

impl ReloadCounters {
    /// Writes `<prefix>_config_reloads_total{result="applied"|"rejected"}`.
    pub fn encode(&self, enc: &mut Encoder, prefix: &str) {
        let name = format!("{prefix}_config_reloads_total");
        enc.family(&name, "counter", "Configuration reloads (SIGHUP), applied or rejected as invalid.");
        enc.sample(&name, &[("result", "applied")], self.applied.get() as f64);
        enc.sample(&name, &[("result", "rejected")], self.rejected.get() as f64);
    }
}
