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
    /// When its connection to the leader closed, if no heartbeat came since.
    disconnected: Option<Instant>,
    /// Since then, a dial of its port was refused (the process is gone).
    refused: bool,
}

/// Liveness as judged by the current leader.
#[derive(Debug)]
pub struct Liveness {
    suspect_after: Duration,
    dead_after: Duration,
    /// Dead this long after a lost connection (`None`: disconnects are ignored).
    dead_after_disconnect: Option<Duration>,
    /// Term in which this state was built; a new term starts a fresh grace period.
    term: Option<u64>,
    epoch: Instant,
    nodes: HashMap<NodeId, Soft>,
}

impl Liveness {
    pub fn new(suspect_after: Duration, dead_after: Duration, now: Instant) -> Liveness {
        Liveness {
            suspect_after,
            dead_after,
            dead_after_disconnect: None,
            term: None,
            epoch: now,
            nodes: HashMap::new(),
        }
    }

    /// A lost connection makes a node Suspect at once and Dead `grace` later.
    pub fn with_disconnect_grace(mut self, grace: Duration) -> Liveness {
        self.dead_after_disconnect = Some(grace);
        self
    }

    /// New thresholds (a configuration reload); states are judged with them from now on.
    pub fn set_timings(&mut self, suspect_after: Duration, dead_after: Duration, dead_after_disconnect: Duration) {
        self.suspect_after = suspect_after;
        self.dead_after = dead_after;
        if self.dead_after_disconnect.is_some() {
            self.dead_after_disconnect = Some(dead_after_disconnect.min(dead_after));
        }
    }

    /// `suspect_after` and `dead_after` in force.
    pub fn timings(&self) -> (Duration, Duration) {
        (self.suspect_after, self.dead_after)
    }

    /// The node's connection to the leader closed at `now`.
    pub fn disconnected(&mut self, node: NodeId, now: Instant) {
        if let Some(s) = self.nodes.get_mut(&node) {
            s.disconnected = Some(now);
        }
    }

    /// The node answered a connection after its old one closed (its process is alive:
    /// the connection dropped, the node did not die). It is judged by silence again.
    pub fn still_listening(&mut self, node: NodeId, since: Instant) {
        if let Some(s) = self.nodes.get_mut(&node) {
            if s.disconnected.is_some_and(|at| at <= since) {
                s.disconnected = None;
                s.refused = false;
            }
        }
    }

    /// The node's port refused a connection after its connection closed: its process
    /// is gone, so it is Dead now (no grace; a restart later counts it again).
    pub fn refused(&mut self, node: NodeId, since: Instant) {
        if let Some(s) = self.nodes.get_mut(&node) {
            if s.disconnected.is_some_and(|at| at <= since) {
                s.refused = true;
            }
        }
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
        let e = self.nodes.entry(node).or_insert(Soft { last: now, report: None, disconnected: None, refused: false });
        e.last = now;
        e.disconnected = None;
        e.refused = false;
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
        let lost = self.nodes.get(&node).and_then(|x| x.disconnected).zip(self.dead_after_disconnect);
        if let Some((at, grace)) = lost {
            let refused = self.nodes.get(&node).is_some_and(|x| x.refused);
            return if refused || now.saturating_duration_since(at) >= grace || s >= self.dead_after {
                NodeState::Dead
            } else {
                NodeState::Suspect
            };
        }
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

    #[test]
    fn a_lost_connection_is_suspect_at_once_and_dead_after_the_grace() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Liveness::new(Duration::from_secs(2), Duration::from_secs(6), t0).with_disconnect_grace(ms(1000));
        l.observe_term(1, t0);
        let n = NodeId(1);
        l.heartbeat(n, t0, None);
        l.disconnected(n, t0 + ms(100));
        assert_eq!(l.state(n, t0 + ms(150)), NodeState::Suspect);
        assert_eq!(l.state(n, t0 + ms(1100)), NodeState::Dead);
        // A refused dial of its port: dead at once, until it heartbeats again.
        l.disconnected(n, t0 + ms(1150));
        l.refused(n, t0 + ms(1150));
        assert_eq!(l.state(n, t0 + ms(1160)), NodeState::Dead);
        // A probe that finds the node still listening takes it back to silence rules.
        l.disconnected(n, t0 + ms(1150));
        l.still_listening(n, t0 + ms(1150));
        assert_eq!(l.state(n, t0 + ms(1160)), NodeState::Up);
        l.disconnected(n, t0 + ms(100));
        // A heartbeat (a quick restart) clears it.
        l.heartbeat(n, t0 + ms(1200), None);
        assert_eq!(l.state(n, t0 + ms(1300)), NodeState::Up);
        // An unknown node's disconnect is ignored.
        l.disconnected(NodeId(9), t0);
        assert_eq!(l.state(NodeId(9), t0 + ms(10)), NodeState::Up);
    }
}
