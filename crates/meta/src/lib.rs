//! The DistFS metadata service (DESIGN §6): namespace and block map as a Raft-replicated
//! state machine over redb, placement on a consistent-hash ring, storage-node liveness,
//! and the `Kind::Meta` / `Kind::Raft` request handlers behind `MetaServer`.

mod authz;
mod batch;
pub mod config;
pub mod error;
pub mod lease;
pub mod placement;

pub use config::{MetaConfig, RaftConfig, RepairConfig};
pub use error::MetaError;
pub mod liveness;
pub mod locks;
mod membership;
pub mod opens;
mod ops;
pub mod raft;
pub mod repair;
pub mod server;
mod service;
mod service_dedup;
mod service_heal;
mod service_snapshots;
mod sessions;
pub mod state;

pub use liveness::{Clock, TokioClock};
pub use server::MetaServer;
