//! Storage-node liveness: leader soft state (never in Raft). The last heartbeat instant
//! and reported usage per node, judged Up / Suspect / Dead against `suspect_after` and
//! `dead_after`. Time comes from a `Clock` so tests and the simulator can drive it.

use distfs_types::{NodeId, NodeState};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A source of monotonic time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// Production clock: tokio's (so paused-time tests work too).
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// What a node last reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub capacity: u64,
    pub used: u64,
    pub blocks: u64,
    pub load: u32,
}

#[derive(Clone, Copy, Debug)]
struct Soft {
    last: Instant,
    report: Option<Report>,
}

/// Liveness as judged by the current leader.
#[derive(Debug)]
pub struct Liveness {
    suspect_after: Duration,
    dead_after: Duration,
    /// Term in which this state was built; a new term starts a fresh grace period.
    term: Option<u64>,
    epoch: Instant,
    nodes: HashMap<NodeId, Soft>,
}

impl Liveness {
    pub fn new(suspect_after: Duration, dead_after: Duration, now: Instant) -> Liveness {
        Liveness { suspect_after, dead_after, term: None, epoch: now, nodes: HashMap::new() }
    }

    /// Call with the current Raft term: when it changed (a new leadership), every node
    /// gets a fresh grace period from `now`.
    pub fn observe_term(&mut self, term: u64, now: Instant) {
        if self.term != Some(term) {
            self.term = Some(term);
            self.epoch = now;
            self.nodes.clear();
        }
    }

    pub fn heartbeat(&mut self, node: NodeId, now: Instant, report: Option<Report>) {
        let e = self.nodes.entry(node).or_insert(Soft { last: now, report: None });
        e.last = now;
        if report.is_some() {
            e.report = report;
        }
    }

    /// Time since the node was last heard of (or since the grace period began).
    pub fn silence(&self, node: NodeId, now: Instant) -> Duration {
        let last = self.nodes.get(&node).map(|s| s.last).unwrap_or(self.epoch);
        now.saturating_duration_since(last)
    }

    pub fn state(&self, node: NodeId, now: Instant) -> NodeState {
        let s = self.silence(node, now);
        if s >= self.dead_after {
            NodeState::Dead
        } else if s >= self.suspect_after {
            NodeState::Suspect
        } else {
            NodeState::Up
        }
    }

    pub fn report(&self, node: NodeId) -> Option<Report> {
        self.nodes.get(&node).and_then(|s| s.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_silence_and_new_terms_reset() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Duration::from_secs(2), Duration::from_secs(6), t0);
        l.observe_term(1, t0);
        let n = NodeId(1);
        assert_eq!(l.state(n, t0 + Duration::from_secs(1)), NodeState::Up);
        assert_eq!(l.state(n, t0 + Duration::from_secs(3)), NodeState::Suspect);
        assert_eq!(l.state(n, t0 + Duration::from_secs(7)), NodeState::Dead);
        l.heartbeat(n, t0 + Duration::from_secs(7), None);
        assert_eq!(l.state(n, t0 + Duration::from_secs(8)), NodeState::Up);
        l.observe_term(2, t0 + Duration::from_secs(20));
        assert_eq!(l.state(n, t0 + Duration::from_secs(21)), NodeState::Up);
    }
}
