//! Request handlers of self-healing and membership: block reports (missing copies and
//! orphans), drain, remove, maintenance, fsck; and the cluster view the repair planner
//! and `cluster status` share (liveness + operator state + ring).

use crate::repair::plan::{drain_remaining, plan_repair, Cluster, NodeView, Plan};
use crate::service::Service;
use crate::state::{all_blocks, file_paths, node_admin, BlockRec, Command, Reader};
use distfs_proto::{BadReplica, FsckBlock, FsckReport, MetaResponse, Orphan, RepairProgress};
use distfs_types::{AdminState, BlockId, FsError, FsResult, NodeId, NodeState};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reports younger than this are not acted on by `fsck --repair` (a block being written
/// is on the node before the metadata lists it).
const ORPHAN_MIN_AGE: Duration = Duration::from_secs(30);
/// Window of the repair-rate estimate.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Leader soft state of the healing machinery.
#[derive(Default)]
pub(crate) struct HealState {
    pub progress: RepairProgress,
    /// (when, bytes) of recent copies, for the rate.
    pub window: VecDeque<(Instant, u64)>,
    /// Block reports being received, per node.
    pub reports: HashMap<NodeId, BTreeSet<BlockId>>,
    /// Copies the last complete report of each node showed unlisted, and when.
    pub orphans: BTreeMap<NodeId, (Instant, Vec<BlockId>)>,
}

/// Wall-clock milliseconds (maintenance windows are stored in Raft as wall time).
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The nodes, ring and blocks as the planner takes them.
pub(crate) struct View {
    pub nodes: HashMap<NodeId, NodeView>,
    pub ring: Arc<crate::placement::Ring>,
    pub r: usize,
    pub blocks: Vec<(BlockId, BlockRec)>,
    pub addrs: HashMap<NodeId, String>,
}

impl View {
    pub fn cluster(&self) -> Cluster<'_> {
        Cluster { nodes: self.nodes.clone(), ring: &self.ring, r: self.r }
    }
}

impl Service {
    /// Builds the planner's view from one read of the state plus liveness.
    pub(crate) fn view(&self, r: &redb::ReadTransaction, with_blocks: bool) -> FsResult<View> {
        let fmt = r.format_or_unavailable()?;
        let nodes = r.nodes()?;
        let admin = node_admin(r)?;
        let ring = self.ring(&nodes);
        let now_ms = wall_ms();
        let mut views = HashMap::new();
        let mut addrs = HashMap::new();
        {
            let live = self.live();
            let now = self.clock.now();
            for (id, n) in &nodes {
                let rep = live.report(*id).unwrap_or_default();
                let admin = match admin.get(id).copied().unwrap_or_default() {
                    AdminState::Maintenance { until_ms } if until_ms <= now_ms => AdminState::Normal,
                    a => a,
                };
                let capacity = if rep.capacity > 0 { rep.capacity } else { n.capacity };
                views.insert(*id, NodeView { id: *id, live: live.state(*id, now), admin, capacity, used: rep.used });
                addrs.insert(*id, n.addr.clone());
            }
        }
        let blocks = if with_blocks { all_blocks(r)? } else { Vec::new() };
        Ok(View { nodes: views, ring, r: fmt.replication as usize, blocks, addrs })
    }

    /// Replication health from the planner (live copies, not listed ones).
    pub(crate) fn health(&self, r: &redb::ReadTransaction) -> FsResult<Plan> {
        let v = self.view(r, true)?;
        Ok(plan_repair(&v.cluster(), &v.blocks))
    }

