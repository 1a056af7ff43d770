//! `MetaConfig`: the metadata server's TOML configuration, its defaults and `validate()`.
//! Every key is documented in `meta.example.toml`, which a test keeps equal to the defaults.

use crate::error::MetaError;
use distfs_types::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Configuration of one metadata server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetaConfig {
    /// Raft node id of this server; unique in the metadata cluster.
    pub id: u64,
    /// Address to listen on for clients, storage nodes and Raft peers.
    pub listen: String,
    /// Address given to others (leader hints, Raft membership); default: the bound address.
    pub advertise: Option<String>,
    /// Directory holding the Raft log and the state machine.
    pub data_dir: PathBuf,
    /// Page cache of the state database (redb), bytes: most of the server's memory.
    /// Pages beyond it are read from disk (and the OS page cache).
    pub cache_size: ByteSize,
    /// Replication factor R (fixed when the file system is formatted).
    pub replication: u32,
    /// Chunk size (fixed when the file system is formatted).
    pub chunk_size: ByteSize,
    /// Maximum block size (fixed when the file system is formatted).
    pub block_size: ByteSize,
    /// A storage node silent this long is Suspect (no new writes).
    pub suspect_after: HumanDuration,
    /// A storage node silent this long is Dead.
    pub dead_after: HumanDuration,
    /// Members of a new metadata cluster, as `"ID@HOST:PORT"`, this server included. On
    /// the first start the member with the lowest id initializes the cluster with all of
    /// them. Empty: this server alone forms a single-member cluster.
    pub initial_members: Vec<String>,
    /// Never initialize a cluster: wait to be added with `distfs meta add`.
    pub join: bool,
    /// A storage node whose connection to the leader closed is Suspect at once, and Dead
    /// this long after (unless it heartbeats again); never later than `dead_after`.
    pub dead_after_disconnect: HumanDuration,
    /// HTTP endpoints (`/metrics`, `/health`, `/ready`, the dashboard at `/`); unset:
    /// the `listen` host with the port + 80 (port 0 stays 0); empty: off.
    pub http_addr: Option<String>,
    /// Log filter in `RUST_LOG` syntax (e.g. `"info,distfs_meta::repair=debug"`); when
    /// unset, `RUST_LOG` or `info`. Reloadable.
    pub log_level: Option<String>,
    pub raft: RaftConfig,
    pub repair: RepairConfig,
    /// TLS of every connection (required: `mode = "on"` or `"off"`).
    pub tls: distfs_proto::TlsSettings,
    /// Compression of frame bodies, negotiated per connection.
    pub compression: distfs_proto::CompressionSettings,
}

/// The leader's repair worker and rebalancer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepairConfig {
    /// Re-replicate, trim and finish drains automatically.
    pub enabled: bool,
    /// Block copies in flight at once (cluster-wide).
    pub concurrency: usize,
    /// Repair traffic cap, bytes per second (cluster-wide).
    pub bandwidth: ByteSize,
    /// How often the worker looks at the cluster.
    pub scan_interval: HumanDuration,
    /// Move blocks towards the ring's placement (after a join) when nothing else is to do.
    pub rebalance: bool,
    /// Rebalance copies in flight at once.
    pub rebalance_concurrency: usize,
    /// Rebalance traffic cap, bytes per second.
    pub rebalance_bandwidth: ByteSize,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            enabled: true,
            concurrency: 32,
            bandwidth: ByteSize(1 << 30),
            scan_interval: HumanDuration::from_millis(100),
            rebalance: true,
            rebalance_concurrency: 4,
            rebalance_bandwidth: ByteSize(64 << 20),
        }
    }
}

