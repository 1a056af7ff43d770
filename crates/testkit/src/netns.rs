//! A private network of Linux network namespaces for real-process fault tests: one
//! namespace per host, each with a veth pair into a bridge that lives in a namespace of
//! its own, on 10.77.0.0/24. Nothing is added to the namespace the test runs in, so runs
//! in parallel (names carry the pid) never collide, even on the same subnet.
//!
//! Faults are traffic control on each link, both ends (the host's `eth0` and its bridge
//! port): an HTB root whose unclassified traffic goes out directly, a black-hole class
//! (8 bit/s, a one-packet queue: a partition that keeps connections open, as a pulled
//! cable does) and a degraded class. u32 filters pick the class: by destination for a
//! cut, everything for a degraded link. A degraded link is `netem delay 20ms 10ms loss 5%`
//! where the kernel has netem; where it does not (`CONFIG_NET_SCH_NETEM` unset, as on
//! the CI machine) it is a slow link (4 Mbit/s, 50-packet queue: queueing delay and tail
//! drops under load) that also drops one IP packet in 16 (a u32 match on the IP id, GSO
//! off so that one packet is one segment). [`Net::netem`] says which.
//!
//! `Drop` kills whatever still runs in the namespaces (processes this test started there)
//! and deletes them, which deletes the veths and the bridge. Namespaces left by a run of
//! the same prefix whose process is gone (a crashed test) are removed at the next start.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

const PREFIX: &str = "dfsnf";
const SUBNET: &str = "10.77.0";
static SEQ: AtomicU32 = AtomicU32::new(0);

/// One host of the network.
#[derive(Clone, Debug)]
pub struct NetHost {
    /// The test's name for it (`meta-0`, `storage-3`, `client`).
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// Its address (on `eth0`).
    pub ip: String,
    /// Its port on the bridge, in the bridge namespace.
    port: String,
}

/// The network; see the module documentation.
pub struct Net {
    bridge_ns: String,
    hosts: BTreeMap<String, NetHost>,
    netem: bool,
}

/// Runs a command, failing with its stderr.
fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn must(args: &[&str]) {
    if let Err(e) = sh(args) {
        panic!("{e}");
    }
}

/// Why network-namespace tests cannot run here (`None`: they can): they need root and
/// the `ip` and `tc` programs (iproute2).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)".into());
    }
    for p in ["ip", "tc"] {
        if sh(&[p, "-V"]).is_err() {
            return Some(format!("`{p}` (iproute2) is not installed"));
        }
    }
    None
}

