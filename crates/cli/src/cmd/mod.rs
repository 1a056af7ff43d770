//! The `distfs` command line: argument definitions and dispatch. Each command lives in a
//! sibling module: `files` (put/get/cat), `ns` (ls/mkdir/rm/mv/stat), `cluster` (df,
//! cluster status), `heal` (node membership, fsck).

pub mod bench;
pub mod cluster;
pub mod codec;
pub mod files;
pub mod heal;
pub mod meta;
pub mod mount;
pub mod ns;
pub mod snapshot;

use anyhow::Context;
use clap::{Parser, Subcommand};
use distfs_client::{Client, ClientConfig, DEFAULT_META_ADDR};
use distfs_proto::{ClientTls, ClientTransport, Compression, Identity, PeerKind, Role, TlsPaths};
use std::path::PathBuf;
use std::sync::Arc;
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
    /// Use TLS with the files of this directory: `ca.pem` (the cluster CA) and, if
    /// present, `client.pem`/`client.key` (from `distfs cert issue --client NAME`).
    /// Without any TLS option the client speaks plain TCP, which only a cluster
    /// configured with `tls.mode = "off"` accepts.
    #[arg(long, global = true, env = "DISTFS_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// The cluster CA certificate (PEM); overrides --tls-dir.
    #[arg(long, global = true, env = "DISTFS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), with --tls-ca.
    #[arg(long, global = true, env = "DISTFS_TLS_CERT", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, global = true, env = "DISTFS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Compression to ask the servers for: none, lz4 or zstd (a server that does not
    /// accept it sends and takes uncompressed bodies).
    #[arg(long, global = true, env = "DISTFS_COMPRESSION", default_value = "none")]
    pub compression: Compression,
    /// Store every block written by this command even when an identical block is
    /// already stored (deduplication is on by default).
    #[arg(long, global = true)]
    pub no_dedup: bool,
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
        /// The kernel's readahead window for files on the mount (set when mounting as
        /// root); 0 leaves the kernel's default of 128 KiB.
        #[arg(long, default_value = "8MiB", value_parser = parse_size)]
        readahead: u64,
        /// Do not hand the rest of the 64 KiB checksum piece a small read fetched, nor a
        /// small file whose bytes came with its open, to the kernel's page cache (on by
        /// default: it costs no extra I/O and turns small reads into page-cache hits).
        #[arg(long)]
        no_read_around: bool,
        /// Do not fetch a directory's next entries with attributes after a run of
        /// lookups in it (statahead, on by default: `stat` of every file in a directory
        /// then costs one call per 1,000 names).
        #[arg(long)]
        no_statahead: bool,
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
    /// Measure the cluster from the native client: sequential and random I/O, small
    /// files, many connections; latency percentiles per workload.
    Bench {
        /// Directory in DistFS to work under (emptied at the end).
        #[arg(long, default_value = "/.distfs-bench")]
        dir: String,
        /// Workloads, comma separated: seq, rand, small, conns, create (default: seq,
        /// rand, small). `create` only creates the small files (with `--keep`, to fill a
        /// file system: see bench/meta-memory.sh).
        #[arg(long, value_delimiter = ',', default_value = "seq,rand,small")]
        only: Vec<String>,
        /// Concurrent clients of each workload.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Bytes each client writes and reads sequentially (e.g. 256MiB).
        #[arg(long, default_value = "256MiB", value_parser = parse_size)]
        file_size: u64,
        /// Bytes per sequential write or read call.
        #[arg(long, default_value = "8MiB", value_parser = parse_size)]
        io_size: u64,
        /// Random 4 KiB reads in all.
        #[arg(long, default_value_t = 4000)]
        random_reads: usize,
        /// Small files in all (each client its own directory).
        #[arg(long, default_value_t = 2000)]
        small_files: usize,
        #[arg(long, default_value = "4KiB", value_parser = parse_size)]
        small_size: u64,
        /// Clients of the `conns` workload, each with its own connections.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Operations per second of each `conns` client, at random phases (open loop);
        /// 0: as fast as each can (closed loop: latency is then clients / throughput).
        #[arg(long, default_value_t = 0.0)]
        conn_rate: f64,
        /// Operations (stat and read of a small file) of each `conns` client.
        #[arg(long, default_value_t = 3)]
        conn_rounds: usize,
        /// Store every byte in blocks, also of small files (to measure what inline
        /// small files save).
        #[arg(long)]
        no_inline: bool,
        /// Leave the files in place (no delete phase, no clean-up).
        #[arg(long)]
        keep: bool,
        #[arg(long)]
        json: bool,
    },
    /// Snapshots of directory trees: create, list, delete, restore.
    Snapshot {
        #[command(subcommand)]
        command: snapshot::SnapshotCommand,
    },
    /// Show or set the compression at rest of the files created under a directory from
    /// now on (none, lz4 or zstd; inherited by new subdirectories).
    Compression { dir: String, codec: Option<Compression> },
    /// Certificates: a cluster CA, node and client certificates.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Create a cluster CA (`ca.pem`, `ca.key`) in DIR.
    Init {
        #[arg(long, default_value = "./distfs-ca")]
        dir: PathBuf,
        /// Cluster name, in the CA's subject.
        #[arg(long, default_value = "distfs")]
        name: String,
        #[arg(long, default_value_t = crate::cert::DEFAULT_CA_DAYS)]
        days: i64,
    },
    /// Issue a node (server) or client certificate from the CA in DIR. Writes
    /// `ca.pem`, `node.pem`/`node.key` or `client.pem`/`client.key` into --out
    /// (default DIR/nodes/NAME or DIR/clients/NAME).
    Issue {
        #[arg(long, default_value = "./distfs-ca")]
        dir: PathBuf,
        /// A metadata server or storage node called NAME.
        #[arg(long, conflicts_with = "client", required_unless_present = "client")]
        node: Option<String>,
        /// A client called NAME.
        #[arg(long)]
        client: Option<String>,
        /// The client may run admin commands (drain, remove, maintenance, meta
        /// add/remove, fsck --repair) and is not subject to permission checks.
        #[arg(long, requires = "client")]
        admin: bool,
        /// POSIX uid of the client (default 65534, nobody).
        #[arg(long, requires = "client")]
        uid: Option<u32>,
        /// POSIX gid of the client (default 65534).
        #[arg(long, requires = "client")]
        gid: Option<u32>,
        /// Host names and IP addresses a node is reached at (repeatable; default NAME,
        /// localhost, 127.0.0.1 and ::1). Clients check them.
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[arg(long, default_value_t = crate::cert::DEFAULT_DAYS)]
        days: i64,
        #[arg(long)]
        out: Option<PathBuf>,
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
        /// TLS between every process: a CA and certificates are made in DIR/tls on the
        /// first start (an admin client's in DIR/tls/clients/admin, for
        /// DISTFS_TLS_DIR). Without it the cluster runs plain TCP.
        #[arg(long)]
        tls: bool,
    },
}