    pub(crate) fn progress(&self) -> RepairProgress {
        let mut h = self.heal.lock().expect("heal lock");
        let now = Instant::now();
        while h.window.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
            h.window.pop_front();
        }
        let bytes: u64 = h.window.iter().map(|(_, b)| *b).sum();
        h.progress.rate_bytes_per_sec = bytes / RATE_WINDOW.as_secs();
        h.progress.clone()
    }

    pub(crate) async fn block_report(
        &self,
        node: NodeId,
        blocks: Vec<BlockId>,
        first: bool,
        last: bool,
    ) -> FsResult<MetaResponse> {
        self.read_barrier().await?;
        let complete = {
            let mut h = self.heal.lock().expect("heal lock");
            if first {
                h.reports.insert(node, BTreeSet::new());
            }
            let Some(set) = h.reports.get_mut(&node) else {
                return Err(FsError::invalid(format!("block report page of node {node} without a first page")));
            };
            set.extend(blocks);
            if last {
                h.reports.remove(&node)
            } else {
                None
            }
        };
        let Some(held) = complete else { return Ok(MetaResponse::Done) };
        let r = self.store.read()?;
        let mut orphans = Vec::new();
        for b in &held {
            if !r.block(*b)?.is_some_and(|rec| rec.replicas.contains(&node)) {
                orphans.push(*b);
            }
        }
        // Copies the map lists on this node that the node does not have.
        let lost: Vec<BlockId> = all_blocks(&r)?
            .into_iter()
            .filter(|(id, rec)| rec.replicas.contains(&node) && !held.contains(id))
            .map(|(id, _)| id)
            .collect();
        drop(r);
        tracing::info!(node = %node, held = held.len(), orphans = orphans.len(), lost = lost.len(), "block report");
        for block in lost {
            let bad = BadReplica { block, node, reason: "missing from the node's block report".into() };
            self.write(Command::ReportBadReplica { bad }).await?;
        }
        let mut h = self.heal.lock().expect("heal lock");
        if orphans.is_empty() {
            h.orphans.remove(&node);
        } else {
            h.orphans.insert(node, (Instant::now(), orphans));
        }
        drop(h);
        self.kick();
        Ok(MetaResponse::Done)
    }

    pub(crate) async fn drain(&self, node: NodeId, dry_run: bool) -> FsResult<MetaResponse> {
        self.read_barrier().await?;
        let r = self.store.read()?;
        let mut v = self.view(&r, true)?;
        drop(r);
        let Some(me) = v.nodes.get_mut(&node) else {
            return Err(FsError::not_found(format!("storage node {node}")));
        };
        let current = me.admin;
        if current == AdminState::Normal || matches!(current, AdminState::Maintenance { .. }) {
            me.admin = AdminState::Draining;
        }
        let others = v
            .nodes
            .values()
            .filter(|n| n.id != node && n.live == NodeState::Up && n.admin == AdminState::Normal)
            .count();
        let (blocks, bytes) = drain_remaining(&v.cluster(), &v.blocks, node);
        if blocks > 0 && others < v.r {
            return Err(FsError::invalid(format!(
                "cannot drain node {node}: only {others} other storage nodes are up and normal, and every block needs {} copies",
                v.r
            )));
        }
        if !dry_run && matches!(current, AdminState::Normal | AdminState::Maintenance { .. }) {
            self.write(Command::SetNodeAdmin { node, admin: AdminState::Draining }).await?;
            tracing::info!(node = %node, blocks, bytes, "drain started");
            self.kick();
        }
        Ok(MetaResponse::Drain { blocks, bytes })
    }

    pub(crate) async fn remove_node(&self, node: NodeId) -> FsResult<MetaResponse> {
        self.read_barrier().await?;
        let r = self.store.read()?;
        let v = self.view(&r, true)?;
        drop(r);
        let Some(me) = v.nodes.get(&node) else {
            return Err(FsError::not_found(format!("storage node {node}")));
        };
        let (blocks, bytes) = drain_remaining(&v.cluster(), &v.blocks, node);
        let ok = match me.admin {
            AdminState::Drained => blocks == 0,
            _ if me.live == NodeState::Dead => blocks == 0,
            _ => false,
        };
        if !ok {
            let why = match me.admin {
                AdminState::Draining => {
                    format!("it is still draining: {blocks} blocks ({bytes} bytes) are not at R elsewhere yet")
                }
                _ if me.live == NodeState::Dead => {
                    format!("it is dead but {blocks} of its blocks are not repaired yet")
                }
                _ => format!("it is {} and {}; drain it first (`distfs node drain {node}`)", me.live, me.admin),
            };
            return Err(FsError::invalid(format!("refusing to remove node {node}: {why}")));
        }
        self.write(Command::RemoveNode { node }).await?;
        tracing::info!(node = %node, "storage node removed");
        Ok(MetaResponse::Done)
    }

    pub(crate) async fn maintenance(&self, node: NodeId, on: bool, window_ms: u64) -> FsResult<MetaResponse> {
        self.read_barrier().await?;
        let admin = node_admin(&self.store.read()?)?.get(&node).copied().unwrap_or_default();
        if matches!(admin, AdminState::Draining | AdminState::Drained) {
            return Err(FsError::invalid(format!("node {node} is {admin}; maintenance applies to normal nodes")));
        }
        let new = if on {
            if window_ms == 0 {
                return Err(FsError::invalid("a maintenance window must be longer than 0"));
            }
            AdminState::Maintenance { until_ms: wall_ms().saturating_add(window_ms) }
        } else {
            AdminState::Normal
        };
        self.write(Command::SetNodeAdmin { node, admin: new }).await?;
        tracing::info!(node = %node, on, window_ms, "maintenance");
        self.kick();
        Ok(MetaResponse::Done)
    }

    pub(crate) async fn fsck(&self, repair: bool) -> FsResult<FsckReport> {
        self.read_barrier().await?;
        let r = self.store.read()?;
        let v = self.view(&r, true)?;
        let c = v.cluster();
        let plan = plan_repair(&c, &v.blocks);
        let mut under = Vec::new();
        let mut missing = Vec::new();
        let mut wanted = HashSet::new();
        for (id, rec) in &v.blocks {
            let live = c.counted(rec);
            if live >= v.r {
                continue;
            }
            wanted.insert(*id);
            let b = FsckBlock {
                block: *id,
                len: rec.len,
                live: live as u32,
                replicas: rec.replicas.clone(),
                files: Vec::new(),
            };
            if live == 0 {
                missing.push(b);
            } else {
                under.push(b);
            }
        }
        let corrupt: Vec<BadReplica> = r.bad_replicas()?.into_iter().filter(|b| wanted.contains(&b.block)).collect();
        let paths = file_paths(&r, &wanted)?;
        for b in under.iter_mut().chain(missing.iter_mut()) {
            b.files = paths.get(&b.block).cloned().unwrap_or_default();
        }
        // Orphans: reported by a node and still not listed for it.
        let reported: Vec<(NodeId, Instant, Vec<BlockId>)> = {
            let h = self.heal.lock().expect("heal lock");
            h.orphans.iter().map(|(n, (t, b))| (*n, *t, b.clone())).collect()
        };
        let mut orphaned = Vec::new();
        let mut deletable: BTreeMap<NodeId, Vec<BlockId>> = BTreeMap::new();
        for (node, at, blocks) in reported {
            for b in blocks {
                if r.block(b)?.is_some_and(|rec| rec.replicas.contains(&node)) {
                    continue;
                }
                orphaned.push(Orphan { node, block: b });
                if at.elapsed() >= ORPHAN_MIN_AGE {
                    deletable.entry(node).or_default().push(b);
                }
            }
        }
        drop(r);
        let mut report = FsckReport {
            blocks: v.blocks.len() as u64,
            replication: v.r as u32,
            under_replicated: under,
            missing,
            corrupt,
            orphaned,
            repairs_queued: 0,
            orphans_deleted: 0,
        };
        if repair {
            report.repairs_queued = plan.copies.len() as u64;
            for (node, blocks) in deletable {
                report.orphans_deleted += blocks.len() as u64;
                self.write(Command::GcQueue { node, blocks: blocks.clone() }).await?;
                let mut h = self.heal.lock().expect("heal lock");
                if let Some((_, list)) = h.orphans.get_mut(&node) {
                    list.retain(|b| !blocks.contains(b));
                }
            }
            self.kick();
        }
        Ok(report)
    }
}
