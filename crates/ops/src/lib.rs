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
