//! Operations plumbing shared by the metadata server and the storage node: metrics in the
//! Prometheus text format (`metrics`), the HTTP endpoints `/metrics`, `/health`, `/ready`
//! and the dashboard (`http`), logging with a reloadable filter, JSON output and file
//! rotation (`logging`), and a tiny HTTP GET for tests and tools (`client`).

pub mod client;
pub mod error;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod reload;

pub use error::OpsError;
pub use http::Probe;
pub use metrics::{Counter, Encoder, Histogram, OpStats};
pub use reload::{ReloadCounters, Reloaded};

/// Checks the operations keys every server config has: `http_addr` (IP:PORT, or empty
/// for no endpoint) and `log_level` (a `RUST_LOG`-style filter). Returns the bad key
/// and why.
pub fn validate_keys(http_addr: Option<&str>, log_level: Option<&str>) -> Result<(), (&'static str, String)> {
    if let Some(a) = http_addr.filter(|a| !a.is_empty()) {
        if a.parse::<std::net::SocketAddr>().is_err() {
            return Err(("http_addr", format!("`{a}` is not IP:PORT (or \"\" for no HTTP endpoint)")));
        }
    }
    if let Some(l) = log_level {
        logging::parse_filter(l).map_err(|e| ("log_level", e.to_string()))?;
    }
    Ok(())
}
