//! What `distfs-meta` and `distfs-storage` share: the common flags (config file, listen
//! and data-dir overrides, `--check-config`), loading and validating the config, and the
//! serve-until-signal loop.

use anyhow::Context;
use std::future::Future;
use std::path::{Path, PathBuf};

/// Flags both servers take.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// TOML configuration file; without it, defaults apply.
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
}

/// A server configuration as the shared flags see it.
pub trait ServerConfig: Default + std::fmt::Debug {
    fn from_file(path: &Path) -> anyhow::Result<Self>;
    fn validate(&self) -> anyhow::Result<()>;
    fn set_listen(&mut self, listen: String);
    fn set_data_dir(&mut self, dir: PathBuf);
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
}

/// Loads the config the flags name (or the defaults) and applies the overrides;
/// `tweak` applies server-specific ones. `None` when `--check-config` printed it.
pub fn load<C: ServerConfig>(args: &ServerArgs, tweak: impl FnOnce(&mut C)) -> anyhow::Result<Option<C>> {
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
    config.validate().context("invalid configuration")?;
    if args.check_config {
        println!("{config:#?}");
        return Ok(None);
    }
    Ok(Some(config))
}

/// Serves until SIGINT/SIGTERM, then runs `stop`.
pub async fn serve_until_signal<F: Future<Output = anyhow::Result<()>>>(
    addr: std::net::SocketAddr,
    stop: impl FnOnce() -> F,
) -> anyhow::Result<()> {
    tracing::info!(%addr, "serving");
    crate::runtime::shutdown_signal().await;
    tracing::info!("shutting down");
    stop().await
}
