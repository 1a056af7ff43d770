//! An in-process metadata Raft group on loopback for HA tests: N `MetaServer`s with fixed
//! ports, each dialing its peers through a `Partitions` link filter so tests can cut and
//! heal links. Servers stop and restart on the same directories.

use crate::net::Partitions;
use crate::{free_port, wait_for};
use distfs_client::{Client, ClientConfig};
use distfs_meta::{MetaConfig, MetaServer, RaftConfig, TokioClock};
use distfs_proto::{RpcClient, RpcConfig};
use distfs_types::HumanDuration;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct MetaCluster {
    pub dir: tempfile::TempDir,
    pub parts: Partitions,
    configs: Vec<MetaConfig>,
    servers: Vec<Option<MetaServer>>,
}

/// Raft timings short enough for tests, long enough for a loaded 2-core machine.
pub fn test_raft() -> RaftConfig {
    RaftConfig {
        heartbeat_interval: HumanDuration::from_millis(100),
        election_timeout_min: HumanDuration::from_millis(500),
        election_timeout_max: HumanDuration::from_millis(1000),
        snapshot_after_logs: 10_000,
    }
}

impl MetaCluster {
    /// Starts `n` servers forming one group; `tweak` adjusts every config.
    pub async fn start(n: usize, tweak: impl Fn(&mut MetaConfig)) -> MetaCluster {
        let dir = tempfile::Builder::new().prefix("distfs-meta-ha-").tempdir().expect("temp dir");
        let addrs: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let members: Vec<String> = addrs.iter().enumerate().map(|(i, a)| format!("{}@{a}", i + 1)).collect();
        let mut configs = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let mut c = MetaConfig {
                id: i as u64 + 1,
                listen: addr.clone(),
                data_dir: dir.path().join(format!("meta-{}", i + 1)),
                initial_members: if n == 1 { Vec::new() } else { members.clone() },
                raft: test_raft(),
                // In-process servers on free ports: no HTTP endpoint (port + 80 might be taken).
                http_addr: Some(String::new()),
                tls: distfs_proto::TlsSettings::off(),
                ..MetaConfig::default()
            };
            tweak(&mut c);
            configs.push(c);
        }
        let mut mc = MetaCluster { dir, parts: Partitions::default(), configs, servers: Vec::new() };
        for i in 0..n {
            mc.servers.push(None);
            mc.restart(i).await;
        }
        mc.leader(Duration::from_secs(20)).await;
        mc
    }

    pub fn addr(&self, i: usize) -> String {
        self.configs[i].listen.clone()
    }

    /// Addresses of every server ever started here (stopped ones included).
    pub fn addrs(&self) -> Vec<String> {
        self.configs.iter().map(|c| c.listen.clone()).collect()
    }

    pub fn server(&self, i: usize) -> &MetaServer {
        self.servers[i].as_ref().expect("server is running")
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.servers[i].is_some()
    }

    /// A client that knows every server, with short deadlines.
    pub fn client(&self) -> Client {
        self.client_of(self.addrs(), Duration::from_secs(15))
    }

    pub fn client_of(&self, addrs: Vec<String>, deadline: Duration) -> Client {
        Client::new(ClientConfig {
            meta: addrs,
            meta_deadline: deadline,
            meta_attempt_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        })
    }

    /// Starts (or restarts, on the same directory and port) server `i`.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.servers[i].is_none(), "server {i} is running");
        let cfg = self.configs[i].clone();
        let rpc = RpcClient::with_connector(
            RpcConfig { connect_timeout: Duration::from_millis(500), ..RpcConfig::default() },
            self.parts.connector(&cfg.listen),
        );
        let s = MetaServer::start_with(cfg, CancellationToken::new(), Arc::new(TokioClock), rpc)
            .await
            .unwrap_or_else(|e| panic!("start metadata server {}: {e}", i + 1));
        self.servers[i] = Some(s);
    }

    /// Adds a server configured with `join = true` (not yet a member); returns its index.
    pub async fn start_joiner(&mut self) -> usize {
        let i = self.configs.len();
        let addr = format!("127.0.0.1:{}", free_port());
        let c = MetaConfig {
            id: i as u64 + 1,
            listen: addr,
            data_dir: self.dir.path().join(format!("meta-{}", i + 1)),
            join: true,
            raft: self.configs[0].raft.clone(),
            http_addr: Some(String::new()),
            tls: distfs_proto::TlsSettings::off(),
            ..MetaConfig::default()
        };
        self.configs.push(c);
        self.servers.push(None);
        self.restart(i).await;
        i
    }

    /// Stops server `i` cleanly.
    pub async fn stop(&mut self, i: usize) {
        if let Some(s) = self.servers[i].take() {
            s.shutdown().await.unwrap_or_else(|e| panic!("stop metadata server {}: {e}", i + 1));
        }
    }

    /// Index of the leader that the running servers agree on.
    pub async fn leader(&self, timeout: Duration) -> usize {
        wait_for("an agreed metadata leader", timeout, || async {
            let views: Vec<Option<u64>> = self.servers.iter().flatten().map(|s| s.metrics().current_leader).collect();
            let first = views.first().copied().flatten()?;
            let i = (first - 1) as usize;
            (views.iter().all(|v| *v == Some(first)) && self.is_running(i)).then_some(i)
        })
        .await
    }

    /// The state machine of server `i` as bytes, with its last applied index.
    pub fn state_of(&self, i: usize) -> (Vec<u8>, Option<u64>) {
        let (blob, last, _) = self.server(i).state().dump().expect("dump state");
        (blob, last.map(|l| l.index))
    }
}

impl Drop for MetaCluster {
    fn drop(&mut self) {
        // Servers stop with their runtime; nothing to kill.
        self.parts.heal();
    }
}
