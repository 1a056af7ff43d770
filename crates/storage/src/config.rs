//! `StorageConfig`: the storage node's TOML file, its defaults and `validate()`. Every key
//! is documented in `storage.example.toml`, which a test keeps equal to the defaults.

use crate::error::StorageError;
use distfs_types::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// When a written block is forced to stable storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// fsync the file and its directory before every acknowledgement.
    #[default]
    Always,
    /// Group commit: concurrent writes are made durable together by one syncer and each is
    /// acknowledged once its batch is durable.
    Batch,
    /// Never fsync (tests only: an acknowledged block may be lost on power failure).
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Address the block service listens on (`host:port`; port 0 picks a free port).
    pub listen: String,
    /// Address announced to the metadata service; defaults to the bound address.
    pub advertise: Option<String>,
    /// Directory holding blocks, temp files, quarantine and the node id.
    pub data_dir: PathBuf,
    /// Metadata server addresses (any of them; the leader is followed).
    pub meta: Vec<String>,
    /// Failure domain label: replicas of a block prefer distinct zones.
    pub zone: String,
    /// Bytes this node offers; defaults to the size of the file system under `data_dir`.
    pub capacity: Option<ByteSize>,
    /// Free space kept back on the file system: writes fail with NoSpace before the disk
    /// is really full.
    pub reserve: ByteSize,
    pub sync: SyncPolicy,
    /// Durable block writes (sync = "always", blocks of 256 KiB and more) bypass the page
    /// cache with O_DIRECT; falls back to buffered writes where the file system refuses.
    pub direct_io: bool,
    pub heartbeat_interval: HumanDuration,
    /// Block writes processed at once; more wait in a bounded queue, beyond it the node
    /// answers Unavailable so memory stays bounded.
    pub max_concurrent_writes: usize,
    /// Repair copies (`CopyBlock`) processed at once while no client request is in
    /// flight or finished in the last 200 ms.
    pub max_concurrent_copies: usize,
    /// Repair copies processed at once while clients are reading or writing: repair
    /// yields to client traffic but never stops (at least 1).
    pub copies_while_busy: usize,
    /// While clients are working, the percentage of its time a node spends on repair
    /// copies (1..=100): after a copy that took t, the next waits t * (100 - p) / p.
    pub copy_percent_while_busy: u32,
    /// Scrubber read rate, bytes per second; 0 turns the scrubber off.
    pub scrub_bandwidth: ByteSize,
    /// Pause between two scrub passes (the first starts this long after start-up).
    pub scrub_interval: HumanDuration,
    /// How often the full block list is sent to the metadata service (also sent at
    /// every registration).
    pub block_report_interval: HumanDuration,
    /// HTTP endpoints (`/metrics`, `/health`, `/ready`); unset: the `listen` host with
    /// the port + 80 (port 0 stays 0); empty: off.
    pub http_addr: Option<String>,
    /// Log filter in `RUST_LOG` syntax; unset: `RUST_LOG` or `info`. Reloadable.
    pub log_level: Option<String>,
    /// TLS of every connection (required: `mode = "on"` or `"off"`).
    pub tls: distfs_proto::TlsSettings,
    /// Compression of frame bodies, negotiated per connection.
    pub compression: distfs_proto::CompressionSettings,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            listen: "127.0.0.1:7500".into(),
            advertise: None,
            data_dir: PathBuf::from("./distfs-storage"),
            meta: vec!["127.0.0.1:7400".into()],
            zone: "default".into(),
            capacity: None,
            reserve: ByteSize(1 << 30),
            sync: SyncPolicy::Always,
            direct_io: true,
            heartbeat_interval: HumanDuration::from_secs(1),
            max_concurrent_writes: 16,
            max_concurrent_copies: 8,
            copies_while_busy: 1,
            copy_percent_while_busy: 15,
            scrub_bandwidth: ByteSize(32 << 20),
            scrub_interval: HumanDuration::from_secs(24 * 3600),
            block_report_interval: HumanDuration::from_secs(3600),
            http_addr: None,
            log_level: None,
            tls: distfs_proto::TlsSettings::default(),
            compression: distfs_proto::CompressionSettings::default(),
        }
    }
}

