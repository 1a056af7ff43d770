//! The repair worker: a named, cancellable task on every metadata server that acts only
//! while its server leads. Each round it takes the planner's view (rescanning the block
//! map only when something changed), trims copies above R, finishes drains and expired
//! maintenance windows, and keeps up to `repair.concurrency` block copies in flight under
//! a bandwidth cap. A copy is a `CopyBlock` sent to the target node; once it acks, one
//! Raft command adds the replica (and, for a rebalance move, drops the old one).

use crate::repair::plan::{drain_remaining, plan_rebalance, plan_repair, settled, CopyTask};
use crate::service::Service;
use crate::service_heal::wall_ms;
use crate::state::{node_admin, Command};
use distfs_proto::{NodeAddr, RpcClient, RpcConfig, StorageRequest, StorageResponse};
use distfs_types::{AdminState, BlockId, NodeId, NodeState};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// Rescan the block map at least this often while leading, even if nothing changed.
const RESCAN_EVERY: Duration = Duration::from_secs(5);
/// Deadline of one block copy.
const COPY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most trims proposed per round.
const TRIMS_PER_ROUND: usize = 256;
/// Most finished copies recorded by one Raft entry.
const RECORDS_PER_ENTRY: usize = 256;

/// A finished copy waiting to be recorded, and who waits for the outcome.
type Record = ((BlockId, Option<NodeId>, Vec<NodeId>), oneshot::Sender<Result<(), String>>);

/// Records finished copies: whatever finished while the previous entry was being
/// written goes into the next one (`UpdateReplicasMany`), so a repair of hundreds of
/// blocks costs a few log writes instead of one per block. Ends with `cancel` or when
/// the worker drops its sender.
async fn record_copies(service: Arc<Service>, mut rx: mpsc::Receiver<Record>, cancel: CancellationToken) {
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.recv() => match r { Some(r) => r, None => return },
        };
        let mut batch = vec![first];
        while batch.len() < RECORDS_PER_ENTRY {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let (updates, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let n = updates.len();
        let cmd = if n == 1 {
            let (block, add, drop) = updates.into_iter().next().expect("one update");
            Command::UpdateReplicas { block, add, drop }
        } else {
            Command::UpdateReplicasMany { updates }
        };
        let result = service.write(cmd).await.map(|_| ()).map_err(|e| format!("recording the new replica: {e}"));
        debug!(copies = n, ok = result.is_ok(), "copies recorded");
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

/// A token bucket: `rate` bytes per second, bursts up to a quarter second's worth.
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64) -> Bucket {
        Bucket { rate: rate as f64, tokens: rate as f64 / 4.0, last: Instant::now() }
    }

    /// Takes `n` bytes if any budget is left (the balance may go negative once).
    fn try_take(&mut self, n: u64) -> bool {
        let now = Instant::now();
        let cap = (self.rate / 4.0).max(16.0 * 1024.0 * 1024.0);
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(cap);
        self.last = now;
        if self.tokens <= 0.0 {
            return false;
        }
        self.tokens -= n as f64;
        true
    }
}

struct Done {
    task: CopyTask,
    result: Result<(), String>,
}

/// Runs until `cancel` fires.
pub(crate) async fn run(service: Arc<Service>, cancel: CancellationToken) {
    let cfg = service.repair_config();
    if !cfg.enabled {
        info!("automatic repair is disabled (repair.enabled = false)");
        cancel.cancelled().await;
        return;
    }
    let rpc = RpcClient::new(RpcConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: COPY_TIMEOUT,
        transport: service.transport.clone(),
        ..RpcConfig::default()
    });
    let mut tick = tokio::time::interval(cfg.scan_interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (record_tx, record_rx) = mpsc::channel(4 * RECORDS_PER_ENTRY);
    let recorder = tokio::spawn(record_copies(service.clone(), record_rx, cancel.child_token()));
    let mut w = Worker {
        service: service.clone(),
        rpc,
        record_tx,
        inflight: JoinSet::new(),
        busy: HashSet::new(),
        queue: VecDeque::new(),
        rebalancing: 0,
        repair_bw: Bucket::new(cfg.bandwidth.0),
        rebalance_bw: Bucket::new(cfg.rebalance_bandwidth.0),
        fingerprint: Vec::new(),
        last_scan: None,
        had_work: true,
        leading: false,
        addrs: HashMap::new(),
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
            Some(done) = w.inflight.join_next(), if !w.inflight.is_empty() => {
                match done {
                    Ok(d) => w.finished(d),
                    Err(e) => warn!(error = %e, "repair copy task failed to run"),
                }
            }
        }
        w.round().await;
    }
    w.inflight.shutdown().await;
    drop(w);
    let _ = recorder.await;
}

