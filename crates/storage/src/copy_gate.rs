//! How many repair copies a node runs at once, and how often. Repair must be fast when
//! the cluster is idle and yield when clients are working: a node with client reads or
//! writes in flight, or finished within `CLIENT_QUIET`, runs at most `busy` copies at a
//! time and spends at most `share` of its time copying (after a copy that took `t`, the
//! next one waits `t * (1 - share) / share`); otherwise it runs up to `max` copies back
//! to back. `busy` is at least 1 and `share` above 0, so repair never starves. The
//! decisions are the pure functions `copy_limit` and `busy_pause`; `CopyGate` is the
//! thin async shell around them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Client traffic this recent still counts as "clients are working".
pub const CLIENT_QUIET: Duration = Duration::from_millis(200);
/// A waiting copy looks at the client activity again at least this often.
const RECHECK: Duration = Duration::from_millis(20);

/// Clients are working: requests in flight, or one finished within `CLIENT_QUIET`
/// (`since_client`: time since the last one finished, `None`: never).
pub fn clients_active(clients_in_flight: usize, since_client: Option<Duration>) -> bool {
    clients_in_flight > 0 || since_client.is_some_and(|d| d < CLIENT_QUIET)
}

/// Copies allowed at once, given the client requests in flight and the time since the
/// last one finished (`None`: never).
pub fn copy_limit(max: usize, busy: usize, clients_in_flight: usize, since_client: Option<Duration>) -> usize {
    if clients_active(clients_in_flight, since_client) {
        busy.clamp(1, max.max(1))
    } else {
        max.max(1)
    }
}

/// The pause after a copy that took `took` while clients are working, so that copying
/// takes at most `share` of the node's time.
pub fn busy_pause(took: Duration, share: f64) -> Duration {
    let share = share.clamp(0.01, 1.0);
    took.mul_f64((1.0 - share) / share)
}

pub struct CopyGate {
    max: usize,
    busy: usize,
    share: f64,
    /// Milliseconds since `epoch` before which no copy starts while clients work.
    not_before_ms: AtomicU64,
    copies: AtomicUsize,
    clients: AtomicUsize,
    /// Milliseconds since `epoch` at which the last client request finished, plus one
    /// (0: none yet).
    last_client_ms: AtomicU64,
    epoch: Instant,
    freed: Notify,
}

impl CopyGate {
    pub fn new(max: usize, busy: usize, share: f64) -> CopyGate {
        CopyGate {
            max,
            busy,
            share,
            not_before_ms: AtomicU64::new(0),
            copies: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            last_client_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            freed: Notify::new(),
        }
    }

    /// Marks a client read or write in flight until the guard drops.
    pub fn client(&self) -> ClientGuard<'_> {
        self.clients.fetch_add(1, Ordering::AcqRel);
        ClientGuard(self)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Client requests in flight and the time since the last one finished.
    fn client_state(&self) -> (usize, Option<Duration>) {
        let last = self.last_client_ms.load(Ordering::Acquire);
        let since = (last > 0).then(|| self.epoch.elapsed().saturating_sub(Duration::from_millis(last - 1)));
        (self.clients.load(Ordering::Acquire), since)
    }

    fn clients_active(&self) -> bool {
        let (in_flight, since) = self.client_state();
        clients_active(in_flight, since)
    }

    /// Copies allowed now (0 while a busy pause runs).
    fn limit(&self) -> usize {
        let (in_flight, since) = self.client_state();
        if clients_active(in_flight, since) && self.now_ms() < self.not_before_ms.load(Ordering::Acquire) {
            return 0;
        }
        copy_limit(self.max, self.busy, in_flight, since)
    }