impl StorageConfig {
    /// Parses and validates a TOML document.
    pub fn from_toml_str(s: &str) -> Result<StorageConfig, StorageError> {
        let c: StorageConfig =
            toml::from_str(s).map_err(|e| StorageError::ConfigParse { path: None, message: e.to_string() })?;
        c.validate()?;
        Ok(c)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<StorageConfig, StorageError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StorageError::ConfigParse { path: Some(path.to_path_buf()), message: e.to_string() })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            StorageError::ConfigParse { message, .. } => {
                StorageError::ConfigParse { path: Some(path.to_path_buf()), message }
            }
            other => other,
        })
    }

    /// Checks every key; the error names the first bad one.
    pub fn validate(&self) -> Result<(), StorageError> {
        let bad = |key: &'static str, reason: String| Err(StorageError::Config { key, reason });
        if !looks_like_host_port(&self.listen) {
            return bad("listen", format!("`{}` is not host:port (e.g. \"127.0.0.1:7500\")", self.listen));
        }
        if let Some(a) = &self.advertise {
            if !looks_like_host_port(a) {
                return bad("advertise", format!("`{a}` is not host:port"));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must not be empty".into());
        }
        if self.meta.is_empty() {
            return bad("meta", "at least one metadata server address is needed".into());
        }
        if let Some(a) = self.meta.iter().find(|a| !looks_like_host_port(a)) {
            return bad("meta", format!("`{a}` is not host:port"));
        }
        if self.zone.trim().is_empty() {
            return bad("zone", "must not be empty".into());
        }
        if self.capacity == Some(ByteSize(0)) {
            return bad("capacity", "must be more than 0 (omit it to use the disk size)".into());
        }
        let hb = self.heartbeat_interval.0;
        if hb < std::time::Duration::from_millis(50) || hb > std::time::Duration::from_secs(60) {
            return bad("heartbeat_interval", format!("{} is outside 50ms..60s", self.heartbeat_interval));
        }
        if self.max_concurrent_writes == 0 || self.max_concurrent_writes > 4096 {
            return bad("max_concurrent_writes", format!("{} is outside 1..=4096", self.max_concurrent_writes));
        }
        if self.max_concurrent_copies == 0 || self.max_concurrent_copies > 1024 {
            return bad("max_concurrent_copies", format!("{} is outside 1..=1024", self.max_concurrent_copies));
        }
        if !(1..=100).contains(&self.copy_percent_while_busy) {
            return bad("copy_percent_while_busy", format!("{} is outside 1..=100", self.copy_percent_while_busy));
        }
        if self.copies_while_busy == 0 || self.copies_while_busy > self.max_concurrent_copies {
            return bad(
                "copies_while_busy",
                format!(
                    "{} is outside 1..=max_concurrent_copies ({})",
                    self.copies_while_busy, self.max_concurrent_copies
                ),
            );
        }
        if self.scrub_interval.0 < std::time::Duration::from_millis(100) {
            return bad("scrub_interval", format!("{} is shorter than 100ms", self.scrub_interval));
        }
        if self.block_report_interval.0 < std::time::Duration::from_secs(1) {
            return bad("block_report_interval", format!("{} is shorter than 1s", self.block_report_interval));
        }
        if let Err((key, reason)) = distfs_ops::validate_keys(self.http_addr.as_deref(), self.log_level.as_deref()) {
            return bad(key, reason);
        }
        if let Err((key, reason)) = self.tls.validate() {
            return bad(key, reason);
        }
        Ok(())
    }

    /// Takes the keys that can change while running (SIGHUP) from `new`; returns the
    /// names of those that changed, and of the other keys that differ (they take effect
    /// only after a restart).
    pub fn apply_reloadable(&mut self, new: &StorageConfig) -> (Vec<&'static str>, Vec<&'static str>) {
        let mut changed = Vec::new();
        macro_rules! take {
            ($f:ident) => {
                if self.$f != new.$f {
                    self.$f = new.$f.clone();
                    changed.push(stringify!($f));
                }
            };
        }
        take!(log_level);
        take!(heartbeat_interval);
        take!(scrub_bandwidth);
        let mut fixed = Vec::new();
        macro_rules! fixed {
            ($f:ident) => {
                if self.$f != new.$f {
                    fixed.push(stringify!($f));
                }
            };
        }
        fixed!(listen);
        fixed!(advertise);
        fixed!(data_dir);
        fixed!(meta);
        fixed!(zone);
        fixed!(capacity);
        fixed!(reserve);
        fixed!(sync);
        fixed!(max_concurrent_writes);
        fixed!(max_concurrent_copies);
        fixed!(scrub_interval);
        fixed!(block_report_interval);
        fixed!(http_addr);
        fixed!(direct_io);
        fixed!(copies_while_busy);
        fixed!(copy_percent_while_busy);
        fixed!(tls);
        fixed!(compression);
        (changed, fixed)
    }
}