/// Raft timing and log compaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    pub heartbeat_interval: HumanDuration,
    pub election_timeout_min: HumanDuration,
    pub election_timeout_max: HumanDuration,
    /// Build a state-machine snapshot (and purge the log) after this many entries.
    pub snapshot_after_logs: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_interval: HumanDuration::from_millis(150),
            election_timeout_min: HumanDuration::from_millis(600),
            election_timeout_max: HumanDuration::from_millis(1200),
            snapshot_after_logs: 10_000,
        }
    }
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            id: 1,
            listen: "127.0.0.1:7400".into(),
            advertise: None,
            data_dir: PathBuf::from("./distfs-meta"),
            cache_size: ByteSize(256 << 20),
            replication: 3,
            chunk_size: ByteSize(64 << 20),
            block_size: ByteSize(4 << 20),
            suspect_after: HumanDuration::from_secs(2),
            dead_after: HumanDuration::from_secs(6),
            initial_members: Vec::new(),
            join: false,
            dead_after_disconnect: HumanDuration::from_millis(500),
            http_addr: None,
            log_level: None,
            raft: RaftConfig::default(),
            repair: RepairConfig::default(),
            tls: distfs_proto::TlsSettings::default(),
            compression: distfs_proto::CompressionSettings::default(),
        }
    }
}

const KIB64: u64 = 64 << 10;

