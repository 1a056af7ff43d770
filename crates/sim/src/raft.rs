//! The metadata Raft group under simulation: the production openraft `Raft<TypeConfig>`
//! (3 or 5 voters), the production segmented `LogStore` on `MemLogDir` and the
//! `StateMachine` over redb on `MemDisk` (a crash keeps only what was fsynced), inside a current-thread tokio runtime on paused
//! (virtual) time, with openraft's election-timeout rng seeded through
//! `distfs_meta::raft::seed_raft_rng`. The simulated network between the nodes drops,
//! delays (hence reorders) and partitions RPCs; nodes crash and restart, pause (messages
//! held), run on skewed clocks (each node's Raft timers scaled) and see clock jumps
//! (a forward jump expires the election timer at once); clients submit commands with
//! timestamps from the skewed clock of the node they talk to. After healing, the
//! invariants: one leader per term (as the nodes report it and as the acknowledgements
//! show it), every acknowledged command in every replica, identical namespaces, equal
//! applied indexes. One seed is one run, replayed exactly (`trace_hash`).

use crate::raft_disk::MemDisk;
use crate::SimError;
use distfs_meta::lease::{self, LeaseCheck, ReadLease};
use distfs_meta::raft::{seed_raft_rng, LogOptions, LogStore, MemLogDir, MetaRaft, StateMachine, TypeConfig};
use distfs_meta::state::{Command, CommandResponse, CommandResult, Format, Reader, StateStore};
use distfs_proto::{SliceWrite, WrittenBlock};
use distfs_types::{BlockId, BlockRef, InodeId, NodeId, Timestamp};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Shape of one Raft run.
#[derive(Clone, Copy, Debug)]
pub struct RaftSimConfig {
    /// Voters in the group; 0: the seed picks 3 or 5.
    pub voters: u64,
    pub clients: u32,
    /// Virtual time of the faulty phase.
    pub run_for: Duration,
    /// Bound on the virtual time the healed cluster gets to converge.
    pub converge_within: Duration,
    /// Run a reader that checks reads through the read lease (`reader`). Off by default
    /// so that the seeds of the injected-bug tests keep their schedules (the reader's
    /// leadership rounds are RPCs, which draw delays from the seed's generator).
    pub reads: bool,
}

impl Default for RaftSimConfig {
    fn default() -> Self {
        RaftSimConfig {
            voters: 0,
            clients: 3,
            run_for: Duration::from_millis(2500),
            converge_within: Duration::from_secs(30),
            reads: false,
        }
    }
}

/// What a passing run did; `trace_hash` digests every event with its virtual time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftReport {
    pub voters: u64,
    pub acked: u32,
    pub unknown: u32,
    pub refused: u32,
    pub crashes: u32,
    pub partitions: u32,
    pub pauses: u32,
    pub jumps: u32,
    pub rpcs: u64,
    pub dropped: u64,
    /// Reads answered within a node's read lease, and after a leadership round.
    pub lease_reads: u32,
    pub round_reads: u32,
    /// Snapshot chunks delivered (a follower behind the purged log catches up from one).
    pub snapshots: u64,
    /// Highest term in which a node reported itself leader.
    pub terms: u64,
    pub last_applied: u64,
    pub trace_hash: u64,
}

/// The command that replays `seed` of the Raft simulation.
pub fn raft_replay_command(seed: u64) -> String {
    format!("scripts/sim --raft --seed {seed}")
}

/// A node's clock as it reads it: virtual time scaled by its rate, plus its offset
/// (which jumps move, also backwards).
#[derive(Clone, Copy, Debug)]
struct Clock {
    /// Local seconds per real second.
    rate: f64,
    offset_ms: i64,
}

impl Clock {
    fn now(&self, since_start: Duration) -> Timestamp {
        let ms = (since_start.as_millis() as f64 * self.rate) as i64 + self.offset_ms;
        let ms = 1_700_000_000_000i64 + ms;
        Timestamp { secs: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as u32 }
    }
}

/// One simulated metadata server.
struct Node {
    incarnation: u64,
    up: bool,
    raft: Option<MetaRaft>,
    log_disk: MemLogDir,
    state_disk: MemDisk,
    store: Option<StateStore>,
    clock: Clock,
    config: Arc<Config>,
    /// Messages to and from the node are held until then (a process pause).
    paused_until: Option<Instant>,
    /// The read lease this incarnation holds (`distfs_meta::lease`), as the metadata
    /// service keeps it: memory only, gone with a crash.
    lease: Option<ReadLease>,
}