fn looks_like_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_equals_default() {
        let text = include_str!("../storage.example.toml");
        // tls.mode has no default, so the example alone does not validate.
        let e = StorageConfig::from_toml_str(text).unwrap_err();
        assert!(e.to_string().contains("tls.mode"), "{e}");
        let c: StorageConfig = toml::from_str(text).expect("example config parses");
        assert_eq!(c, StorageConfig::default());
        let c = StorageConfig::from_toml_str(&text.replace("# mode = \"off\"", "mode = \"off\""))
            .expect("with tls.mode = off");
        assert_eq!(c.tls, distfs_proto::TlsSettings::off());
    }

    #[test]
    fn human_values_and_policies() {
        let c = StorageConfig::from_toml_str(
            "capacity = \"10GiB\"\nreserve = 0\nsync = \"batch\"\nheartbeat_interval = \"250ms\"\n[tls]\nmode = \"off\"",
        )
        .expect("parses");
        assert_eq!(c.capacity, Some(ByteSize(10 << 30)));
        assert_eq!(c.reserve, ByteSize(0));
        assert_eq!(c.sync, SyncPolicy::Batch);
        assert_eq!(c.heartbeat_interval, HumanDuration::from_millis(250));
    }

    #[test]
    fn bad_keys_are_named() {
        let e = StorageConfig::from_toml_str("lisen = \"x:1\"").unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
        let e = StorageConfig::from_toml_str("listen = \"nope\"").unwrap_err();
        assert!(e.to_string().contains("`listen`"), "{e}");
        let e = StorageConfig::from_toml_str("meta = []").unwrap_err();
        assert!(e.to_string().contains("`meta`"), "{e}");
        let e = StorageConfig::from_toml_str("sync = \"sometimes\"").unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
        let e = StorageConfig::from_toml_str("max_concurrent_writes = 0").unwrap_err();
        assert!(e.to_string().contains("max_concurrent_writes"), "{e}");
        let e = StorageConfig::from_toml_str("heartbeat_interval = \"1ms\"").unwrap_err();
        assert!(e.to_string().contains("heartbeat_interval"), "{e}");
        let e = StorageConfig::from_toml_str("http_addr = \"localhost\"").unwrap_err();
        assert!(e.to_string().contains("http_addr"), "{e}");
        let e = StorageConfig::from_toml_str("log_level = \"warn,x=chatty\"").unwrap_err();
        assert!(e.to_string().contains("log_level"), "{e}");
    }

    #[test]
    fn reload_takes_only_reloadable_keys() {
        let tls = "\n[tls]\nmode = \"off\"";
        let mut run = StorageConfig::from_toml_str(tls).expect("parses");
        let new = StorageConfig::from_toml_str(&format!("heartbeat_interval = \"250ms\"\nzone = \"b\"{tls}"))
            .expect("parses");
        let (changed, fixed) = run.apply_reloadable(&new);
        assert_eq!(changed, ["heartbeat_interval"]);
        assert_eq!(fixed, ["zone"]);
        assert_eq!(run.heartbeat_interval, HumanDuration::from_millis(250));
        assert_eq!(run.zone, "default");
    }
}
