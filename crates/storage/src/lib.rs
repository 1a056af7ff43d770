//! The DistFS storage node (DESIGN §5): a checksummed block store on local disk
//! (`store`), reached through a fault-injectable disk seam (`disk`), served over the
//! framed protocol with registration and heartbeats to the metadata service (`server`).

pub mod config;
pub mod copy_gate;
pub mod disk;
pub mod error;
mod meta_link;
mod node_id;
mod ops;
mod scrub;
pub mod server;
pub mod store;

pub use config::{StorageConfig, SyncPolicy};
pub use disk::{Disk, StdDisk};
pub use error::StorageError;
pub use server::StorageNode;
pub use store::{BlockRange, BlockStore, PutOutcome, ScanReport, StoreOptions, StoreStats};