struct Worker {
    service: Arc<Service>,
    rpc: RpcClient,
    record_tx: mpsc::Sender<Record>,
    inflight: JoinSet<Done>,
    busy: HashSet<BlockId>,
    queue: VecDeque<CopyTask>,
    rebalancing: usize,
    repair_bw: Bucket,
    rebalance_bw: Bucket,
    fingerprint: Vec<(NodeId, NodeState, AdminState)>,
    last_scan: Option<Instant>,
    had_work: bool,
    leading: bool,
    addrs: HashMap<NodeId, String>,
}

impl Worker {
    fn finished(&mut self, d: Done) {
        self.busy.remove(&d.task.block);
        let rebalance = !d.task.drop.is_empty();
        if rebalance {
            self.rebalancing = self.rebalancing.saturating_sub(1);
        }
        let mut h = self.service.heal.lock().expect("heal lock");
        match d.result {
            Ok(()) => {
                h.progress.done_blocks += 1;
                h.progress.done_bytes += d.task.len;
                if rebalance {
                    h.progress.rebalanced += 1;
                    h.progress.trimmed += d.task.drop.len() as u64;
                }
                h.window.push_back((Instant::now(), d.task.len));
            }
            Err(e) => {
                h.progress.failed += 1;
                warn!(block = %d.task.block, to = %d.task.to, error = %e, "block copy failed; will plan again");
                // Look again at once: the target or source may be gone.
                self.had_work = true;
            }
        }
    }

    fn is_leader(&self) -> bool {
        self.service.is_leader()
    }

