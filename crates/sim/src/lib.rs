//! The deterministic simulator (issue 7). One seed drives a whole run: a workload of
//! file writes and reads against a cluster of storage nodes, with faults (node crashes
//! and restarts, power cuts in the middle of a block write, EIO/ENOSPC, client-to-node
//! partitions, bit flips on one node's media), then a heal phase and the invariant
//! checks. What runs for real: every storage node is the production `BlockStore`
//! (durable write protocol, checksummed header, verified reads, quarantine, start-up
//! scan) over a faulty in-memory `SimDisk`; the metadata is the production replicated
//! state machine (`StateStore::apply_entry`: create, commit with block refcounts and
//! replica lists, node registry, bad-replica reports) in an in-memory redb; the
//! acknowledgement rule is the client's `Geometry::write_quorum`. What the simulator
//! itself plays: the client's fan-out/retry loop (the shape of `FileWriter`), the
//! network between client and nodes (a partition = the call fails), and the
//! single-leader log (commands are applied in one order). See docs/ARCHITECTURE.md.
//!
//! Everything is sequential and every random choice comes from the seed, so a run is
//! replayed exactly by `scripts/sim --seed S`.
//!
//! The second mode (`raft`, `scripts/sim --raft`) runs the real openraft metadata group
//! on virtual time behind a faulty simulated network; see the `raft` module.

pub mod disk;
pub mod raft;
pub mod raft_disk;

use bytes::Bytes;
use disk::SimDisk;
use distfs_client::write::Geometry;
use distfs_meta::state::{all_blocks, Command, CommandResult, Format, StateStore};
use distfs_proto::{BadReplica, SliceWrite, WrittenBlock};
use distfs_storage::{BlockStore, StorageError, StoreOptions, SyncPolicy};
use distfs_types::{BlockId, BlockRef, FsError, InodeId, NodeId, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a run could not be carried out or which invariant it broke.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invariant broken: {0}")]
    Invariant(String),
    #[error("metadata state machine failed: {0}")]
    Meta(String),
    #[error("simulator set-up failed: {0}")]
    Setup(String),
}

/// Shape of one run.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    pub replication: u32,
    /// Workload and fault steps before the heal phase.
    pub steps: u32,
    /// Largest file written (bytes).
    pub max_file: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig { nodes: 5, replication: 3, steps: 120, max_file: 160 << 10 }
    }
}

/// What a passing run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub writes_acked: u32,
    pub writes_failed: u32,
    pub reads: u32,
    pub crashes: u32,
    pub power_cuts: u32,
    pub bit_flips: u32,
    pub bad_reported: u32,
}

/// The command that replays `seed`.
pub fn replay_command(seed: u64) -> String {
    format!("scripts/sim --seed {seed}")
}

struct SimNode {
    disk: SimDisk,
    root: PathBuf,
    store: Option<BlockStore>,
    /// Steps until a crashed node restarts.
    down_for: u32,
    /// Steps until the client reaches the node again.
    cut_for: u32,
}

struct Follower {
    store: StateStore,
    /// Log entries applied.
    applied: usize,
    up: bool,
}

struct Sim {
    cfg: SimConfig,
    geo: Geometry,
    rng: StdRng,
    meta: StateStore,
    /// Every command applied so far, in log order.
    log: Vec<Command>,
    /// Metadata followers; a down one misses entries and catches up later, by replaying
    /// the log or from a snapshot of the leader.
    followers: Vec<Follower>,
    nodes: Vec<SimNode>,
    /// The node whose media flips bits (one per run: the fault model keeps the other
    /// copies' media sound, as R copies on independent disks assume).
    flaky: usize,
    next_block: u128,
    /// Acknowledged writes: file → exact bytes.
    acked: BTreeMap<InodeId, (BlockId, Vec<u8>)>,
    report: Report,
    rt: tokio::runtime::Runtime,
}

/// Applies log entry `index` (1-based), as the Raft state machine does: with its log id.
fn apply_one(store: &StateStore, index: usize, cmd: &Command) -> Result<Result<CommandResult, FsError>, SimError> {
    let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index as u64);
    // Entry 1 also carries the (single-voter) membership, as the first Raft entry does.
    let membership = distfs_meta::state::Membership::default();
    match store.apply_entry(Some(log_id), (index == 1).then_some(&membership), Some(cmd)) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(SimError::Meta("apply gave no result".into())),
        Err(e) => Err(SimError::Meta(e.to_string())),
    }
}

