//! Test harness: a DistFS cluster made of the real `distfs-meta` and `distfs-storage`
//! processes on loopback, in a temporary directory. Tests kill nodes with SIGKILL, restart
//! them, corrupt their files, and wait on observable cluster state with timeouts (never a
//! bare sleep). Child processes are killed when the cluster is dropped; their logs are
//! printed if the test is failing.

pub mod meta_cluster;
pub mod net;
pub mod netns;
pub mod proxy;

use distfs_client::{Client, ClientConfig};
use distfs_types::{NodeInfo, NodeState};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Paths of the three programs (from `env!("CARGO_BIN_EXE_...")` in the calling test).
#[derive(Clone, Debug)]
pub struct Bins {
    pub meta: PathBuf,
    pub storage: PathBuf,
    pub cli: PathBuf,
}

/// Knobs of a test cluster.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub storage_nodes: usize,
    pub replication: u32,
    pub sync: &'static str,
    pub suspect_after: &'static str,
    pub dead_after: &'static str,
    pub heartbeat_interval: &'static str,
    /// Metadata servers (1, 3 or 5); more than one form a Raft group.
    pub meta_servers: usize,
    /// Extra lines appended to the metadata server's config (TOML).
    pub meta_extra: String,
    /// Extra lines appended to every storage node's config (TOML).
    pub storage_extra: String,
    /// TLS on every connection: a CA and certificates are made with `distfs cert` in
    /// `tls/` of the cluster directory (nodes `meta-I`, `storage-I`, an admin client
    /// `admin`); `client()` and `cli()` use the admin's. Off: `tls.mode = "off"`.
    pub tls: bool,
    /// Where the servers run: `None`, on loopback with free ports; else each in its own
    /// network namespace (see [`netns::Net`]) on fixed ports of its address (metadata
    /// 7400, storage 7500, HTTP +80), started inside it (`netns::command_in`).
    pub hosts: Option<Hosts>,
}

/// A server's place: a network namespace and its address there.
#[derive(Clone, Debug)]
pub struct Host {
    pub netns: String,
    pub ip: String,
}

/// One [`Host`] per metadata server and per storage node slot.
#[derive(Clone, Debug, Default)]
pub struct Hosts {
    pub meta: Vec<Host>,
    pub storage: Vec<Host>,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            storage_nodes: 3,
            replication: 3,
            sync: "none",
            suspect_after: "1500ms",
            dead_after: "4s",
            heartbeat_interval: "300ms",
            meta_servers: 1,
            meta_extra: String::new(),
            storage_extra: String::new(),
            tls: false,
            hosts: None,
        }
    }
}

pub struct ProcessCluster {
    pub bins: Bins,
    pub opts: ClusterOpts,
    dir: tempfile::TempDir,
    meta_addrs: Vec<String>,
    /// HTTP endpoint (`/metrics`, `/ready`, dashboard) of each metadata server.
    meta_http: Vec<String>,
    /// HTTP endpoint of each storage node slot.
    storage_http: Vec<String>,
    metas: Vec<Option<Child>>,
    storage: Vec<Option<Child>>,
}

/// A free loopback port for a server a test starts: a random one below the kernel's
/// ephemeral range (`ip_local_port_range`, 32768 and up by default) that binds now. A
/// port from the ephemeral range (`bind(:0)`) can be taken, between this call and the
/// server's own bind, as the source port of any outgoing connection on the machine; one
/// below it cannot, so only another test picking the same number could collide.
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(10_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    l.local_addr().expect("local addr of a bound listener").port()
}

