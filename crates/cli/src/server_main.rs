//! What `distfs-meta` and `distfs-storage` share: the common flags (config file, listen
//! and data-dir overrides, `--check-config`, logging), loading and validating the config,
//! logging set-up, and the serve-until-signal loop with configuration reload on SIGHUP.

use anyhow::Context;
use distfs_ops::logging::{LogFormat, LogHandle, LogOptions, Rotation};
use distfs_ops::Reloaded;
use std::path::{Path, PathBuf};

/// Flags both servers take.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// TOML configuration file; without it, defaults apply. SIGHUP re-reads it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override `listen`.
    #[arg(long)]
    pub listen: Option<String>,
    /// Override `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Validate the configuration, print it and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Log line format: pretty (human, colored on a terminal) or json. Default: pretty on
    /// stderr, json with --log-file.
    #[arg(long, value_parser = parse_format)]
    pub log_format: Option<LogFormat>,
    /// Log to this file instead of stderr, rotated per --log-rotation (FILE.YYYY-MM-DD).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// When the log file rotates: daily, hourly or never.
    #[arg(long, default_value = "daily", value_parser = parse_rotation)]
    pub log_rotation: Rotation,
    /// Rotated log files kept; older ones are deleted.
    #[arg(long, default_value_t = 14)]
    pub log_keep: usize,
}

fn parse_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

fn parse_rotation(s: &str) -> Result<Rotation, String> {
    s.parse()
}

/// A server configuration as the shared flags see it.
pub trait ServerConfig: Default + std::fmt::Debug {
    fn from_file(path: &Path) -> anyhow::Result<Self>;
    fn validate(&self) -> anyhow::Result<()>;
    fn set_listen(&mut self, listen: String);
    fn set_data_dir(&mut self, dir: PathBuf);
    /// The `log_level` key.
    fn log_level(&self) -> Option<&str>;
}

impl ServerConfig for distfs_meta::MetaConfig {
    fn from_file(path: &Path) -> anyhow::Result<Self> {
        Ok(distfs_meta::MetaConfig::from_file(path)?)
    }
    fn validate(&self) -> anyhow::Result<()> {
        Ok(distfs_meta::MetaConfig::validate(self)?)
    }
    fn set_listen(&mut self, listen: String) {
        self.listen = listen;
    }
    fn set_data_dir(&mut self, dir: PathBuf) {
        self.data_dir = dir;
    }
    fn log_level(&self) -> Option<&str> {
        self.log_level.as_deref()
    }
}

impl ServerConfig for distfs_storage::StorageConfig {
    fn from_file(path: &Path) -> anyhow::Result<Self> {
        Ok(distfs_storage::StorageConfig::from_file(path)?)
    }
    fn validate(&self) -> anyhow::Result<()> {
        Ok(distfs_storage::StorageConfig::validate(self)?)
    }
    fn set_listen(&mut self, listen: String) {
        self.listen = listen;
    }
    fn set_data_dir(&mut self, dir: PathBuf) {
        self.data_dir = dir;
    }
    fn log_level(&self) -> Option<&str> {
        self.log_level.as_deref()
    }
}

/// A running server whose configuration can be reloaded.
pub trait ReloadableServer<C> {
    /// Validates `new` and applies its reloadable keys.
    fn reload(&self, new: &C) -> anyhow::Result<Reloaded>;
    /// Counts a reload whose file did not even parse.
    fn reload_rejected(&self);
}

impl ReloadableServer<distfs_meta::MetaConfig> for distfs_meta::MetaServer {
    fn reload(&self, new: &distfs_meta::MetaConfig) -> anyhow::Result<Reloaded> {
        Ok(distfs_meta::MetaServer::reload(self, new)?)
    }
    fn reload_rejected(&self) {
        distfs_meta::MetaServer::reload_rejected(self)
    }
}

impl ReloadableServer<distfs_storage::StorageConfig> for distfs_storage::StorageNode {
    fn reload(&self, new: &distfs_storage::StorageConfig) -> anyhow::Result<Reloaded> {
        Ok(distfs_storage::StorageNode::reload(self, new)?)
    }
    fn reload_rejected(&self) {
        distfs_storage::StorageNode::reload_rejected(self)
    }
}

