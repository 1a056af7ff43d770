//! The `distfs` command line: argument definitions and dispatch. Each command lives in a
//! sibling module: `files` (put/get/cat), `ns` (ls/mkdir/rm/mv/stat), `cluster` (df,
//! cluster status), `heal` (node membership, fsck).

pub mod cluster;
pub mod files;
pub mod heal;
pub mod meta;
pub mod mount;
pub mod ns;

use clap::{Parser, Subcommand};
use distfs_client::{Client, ClientConfig, DEFAULT_META_ADDR};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "distfs", version, about = "DistFS client: files, cluster administration and a local cluster")]
pub struct Cli {
    /// Metadata server address(es), comma separated; the client finds the leader.
    /// For `local up`: the number of metadata servers to run (1, 3 or 5), on consecutive
    /// ports from --listen's.
    #[arg(long, global = true, env = "DISTFS_META", value_delimiter = ',', default_value = DEFAULT_META_ADDR)]
    pub meta: Vec<String>,
    /// How long to keep retrying while no metadata leader answers before giving up.
    #[arg(long, global = true, default_value = "15s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Store a local file (or `-` for stdin) at a path in DistFS.
    Put {
        local: String,
        remote: String,
        /// Never draw a progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Copy a file out of DistFS to a local path (or `-` for stdout).
    Get {
        remote: String,
        local: String,
        #[arg(long)]
        no_progress: bool,
    },
    /// Print files to stdout.
    Cat {
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// List a directory (or show a file).
    Ls {
        #[arg(default_value = "/")]
        path: String,
        /// Long listing: mode, links, owner, size, modification time.
        #[arg(short = 'l')]
        long: bool,
        #[arg(long)]
        json: bool,
    },
    /// Create directories.
    Mkdir {
        #[arg(required = true)]
        paths: Vec<String>,
        /// Create missing parents; an existing directory is not an error.
        #[arg(short = 'p', long)]
        parents: bool,
    },
    /// Remove files (and with -r, directories and their contents).
    Rm {
        #[arg(required = true)]
        paths: Vec<String>,
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Ignore paths that do not exist.
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Rename or move; replaces an existing file atomically, moves into an existing directory.
    Mv { src: String, dst: String },
    /// Show the attributes of a path.
    Stat {
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// Capacity and usage of the file system.
    Df {
        #[arg(long)]
        json: bool,
    },
    /// Mount the file system with FUSE; in the foreground until Ctrl-C or `umount`.
    Mount {
        mountpoint: PathBuf,
        /// Detach and keep serving in the background once the mount is ready.
        #[arg(long)]
        background: bool,
        /// Let users other than the mounting one use the mount.
        #[arg(long)]
        allow_other: bool,
    },
    /// Cluster administration.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Membership of the metadata Raft group.
    Meta {
        #[command(subcommand)]
        command: MetaCommand,
    },
    /// Storage-node membership: list, drain, remove, maintenance.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Check replication: under-replicated, corrupt, missing and orphaned blocks.
    Fsck {
        /// Queue repairs now and delete orphaned copies.
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run a whole cluster on this machine.
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Nodes, their state and usage, replication health.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// `cluster status` refreshed every interval, with write throughput (Ctrl-C ends it).
    Top {
        /// Refresh period, e.g. 1s or 500ms.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum MetaCommand {
    /// Leader, term, members, log index and each member's lag.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Add the metadata server listening at ADDR (started with `join = true`).
    Add { addr: String },
    /// Remove metadata server ID from the group.
    Remove { id: u64 },
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Every storage node with its state, operator state and usage.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Decommission: no new writes, copy everything away, then mark it drained.
    Drain {
        id: u64,
        /// Only report what would move.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Take a drained (or dead and fully repaired) node out of the cluster.
    Remove { id: u64 },
    /// Planned restart: no new writes and no repair of its copies during the window.
    Maintenance {
        id: u64,
        #[arg(value_parser = ["on", "off"])]
        mode: String,
        /// How long the window lasts (with `on`).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        window: Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum LocalCommand {
    /// Start 1 metadata server and N storage nodes in this process, in the foreground;
    /// Ctrl-C stops them. Restarting on the same directory keeps every file.
    Up {
        /// Where all data lives.
        #[arg(long, default_value = "./distfs-data")]
        dir: PathBuf,
        /// Metadata server listen address (clients default to it).
        #[arg(long, default_value = DEFAULT_META_ADDR)]
        listen: String,
        /// Number of storage nodes.
        #[arg(long, default_value_t = 3)]
        storage: usize,

        /// Copies of each block (fixed when the directory is first formatted).
        #[arg(long, default_value_t = 3)]
        replication: u32,
        /// Storage sync policy: always, batch or none.
        #[arg(long, default_value = "always")]
        sync: String,
        /// First HTTP port (/metrics, /health, /ready; the dashboard on the metadata
        /// server): metadata server i gets PORT+i, storage node i PORT+100+i, on the
        /// --listen IP. Default: the --listen port + 80 (7480). 0 turns HTTP off.
        #[arg(long)]
        http_port: Option<u16>,
    },
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let client =
        || Client::new(ClientConfig { meta: cli.meta.clone(), meta_deadline: cli.timeout, ..ClientConfig::default() });
    match cli.command {
        Command::Put { ref local, ref remote, no_progress } => files::put(&client(), local, remote, !no_progress).await,
        Command::Get { ref remote, ref local, no_progress } => files::get(&client(), remote, local, !no_progress).await,
        Command::Cat { ref paths } => files::cat(&client(), paths).await,
        Command::Ls { ref path, long, json } => ns::ls(&client(), path, long, json).await,
        Command::Mkdir { ref paths, parents } => ns::mkdir(&client(), paths, parents).await,
        Command::Rm { ref paths, recursive, force } => ns::rm(&client(), paths, recursive, force).await,
        Command::Mv { ref src, ref dst } => ns::mv(&client(), src, dst).await,
        Command::Stat { ref path, json } => ns::stat(&client(), path, json).await,
        Command::Mount { ref mountpoint, background, allow_other } => {
            mount::run(client(), mountpoint.clone(), background, allow_other).await
        }
        Command::Df { json } => cluster::df(&client(), json).await,
        Command::Cluster { command: ClusterCommand::Status { json } } => cluster::status(&client(), json).await,
        Command::Cluster { command: ClusterCommand::Top { interval } } => cluster::top(&client(), interval).await,
        Command::Meta { command: MetaCommand::Status { json } } => meta::status(&client(), json).await,
        Command::Meta { command: MetaCommand::Add { ref addr } } => meta::add(&client(), addr).await,
        Command::Meta { command: MetaCommand::Remove { id } } => meta::remove(&client(), id).await,
        Command::Node { ref command } => heal::node(&client(), command).await,
        Command::Fsck { repair, json } => heal::fsck(&client(), repair, json).await,
        Command::Local {
            command: LocalCommand::Up { ref dir, ref listen, storage, replication, ref sync, http_port },
        } => {
            // `local up --meta N`: a count, not an address (an address, e.g. from
            // DISTFS_META, means the default of one server).
            let meta_servers = match cli.meta.as_slice() {
                [n] => n.parse::<usize>().unwrap_or(1),
                _ => 1,
            };
            crate::local::up(crate::local::LocalOptions {
                dir: dir.clone(),
                listen: listen.clone(),
                storage,
                meta_servers,
                replication,
                sync: sync.clone(),
                http_port,
            })
            .await
        }
    }
}