/// Polls `probe` until it yields `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl ProcessCluster {
    /// Starts one metadata server and `opts.storage_nodes` storage nodes and waits until
    /// every storage node is registered and up.
    pub async fn start(bins: Bins, opts: ClusterOpts) -> ProcessCluster {
        let dir = tempfile::Builder::new().prefix("distfs-test-").tempdir().expect("create a temp dir");
        let (meta_addrs, meta_http): (Vec<String>, Vec<String>) = match &opts.hosts {
            Some(h) => {
                assert_eq!(h.meta.len(), opts.meta_servers.max(1), "one host per metadata server");
                assert!(h.storage.len() >= opts.storage_nodes, "one host per storage node");
                h.meta.iter().map(|m| (format!("{}:7400", m.ip), format!("{}:7480", m.ip))).unzip()
            }
            None => (0..opts.meta_servers.max(1))
                .map(|_| (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port())))
                .unzip(),
        };
        let metas = meta_addrs.iter().map(|_| None).collect();
        let mut c = ProcessCluster {
            bins,
            opts,
            dir,
            meta_addrs,
            meta_http,
            storage_http: Vec::new(),
            metas,
            storage: Vec::new(),
        };
        if c.opts.tls {
            c.cert(&["init", "--dir", &c.ca_dir().display().to_string()]);
            c.issue_client("admin", &["--admin"]);
        }
        c.write_configs();
        for i in 0..c.metas.len() {
            c.start_meta_server(i);
        }
        for i in 0..c.opts.storage_nodes {
            c.storage.push(None);
            c.start_storage(i);
        }
        c.wait_nodes_up(c.opts.storage_nodes).await;
        c
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The first metadata server's address.
    pub fn meta_addr(&self) -> &str {
        &self.meta_addrs[0]
    }

    /// Every metadata server's address, comma separated (as `DISTFS_META` takes them).
    pub fn meta_list(&self) -> String {
        self.meta_addrs.join(",")
    }

    pub fn meta_addrs(&self) -> &[String] {
        &self.meta_addrs
    }

    /// The HTTP endpoint (`host:port`) of metadata server `i`.
    pub fn meta_http(&self, i: usize) -> &str {
        &self.meta_http[i]
    }

    /// The HTTP endpoint (`host:port`) of storage node `i`.
    pub fn storage_http(&self, i: usize) -> &str {
        &self.storage_http[i]
    }

    /// The config file of metadata server `i` (rewrite it, then `signal_meta(i, SIGHUP)`).
    pub fn meta_config_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("meta-{i}.toml"))
    }

    /// The config file of storage node `i`.
    pub fn storage_config_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("storage-{i}.toml"))
    }

    /// The log (stdout and stderr) of a process: `meta-0`, `storage-2`, ...
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Sends `sig` to metadata server `i` (if running).
    pub fn signal_meta(&self, i: usize, sig: i32) {
        if let Some(c) = &self.metas[i] {
            // SAFETY: kill(2) on a pid we spawned and have not reaped.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Sends `sig` to storage node `i` (if running).
    pub fn signal_storage(&self, i: usize, sig: i32) {
        if let Some(c) = &self.storage[i] {
            // SAFETY: kill(2) on a pid we spawned and have not reaped.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// SIGTERM to storage node `i`, then waits (bounded) for it to exit; its status.
    pub async fn terminate_storage(&mut self, i: usize, timeout: Duration) -> std::process::ExitStatus {
        let c = self.storage[i].take().expect("storage node running");
        terminate(c, timeout).await
    }

    /// SIGTERM to metadata server `i`, then waits (bounded) for it to exit; its status.
    pub async fn terminate_meta(&mut self, i: usize, timeout: Duration) -> std::process::ExitStatus {
        let c = self.metas[i].take().expect("metadata server running");
        terminate(c, timeout).await
    }

    pub fn storage_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("storage-{i}"))
    }

    /// The cluster CA's directory (with `opts.tls`).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// Runs `distfs cert ARGS`, panicking on failure.
    pub fn cert(&self, args: &[&str]) {
        let out = Command::new(&self.bins.cli).arg("cert").args(args).output().expect("run distfs cert");
        assert!(out.status.success(), "distfs cert {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Issues a client certificate `name` from the cluster CA (`extra`: `--admin`,
    /// `--uid`, ...); returns its directory (for `DISTFS_TLS_DIR`).
    pub fn issue_client(&self, name: &str, extra: &[&str]) -> PathBuf {
        let ca = self.ca_dir().display().to_string();
        let mut args = vec!["issue", "--dir", &ca, "--client", name];
        args.extend_from_slice(extra);
        self.cert(&args);
        self.ca_dir().join("clients").join(name)
    }

    /// The `[tls]` section of server `name`'s config (issuing its certificate).
    fn tls_section(&self, name: &str) -> String {
        if !self.opts.tls {
            return "[tls]\nmode = \"off\"\n".into();
        }
        let ca = self.ca_dir();
        let node_dir = ca.join("nodes").join(name);
        if !node_dir.join("node.pem").exists() {
            self.cert(&["issue", "--dir", &ca.display().to_string(), "--node", name]);
        }
        format!(
            "[tls]\nmode = \"on\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            ca.join("ca.pem").display(),
            node_dir.join("node.pem").display(),
            node_dir.join("node.key").display()
        )
    }

    /// The transport of `client()`: the admin certificate with `opts.tls`.
    pub fn client_transport(&self) -> distfs_proto::ClientTransport {
        if !self.opts.tls {
            return distfs_proto::ClientTransport::default();
        }
        let d = self.ca_dir().join("clients").join("admin");
        let paths = distfs_proto::TlsPaths {
            ca: d.join("ca.pem"),
            cert: Some(d.join("client.pem")),
            key: Some(d.join("client.key")),
        };
        let tls = distfs_proto::ClientTls::load(&paths).expect("load the admin client certificate");
        distfs_proto::ClientTransport { tls: Some(std::sync::Arc::new(tls)), ..Default::default() }
    }

    fn write_configs(&mut self) {
        let o = &self.opts;
        let members: Vec<String> =
            self.meta_addrs.iter().enumerate().map(|(i, a)| format!("\"{}@{a}\"", i + 1)).collect();
        for (i, addr) in self.meta_addrs.iter().enumerate() {
            let initial = if self.meta_addrs.len() > 1 { members.join(", ") } else { String::new() };
            let meta = format!(
                "id = {}\nlisten = \"{addr}\"\nhttp_addr = \"{}\"\ndata_dir = \"{}\"\nreplication = {}\nsuspect_after = \"{}\"\ndead_after = \"{}\"\ninitial_members = [{initial}]\n{}\n{}",
                i + 1,
                self.meta_http[i],
                self.dir.path().join(format!("meta-{i}")).display(),
                o.replication,
                o.suspect_after,
                o.dead_after,
                o.meta_extra,
                self.tls_section(&format!("meta-{i}"))
            );
            std::fs::write(self.dir.path().join(format!("meta-{i}.toml")), meta).expect("write meta config");
        }
        for i in 0..self.opts.storage_nodes {
            self.write_storage_config(i);
        }
    }

    fn write_storage_config(&mut self, i: usize) {
        let meta = self.meta_addrs.clone();
        self.write_storage_config_via(i, &meta);
    }

    fn write_storage_config_via(&mut self, i: usize, meta: &[String]) {
        let host = self.opts.hosts.as_ref().map(|h| h.storage[i].ip.clone());
        if self.storage_http.len() <= i {
            self.storage_http.push(match &host {
                Some(ip) => format!("{ip}:7580"),
                None => format!("127.0.0.1:{}", free_port()),
            });
        }
        let listen = host.map(|ip| format!("{ip}:7500")).unwrap_or_else(|| "127.0.0.1:0".into());
        let o = &self.opts;
        let meta_list: Vec<String> = meta.iter().map(|a| format!("\"{a}\"")).collect();
        let s = format!(
            "listen = \"{listen}\"\nhttp_addr = \"{}\"\ndata_dir = \"{}\"\nmeta = [{}]\nzone = \"zone-{i}\"\nsync = \"{}\"\nheartbeat_interval = \"{}\"\nreserve = \"0\"\n{}\n{}",
            self.storage_http[i],
            self.storage_dir(i).display(),
            meta_list.join(", "),
            o.sync,
            o.heartbeat_interval,
            o.storage_extra,
            self.tls_section(&format!("storage-{i}"))
        );
        std::fs::write(self.dir.path().join(format!("storage-{i}.toml")), s).expect("write storage config");
    }

    /// Adds and starts one more storage node (a join); returns its index.
    pub fn add_storage(&mut self) -> usize {
        let meta = self.meta_addrs.clone();
        self.add_storage_via(&meta)
    }

    /// `add_storage` with the node reaching the metadata service at `meta` (a proxy).
    pub fn add_storage_via(&mut self, meta: &[String]) -> usize {
        let i = self.storage.len();
        self.write_storage_config_via(i, meta);
        self.storage.push(None);
        self.start_storage(i);
        i
    }

    /// Number of storage node slots (running or not).
    pub fn storage_count(&self) -> usize {
        self.storage.len()
    }

    /// SIGSTOP: the process hangs, its connections stay open (no reset).
    pub fn stop_storage(&self, i: usize) {
        if let Some(c) = &self.storage[i] {
            // SAFETY: kill(2) on a pid we spawned and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
        }
    }

    /// SIGCONT after `stop_storage`.
    pub fn cont_storage(&self, i: usize) {
        if let Some(c) = &self.storage[i] {
            // SAFETY: as above.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
    }

    fn spawn(&self, bin: &Path, config: &str, log: &str, netns: Option<&str>) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log))
            .expect("open a log file");
        // The child enters the network namespace and execs the program: its pid is the
        // server's.
        let mut cmd = match netns {
            Some(ns) => netns::command_in(ns, bin),
            None => Command::new(bin),
        };
        cmd.arg("--config")
            .arg(self.dir.path().join(config))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
    }

    /// Starts metadata server `i` (0-based) on its directory and port.
    pub fn start_meta_server(&mut self, i: usize) {
        assert!(self.metas[i].is_none(), "metadata server {i} already running");
        let ns = self.opts.hosts.as_ref().map(|h| h.meta[i].netns.clone());
        self.metas[i] = Some(self.spawn(
            &self.bins.meta.clone(),
            &format!("meta-{i}.toml"),
            &format!("meta-{i}.log"),
            ns.as_deref(),
        ));
    }

    pub fn start_storage(&mut self, i: usize) {
        assert!(self.storage[i].is_none(), "storage node {i} already running");
        let ns = self.opts.hosts.as_ref().map(|h| h.storage[i].netns.clone());
        self.storage[i] = Some(self.spawn(
            &self.bins.storage.clone(),
            &format!("storage-{i}.toml"),
            &format!("storage-{i}.log"),
            ns.as_deref(),
        ));
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill_storage(&mut self, i: usize) {
        if let Some(mut c) = self.storage[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL of metadata server `i`.
    pub fn kill_meta_server(&mut self, i: usize) {
        if let Some(mut c) = self.metas[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit (bounded).
    pub fn stop_all(&mut self) {
        let mut children: Vec<Child> = self.storage.iter_mut().filter_map(Option::take).collect();
        children.extend(self.metas.iter_mut().filter_map(Option::take));
        for c in &children {
            // SAFETY: kill(2) on a pid we spawned and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for mut c in children {
            let start = Instant::now();
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    _ if start.elapsed() > Duration::from_secs(15) => {
                        let _ = c.kill();
                        let _ = c.wait();
                        panic!("a node did not stop within 15s of SIGTERM");
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }

    /// Starts every process again on the same directories.
    pub async fn restart_all(&mut self) {
        // A restarted storage node listens on a new port and tells the metadata service
        // when it registers; until then the registry (and every layout) has the old one,
        // while a restarted metadata server already counts the node as up.
        const REGISTERED: &str = "registered with the metadata service";
        let registrations = |c: &ProcessCluster, i: usize| c.log(&format!("storage-{i}")).matches(REGISTERED).count();
        let before: Vec<usize> = (0..self.storage.len()).map(|i| registrations(self, i)).collect();
        for i in 0..self.metas.len() {
            self.start_meta_server(i);
        }
        for i in 0..self.storage.len() {
            self.start_storage(i);
        }
        self.wait_nodes_up(self.storage.len()).await;
        wait_for("every storage node registered again", Duration::from_secs(30), || {
            let again = before.iter().enumerate().all(|(i, n)| registrations(self, i) > *n);
            async move { again.then_some(()) }
        })
        .await;
    }

    /// A client with short deadlines, so failures show quickly in tests.
    pub fn client(&self) -> Client {
        Client::new(ClientConfig {
            meta: self.meta_addrs.clone(),
            meta_deadline: Duration::from_secs(10),
            block_timeout: Duration::from_secs(10),
            transport: self.client_transport(),
            ..ClientConfig::default()
        })
    }

    /// The `distfs` tool, pointed at this cluster.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(&self.bins.cli);
        c.env("DISTFS_META", self.meta_list()).env("RUST_LOG", "warn");
        if self.opts.tls {
            c.env("DISTFS_TLS_DIR", self.ca_dir().join("clients").join("admin"));
        }
        c
    }

    /// Index (0-based) of the metadata leader, as the metadata group reports it.
    pub async fn meta_leader(&self) -> Option<usize> {
        let s = self.client().meta_status().await.ok()?;
        s.leader.map(|l| (l - 1) as usize)
    }

    pub async fn nodes(&self) -> Option<Vec<NodeInfo>> {
        self.client().cluster_status().await.ok().map(|s| s.nodes)
    }

    /// Waits until `n` storage nodes are registered and up.
    pub async fn wait_nodes_up(&self, n: usize) {
        let what = format!("{n} storage nodes up");
        wait_for(&what, Duration::from_secs(30), || async {
            let nodes = self.nodes().await?;
            (nodes.iter().filter(|x| x.state == NodeState::Up).count() >= n).then_some(())
        })
        .await
    }

    /// Waits until the metadata service sees exactly `n` nodes in `state`.
    pub async fn wait_nodes_in_state(&self, state: NodeState, n: usize, timeout: Duration) {
        let what = format!("{n} storage nodes {state}");
        wait_for(&what, timeout, || async {
            let nodes = self.nodes().await?;
            (nodes.iter().filter(|x| x.state == state).count() == n).then_some(())
        })
        .await
    }

    /// The id the metadata service issued to storage node `i` (from its `node_id` file).
    pub fn node_id(&self, i: usize) -> Option<distfs_types::NodeId> {
        let text = std::fs::read_to_string(self.storage_dir(i).join("node_id")).ok()?;
        text.trim().strip_prefix("distfs-node-id v1 ")?.parse().ok().map(distfs_types::NodeId)
    }

    /// Every block file stored by storage node `i`.
    pub fn block_files(&self, i: usize) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.storage_dir(i).join("blocks")];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }

    fn dump_logs(&self) {
        let Ok(rd) = std::fs::read_dir(self.dir.path()) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("----- {} (last {} lines) -----", p.display(), tail.len());
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// SIGTERM, then polls for the exit; SIGKILL and panic after `timeout`.
async fn terminate(mut c: Child, timeout: Duration) -> std::process::ExitStatus {
    // SAFETY: kill(2) on a pid we spawned and have not reaped.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = c.try_wait() {
            return status;
        }
        if start.elapsed() > timeout {
            let _ = c.kill();
            let _ = c.wait();
            panic!("process did not exit within {timeout:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        let metas: Vec<Child> = self.metas.iter_mut().filter_map(Option::take).collect();
        for c in self.storage.iter_mut().filter_map(Option::take).chain(metas) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}