/// Reads the config the flags name (or the defaults) and applies the overrides; `tweak`
/// applies server-specific ones. Not validated.
fn read<C: ServerConfig>(args: &ServerArgs, tweak: &dyn Fn(&mut C)) -> anyhow::Result<C> {
    let mut config = match &args.config {
        Some(p) => C::from_file(p).with_context(|| format!("bad config file {}", p.display()))?,
        None => C::default(),
    };
    if let Some(l) = &args.listen {
        config.set_listen(l.clone());
    }
    if let Some(d) = &args.data_dir {
        config.set_data_dir(d.clone());
    }
    tweak(&mut config);
    Ok(config)
}

/// Loads the config the flags name (or the defaults) and applies the overrides;
/// `tweak` applies server-specific ones. `None` when `--check-config` printed it.
pub fn load<C: ServerConfig>(args: &ServerArgs, tweak: &dyn Fn(&mut C)) -> anyhow::Result<Option<C>> {
    let config = read(args, tweak)?;
    config.validate().context("invalid configuration")?;
    if args.check_config {
        println!("{config:#?}");
        return Ok(None);
    }
    Ok(Some(config))
}

/// The filter in force for a `log_level` value: the key, else `RUST_LOG`, else `info`.
fn effective_filter(level: Option<&str>) -> String {
    match level {
        Some(l) => l.to_string(),
        None => std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| "info".into()),
    }
}

/// Sets up logging per the flags and the config's `log_level`.
pub fn init_logging<C: ServerConfig>(args: &ServerArgs, config: &C) -> anyhow::Result<LogHandle> {
    let opts = LogOptions {
        filter: effective_filter(config.log_level()),
        format: args.log_format,
        file: args.log_file.clone(),
        rotation: args.log_rotation,
        keep: args.log_keep,
    };
    Ok(distfs_ops::logging::init(&opts)?)
}

/// Serves until SIGINT/SIGTERM; on SIGHUP re-reads the config file and applies its
/// reloadable keys (a file that does not parse or validate is rejected with an ERROR
/// line naming it, and the running configuration stays).
pub async fn serve_until_signal<C: ServerConfig, S: ReloadableServer<C>>(
    addr: std::net::SocketAddr,
    args: &ServerArgs,
    tweak: &dyn Fn(&mut C),
    server: &S,
    log: &LogHandle,
) {
    tracing::info!(%addr, "serving");
    let mut hup = crate::runtime::hangups();
    loop {
        let hangup = async {
            match hup.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = crate::runtime::shutdown_signal() => break,
            got = hangup => {
                if got {
                    reload(args, tweak, server, log);
                } else {
                    hup = None;
                }
            }
        }
    }
    tracing::info!("shutting down");
}

fn reload<C: ServerConfig, S: ReloadableServer<C>>(
    args: &ServerArgs,
    tweak: &dyn Fn(&mut C),
    server: &S,
    log: &LogHandle,
) {
    let Some(path) = &args.config else {
        tracing::warn!("SIGHUP: no --config file was given; nothing to reload");
        return;
    };
    let file = path.display().to_string();
    let result = match read(args, tweak) {
        Ok(c) => server.reload(&c).context("invalid configuration").map(|r| (c, r)),
        Err(e) => {
            server.reload_rejected();
            Err(e)
        }
    };
    let (config, r) = match result {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(%file, error = format!("{e:#}"),
                "configuration reload rejected; the running configuration stays");
            return;
        }
    };
    if r.changed.contains(&"log_level") {
        let filter = effective_filter(config.log_level());
        if let Err(e) = log.set_filter(&filter) {
            tracing::error!(%file, error = %e, "cannot apply the new log_level");
        }
    }
    if !r.needs_restart.is_empty() {
        tracing::warn!(%file, keys = ?r.needs_restart, "these keys changed but take effect only after a restart");
    }
    tracing::info!(%file, changed = ?r.changed, "configuration reloaded");
}
