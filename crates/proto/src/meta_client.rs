//! `MetaClient`: calls the metadata service given every server's address. It remembers
//! the leader, follows `NotLeader` hints, retries transient failures with capped
//! exponential backoff, and gives up with a clear error after a deadline, so a caller
//! never hangs on a cluster without a leader.
//!
//! Writes (`MetaRequest::is_write`) travel in a `MetaRequest::Once` envelope: the client's
//! random id, the slot the call holds and a sequence number, the same on every attempt of
//! one call, so a retry of a write whose first attempt was committed gets the stored
//! result instead of being applied again. At most `ONCE_SLOTS` calls are in flight.

use crate::conn::RpcClient;
use crate::error::RpcError;
use crate::messages::{MetaRequest, MetaResponse, ONCE_SLOTS};
use distfs_types::error::Retry;
use distfs_types::FsError;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

#[derive(Clone)]
pub struct MetaClient {
    rpc: RpcClient,
    addrs: Arc<Mutex<Vec<String>>>,
    leader: Arc<AtomicUsize>,
    /// How long one logical call may keep retrying before it fails.
    pub deadline: Duration,
    /// Deadline of one attempt.
    pub attempt_timeout: Duration,
    once: Arc<Slots>,
}

/// The request ids of one client: its id, the free slots, the next sequence number.
struct Slots {
    client: u64,
    next_seq: AtomicU64,
    permits: Arc<tokio::sync::Semaphore>,
    /// Free slots, the most recently freed last (reused first: the server keeps one
    /// result per slot used, so few slots in use means a small table).
    free: Mutex<Vec<u32>>,
}

/// A slot held by one call; freed when the call ends.
struct Slot<'a> {
    slots: &'a Slots,
    slot: u32,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.free.lock().expect("slots lock").push(self.slot);
    }
}

impl Slots {
    fn new() -> Slots {
        Slots {
            client: rand::random::<u64>(),
            next_seq: AtomicU64::new(1),
            permits: Arc::new(tokio::sync::Semaphore::new(ONCE_SLOTS as usize)),
            free: Mutex::new((0..ONCE_SLOTS).rev().collect()),
        }
    }

    async fn acquire(&self) -> Slot<'_> {
        let permit = self.permits.clone().acquire_owned().await.expect("the slot semaphore is never closed");
        let slot = self.free.lock().expect("slots lock").pop().expect("a permit guarantees a free slot");
        Slot { slots: self, slot, _permit: permit }
    }
}

impl MetaClient {
    pub fn new(rpc: RpcClient, addrs: Vec<String>) -> MetaClient {
        MetaClient {
            rpc,
            addrs: Arc::new(Mutex::new(addrs)),
            leader: Arc::new(AtomicUsize::new(0)),
            deadline: Duration::from_secs(15),
            attempt_timeout: Duration::from_secs(10),
            once: Arc::new(Slots::new()),
        }
    }

    /// The random id this client's writes carry (`MetaRequest::Once`).
    pub fn client_id(&self) -> u64 {
        self.once.client
    }

    pub fn with_deadline(mut self, deadline: Duration) -> MetaClient {
        self.deadline = deadline;
        self
    }

    pub fn rpc(&self) -> &RpcClient {
        &self.rpc
    }

    /// The address believed to be the leader's.
    pub fn leader_addr(&self) -> Option<String> {
        let addrs = self.addrs.lock().expect("addrs lock");
        addrs.get(self.leader.load(Ordering::Relaxed) % addrs.len().max(1)).cloned()
    }

    /// Moves on from server `idx` to the next one, unless another call already did.
    fn rotate(&self, idx: usize) {
        let len = self.addrs.lock().expect("addrs lock").len().max(1);
        let _ = self.leader.compare_exchange(idx, (idx + 1) % len, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Sends `req` to the leader, following hints and retrying until `deadline`.
    /// Remote errors that retrying cannot fix are returned at once. A write is sent with
    /// one request id on every attempt, so it is applied at most once.
    pub async fn call(&self, req: &MetaRequest) -> Result<MetaResponse, RpcError> {
        if !req.is_write() {
            return self.attempts(req).await;
        }
        let slot = self.once.acquire().await;
        let seq = self.once.next_seq.fetch_add(1, Ordering::Relaxed);
        let once = MetaRequest::Once { client: self.once.client, slot: slot.slot, seq, req: Box::new(req.clone()) };
        self.attempts(&once).await
    }

    async fn attempts(&self, req: &MetaRequest) -> Result<MetaResponse, RpcError> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(20);
        let mut attempt = 0u32;
        let mut last_unreachable: Option<String> = None;
        loop {
            attempt += 1;
            let (idx, addr) = {
                let addrs = self.addrs.lock().expect("addrs lock");
                if addrs.is_empty() {
                    return Err(RpcError::Remote(FsError::Unavailable {
                        reason: "no metadata server address configured".into(),
                    }));
                }
                let i = self.leader.load(Ordering::Relaxed) % addrs.len();
                (i, addrs[i].clone())
            };
            let left = self.deadline.saturating_sub(start.elapsed());
            let err = match self
                .rpc
                .meta(&addr, req, Some(self.attempt_timeout.min(left.max(Duration::from_millis(1)))))
                .await
            {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            let unreachable = !matches!(err, RpcError::Remote(_));
            match &err {
                // A follower that has not noticed yet still names the leader we just
                // failed to reach: ignore that hint and try the next server.
                RpcError::Remote(FsError::NotLeader { leader: Some(hint) })
                    if last_unreachable.as_deref() == Some(hint.as_str()) =>
                {
                    self.rotate(idx);
                }
                RpcError::Remote(FsError::NotLeader { leader: Some(hint) }) => {
                    let mut addrs = self.addrs.lock().expect("addrs lock");
                    let i = match addrs.iter().position(|a| a == hint) {
                        Some(i) => i,
                        None => {
                            addrs.push(hint.clone());
                            addrs.len() - 1
                        }
                    };
                    self.leader.store(i, Ordering::Relaxed);
                    debug!(leader = %hint, "following metadata leader hint");
                    // A hint is worth following at once, but not forever in a loop.
                    if !attempt.is_multiple_of(4) {
                        continue;
                    }
                }
                // Only "not the leader" and "unavailable" are worth asking again; anything
                // else the leader answered is its answer (a `BlockNotFound` of a dedup
                // commit, say, which the writer handles by writing the block itself).
                RpcError::Remote(e) if !matches!(e.retry(), Retry::ToLeader | Retry::Backoff) => return Err(err),
                _ if !err.is_transient() => return Err(err),
                _ => {
                    // Try the next server: the leader may be elsewhere or down.
                    self.rotate(idx);
                }
            }
            if unreachable {
                last_unreachable = Some(addr.clone());
            }
            if start.elapsed() + backoff >= self.deadline {
                warn!(error = %err, attempts = attempt, "giving up on metadata call");
                if let RpcError::Remote(FsError::Unavailable { .. }) = err {
                    // The leader answered: its reason is the one to show.
                    return Err(err);
                }
                return Err(RpcError::Remote(FsError::Unavailable {
                    reason: format!(
                        "no metadata leader answered within {:.1}s after {attempt} attempts (last error: {err})",
                        self.deadline.as_secs_f64()
                    ),
                }));
            }
            if attempt == 3 {
                warn!(error = %err, "no metadata leader yet, retrying");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}