    /// Waits for a copy slot under the current limit.
    pub async fn acquire(&self) -> CopySlot<'_> {
        loop {
            let n = self.copies.load(Ordering::Acquire);
            if n < self.limit() {
                if self.copies.compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    return CopySlot { gate: self, started: Instant::now() };
                }
                continue;
            }
            // Woken by a finished copy, or look again when client traffic may have ended.
            let _ = tokio::time::timeout(RECHECK, self.freed.notified()).await;
        }
    }

    /// Copies running now (for tests and load reports).
    pub fn running(&self) -> usize {
        self.copies.load(Ordering::Acquire)
    }
}

pub struct ClientGuard<'a>(&'a CopyGate);

impl Drop for ClientGuard<'_> {
    fn drop(&mut self) {
        let g = self.0;
        let ms = g.epoch.elapsed().as_millis() as u64 + 1;
        g.last_client_ms.fetch_max(ms, Ordering::AcqRel);
        g.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct CopySlot<'a> {
    gate: &'a CopyGate,
    started: Instant,
}

impl Drop for CopySlot<'_> {
    fn drop(&mut self) {
        let g = self.gate;
        if g.clients_active() {
            let pause = busy_pause(self.started.elapsed(), g.share);
            g.not_before_ms.fetch_max(g.now_ms() + pause.as_millis() as u64, Ordering::AcqRel);
        }
        g.copies.fetch_sub(1, Ordering::AcqRel);
        g.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_node_copies_at_full_width_and_yields_to_clients() {
        assert_eq!(copy_limit(8, 1, 0, None), 8);
        assert_eq!(copy_limit(8, 1, 0, Some(Duration::from_secs(5))), 8);
        assert_eq!(copy_limit(8, 1, 3, None), 1, "clients in flight");
        assert_eq!(copy_limit(8, 2, 0, Some(Duration::from_millis(50))), 2, "clients just finished");
        assert_eq!(copy_limit(8, 0, 1, None), 1, "repair never starves");
        assert_eq!(copy_limit(2, 5, 1, None), 2, "busy never exceeds max");
        assert_eq!(copy_limit(0, 0, 0, None), 1);
    }

    #[test]
    fn busy_pause_keeps_copying_to_its_share() {
        assert_eq!(busy_pause(Duration::from_millis(30), 0.25), Duration::from_millis(90));
        assert_eq!(busy_pause(Duration::from_millis(30), 1.0), Duration::ZERO);
        assert_eq!(busy_pause(Duration::from_millis(30), 0.5), Duration::from_millis(30));
        // A share of 0 would stop repair for good; it is clamped.
        assert!(busy_pause(Duration::from_millis(1), 0.0) <= Duration::from_millis(99));
    }

    #[tokio::test]
    async fn a_copy_finished_while_clients_work_delays_the_next() {
        let gate = CopyGate::new(4, 1, 0.25);
        let _client = gate.client();
        let slot = gate.acquire().await;
        tokio::time::sleep(Duration::from_millis(40)).await;
        drop(slot);
        // It took ~40 ms, so the next waits ~120 ms.
        assert!(tokio::time::timeout(Duration::from_millis(60), gate.acquire()).await.is_err());
        let next = tokio::time::timeout(Duration::from_secs(2), gate.acquire()).await.expect("slot after the pause");
        drop(next);
    }

    #[tokio::test]
    async fn gate_holds_copies_back_while_clients_work() {
        let gate = CopyGate::new(4, 1, 1.0);
        let a = gate.acquire().await;
        let b = gate.acquire().await;
        assert_eq!(gate.running(), 2);
        drop((a, b));
        let client = gate.client();
        let only = gate.acquire().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(100), gate.acquire()).await.is_err(),
            "a second copy must wait while a client request is in flight"
        );
        drop(client);
        // Still inside the quiet period: one copy at a time.
        assert!(tokio::time::timeout(Duration::from_millis(50), gate.acquire()).await.is_err());
        // After the quiet period the waiting copy gets its slot.
        let second = tokio::time::timeout(CLIENT_QUIET * 3, gate.acquire()).await.expect("slot after quiet period");
        assert_eq!(gate.running(), 2);
        drop((only, second));
        assert_eq!(gate.running(), 0);
    }
}