    async fn round(&mut self) {
        if !self.is_leader() {
            if self.leading {
                info!("no longer the metadata leader; repair worker idle");
                self.leading = false;
                self.queue.clear();
                *self.service.heal.lock().expect("heal lock") = Default::default();
            }
            return;
        }
        if !self.leading {
            info!("metadata leader: repair worker active");
            self.leading = true;
            self.last_scan = None;
        }
        let changed = self.changed();
        let due = self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY);
        if changed || due || (self.queue.is_empty() && self.had_work) {
            self.scan().await;
        }
        self.dispatch();
        let mut h = self.service.heal.lock().expect("heal lock");
        h.progress.queued_blocks = (self.queue.len() + self.inflight.len()) as u64;
        h.progress.queued_bytes = self.queue.iter().map(|t| t.len).sum();
        h.progress.in_flight = self.inflight.len() as u64;
    }

    /// Node states changed, something kicked us, or the last scan found work.
    fn changed(&mut self) -> bool {
        let kicked = self.service.kicked.swap(false, Ordering::AcqRel);
        let fp = match self.service.store.read().and_then(|r| self.service.view(&r, false)) {
            Ok(v) => {
                let mut fp: Vec<_> = v.nodes.values().map(|n| (n.id, n.live, n.admin)).collect();
                fp.sort_by_key(|x| x.0);
                fp
            }
            Err(_) => return kicked,
        };
        let changed = fp != self.fingerprint;
        self.fingerprint = fp;
        changed || kicked
    }

    async fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        let view = match self.service.store.read().and_then(|r| self.service.view(&r, true)) {
            Ok(v) => v,
            Err(e) => {
                debug!(error = %e, "repair worker cannot read the state yet");
                return;
            }
        };
        self.addrs = view.addrs.clone();
        let c = view.cluster();
        let plan = plan_repair(&c, &view.blocks);
        self.had_work = !plan.copies.is_empty() || !plan.trims.is_empty();
        if plan.under_replicated > 0 || !plan.trims.is_empty() {
            debug!(
                under_replicated = plan.under_replicated,
                copies = plan.copies.len(),
                trims = plan.trims.len(),
                missing = plan.missing.len(),
                blocked = plan.blocked,
                "repair plan"
            );
        }
        // Trims: the copy goes to the GC queue with the replica-list update.
        for t in plan.trims.iter().filter(|t| !self.busy.contains(&t.block)).take(TRIMS_PER_ROUND) {
            let cmd = Command::UpdateReplicas { block: t.block, add: None, drop: vec![t.node] };
            match self.service.write(cmd).await {
                Ok(_) => {
                    debug!(block = %t.block, node = %t.node, "trimmed a copy above R");
                    self.service.heal.lock().expect("heal lock").progress.trimmed += 1;
                }
                Err(e) => warn!(block = %t.block, node = %t.node, error = %e, "trim failed"),
            }
        }
        // Drains that are complete, maintenance windows that are over.
        if let Ok(admin) = self.service.store.read().and_then(|r| node_admin(&r)) {
            let now_ms = wall_ms();
            for (node, a) in admin {
                let next = match a {
                    AdminState::Draining if drain_remaining(&c, &view.blocks, node).0 == 0 => AdminState::Drained,
                    AdminState::Maintenance { until_ms } if until_ms <= now_ms => AdminState::Normal,
                    _ => continue,
                };
                match self.service.write(Command::SetNodeAdmin { node, admin: next }).await {
                    Ok(_) => info!(node = %node, state = %next, "node state changed by the repair worker"),
                    Err(e) => warn!(node = %node, error = %e, "cannot update the node state"),
                }
            }
        }
        let mut queue: VecDeque<CopyTask> = plan.copies.into_iter().collect();
        let cfg = &self.service.repair_config();
        if queue.is_empty() && plan.trims.is_empty() && plan.under_replicated == 0 && cfg.rebalance && settled(&c) {
            let moves = plan_rebalance(&c, &view.blocks, cfg.rebalance_concurrency * 8);
            if !moves.is_empty() {
                debug!(moves = moves.len(), "rebalance plan");
                self.had_work = true;
            }
            queue.extend(moves);
        }
        self.queue = queue;
    }

    /// Starts copies while the concurrency and bandwidth budgets allow.
    fn dispatch(&mut self) {
        // Reloadable (SIGHUP): concurrency and bandwidth caps are read every round.
        let cfg = self.service.repair_config();
        self.repair_bw.rate = cfg.bandwidth.0 as f64;
        self.rebalance_bw.rate = cfg.rebalance_bandwidth.0 as f64;
        while let Some(task) = self.queue.front() {
            if self.busy.contains(&task.block) && task.drop.is_empty() {
                // Another copy of the same block is running; the next scan sees it.
                self.queue.pop_front();
                continue;
            }
            let rebalance = !task.drop.is_empty();
            if rebalance && self.busy.contains(&task.block) {
                self.queue.pop_front();
                continue;
            }
            if self.inflight.len() >= cfg.concurrency || (rebalance && self.rebalancing >= cfg.rebalance_concurrency) {
                return;
            }
            let bucket = if rebalance { &mut self.rebalance_bw } else { &mut self.repair_bw };
            if !bucket.try_take(task.len) {
                return;
            }
            let Some(task) = self.queue.pop_front() else { return };
            self.busy.insert(task.block);
            if rebalance {
                self.rebalancing += 1;
            }
            let span = tracing::info_span!("repair_copy", block = %task.block, to = %task.to, rebalance);
            let (record, rpc, addrs) = (self.record_tx.clone(), self.rpc.clone(), self.addrs.clone());
            self.inflight.spawn(
                async move {
                    let result = copy(&record, &rpc, &addrs, &task).await;
                    Done { task, result }
                }
                .instrument(span),
            );
        }
    }
}

/// Has the target fetch the block from a source, then records the new replica.
async fn copy(
    record: &mpsc::Sender<Record>,
    rpc: &RpcClient,
    addrs: &HashMap<NodeId, String>,
    task: &CopyTask,
) -> Result<(), String> {
    let to = addrs.get(&task.to).ok_or_else(|| format!("no address for node {}", task.to))?;
    let from: Vec<NodeAddr> = task
        .from
        .iter()
        .filter_map(|n| addrs.get(n).map(|a| NodeAddr { id: *n, addr: a.clone(), healthy: true }))
        .collect();
    let req = StorageRequest::CopyBlock { block: task.block, from };
    match rpc.storage(to, &req, bytes::Bytes::new(), Some(COPY_TIMEOUT)).await {
        Ok((StorageResponse::Stored, _)) => {}
        Ok((other, _)) => return Err(format!("unexpected answer {other:?}")),
        Err(e) => return Err(e.to_string()),
    }
    let (tx, rx) = oneshot::channel();
    record
        .send(((task.block, Some(task.to), task.drop.clone()), tx))
        .await
        .map_err(|_| "the repair worker is stopping".to_string())?;
    rx.await.map_err(|_| "the repair worker is stopping".to_string())??;
    debug!(bytes = task.len, "block copied");
    Ok(())
}