/// A byte count: a number with an optional K/M/G/T suffix (powers of 1024, `KiB` and
/// `KB` alike).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size (e.g. 4096, 4KiB, 256MiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("`{s}` is too large"))
}

/// The transport the TLS options describe.
pub fn client_transport(cli: &Cli) -> anyhow::Result<ClientTransport> {
    let paths = match (&cli.tls_ca, &cli.tls_dir) {
        (Some(ca), _) => Some(TlsPaths { ca: ca.clone(), cert: cli.tls_cert.clone(), key: cli.tls_key.clone() }),
        (None, Some(d)) => {
            let (cert, key) = (d.join("client.pem"), d.join("client.key"));
            Some(TlsPaths {
                ca: d.join("ca.pem"),
                cert: cert.exists().then_some(cert),
                key: key.exists().then_some(key),
            })
        }
        (None, None) => None,
    };
    let tls = match paths {
        Some(p) => Some(Arc::new(ClientTls::load(&p).context("cannot load the TLS files")?)),
        None => None,
    };
    Ok(ClientTransport { tls, compression: cli.compression, peer: PeerKind::Client })
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Cert { ref command } = cli.command {
        return cert(command);
    }
    let transport = client_transport(&cli)?;
    let client = || {
        Client::new(ClientConfig {
            meta: cli.meta.clone(),
            meta_deadline: cli.timeout,
            transport: transport.clone(),
            dedup: !cli.no_dedup,
            ..ClientConfig::default()
        })
    };
    match cli.command {
        Command::Put { ref local, ref remote, no_progress } => files::put(&client(), local, remote, !no_progress).await,
        Command::Get { ref remote, ref local, no_progress } => files::get(&client(), remote, local, !no_progress).await,
        Command::Cat { ref paths } => files::cat(&client(), paths).await,
        Command::Ls { ref path, long, json } => ns::ls(&client(), path, long, json).await,
        Command::Mkdir { ref paths, parents } => ns::mkdir(&client(), paths, parents).await,
        Command::Rm { ref paths, recursive, force } => ns::rm(&client(), paths, recursive, force).await,
        Command::Mv { ref src, ref dst } => ns::mv(&client(), src, dst).await,
        Command::Stat { ref path, json } => ns::stat(&client(), path, json).await,
        Command::Mount { ref mountpoint, background, allow_other, readahead, no_read_around, no_statahead } => {
            let features = mount::Features { read_around: !no_read_around, statahead: !no_statahead };
            mount::run(client(), mountpoint.clone(), background, allow_other, readahead, features).await
        }
        Command::Df { json } => cluster::df(&client(), json).await,
        Command::Compression { ref dir, codec } => codec::run(&client(), dir, codec).await,
        Command::Cluster { command: ClusterCommand::Status { json } } => cluster::status(&client(), json).await,
        Command::Cluster { command: ClusterCommand::Top { interval } } => cluster::top(&client(), interval).await,
        Command::Meta { command: MetaCommand::Status { json } } => meta::status(&client(), json).await,
        Command::Meta { command: MetaCommand::Add { ref addr } } => meta::add(&client(), addr).await,
        Command::Meta { command: MetaCommand::Remove { id } } => meta::remove(&client(), id).await,
        Command::Node { ref command } => heal::node(&client(), command).await,
        Command::Fsck { repair, json } => heal::fsck(&client(), repair, json).await,
        Command::Local {
            command: LocalCommand::Up { ref dir, ref listen, storage, replication, ref sync, http_port, tls },
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
                tls,
            })
            .await
        }
        Command::Bench {
            ref dir,
            ref only,
            clients,
            file_size,
            io_size,
            random_reads,
            small_files,
            small_size,
            connections,
            conn_rate,
            conn_rounds,
            no_inline,
            keep,
            json,
        } => {
            let config = ClientConfig {
                meta: cli.meta.clone(),
                meta_deadline: cli.timeout,
                transport: transport.clone(),
                inline_max: if no_inline { 0 } else { distfs_types::INLINE_MAX },
                dedup: !cli.no_dedup,
                ..ClientConfig::default()
            };
            let opts = bench::BenchOptions {
                dir: dir.clone(),
                only: only.clone(),
                clients,
                file_size,
                io_size: usize::try_from(io_size).context("--io-size is too large")?,
                random_reads,
                small_files,
                small_size: usize::try_from(small_size).context("--small-size is too large")?,
                connections,
                conn_rate,
                conn_rounds,
                keep,
                json,
            };
            bench::run(config, opts).await
        }
        Command::Snapshot { ref command } => {
            // One command copies or frees a whole tree: allow it more than one attempt's 5 s.
            let config = ClientConfig {
                meta: cli.meta.clone(),
                meta_deadline: cli.timeout.max(Duration::from_secs(60)),
                meta_attempt_timeout: Duration::from_secs(60),
                transport: transport.clone(),
                ..ClientConfig::default()
            };
            snapshot::run(&Client::new(config), command).await
        }
        Command::Cert { .. } => unreachable!("handled above"),
    }
}

fn cert(command: &CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::Init { dir, name, days } => {
            crate::cert::init(dir, name, *days)?;
            println!("Created the cluster CA in {} (ca.pem; keep ca.key private).", dir.display());
        }
        CertCommand::Issue { dir, node, client, admin, uid, gid, hosts, days, out } => {
            let identity = match (node, client) {
                (Some(n), _) => Identity::node(n),
                (None, Some(c)) => Identity {
                    name: c.clone(),
                    role: if *admin { Role::Admin } else { Role::Client },
                    uid: *uid,
                    gid: *gid,
                    authenticated: true,
                },
                (None, None) => anyhow::bail!("give --node NAME or --client NAME"),
            };
            let hosts = match (identity.role, hosts.is_empty()) {
                (Role::Node, true) => crate::cert::default_hosts(&identity.name),
                _ => hosts.clone(),
            };
            let out = out.clone().unwrap_or_else(|| crate::cert::default_out(dir, &identity));
            let req = crate::cert::Request::new(identity.clone(), hosts, *days);
            crate::cert::issue(dir, &req, &out)?;
            println!("Issued a certificate for {identity} ({}) in {}.", identity.to_uri(), out.display());
        }
    }
    Ok(())
}