impl MetaConfig {
    /// Parses a TOML document; unknown keys are errors.
    pub fn from_toml_str(s: &str) -> Result<MetaConfig, MetaError> {
        toml::from_str(s).map_err(|e| MetaError::Config { key: "toml".into(), reason: e.to_string() })
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<MetaConfig, MetaError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| MetaError::Config {
            key: path.display().to_string(),
            reason: format!("cannot read config file: {e}"),
        })?;
        Self::from_toml_str(&text)
    }

    /// `initial_members` parsed into (id, address) pairs.
    pub fn parse_initial_members(&self) -> Result<Vec<(u64, String)>, MetaError> {
        let mut out: Vec<(u64, String)> = Vec::new();
        for m in &self.initial_members {
            let bad = |reason: String| MetaError::Config { key: "initial_members".into(), reason };
            let (id, addr) = m.split_once('@').ok_or_else(|| bad(format!("`{m}` is not ID@HOST:PORT")))?;
            let id: u64 = id.trim().parse().map_err(|_| bad(format!("`{id}` in `{m}` is not a server id")))?;
            if id == 0 || !addr.contains(':') {
                return Err(bad(format!("`{m}` is not ID@HOST:PORT with an id of at least 1")));
            }
            if out.iter().any(|(i, _)| *i == id) {
                return Err(bad(format!("id {id} is listed twice")));
            }
            out.push((id, addr.trim().to_string()));
        }
        if !out.is_empty() && !out.iter().any(|(i, _)| *i == self.id) {
            return Err(MetaError::Config {
                key: "initial_members".into(),
                reason: format!("must list this server (id {}) too", self.id),
            });
        }
        Ok(out)
    }

    /// Checks every key; the first bad one is reported with the reason.
    pub fn validate(&self) -> Result<(), MetaError> {
        self.parse_initial_members()?;
        if self.join && !self.initial_members.is_empty() {
            return Err(MetaError::Config {
                key: "join".into(),
                reason: "a joining server waits to be added; it takes no initial_members".into(),
            });
        }
        let bad = |key: &str, reason: String| Err(MetaError::Config { key: key.into(), reason });
        if self.id == 0 {
            return bad("id", "must be at least 1".into());
        }
        if self.cache_size.0 < (1 << 20) {
            return bad("cache_size", format!("must be at least 1MiB, got {}", self.cache_size));
        }
        if self.listen.trim().is_empty() {
            return bad("listen", "must be an address such as \"127.0.0.1:7400\"".into());
        }
        if let Some(a) = &self.advertise {
            if a.trim().is_empty() || !a.contains(':') {
                return bad("advertise", format!("`{a}` is not a host:port address"));
            }
        }
        if let Err((key, reason)) = distfs_ops::validate_keys(self.http_addr.as_deref(), self.log_level.as_deref()) {
            return bad(key, reason);
        }
        if !(1..=7).contains(&self.replication) {
            return bad("replication", format!("must be between 1 and 7, got {}", self.replication));
        }
        let (bs, cs) = (self.block_size.0, self.chunk_size.0);
        if !(KIB64..=16 << 20).contains(&bs) || !bs.is_multiple_of(KIB64) {
            return bad(
                "block_size",
                format!("must be a multiple of 64KiB between 64KiB and 16MiB, got {}", self.block_size),
            );
        }
        if cs == 0 || !cs.is_multiple_of(bs) {
            return bad(
                "chunk_size",
                format!("must be a non-zero multiple of block_size ({}), got {}", self.block_size, self.chunk_size),
            );
        }
        if cs > 1 << 30 {
            return bad("chunk_size", format!("must be at most 1GiB, got {}", self.chunk_size));
        }
        if self.suspect_after.0.is_zero() {
            return bad("suspect_after", "must be more than 0".into());
        }
        if self.suspect_after >= self.dead_after {
            return bad(
                "dead_after",
                format!("must be longer than suspect_after ({}), got {}", self.suspect_after, self.dead_after),
            );
        }
        let rp = &self.repair;
        if !(1..=1024).contains(&rp.concurrency) {
            return bad("repair.concurrency", format!("must be 1..=1024, got {}", rp.concurrency));
        }
        if !(1..=1024).contains(&rp.rebalance_concurrency) {
            return bad("repair.rebalance_concurrency", format!("must be 1..=1024, got {}", rp.rebalance_concurrency));
        }
        if rp.bandwidth.0 < 1 << 20 {
            return bad("repair.bandwidth", format!("must be at least 1MiB (per second), got {}", rp.bandwidth));
        }
        if rp.rebalance_bandwidth.0 < 1 << 20 {
            return bad(
                "repair.rebalance_bandwidth",
                format!("must be at least 1MiB (per second), got {}", rp.rebalance_bandwidth),
            );
        }
        if rp.scan_interval.0 < std::time::Duration::from_millis(10) {
            return bad("repair.scan_interval", format!("must be at least 10ms, got {}", rp.scan_interval));
        }
        let r = &self.raft;
        if r.heartbeat_interval.0.is_zero() {
            return bad("raft.heartbeat_interval", "must be more than 0".into());
        }
        if r.election_timeout_min <= r.heartbeat_interval {
            return bad("raft.election_timeout_min", "must be longer than raft.heartbeat_interval".into());
        }
        if r.election_timeout_max <= r.election_timeout_min {
            return bad("raft.election_timeout_max", "must be longer than raft.election_timeout_min".into());
        }
        if r.snapshot_after_logs == 0 {
            return bad("raft.snapshot_after_logs", "must be at least 1".into());
        }
        if let Err((key, reason)) = self.tls.validate() {
            return bad(key, reason);
        }
        Ok(())
    }

    /// Takes the keys that can change while running (SIGHUP) from `new`; returns the
    /// names of those that changed, and of the other keys that differ (they take effect
    /// only after a restart).
    pub fn apply_reloadable(&mut self, new: &MetaConfig) -> (Vec<&'static str>, Vec<&'static str>) {
        let mut changed = Vec::new();
        macro_rules! take {
            ($($f:ident).+, $name:literal) => {
                if self.$($f).+ != new.$($f).+ {
                    self.$($f).+ = new.$($f).+.clone();
                    changed.push($name);
                }
            };
        }
        take!(log_level, "log_level");
        take!(suspect_after, "suspect_after");
        take!(dead_after, "dead_after");
        take!(dead_after_disconnect, "dead_after_disconnect");
        take!(repair.concurrency, "repair.concurrency");
        take!(repair.bandwidth, "repair.bandwidth");
        take!(repair.rebalance, "repair.rebalance");
        take!(repair.rebalance_concurrency, "repair.rebalance_concurrency");
        take!(repair.rebalance_bandwidth, "repair.rebalance_bandwidth");
        let mut fixed = Vec::new();
        macro_rules! fixed {
            ($($f:ident).+, $name:literal) => {
                if self.$($f).+ != new.$($f).+ {
                    fixed.push($name);
                }
            };
        }
        fixed!(id, "id");
        fixed!(listen, "listen");
        fixed!(advertise, "advertise");
        fixed!(data_dir, "data_dir");
        fixed!(cache_size, "cache_size");
        fixed!(replication, "replication");
        fixed!(chunk_size, "chunk_size");
        fixed!(block_size, "block_size");
        fixed!(initial_members, "initial_members");
        fixed!(join, "join");
        fixed!(http_addr, "http_addr");
        fixed!(raft, "raft");
        fixed!(tls, "tls");
        fixed!(compression, "compression");
        fixed!(repair.enabled, "repair.enabled");
        fixed!(repair.scan_interval, "repair.scan_interval");
        (changed, fixed)
    }

    /// The openraft configuration derived from `raft`.
    pub fn openraft_config(&self) -> Result<openraft::Config, MetaError> {
        let ms = |d: HumanDuration| d.0.as_millis() as u64;
        let c = openraft::Config {
            cluster_name: "distfs-meta".into(),
            heartbeat_interval: ms(self.raft.heartbeat_interval),
            election_timeout_min: ms(self.raft.election_timeout_min),
            election_timeout_max: ms(self.raft.election_timeout_max),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.raft.snapshot_after_logs),
            // Keep a tail of the log after a snapshot so a briefly lagging member catches up
            // from the log; one further behind gets the snapshot.
            max_in_snapshot_log_to_keep: (self.raft.snapshot_after_logs / 10).min(1000),
            // A chunk travels in a frame's typed header, which frames limit to 1 MiB
            // (openraft's default of 3 MiB made a snapshot over 1 MiB uninstallable).
            snapshot_max_chunk_size: crate::raft::network::append_budget() as u64,
            ..Default::default()
        };
        c.validate().map_err(|e| MetaError::Config { key: "raft".into(), reason: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_equals_defaults() {
        let text = include_str!("../meta.example.toml");
        let mut parsed = MetaConfig::from_toml_str(text).expect("example parses");
        assert_eq!(parsed, MetaConfig::default());
        // tls.mode has no default: the example shows both choices commented out.
        assert!(matches!(parsed.validate(), Err(MetaError::Config { key, .. }) if key == "tls.mode"));
        parsed.tls = distfs_proto::TlsSettings::off();
        parsed.validate().expect("defaults with tls.mode = off are valid");
        let on = MetaConfig::from_toml_str("[tls]\nmode = \"on\"\nca = \"ca.pem\"").unwrap();
        assert!(matches!(on.validate(), Err(MetaError::Config { key, .. }) if key == "tls.cert"));
    }

    #[test]
    fn bad_keys_are_named() {
        let cases = [
            ("block_size = \"3MiB\"\nchunk_size = \"64MiB\"", "chunk_size"),
            ("block_size = \"100KiB\"", "block_size"),
            ("block_size = \"32MiB\"", "block_size"),
            ("replication = 0", "replication"),
            ("replication = 8", "replication"),
            ("suspect_after = \"6s\"\ndead_after = \"2s\"", "dead_after"),
            ("http_addr = \"nowhere\"", "http_addr"),
            ("log_level = \"info,distfs_meta=loud\"", "log_level"),
        ];
        for (toml, key) in cases {
            let c = MetaConfig::from_toml_str(toml).expect("parses");
            match c.validate() {
                Err(MetaError::Config { key: k, .. }) => assert_eq!(k, key, "{toml}"),
                other => panic!("{toml}: expected error on {key}, got {other:?}"),
            }
        }
        assert!(MetaConfig::from_toml_str("no_such_key = 1").is_err());
        assert!(MetaConfig::from_toml_str("[raft]\nbogus = 1").is_err());
    }

    #[test]
    fn reload_takes_only_reloadable_keys() {
        let mut run = MetaConfig::default();
        let new = MetaConfig::from_toml_str(
            "suspect_after = \"3s\"\nlisten = \"127.0.0.1:9\"\n[repair]\nbandwidth = \"10MiB\"",
        )
        .expect("parses");
        let (changed, fixed) = run.apply_reloadable(&new);
        assert_eq!(changed, ["suspect_after", "repair.bandwidth"]);
        assert_eq!(fixed, ["listen"]);
        assert_eq!(run.suspect_after, HumanDuration::from_secs(3));
        assert_eq!(run.listen, MetaConfig::default().listen);
    }
}