/// Everything the tasks share. The lock is never held across an await.
struct World {
    rng: StdRng,
    start: Instant,
    nodes: BTreeMap<u64, Node>,
    /// Partition side of each node; nodes talk only within a side.
    side: BTreeMap<u64, u8>,
    drop_per_mille: u32,
    max_delay_ms: u64,
    trace: std::collections::hash_map::DefaultHasher,
    events: u64,
    /// (term → leaders) as the nodes' own metrics report them.
    leaders_seen: BTreeMap<u64, BTreeSet<u64>>,
    /// (term → nodes that acknowledged a client write of that term).
    ackers: BTreeMap<u64, BTreeSet<u64>>,
    /// Reads that missed a write acknowledged before they began.
    stale_reads: Vec<String>,
    report: RaftReport,
    verbose: bool,
}

type Shared = Arc<Mutex<World>>;

fn lock(w: &Shared) -> MutexGuard<'_, World> {
    w.lock().unwrap_or_else(PoisonError::into_inner)
}

impl World {
    fn elapsed(&self) -> Duration {
        Instant::now().duration_since(self.start)
    }

    /// Records one event in the trace (virtual time + description).
    fn event(&mut self, what: std::fmt::Arguments<'_>) {
        let t = self.elapsed().as_micros();
        let s = what.to_string();
        t.hash(&mut self.trace);
        s.hash(&mut self.trace);
        self.events += 1;
        if self.verbose {
            println!("{:>9.3} ms  {s}", t as f64 / 1000.0);
        }
    }

    fn connected(&self, a: u64, b: u64) -> bool {
        self.side.get(&a) == self.side.get(&b)
    }

    fn live(&self, id: u64, incarnation: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.up && n.incarnation == incarnation)
    }

    fn delay(&mut self) -> Duration {
        Duration::from_micros(self.rng.random_range(0..=self.max_delay_ms * 1000))
    }

    fn held_until(&self, id: u64) -> Option<Instant> {
        self.nodes.get(&id).and_then(|n| n.paused_until).filter(|t| *t > Instant::now())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("simulated network: {0}")]
struct NetFault(&'static str);

/// The network factory of one node incarnation.
struct SimNet {
    world: Shared,
    from: u64,
    incarnation: u64,
}

struct SimPeer {
    world: Shared,
    from: u64,
    incarnation: u64,
    target: u64,
}

impl RaftNetworkFactory<TypeConfig> for SimNet {
    type Network = SimPeer;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> SimPeer {
        SimPeer { world: self.world.clone(), from: self.from, incarnation: self.incarnation, target }
    }
}

async fn hold(world: &Shared, id: u64) {
    let until = lock(world).held_until(id);
    if let Some(t) = until {
        tokio::time::sleep_until(t).await;
    }
}

impl SimPeer {
    /// Carries one RPC: delay, maybe drop, deliver to the target's current incarnation,
    /// delay the reply, maybe drop it. A lost message is a `NetworkError` after the
    /// delay (never `Unreachable`: that sends openraft's replication into a backoff whose
    /// un-biased `tokio::select!` would draw from tokio's unseeded rng).
    async fn carry<Req, Resp, E, F, Fut>(
        &self,
        kind: &'static str,
        req: Req,
        call: F,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        E: std::error::Error,
        RaftError<u64, E>: std::error::Error,
        F: FnOnce(MetaRaft, Req) -> Fut,
        Fut: Future<Output = Result<Resp, RaftError<u64, E>>>,
    {
        let lost = |why: &'static str| RPCError::Network(NetworkError::new(&NetFault(why)));
        let (d1, drop1) = {
            let mut w = lock(&self.world);
            w.report.rpcs += 1;
            let d = w.delay();
            let drop = w.rng.random_range(0..1000) < w.drop_per_mille;
            (d, drop)
        };
        hold(&self.world, self.from).await;
        tokio::time::sleep(d1).await;
        hold(&self.world, self.target).await;
        let (raft, target_inc) = {
            let mut w = lock(&self.world);
            let (from, to) = (self.from, self.target);
            if !w.live(from, self.incarnation) {
                return Err(lost("sender crashed"));
            }
            let reach = w.connected(from, to) && w.nodes.get(&to).is_some_and(|n| n.up);
            if !reach || drop1 {
                w.report.dropped += 1;
                w.event(format_args!("{kind} {from}->{to} lost"));
                return Err(lost(if drop1 { "dropped" } else { "partitioned or down" }));
            }
            w.event(format_args!("{kind} {from}->{to} delivered"));
            if kind == "snapshot" {
                w.report.snapshots += 1;
            }
            let n = &w.nodes[&to];
            match &n.raft {
                Some(r) => (r.clone(), n.incarnation),
                None => return Err(lost("target not running")),
            }
        };
        let r = call(raft, req).await;
        let (d2, drop2) = {
            let mut w = lock(&self.world);
            let d = w.delay();
            let drop = w.rng.random_range(0..1000) < w.drop_per_mille;
            (d, drop)
        };
        tokio::time::sleep(d2).await;
        hold(&self.world, self.target).await;
        let mut w = lock(&self.world);
        let (from, to) = (self.from, self.target);
        if drop2 || !w.live(to, target_inc) || !w.connected(from, to) {
            w.report.dropped += 1;
            w.event(format_args!("{kind} {from}->{to} reply lost"));
            return Err(lost("reply lost"));
        }
        w.event(format_args!("{kind} {from}->{to} replied ok={}", r.is_ok()));
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
    }
}

impl RaftNetwork<TypeConfig> for SimPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.carry("append", rpc, |r, q| async move { r.append_entries(q).await }).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        self.carry("snapshot", rpc, |r, q| async move { r.install_snapshot(q).await }).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.carry("vote", rpc, |r, q| async move { r.vote(q).await }).await
    }
}

