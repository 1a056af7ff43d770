//! The DistFS client library. `Client` talks to the metadata service (following the
//! leader) and to storage nodes: namespace calls in `ns`, the replicated write path in
//! `write`, the verified, failing-over read path in `read`. Pure decisions (which bytes
//! live in which block, which replica to try first) are in `plan`.

pub mod admin;
pub mod dedup;
pub mod error;
pub mod ns;
pub mod plan;
pub mod read;
pub mod session;
pub mod snapshots;
pub mod write;

pub use error::{ClientError, Result};
pub use read::FileReader;
pub use write::FileWriter;

use distfs_proto::{MetaClient, MetaRequest, MetaResponse, RpcClient, RpcConfig};
use distfs_types::NodeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The address `distfs local up` listens on and clients use when none is given.
pub const DEFAULT_META_ADDR: &str = "127.0.0.1:7400";

/// How a client reaches and uses the cluster.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Every metadata server's address; the client finds the leader itself.
    pub meta: Vec<String>,
    /// How long a metadata call keeps retrying (no leader, leader change) before failing.
    pub meta_deadline: Duration,
    /// Deadline of one attempt at one metadata server (a partitioned leader never
    /// answers a write; the client moves on after this).
    pub meta_attempt_timeout: Duration,
    /// Deadline of one block transfer to or from one storage node.
    pub block_timeout: Duration,
    /// Blocks written concurrently by one writer (each to R replicas).
    pub write_parallelism: usize,
    /// Block reads in flight for one read call.
    pub read_parallelism: usize,
    /// After W replicas acknowledged a block, how long to wait for the rest.
    pub straggler_grace: Duration,
    pub connect_timeout: Duration,
    /// TLS and compression of every connection (default: plain TCP, no compression).
    pub transport: distfs_proto::ClientTransport,
    /// Writes that end at or below this file offset are kept inline in the metadata
    /// (capped at `INLINE_MAX`; 0 stores every byte in blocks).
    pub inline_max: u64,
    /// Deduplicate blocks by their BLAKE3 fingerprint (issue 10; on by default).
    pub dedup: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            meta: vec![DEFAULT_META_ADDR.to_string()],
            meta_deadline: Duration::from_secs(15),
            meta_attempt_timeout: Duration::from_secs(5),
            block_timeout: Duration::from_secs(20),
            write_parallelism: 4,
            read_parallelism: 8,
            straggler_grace: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            transport: distfs_proto::ClientTransport::default(),
            inline_max: distfs_types::INLINE_MAX,
            dedup: true,
        }
    }
}

/// A connection to one DistFS cluster. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    pub(crate) meta: MetaClient,
    pub(crate) rpc: RpcClient,
    pub(crate) config: Arc<ClientConfig>,
    /// Observed latency per storage node (EWMA, microseconds), for replica choice.
    pub(crate) latency: Arc<Mutex<HashMap<NodeId, u64>>>,
    /// Chunk size, block size and replication: fixed at format time, fetched once.
    pub(crate) geometry: Arc<tokio::sync::OnceCell<write::Geometry>>,
    /// Told the directories each namespace change touched, as they are after it.
    pub(crate) dirs_seen: Option<DirsSeen>,
}

/// What `Client::on_dirs_changed` calls.
pub type DirsSeen = Arc<dyn Fn(&[distfs_types::Attr]) + Send + Sync>;

impl Client {
    pub fn new(config: ClientConfig) -> Client {
        let rpc = RpcClient::new(RpcConfig {
            connect_timeout: config.connect_timeout,
            request_timeout: config.block_timeout,
            transport: config.transport.clone(),
            ..RpcConfig::default()
        });
        let mut meta = MetaClient::new(rpc.clone(), config.meta.clone()).with_deadline(config.meta_deadline);
        meta.attempt_timeout = config.meta_attempt_timeout;
        Client {
            meta,
            rpc,
            config: Arc::new(config),
            latency: Arc::default(),
            geometry: Arc::default(),
            dirs_seen: None,
        }
    }

    /// Calls `f` with the attributes of the directories every namespace change made
    /// through this client touched (mkdir, create, symlink, link, unlink, rmdir,
    /// rename), as the metadata service had them just after the change: a cache of
    /// attributes (the mount's) can answer for them without asking again.
    pub fn on_dirs_changed(mut self, f: impl Fn(&[distfs_types::Attr]) + Send + Sync + 'static) -> Client {
        self.dirs_seen = Some(Arc::new(f));
        self
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// One metadata call, leader-following with retries.
    pub(crate) async fn meta_call(&self, req: MetaRequest) -> Result<MetaResponse> {
        self.meta.call(&req).await.map_err(ClientError::from)
    }

    pub(crate) fn note_latency(&self, node: NodeId, micros: u64) {
        let mut l = self.latency.lock().expect("latency lock");
        let e = l.entry(node).or_insert(micros);
        *e = (*e * 7 + micros) / 8;
    }

    pub(crate) fn latency_of(&self, node: NodeId) -> Option<u64> {
        self.latency.lock().expect("latency lock").get(&node).copied()
    }
}