/// Every namespace name in `/run/netns`.
fn namespaces() -> Vec<String> {
    sh(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Kills the processes in `ns` (by pid) and deletes it.
fn remove_ns(ns: &str) {
    for pid in sh(&["ip", "netns", "pids", ns]).unwrap_or_default().split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: kill(2) of a process inside a namespace this test kit created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = sh(&["ip", "netns", "del", ns]);
}

/// Removes the namespaces of earlier runs whose process no longer exists.
fn remove_stale() {
    for ns in namespaces() {
        let Some(rest) = ns.strip_prefix(PREFIX) else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("netns: removing {ns}, left by a run (pid {pid}) that is gone");
            remove_ns(&ns);
        }
    }
}

impl Net {
    /// Creates one namespace per name, all on one bridge. Panics (after cleaning up what it
    /// made) if a step fails.
    pub fn create(names: &[&str]) -> Net {
        remove_stale();
        let run = format!("{PREFIX}{}n{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let mut net = Net { bridge_ns: format!("{run}-br"), hosts: BTreeMap::new(), netem: false };
        must(&["ip", "netns", "add", &net.bridge_ns]);
        let br = net.bridge_ns.clone();
        must(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge", "forward_delay", "0"]);
        must(&["ip", "-n", &br, "link", "set", "br0", "up"]);
        for (i, name) in names.iter().enumerate() {
            assert!(i < 200, "at most 200 hosts");
            let host = NetHost {
                name: name.to_string(),
                ns: format!("{run}-{i}"),
                ip: format!("{SUBNET}.{}", 10 + i),
                port: format!("p{i}"),
            };
            let ns = host.ns.clone();
            net.hosts.insert(name.to_string(), host.clone());
            must(&["ip", "netns", "add", &ns]);
            must(&[
                "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &host.port, "netns", &br,
            ]);
            must(&["ip", "-n", &br, "link", "set", &host.port, "master", "br0"]);
            // One packet, one segment: the loss filter then drops segments, not 64 KiB bursts.
            must(&["ip", "-n", &br, "link", "set", &host.port, "gso_max_segs", "1", "up"]);
            must(&["ip", "-n", &ns, "link", "set", "eth0", "gso_max_segs", "1"]);
            must(&["ip", "-n", &ns, "addr", "add", &format!("{}/24", host.ip), "dev", "eth0"]);
            must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        net.netem = net.probe_netem();
        for h in net.hosts.values().cloned().collect::<Vec<_>>() {
            net.reset(&h);
        }
        net
    }

    /// Whether degraded links use netem (delay, jitter, random loss) rather than the
    /// slow-link fallback.
    pub fn netem(&self) -> bool {
        self.netem
    }

    fn probe_netem(&self) -> bool {
        let h = self.hosts.values().next().expect("a host");
        let ok = sh(&["tc", "-n", &h.ns, "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", "1ms"]).is_ok();
        let _ = sh(&["tc", "-n", &h.ns, "qdisc", "del", "dev", "eth0", "root"]);
        ok
    }

    pub fn host(&self, name: &str) -> &NetHost {
        self.hosts.get(name).unwrap_or_else(|| panic!("no host {name}"))
    }

    pub fn ip(&self, name: &str) -> &str {
        &self.host(name).ip
    }

    pub fn ns(&self, name: &str) -> &str {
        &self.host(name).ns
    }

    /// Both ends of `h`'s link: (namespace, device).
    fn ends(&self, h: &NetHost) -> [(String, String); 2] {
        [(h.ns.clone(), "eth0".into()), (self.bridge_ns.clone(), h.port.clone())]
    }

    /// Fresh qdiscs on both ends of `h`'s link: no filter, nothing queued.
    fn reset(&self, h: &NetHost) {
        for (ns, dev) in self.ends(h) {
            let _ = sh(&["tc", "-n", &ns, "qdisc", "del", "dev", &dev, "root"]);
            let tc = |args: &[&str]| {
                let mut v = vec!["tc", "-n", &ns];
                v.extend_from_slice(args);
                must(&v);
            };
            tc(&["qdisc", "add", "dev", &dev, "root", "handle", "1:", "htb", "r2q", "1"]);
            // 1:20 degraded.
            if self.netem {
                tc(&["class", "add", "dev", &dev, "parent", "1:", "classid", "1:20", "htb", "rate", "10gbit"]);
                tc(&[
                    "qdisc", "add", "dev", &dev, "parent", "1:20", "handle", "20:", "netem", "delay", "20ms", "10ms",
                    "loss", "5%", "limit", "10000",
                ]);
            } else {
                tc(&[
                    "class", "add", "dev", &dev, "parent", "1:", "classid", "1:20", "htb", "rate", "4mbit", "ceil",
                    "4mbit",
                ]);
                tc(&["qdisc", "add", "dev", &dev, "parent", "1:20", "handle", "20:", "pfifo", "limit", "50"]);
            }
            // 1:30 black hole.
            tc(&[
                "class", "add", "dev", &dev, "parent", "1:", "classid", "1:30", "htb", "rate", "8bit", "ceil", "8bit",
            ]);
            tc(&["qdisc", "add", "dev", &dev, "parent", "1:30", "handle", "30:", "pfifo", "limit", "1"]);
        }
    }

    fn filter(&self, ns: &str, dev: &str, prio: &str, matches: &[&str], class: &str) {
        let mut v =
            vec!["tc", "-n", ns, "filter", "add", "dev", dev, "parent", "1:", "prio", prio, "protocol", "ip", "u32"];
        v.extend_from_slice(matches);
        v.extend_from_slice(&["flowid", class]);
        must(&v);
    }

    /// Cuts the link between hosts `a` and `b`, both directions (other links stay).
    pub fn cut(&self, a: &str, b: &str) {
        let (ha, hb) = (self.host(a), self.host(b));
        let dst_b = format!("{}/32", hb.ip);
        let dst_a = format!("{}/32", ha.ip);
        self.filter(&ha.ns, "eth0", "1", &["match", "ip", "dst", &dst_b], "1:30");
        self.filter(&hb.ns, "eth0", "1", &["match", "ip", "dst", &dst_a], "1:30");
    }

    /// Cuts host `a` off from every other host.
    pub fn isolate(&self, a: &str) {
        let h = self.host(a);
        let all = format!("{SUBNET}.0/24");
        for (ns, dev) in self.ends(h) {
            self.filter(&ns, &dev, "1", &["match", "ip", "dst", &all], "1:30");
        }
    }

    /// Degrades host `a`'s link, both directions (see the module documentation).
    pub fn degrade(&self, a: &str) {
        let h = self.host(a);
        let all = format!("{SUBNET}.0/24");
        for (ns, dev) in self.ends(h) {
            if !self.netem {
                // IP id ≡ 1 (mod 16): one packet in 16 (id 0, as a SYN-ACK's, is spared).
                self.filter(
                    &ns,
                    &dev,
                    "2",
                    &["match", "ip", "dst", &all, "match", "u16", "0x0001", "0x000f", "at", "4"],
                    "1:30",
                );
            }
            self.filter(&ns, &dev, "3", &["match", "ip", "dst", &all], "1:20");
        }
    }

    /// Removes every cut and degradation of host `a`'s link.
    pub fn heal(&self, a: &str) {
        self.reset(self.host(a));
    }

    /// Removes every fault on every link.
    pub fn heal_all(&self) {
        for h in self.hosts.values() {
            self.reset(h);
        }
    }

    /// A command that runs `program` on host `name` (`command_in`).
    pub fn command(&self, name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(self.ns(name), program)
    }

    /// Runs `f` to completion on a new thread that has entered host `name`'s namespace, on a
    /// tokio runtime whose threads are all in it: every socket the future opens is on
    /// that host. A panic in `f` is resumed here.
    pub fn block_on_in<R, Fut>(&self, name: &str, f: impl FnOnce() -> Fut + Send) -> R
    where
        R: Send,
        Fut: Future<Output = R>,
    {
        let path = format!("/run/netns/{}", self.ns(name));
        std::thread::scope(|s| {
            let t = s.spawn(move || {
                let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                use std::os::fd::AsRawFd;
                // SAFETY: setns(2) on a valid namespace descriptor; it changes only this thread.
                let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns into {path}: {}", std::io::Error::last_os_error());
                // Threads started from here on (the runtime's workers, its blocking pool)
                // inherit the namespace.
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(4)
                    .enable_all()
                    .build()
                    .expect("build a runtime");
                rt.block_on(f())
            });
            t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in self.hosts.values() {
            remove_ns(&h.ns);
        }
        remove_ns(&self.bridge_ns);
    }
}

/// A command that runs `program` in the network namespace `ns` (a name under
/// `/run/netns`): the child enters it (`setns`) before it execs, and nothing else, so its
/// pid is the program's. Not `ip netns exec`, which also gives the child a mount namespace
/// of its own: that copy of the mount table keeps every FUSE mount that existed when it was
/// made alive (the root mount here is private, so unmounts do not propagate into it), and
/// a mount another test unmounted meanwhile did not see its session end until this child
/// exited.
pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let path = format!("/run/netns/{ns}");
    let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    let mut c = Command::new(program);
    // SAFETY: the closure runs in the forked child before exec and only calls setns(2),
    // which is async-signal-safe, on a descriptor the closure owns (opened close-on-exec,
    // so the program does not inherit it).
    unsafe {
        c.pre_exec(move || match libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
    c
}