/// Raft timing of a node whose clock runs at `rate`: every interval it measures takes
/// 1/rate of real time.
fn node_config(rate: f64) -> Result<Config, SimError> {
    let ms = |base: u64| ((base as f64 / rate).round() as u64).max(1);
    let c = Config {
        cluster_name: "sim".into(),
        heartbeat_interval: ms(50),
        election_timeout_min: ms(300),
        election_timeout_max: ms(600),
        install_snapshot_timeout: ms(400),
        max_payload_entries: 8,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(24),
        max_in_snapshot_log_to_keep: 4,
        purge_batch_size: 1,
        ..Config::default()
    };
    c.validate().map_err(|e| SimError::Setup(format!("raft config: {e}")))
}

/// Small segments, so that roll-over and the deletion of purged segments happen in a run.
const SIM_LOG: LogOptions = LogOptions { segment_size: 2048, preallocate: false };

/// Starts (or restarts) node `id` on its disks.
async fn start_node(world: &Shared, id: u64) -> Result<(), SimError> {
    let (log_disk, state_disk, config, incarnation) = {
        let mut w = lock(world);
        let n = w.nodes.get_mut(&id).ok_or_else(|| SimError::Setup(format!("no node {id}")))?;
        n.incarnation += 1;
        (n.log_disk.clone(), n.state_disk.clone(), n.config.clone(), n.incarnation)
    };
    let log =
        LogStore::open_on(Arc::new(log_disk), SIM_LOG).map_err(|e| SimError::Meta(format!("node {id} log: {e}")))?;
    let store = StateStore::with_backend(state_disk).map_err(|e| SimError::Meta(format!("node {id} state: {e}")))?;
    let net = SimNet { world: world.clone(), from: id, incarnation };
    let raft = openraft::Raft::new(id, config, net, log, StateMachine::new(store.clone()))
        .await
        .map_err(|e| SimError::Meta(format!("node {id} raft start: {e}")))?;
    let mut rx = raft.metrics();
    {
        let mut w = lock(world);
        let n = w.nodes.get_mut(&id).ok_or_else(|| SimError::Setup(format!("no node {id}")))?;
        n.raft = Some(raft);
        n.store = Some(store);
        n.lease = None;
        n.up = true;
        w.event(format_args!("node {id} started (incarnation {incarnation})"));
    }
    // Watches the node's own view: who is leader in which term.
    let w2 = world.clone();
    tokio::spawn(async move {
        loop {
            let (term, state, leader, applied) = {
                let m = rx.borrow_and_update();
                (m.current_term, m.state, m.current_leader, m.last_applied.map(|l| l.index))
            };
            {
                let mut w = lock(&w2);
                if !w.live(id, incarnation) {
                    return;
                }
                if state == ServerState::Leader {
                    w.leaders_seen.entry(term).or_default().insert(id);
                }
                w.event(format_args!("node {id} metrics term {term} {state:?} leader {leader:?} applied {applied:?}"));
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Crash: the node stops at once; its disks keep what was synced.
async fn crash_node(world: &Shared, id: u64) {
    let raft = {
        let mut w = lock(world);
        let Some(n) = w.nodes.get_mut(&id) else { return };
        if !n.up {
            return;
        }
        n.up = false;
        n.log_disk = n.log_disk.after_crash();
        n.state_disk = n.state_disk.after_crash();
        n.store = None;
        let r = n.raft.take();
        w.report.crashes += 1;
        w.event(format_args!("node {id} crashed"));
        r
    };
    if let Some(r) = raft {
        // The dying instance can no longer reach anyone (its incarnation is gone) and
        // writes only to the forked-away disks; stop its tasks.
        let _ = r.shutdown().await;
    }
}

enum Outcome {
    Acked(u64, CommandResponse),
    /// The command may or may not be in the log (the node died or the answer was lost).
    Unknown,
    /// Definitely not applied (no leader reachable, every attempt refused).
    Refused,
}

/// A client: sends `make(now)` to the node it believes is leader, follows
/// `ForwardToLeader`, gives up after a few attempts.
async fn submit(world: &Shared, hint: &mut Option<u64>, make: &(dyn Fn(Timestamp) -> Command + Sync)) -> Outcome {
    for _attempt in 0..6 {
        let (target, raft, incarnation, cmd, d) = {
            let mut w = lock(world);
            let voters = w.nodes.len() as u64;
            let target = match *hint {
                Some(t) => t,
                None => w.rng.random_range(1..=voters),
            };
            let d = w.delay();
            let since = w.elapsed();
            let n = &w.nodes[&target];
            let cmd = make(n.clock.now(since));
            (target, n.raft.clone().filter(|_| n.up), n.incarnation, cmd, d)
        };
        tokio::time::sleep(d).await;
        hold(world, target).await;
        let Some(raft) = raft else {
            *hint = None;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if !lock(world).live(target, incarnation) {
            *hint = None;
            continue;
        }
        let r = tokio::time::timeout(Duration::from_millis(1500), raft.client_write(cmd)).await;
        tokio::time::sleep(d).await;
        // What to do next, decided under the lock; the waiting happens after it.
        let backoff = {
            let mut w = lock(world);
            if !w.live(target, incarnation) {
                w.event(format_args!("client: node {target} died with the request"));
                *hint = None;
                return Outcome::Unknown;
            }
            match r {
                Err(_elapsed) => {
                    w.event(format_args!("client: node {target} timed out"));
                    *hint = None;
                    return Outcome::Unknown;
                }
                Ok(Ok(resp)) => {
                    let term = resp.log_id.leader_id.term;
                    w.ackers.entry(term).or_default().insert(target);
                    w.event(format_args!("client: acked by {target} at {} term {term}", resp.log_id.index));
                    return Outcome::Acked(resp.log_id.index, resp.data);
                }
                Ok(Err(e)) => match e.forward_to_leader::<BasicNode>() {
                    Some(f) => {
                        *hint = f.leader_id;
                        w.event(format_args!("client: {target} forwards to {:?}", f.leader_id));
                        hint.is_none()
                    }
                    None => {
                        // Fatal (stopped) or a membership refusal: not proposed.
                        w.event(format_args!("client: {target} refused: {e}"));
                        *hint = None;
                        true
                    }
                },
            }
        };
        if backoff {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Outcome::Refused
}

/// What the clients were told.
#[derive(Default)]
struct Acks {
    /// name → (parent, inode) of acknowledged creates and mkdirs.
    names: BTreeMap<String, (InodeId, InodeId)>,
    /// The same names in the order they were acknowledged.
    order: Vec<String>,
    /// file → acknowledged commits in log order: (log index, block, version answered).
    commits: BTreeMap<InodeId, Vec<(u64, BlockId, u64)>>,
    /// file → blocks of commits whose outcome is unknown, with the index of the last
    /// acknowledged commit of the file when they were sent.
    maybe: BTreeMap<InodeId, Vec<(BlockId, u64)>>,
}

fn format_cmd(now: Timestamp) -> Command {
    Command::Format { format: Format { chunk_size: 1 << 20, block_size: 1 << 16, replication: 3 }, now }
}

async fn client(world: Shared, acks: Arc<Mutex<Acks>>, me: u32, until: Instant, base_block: u128) {
    let mut hint = None;
    let mut n = 0u64;
    let mut dirs: Vec<InodeId> = vec![InodeId::ROOT];
    let mut files: Vec<InodeId> = Vec::new();
    let mut next_block = base_block;
    while Instant::now() < until {
        let (pause, op, pick) = {
            let mut w = lock(&world);
            (w.rng.random_range(5..80u64), w.rng.random_range(0..10u32), w.rng.random::<u64>())
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        n += 1;
        let report = |o: &Outcome| {
            let mut w = lock(&world);
            match o {
                Outcome::Acked(..) => w.report.acked += 1,
                Outcome::Unknown => w.report.unknown += 1,
                Outcome::Refused => w.report.refused += 1,
            }
        };
        if op < 6 || files.is_empty() {
            let dir = op < 2;
            let name = format!("{}{me}-{n}", if dir { "d" } else { "f" });
            let parent = dirs[(pick % dirs.len() as u64) as usize];
            let nm = name.clone();
            let make = move |now| {
                if dir {
                    Command::Mkdir { parent, name: nm.clone(), perm: 0o755, uid: 0, gid: 0, now }
                } else {
                    Command::Create {
                        parent,
                        name: nm.clone(),
                        perm: 0o644,
                        uid: 0,
                        gid: 0,
                        exclusive: true,
                        now,
                        open: None,
                    }
                }
            };
            let o = submit(&world, &mut hint, &make).await;
            report(&o);
            if let Outcome::Acked(_, CommandResponse(Ok(CommandResult::Attr(a)))) = &o {
                let mut acked = lock_acks(&acks);
                acked.order.push(name.clone());
                acked.names.insert(name, (parent, a.ino));
                if dir {
                    dirs.push(a.ino);
                } else {
                    files.push(a.ino);
                }
            } else if let Outcome::Acked(i, r) = &o {
                let mut w = lock(&world);
                w.event(format_args!("client {me}: create {name} at {i} answered {r:?}"));
            }
        } else {
            let ino = files[(pick % files.len() as u64) as usize];
            let block = BlockId(next_block);
            next_block += 1;
            let make = move |now| Command::CommitWrite {
                ino,
                slices: vec![SliceWrite {
                    chunk: 0,
                    offset: 0,
                    len: 100,
                    blocks: vec![WrittenBlock {
                        block: BlockRef { id: block, len: 100 },
                        replicas: vec![NodeId(1), NodeId(2), NodeId(3)],
                    }],
                    inline: None,
                }],
                min_size: 100,
                mtime: now,
                bad: Vec::new(),
                now,
            };
            let last_acked = lock_acks(&acks).commits.get(&ino).and_then(|v| v.last()).map_or(0, |c| c.0);
            let o = submit(&world, &mut hint, &make).await;
            report(&o);
            match o {
                Outcome::Acked(i, CommandResponse(Ok(CommandResult::Attr(a)))) => {
                    lock_acks(&acks).commits.entry(ino).or_default().push((i, block, a.version));
                }
                Outcome::Acked(i, r) => {
                    let mut w = lock(&world);
                    w.event(format_args!("client {me}: commit to {ino} at {i} answered {r:?}"));
                    lock_acks(&acks).maybe.entry(ino).or_default().push((block, last_acked));
                }
                Outcome::Unknown => lock_acks(&acks).maybe.entry(ino).or_default().push((block, last_acked)),
                Outcome::Refused => {}
            }
        }
    }
}

/// A reader: asks a random node (not the leader it was told of: an old leader cut off
/// from the majority is the one a lease must stop) whether a name whose create was
/// acknowledged before the read began exists, the way the metadata service answers a
/// read: from local state within the node's read lease, else after a leadership round
/// (`lease::leadership_round`, the service's own) that renews the lease. A node that answers must find the
/// name. It draws from its own generator, so the other tasks' choices stay those of the
/// seed without it.
async fn reader(world: Shared, acks: Arc<Mutex<Acks>>, until: Instant, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x001e_a5e4_ead5);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..40u64))).await;
        let (target, want) = {
            let w = lock(&world);
            // Mostly a node that believes it leads (a client with an old hint), so that
            // a deposed leader cut off from the majority is asked too.
            let leaders: Vec<u64> = w
                .nodes
                .iter()
                .filter(|(id, n)| {
                    n.up && n.raft.as_ref().is_some_and(|r| r.metrics().borrow().current_leader == Some(**id))
                })
                .map(|(id, _)| *id)
                .collect();
            let target = match leaders.len() {
                0 => rng.random_range(1..=w.nodes.len() as u64),
                n if rng.random_range(0..3) > 0 => leaders[rng.random_range(0..n)],
                _ => rng.random_range(1..=w.nodes.len() as u64),
            };
            // Mostly the newest acknowledged name: the one a stale state would miss.
            let a = lock_acks(&acks);
            let name = match a.order.len() {
                0 => None,
                _ if rng.random_range(0..2) == 0 => a.order.last().cloned(),
                n => Some(a.order[rng.random_range(0..n)].clone()),
            };
            let want = name.and_then(|n| a.names.get(&n).map(|p| (n, *p)));
            (target, want)
        };
        let Some((name, (parent, ino))) = want else { continue };
        hold(&world, target).await;
        let (raft, store, incarnation, lease, min) = {
            let w = lock(&world);
            let n = &w.nodes[&target];
            let min = Duration::from_millis(n.config.election_timeout_min);
            (n.raft.clone().filter(|_| n.up), n.store.clone(), n.incarnation, n.lease, min)
        };
        let (Some(raft), Some(store)) = (raft, store) else { continue };
        let (term, leads) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.current_term, m.current_leader == Some(target))
        };
        let local = match lease::check(lease, term, leads, Instant::now().into_std()) {
            LeaseCheck::Local | LeaseCheck::LocalRenew => true,
            LeaseCheck::Round => {
                let started = Instant::now().into_std();
                let r = lease::leadership_round(&raft, Duration::from_millis(1500)).await;
                if r.is_err() {
                    continue;
                }
                let mut w = lock(&world);
                let Some(n) = w.nodes.get_mut(&target).filter(|n| n.incarnation == incarnation && n.up) else {
                    continue;
                };
                n.lease = Some(lease::keep(n.lease, lease::after_round(started, term, min)));
                false
            }
        };
        let found = store.read().and_then(|r| r.dentry(parent, &name));
        let mut w = lock(&world);
        if local {
            w.report.lease_reads += 1;
        } else {
            w.report.round_reads += 1;
        }
        let how = if local { "within its lease" } else { "after a round" };
        match found {
            Ok(Some(d)) if d.ino == ino => {
                w.event(format_args!("reader: node {target} found {name} {how}"));
            }
            other => {
                let what = format!(
                    "node {target} (term {term}) answered {how} that acknowledged {name} (inode {ino} in {parent}) is {other:?}"
                );
                w.event(format_args!("reader: STALE {what}"));
                w.stale_reads.push(what);
            }
        }
    }
}

fn lock_acks(a: &Arc<Mutex<Acks>>) -> MutexGuard<'_, Acks> {
    a.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The fault schedule: partitions, crashes and restarts, pauses, clock jumps. With
/// `long_partitions` (runs with the reader), a third of the partitions stay as they are
/// for 1.5..2.5 s, past the followers' promise not to vote, so that the majority side
/// elects a leader while the old one, cut off, still believes it leads.
async fn nemesis(world: Shared, until: Instant, long_partitions: bool) -> Result<(), SimError> {
    let mut down: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut sides_held_until: Option<Instant> = None;
    while Instant::now() < until {
        let (wait, what, pick, len_ms) = {
            let mut w = lock(&world);
            let voters = w.nodes.len() as u64;
            (
                w.rng.random_range(20..250u64),
                w.rng.random_range(0..10u32),
                w.rng.random_range(1..=voters),
                w.rng.random_range(50..900u64),
            )
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let now = Instant::now();
        let due: Vec<u64> = down.iter().filter(|(_, t)| **t <= now).map(|(id, _)| *id).collect();
        for id in due {
            down.remove(&id);
            start_node(&world, id).await?;
        }
        let sides_held = sides_held_until.is_some_and(|t| now < t);
        match what {
            0..=3 if sides_held => {}
            0 | 1 => {
                let mut w = lock(&world);
                let ids: Vec<u64> = w.nodes.keys().copied().collect();
                for id in ids {
                    let s = w.rng.random_range(0..2u8);
                    w.side.insert(id, s);
                }
                let sides = format!("{:?}", w.side);
                w.report.partitions += 1;
                w.event(format_args!("partition {sides}"));
                if long_partitions && w.rng.random_range(0..3u32) == 0 {
                    let hold = w.rng.random_range(1500..2500u64);
                    sides_held_until = Some(now + Duration::from_millis(hold));
                    w.event(format_args!("partition held for {hold} ms"));
                }
            }
            2 | 3 => {
                let mut w = lock(&world);
                for s in w.side.values_mut() {
                    *s = 0;
                }
                w.event(format_args!("partition healed"));
            }
            4 | 5 => {
                if let std::collections::btree_map::Entry::Vacant(e) = down.entry(pick) {
                    e.insert(now + Duration::from_millis(len_ms));
                    crash_node(&world, pick).await;
                }
            }
            6 => {
                let mut w = lock(&world);
                if let Some(n) = w.nodes.get_mut(&pick) {
                    n.paused_until = Some(now + Duration::from_millis(len_ms / 2));
                }
                w.report.pauses += 1;
                w.event(format_args!("node {pick} paused for {} ms", len_ms / 2));
            }
            7 => {
                // A clock jump. Forward: the node's election timer has expired at once.
                // Either way its command timestamps move by the jump.
                let (raft, jump) = {
                    let mut w = lock(&world);
                    let jump = w.rng.random_range(-5000..5000i64);
                    let n = w.nodes.get_mut(&pick);
                    let raft = n.and_then(|n| {
                        n.clock.offset_ms += jump;
                        n.raft.clone().filter(|_| n.up)
                    });
                    w.report.jumps += 1;
                    w.event(format_args!("node {pick} clock jumps {jump} ms"));
                    (raft, jump)
                };
                if let (Some(r), true) = (raft, jump > 0) {
                    let _ = r.trigger().elect().await;
                }
            }
            _ => {}
        }
    }
    // Heal: everyone back, one side, no pauses.
    for id in down.keys().copied().collect::<Vec<_>>() {
        start_node(&world, id).await?;
    }
    let mut w = lock(&world);
    for s in w.side.values_mut() {
        *s = 0;
    }
    for n in w.nodes.values_mut() {
        n.paused_until = None;
    }
    w.event(format_args!("healed"));
    Ok(())
}

/// Runs one seed of the Raft simulation on its own runtime.
pub fn run_raft(seed: u64, cfg: RaftSimConfig) -> Result<RaftReport, SimError> {
    run_raft_traced(seed, cfg, false)
}

/// `run_raft`, printing every event when `verbose`.
pub fn run_raft_traced(seed: u64, cfg: RaftSimConfig, verbose: bool) -> Result<RaftReport, SimError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| SimError::Setup(format!("runtime: {e}")))?;
    let r = rt.block_on(run_inner(seed, cfg, verbose));
    // Stops whatever the run left behind before the runtime goes.
    rt.shutdown_background();
    r
}

async fn run_inner(seed: u64, cfg: RaftSimConfig, verbose: bool) -> Result<RaftReport, SimError> {
    seed_raft_rng(seed ^ 0x005e_ed0f_7a57);
    let mut rng = StdRng::seed_from_u64(seed);
    let voters = match cfg.voters {
        0 => [3, 5][rng.random_range(0..2usize)],
        v => v,
    };
    let mut nodes = BTreeMap::new();
    for id in 1..=voters {
        let rate = rng.random_range(0.8..1.25);
        let clock = Clock { rate, offset_ms: rng.random_range(-2000..2000) };
        nodes.insert(
            id,
            Node {
                incarnation: 0,
                up: false,
                raft: None,
                log_disk: MemLogDir::new(),
                state_disk: MemDisk::new(),
                store: None,
                clock,
                config: Arc::new(node_config(rate)?),
                paused_until: None,
                lease: None,
            },
        );
    }
    let world: Shared = Arc::new(Mutex::new(World {
        drop_per_mille: rng.random_range(0..150),
        max_delay_ms: rng.random_range(1..25),
        rng,
        start: Instant::now(),
        nodes,
        side: (1..=voters).map(|id| (id, 0)).collect(),
        trace: std::collections::hash_map::DefaultHasher::new(),
        events: 0,
        leaders_seen: BTreeMap::new(),
        ackers: BTreeMap::new(),
        stale_reads: Vec::new(),
        report: RaftReport::default(),
        verbose,
    }));
    for id in 1..=voters {
        start_node(&world, id).await?;
    }
    let members: BTreeMap<u64, BasicNode> = (1..=voters).map(|id| (id, BasicNode::new(format!("meta-{id}")))).collect();
    let first = lock(&world).nodes[&1].raft.clone().ok_or_else(|| SimError::Setup("node 1 not running".into()))?;
    first.initialize(members).await.map_err(|e| SimError::Setup(format!("initialize: {e}")))?;
    // The file system is formatted before the clients start (retried until acknowledged).
    let mut hint = None;
    let mut formatted = false;
    for _ in 0..20 {
        if let Outcome::Acked(..) = submit(&world, &mut hint, &format_cmd).await {
            formatted = true;
            break;
        }
    }
    if !formatted {
        return Err(SimError::Setup("format was never acknowledged".into()));
    }

    let until = Instant::now() + cfg.run_for;
    let acks = Arc::new(Mutex::new(Acks::default()));
    let mut clients = Vec::new();
    for c in 0..cfg.clients {
        clients.push(tokio::spawn(client(world.clone(), acks.clone(), c, until, (c as u128 + 1) << 40)));
    }
    if cfg.reads {
        clients.push(tokio::spawn(reader(world.clone(), acks.clone(), until, seed)));
    }
    nemesis(world.clone(), until, cfg.reads).await?;
    for c in clients {
        c.await.map_err(|e| SimError::Setup(format!("client task: {e}")))?;
    }
    // A barrier write through the healed cluster, then wait until every replica applied it.
    let deadline = Instant::now() + cfg.converge_within;
    let barrier = loop {
        if Instant::now() > deadline {
            return Err(SimError::Invariant(format!(
                "the healed cluster acknowledged no write within {:?}",
                cfg.converge_within
            )));
        }
        let mut hint = None;
        let mk =
            |now| Command::Mkdir { parent: InodeId::ROOT, name: "barrier".into(), perm: 0o755, uid: 0, gid: 0, now };
        match submit(&world, &mut hint, &mk).await {
            Outcome::Acked(i, _) => break i,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let stores = loop {
        let (applied, stores) = {
            let w = lock(&world);
            let applied: Vec<Option<u64>> = w
                .nodes
                .values()
                .map(|n| n.raft.as_ref().and_then(|r| r.metrics().borrow().last_applied.map(|l| l.index)))
                .collect();
            let stores: Vec<(u64, StateStore)> =
                w.nodes.iter().filter_map(|(id, n)| n.store.clone().map(|s| (*id, s))).collect();
            (applied, stores)
        };
        let first = applied.first().copied().flatten();
        if first.is_some_and(|a| a >= barrier) && applied.iter().all(|a| *a == first) {
            break stores;
        }
        if Instant::now() > deadline {
            return Err(SimError::Invariant(format!(
                "replicas did not converge within {:?} after healing: applied {applied:?}, barrier at {barrier}",
                cfg.converge_within
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let result = check(&world, &acks, &stores);
    let rafts: Vec<MetaRaft> = lock(&world).nodes.values_mut().filter_map(|n| n.raft.take()).collect();
    for r in rafts {
        let _ = r.shutdown().await;
    }
    result?;
    let mut w = lock(&world);
    let events = w.events;
    events.hash(&mut w.trace);
    w.report.trace_hash = w.trace.finish();
    w.report.voters = w.nodes.len() as u64;
    w.report.terms = w.leaders_seen.keys().next_back().copied().unwrap_or(0);
    Ok(w.report.clone())
}

fn meta_err(id: u64, e: impl std::fmt::Display) -> SimError {
    SimError::Meta(format!("node {id}: {e}"))
}

/// The invariants, on the healed and converged cluster.
fn check(world: &Shared, acks: &Arc<Mutex<Acks>>, stores: &[(u64, StateStore)]) -> Result<(), SimError> {
    let mut w = lock(world);
    if let Some(first) = w.stale_reads.first() {
        return Err(SimError::Invariant(format!("{} stale read(s); the first: {first}", w.stale_reads.len())));
    }
    for (term, leaders) in &w.leaders_seen {
        if leaders.len() > 1 {
            return Err(SimError::Invariant(format!("two leaders in term {term}: nodes {leaders:?}")));
        }
    }
    for (term, ackers) in &w.ackers {
        if ackers.len() > 1 {
            return Err(SimError::Invariant(format!(
                "two nodes acknowledged writes as leader of term {term}: {ackers:?}"
            )));
        }
    }
    let acks = lock_acks(acks);
    let mut dumps = Vec::new();
    for (id, store) in stores {
        let id = *id;
        let r = store.read().map_err(|e| meta_err(id, e))?;
        for (name, (parent, ino)) in &acks.names {
            match r.dentry(*parent, name).map_err(|e| meta_err(id, e))? {
                Some(d) if d.ino == *ino => {}
                other => {
                    return Err(SimError::Invariant(format!(
                        "acknowledged create of {name} (inode {ino} in {parent}) lost on node {id}: found {other:?}"
                    )))
                }
            }
        }
        for (ino, commits) in &acks.commits {
            for pair in commits.windows(2) {
                if pair[1].2 <= pair[0].2 {
                    return Err(SimError::Invariant(format!(
                        "file {ino}: commit at index {} answered version {}, the later one at {} version {}",
                        pair[0].0, pair[0].2, pair[1].0, pair[1].2
                    )));
                }
            }
            let Some(&(last_index, last_block, _)) = commits.last() else { continue };
            let slices = r.chunk(*ino, 0).map_err(|e| meta_err(id, e))?;
            let newest = slices.iter().max_by_key(|s| s.seq).and_then(|s| s.blocks.first()).map(|b| b.id);
            let later_maybe = acks
                .maybe
                .get(ino)
                .is_some_and(|m| m.iter().any(|(b, sent_after)| Some(*b) == newest && *sent_after >= last_index));
            if newest != Some(last_block) && !later_maybe {
                return Err(SimError::Invariant(format!(
                    "acknowledged commit of block {last_block} to file {ino} (index {last_index}) lost on node {id}: \
                     the newest slice holds {newest:?}"
                )));
            }
        }
        let (blob, last, membership) = store.dump().map_err(|e| meta_err(id, e))?;
        dumps.push((id, blob, last, membership));
    }
    if dumps.len() != w.nodes.len() {
        return Err(SimError::Invariant(format!(
            "only {} of {} replicas running at the end",
            dumps.len(),
            w.nodes.len()
        )));
    }
    if let Some((id0, blob0, last0, m0)) = dumps.first() {
        for (id, blob, last, m) in &dumps[1..] {
            if blob != blob0 || last != last0 || m != m0 {
                return Err(SimError::Invariant(format!(
                    "namespace differs between replicas {id0} and {id} (applied {last0:?} vs {last:?}, {} vs {} bytes)",
                    blob0.len(),
                    blob.len()
                )));
            }
        }
        w.report.last_applied = last0.map_or(0, |l| l.index);
    }
    Ok(())
}

/// Runs `count` seeds from `first`; the failing ones with their errors.
pub fn raft_campaign(first: u64, count: u64, cfg: RaftSimConfig) -> Vec<(u64, SimError)> {
    (first..first + count).filter_map(|s| run_raft(s, cfg).err().map(|e| (s, e))).collect()
}