fn now(step: u64) -> Timestamp {
    Timestamp { secs: 1_700_000_000 + step as i64, nanos: 0 }
}

impl Sim {
    fn new(seed: u64, cfg: SimConfig) -> Result<Sim, SimError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SimError::Setup(e.to_string()))?;
        let meta = StateStore::in_memory().map_err(|e| SimError::Setup(e.to_string()))?;
        let mut rng = StdRng::seed_from_u64(seed);
        let flaky = rng.random_range(0..cfg.nodes);
        let geo = Geometry { chunk_size: 64 << 20, block_size: 4 << 20, replication: cfg.replication };
        let mut followers = Vec::new();
        for _ in 0..2 {
            let store = StateStore::in_memory().map_err(|e| SimError::Setup(e.to_string()))?;
            followers.push(Follower { store, applied: 0, up: true });
        }
        let mut sim = Sim {
            cfg,
            geo,
            rng,
            meta,
            log: Vec::new(),
            followers,
            nodes: Vec::new(),
            flaky,
            next_block: 1,
            acked: BTreeMap::new(),
            report: Report::default(),
            rt,
        };
        sim.apply(Command::Format {
            format: Format {
                chunk_size: geo.chunk_size,
                block_size: geo.block_size as u32,
                replication: cfg.replication,
            },
            now: now(0),
        })?
        .map_err(|e| SimError::Setup(e.to_string()))?;
        for i in 0..cfg.nodes {
            let root = PathBuf::from(format!("/sim/node{}", i + 1));
            let disk = SimDisk::new(seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1)), &root);
            let r = sim.apply(Command::RegisterNode {
                node: None,
                addr: format!("sim-node-{}", i + 1),
                zone: "z".into(),
                capacity: 1 << 40,
            })?;
            match r {
                Ok(CommandResult::Registered(id)) if id == NodeId(i as u64 + 1) => {}
                other => return Err(SimError::Setup(format!("node registration answered {other:?}"))),
            }
            sim.nodes.push(SimNode { disk, root, store: None, down_for: 0, cut_for: 0 });
            sim.start_node(i)?;
        }
        Ok(sim)
    }

    /// Applies one command as the next log entry (the single-leader order).
    fn apply(&mut self, cmd: Command) -> Result<Result<CommandResult, FsError>, SimError> {
        let r = apply_one(&self.meta, self.log.len() + 1, &cmd)?;
        self.log.push(cmd);
        for f in 0..self.followers.len() {
            if self.followers[f].up {
                self.catch_up(f, Some(&r))?;
            }
        }
        Ok(r)
    }

    /// Applies the entries follower `f` missed; the last one must answer `last` as the
    /// leader did (the same log gives the same answers on every replica).
    fn catch_up(&mut self, f: usize, last: Option<&Result<CommandResult, FsError>>) -> Result<(), SimError> {
        let fol = &mut self.followers[f];
        while fol.applied < self.log.len() {
            let r = apply_one(&fol.store, fol.applied + 1, &self.log[fol.applied])?;
            fol.applied += 1;
            if let (true, Some(want)) = (fol.applied == self.log.len(), last) {
                if &r != want {
                    return Err(SimError::Invariant(format!(
                        "metadata replica {} answered {r:?} to entry {} where the leader answered {want:?}",
                        f + 2,
                        fol.applied
                    )));
                }
            }
        }
        Ok(())
    }

    /// A follower comes back: it replays what it missed, or (when `snapshot`) takes the
    /// leader's snapshot through the real dump/install path.
    fn follower_up(&mut self, f: usize, snapshot: bool) -> Result<(), SimError> {
        if snapshot {
            let (blob, last, membership) = self.meta.dump().map_err(|e| SimError::Meta(e.to_string()))?;
            let store = StateStore::in_memory().map_err(|e| SimError::Setup(e.to_string()))?;
            store.install(&blob, last, &membership).map_err(|e| SimError::Meta(e.to_string()))?;
            self.followers[f].store = store;
            self.followers[f].applied = self.log.len();
        }
        self.followers[f].up = true;
        self.catch_up(f, None)
    }

    /// Every metadata replica holds the same namespace, blocks and GC queue as the leader.
    fn check_replicas_agree(&mut self) -> Result<(), SimError> {
        let (want, _, _) = self.meta.dump().map_err(|e| SimError::Meta(e.to_string()))?;
        for f in 0..self.followers.len() {
            if !self.followers[f].up {
                let snap = self.rng.random_bool(0.5);
                self.follower_up(f, snap)?;
            }
            let (got, _, _) = self.followers[f].store.dump().map_err(|e| SimError::Meta(e.to_string()))?;
            if got != want {
                return Err(SimError::Invariant(format!(
                    "metadata replica {} differs from the leader ({} against {} snapshot bytes)",
                    f + 2,
                    got.len(),
                    want.len()
                )));
            }
        }
        Ok(())
    }

    /// Opens (after a crash: re-scans) the node's real block store.
    fn start_node(&mut self, i: usize) -> Result<(), SimError> {
        let n = &mut self.nodes[i];
        let opts = StoreOptions { data_dir: n.root.clone(), sync: SyncPolicy::Always, capacity: None, reserve: 0 };
        let disk: Arc<dyn distfs_storage::Disk> = Arc::new(n.disk.clone());
        match BlockStore::open_blocking(opts, disk) {
            Ok((store, _)) => {
                n.store = Some(store);
                Ok(())
            }
            Err(_) if n.disk.is_dead() => {
                // The power went again during the restart: down once more.
                self.crash_node(i);
                self.report.power_cuts += 1;
                Ok(())
            }
            Err(e) => Err(SimError::Invariant(format!("node {} does not restart after a crash: {e}", i + 1))),
        }
    }

    fn crash_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.store = None;
        n.disk.crash();
        n.down_for = 1 + self.rng.random_range(0..6);
        self.report.crashes += 1;
    }

    fn reachable(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.store.is_some() && n.cut_for == 0
    }

    /// One block put to node `i`: `true` when the node acknowledged it durably.
    fn put(&mut self, i: usize, id: BlockId, data: &Bytes) -> bool {
        if !self.reachable(i) {
            return false;
        }
        let Some(store) = self.nodes[i].store.clone() else { return false };
        let r = self.rt.block_on(store.put(id, distfs_proto::pieces::piece_crcs(data), data.clone()));
        if self.nodes[i].disk.is_dead() {
            // The power went during the write: whatever it answered, the node is down.
            self.crash_node(i);
            self.report.power_cuts += 1;
            return false;
        }
        if let (Err(e), true) = (&r, std::env::var_os("SIM_DEBUG").is_some()) {
            eprintln!("put {id} to node {}: {e}", i + 1);
        }
        r.is_ok()
    }

    /// Reads block `id` from node `i` through the real verified read path.
    fn get(&mut self, i: usize, id: BlockId, len: u64) -> Result<Vec<u8>, StorageError> {
        let Some(store) = self.nodes[i].store.clone() else { return Err(StorageError::ShuttingDown) };
        let r = self.rt.block_on(store.get(id, 0, len));
        if self.nodes[i].disk.is_dead() {
            self.crash_node(i);
            self.report.power_cuts += 1;
            return Err(StorageError::ShuttingDown);
        }
        r.map(|b| b.data.to_vec())
    }

    /// The client's write: R targets, parallel puts, acknowledged at `write_quorum`,
    /// retried on fresh targets (like `FileWriter`), then committed in one metadata write.
    fn write_file(&mut self, step: u64) -> Result<(), SimError> {
        let len = self.rng.random_range(1..=self.cfg.max_file);
        let mut data = vec![0u8; len];
        self.rng.fill_bytes(&mut data);
        let name = format!("f{step}");
        let created = self.apply(Command::Create {
            parent: InodeId::ROOT,
            name,
            perm: 0o644,
            uid: 0,
            gid: 0,
            exclusive: true,
            now: now(step),
            open: None,
        })?;
        let ino = match created {
            Ok(CommandResult::Attr(a)) => a.ino,
            other => return Err(SimError::Invariant(format!("create of a fresh name answered {other:?}"))),
        };
        let body = Bytes::from(data.clone());
        let quorum = self.geo.write_quorum();
        for _attempt in 0..3 {
            let id = BlockId(self.next_block);
            self.next_block += 1;
            let targets = self.pick_targets();
            let mut acks = Vec::new();
            for &t in &targets {
                if self.put(t, id, &body) {
                    acks.push(NodeId(t as u64 + 1));
                }
            }
            if acks.len() >= quorum {
                let slice = SliceWrite {
                    chunk: 0,
                    offset: 0,
                    len: len as u64,
                    blocks: vec![WrittenBlock { block: BlockRef { id, len: len as u32 }, replicas: acks }],
                    inline: None,
                };
                let r = self.apply(Command::CommitWrite {
                    ino,
                    slices: vec![slice],
                    min_size: len as u64,
                    mtime: now(step),
                    bad: Vec::new(),
                    now: now(step),
                })?;
                if let Err(e) = r {
                    return Err(SimError::Invariant(format!("commit of a written block refused: {e}")));
                }
                self.acked.insert(ino, (id, data));
                self.report.writes_acked += 1;
                return Ok(());
            }
        }
        self.report.writes_failed += 1;
        Ok(())
    }

    /// R distinct nodes, as the placement ring would pick among registered nodes.
    fn pick_targets(&mut self) -> Vec<usize> {
        let mut all: Vec<usize> = (0..self.nodes.len()).collect();
        for i in (1..all.len()).rev() {
            let j = self.rng.random_range(0..=i);
            all.swap(i, j);
        }
        all.truncate(self.cfg.replication as usize);
        all
    }

    /// The replica list the metadata holds for `id`.
    fn replicas(&self, id: BlockId) -> Result<Option<Vec<NodeId>>, SimError> {
        let r = self.meta.read().map_err(|e| SimError::Meta(e.to_string()))?;
        let blocks = all_blocks(&r).map_err(|e| SimError::Meta(e.to_string()))?;
        Ok(blocks.into_iter().find(|(b, _)| *b == id).map(|(_, rec)| rec.replicas))
    }

    /// The client's read: replicas in order, a corrupt copy reported to the metadata.
    /// `Ok(None)` = no reachable replica answered. Wrong bytes are an invariant failure.
    fn read_file(&mut self, ino: InodeId) -> Result<Option<Vec<u8>>, SimError> {
        let Some((id, want)) = self.acked.get(&ino).cloned() else { return Ok(None) };
        let Some(replicas) = self.replicas(id)? else {
            return Err(SimError::Invariant(format!("acknowledged block {id} of {ino} is unknown to the metadata")));
        };
        self.report.reads += 1;
        for node in replicas {
            let i = node.0 as usize - 1;
            if !self.reachable(i) {
                continue;
            }
            match self.get(i, id, want.len() as u64) {
                Ok(got) if got == want => return Ok(Some(got)),
                Ok(got) => {
                    return Err(SimError::Invariant(format!(
                        "node {} returned {} wrong bytes for block {id} of {ino} (verified read)",
                        i + 1,
                        got.iter().zip(&want).filter(|(a, b)| a != b).count() + got.len().abs_diff(want.len())
                    )))
                }
                Err(StorageError::Corrupt { .. }) | Err(StorageError::NotFound { .. }) => {
                    self.report.bad_reported += 1;
                    let bad = BadReplica { block: id, node, reason: "simulated read found it bad".into() };
                    self.apply(Command::ReportBadReplica { bad })?.map_err(|e| SimError::Meta(e.to_string()))?;
                }
                Err(_) => {}
            }
        }
        Ok(None)
    }

    fn step(&mut self, step: u64) -> Result<(), SimError> {
        for n in &mut self.nodes {
            n.cut_for = n.cut_for.saturating_sub(1);
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].store.is_none() {
                self.nodes[i].down_for = self.nodes[i].down_for.saturating_sub(1);
                if self.nodes[i].down_for == 0 {
                    self.start_node(i)?;
                }
            }
        }
        let roll = self.rng.random_range(0..100u32);
        let n = self.nodes.len();
        match roll {
            0..=49 => self.write_file(step)?,
            50..=64 => {
                if !self.acked.is_empty() {
                    let k = self.rng.random_range(0..self.acked.len());
                    let ino = *self.acked.keys().nth(k).expect("index within len");
                    self.read_file(ino)?;
                }
            }
            65..=72 => {
                // Partition the client from a few nodes for a while.
                let count = self.rng.random_range(1..n);
                for _ in 0..count {
                    let i = self.rng.random_range(0..n);
                    self.nodes[i].cut_for = 1 + self.rng.random_range(0..8);
                }
            }
            73..=75 => {
                let f = self.rng.random_range(0..self.followers.len());
                if self.followers[f].up {
                    self.followers[f].up = false;
                } else {
                    let snap = self.rng.random_bool(0.5);
                    self.follower_up(f, snap)?;
                }
            }
            76..=78 => {
                let i = self.rng.random_range(0..n);
                if self.nodes[i].store.is_some() {
                    self.crash_node(i);
                }
            }
            79..=83 => {
                let i = self.rng.random_range(0..n);
                let ops = self.rng.random_range(0..12);
                self.nodes[i].disk.cut_power_after(ops);
            }
            84..=88 => {
                let i = self.rng.random_range(0..n);
                let k = self.rng.random_range(1..4);
                if self.rng.random_bool(0.5) {
                    self.nodes[i].disk.fail_writes(k);
                } else {
                    self.nodes[i].disk.fill(k);
                }
            }
            89..=93 => self.gc_round()?,
            _ => {
                let f = self.flaky;
                let dir = self.nodes[f].root.join("blocks");
                if self.nodes[f].disk.flip_bit(&dir).is_some() {
                    self.report.bit_flips += 1;
                }
            }
        }
        Ok(())
    }

    /// Faults end: partitions heal, every node restarts (a pending power cut fires as a
    /// crash), then every acknowledged write must read back exactly.
    fn heal_and_check(&mut self) -> Result<(), SimError> {
        for i in 0..self.nodes.len() {
            self.nodes[i].cut_for = 0;
            self.crash_node(i);
            self.start_node(i)?;
            if self.nodes[i].store.is_none() {
                self.start_node(i)?;
            }
        }
        let files: Vec<InodeId> = self.acked.keys().copied().collect();
        for ino in files {
            match self.read_file(ino)? {
                Some(_) => {}
                None => {
                    let (id, _) = &self.acked[&ino];
                    return Err(SimError::Invariant(format!(
                        "acknowledged write to {ino} (block {id}) is lost: no replica holds its bytes after the faults healed"
                    )));
                }
            }
        }
        // Every block the metadata references is present somewhere.
        for (id, rec) in self.blocks()? {
            if rec.refs > 0 && rec.replicas.is_empty() {
                return Err(SimError::Invariant(format!(
                    "block {id} is referenced ({} refs) but has no replica",
                    rec.refs
                )));
            }
        }
        // Repair with the real planner until nothing changes; then every referenced
        // block has exactly R listed copies and each of them verifies.
        for _round in 0..8 {
            self.gc_round()?;
            let bad = self.verify_all()?;
            let copies = self.repair_round()?;
            if bad == 0 && copies == 0 {
                break;
            }
        }
        let r = self.cfg.replication as usize;
        for (id, rec) in self.blocks()? {
            if rec.refs == 0 {
                continue;
            }
            if rec.replicas.len() != r {
                return Err(SimError::Invariant(format!(
                    "after repair block {id} has {} listed copies ({:?}), not R = {r}",
                    rec.replicas.len(),
                    rec.replicas
                )));
            }
        }
        if self.verify_all()? != 0 {
            return Err(SimError::Invariant("after repair a listed copy still fails verification".into()));
        }
        self.check_replicas_agree()
    }

    /// Heartbeats: each reachable node gets its share of the GC queue, deletes those
    /// copies in its real store and acknowledges them (`GcAck`).
    fn gc_round(&mut self) -> Result<(), SimError> {
        use distfs_meta::state::Reader;
        for i in 0..self.nodes.len() {
            if !self.reachable(i) {
                continue;
            }
            let node = NodeId(i as u64 + 1);
            let queued = {
                let r = self.meta.read().map_err(|e| SimError::Meta(e.to_string()))?;
                r.gc_for_node(node, 1000).map_err(|e| SimError::Meta(e.to_string()))?
            };
            let Some(store) = self.nodes[i].store.clone() else { continue };
            let mut deleted = Vec::new();
            for id in queued {
                let r = self.rt.block_on(store.delete(id));
                if self.nodes[i].disk.is_dead() {
                    self.crash_node(i);
                    self.report.power_cuts += 1;
                    break;
                }
                if r.is_ok() {
                    deleted.push(id);
                }
            }
            if !deleted.is_empty() {
                self.apply(Command::GcAck { node, blocks: deleted })?.map_err(|e| SimError::Meta(e.to_string()))?;
            }
        }
        Ok(())
    }

    fn blocks(&self) -> Result<Vec<(BlockId, distfs_meta::state::BlockRec)>, SimError> {
        let r = self.meta.read().map_err(|e| SimError::Meta(e.to_string()))?;
        all_blocks(&r).map_err(|e| SimError::Meta(e.to_string()))
    }

    /// Reads every listed copy of every referenced block (a scrub); a bad one is reported.
    fn verify_all(&mut self) -> Result<u32, SimError> {
        let mut bad = 0;
        for (id, rec) in self.blocks()? {
            if rec.refs == 0 {
                continue;
            }
            for node in rec.replicas {
                let i = node.0 as usize - 1;
                if let Err(StorageError::Corrupt { .. } | StorageError::NotFound { .. }) =
                    self.get(i, id, u64::from(rec.len))
                {
                    bad += 1;
                    self.report.bad_reported += 1;
                    let bad = BadReplica { block: id, node, reason: "simulated scrub found it bad".into() };
                    self.apply(Command::ReportBadReplica { bad })?.map_err(|e| SimError::Meta(e.to_string()))?;
                }
            }
        }
        Ok(bad)
    }

    /// One pass of the real repair planner over the block map; copies go through the real
    /// block stores (verified read, durable put) and are recorded with `UpdateReplicas`.
    fn repair_round(&mut self) -> Result<u32, SimError> {
        use distfs_meta::placement::{Ring, RingNode};
        use distfs_meta::repair::{plan_repair, Cluster, NodeView};
        let ids: Vec<NodeId> = (1..=self.nodes.len() as u64).map(NodeId).collect();
        let ring = Ring::new(ids.iter().map(|&id| RingNode { id, zone: "z".into(), capacity: 1 << 40 }).collect());
        let nodes = ids
            .iter()
            .map(|&id| {
                let v = NodeView {
                    id,
                    live: distfs_types::NodeState::Up,
                    admin: distfs_types::AdminState::Normal,
                    capacity: 1 << 40,
                    used: 0,
                };
                (id, v)
            })
            .collect();
        let cluster = Cluster { nodes, ring: &ring, r: self.cfg.replication as usize };
        let blocks: Vec<_> = self.blocks()?.into_iter().filter(|(_, rec)| rec.refs > 0).collect();
        let plan = plan_repair(&cluster, &blocks);
        if std::env::var_os("SIM_DEBUG").is_some() {
            eprintln!("repair plan: {plan:?}");
        }
        let mut done = 0;
        for task in plan.copies {
            for from in &task.from {
                let data = match self.get(from.0 as usize - 1, task.block, task.len) {
                    Ok(d) => d,
                    Err(e) => {
                        if std::env::var_os("SIM_DEBUG").is_some() {
                            eprintln!("repair read of {} from {from}: {e}", task.block);
                        }
                        continue;
                    }
                };
                if data.len() as u64 != task.len {
                    return Err(SimError::Invariant(format!(
                        "block {} read back {} bytes, not {}",
                        task.block,
                        data.len(),
                        task.len
                    )));
                }
                if self.put(task.to.0 as usize - 1, task.block, &Bytes::from(data)) {
                    let cmd =
                        Command::UpdateReplicas { block: task.block, add: Some(task.to), drop: task.drop.clone() };
                    self.apply(cmd)?.map_err(|e| SimError::Meta(e.to_string()))?;
                    done += 1;
                }
                break;
            }
        }
        for t in plan.trims {
            let cmd = Command::UpdateReplicas { block: t.block, add: None, drop: vec![t.node] };
            self.apply(cmd)?.map_err(|e| SimError::Meta(e.to_string()))?;
        }
        Ok(done)
    }
}

/// Runs seed `seed`; `Err` names the broken invariant.
pub fn run(seed: u64, cfg: SimConfig) -> Result<Report, SimError> {
    let mut sim = Sim::new(seed, cfg)?;
    for step in 1..=u64::from(cfg.steps) {
        sim.step(step)?;
    }
    sim.heal_and_check()?;
    Ok(sim.report)
}

/// Runs `count` seeds from `first`; returns the failing seeds with their errors.
pub fn campaign(first: u64, count: u64, cfg: SimConfig) -> Vec<(u64, SimError)> {
    (first..first + count).filter_map(|s| run(s, cfg).err().map(|e| (s, e))).collect()
}

/// Switches the deliberately injected bug (client acknowledges after one replica).
pub fn inject_ack_after_one(on: bool) {
    distfs_client::write::sim_bugs::ACK_AFTER_ONE.store(on, std::sync::atomic::Ordering::Relaxed);
}
