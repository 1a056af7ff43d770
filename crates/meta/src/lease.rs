//! The leader's read lease: when a read may be answered from the leader's local state
//! without first confirming leadership with a quorum.
//!
//! A linearizable read needs two things: that this server is still the only leader, and
//! that its state machine holds every acknowledged write. The second holds on the leader
//! once a leadership round (`leadership_round`) has waited until its log as it stood was
//! applied, and stays true: a write is acknowledged only after it is applied here. The first is what `Raft::ensure_linearizable` checks, with a heartbeat round to a
//! quorum for every read: about 70 µs more per `stat` with three metadata servers on
//! loopback (BENCHMARKS, ninth session), and a hop through the Raft task even alone.
//!
//! The lease replaces most of those rounds. A member that answered a heartbeat refuses to
//! vote for anyone else for `election_timeout_max` after it (openraft's `leader_lease`), so
//! no other leader can be elected until that long after the round started. A round that
//! started at `t0` therefore lets the leader answer reads locally until `t0 + LEASE`, in its
//! term only. `LEASE` is half of `election_timeout_min` (so at most a quarter of the
//! followers' promise with the default timeouts): clock rates on two machines would have to
//! differ by a factor of four before a stale read became possible. Leadership lost in the
//! meantime (a higher term seen) ends the lease at once, since the term is part of it.
//!
//! These are plain functions of the times and the Raft view, plus the round itself
//! (`leadership_round`); `Service::read_barrier` is the async shell that keeps the lease, and the Raft simulation
//! (`distfs-sim`) reads through the same functions under partitions, pauses, crashes and
//! skewed clock rates, checking that no read misses an acknowledged write. The lease
//! assumes a monotonic clock (`Instant`): a step of the wall clock does not move it.

use crate::raft::MetaRaft;
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::BasicNode;
use std::time::{Duration, Instant};

/// Why a leadership round gave no permission to read.
#[derive(Debug)]
pub enum RoundError {
    /// Not the leader, no quorum, or Raft stopped (openraft's answer).
    Raft(Box<RaftError<u64, CheckIsLeaderError<u64, BasicNode>>>),
    /// The state machine did not apply the leader's log within the time allowed.
    Unsettled { waited: Duration },
}

/// A leadership round: a quorum confirms this server leads (`ensure_linearizable`), then
/// the state machine applies every entry the leader's log held when the round began.
///
/// The second step is ours. openraft 0.9's read index is the commit index the leader
/// knows, and a leader that crashed and restarted within its term takes its leadership
/// back knowing only the commit index it had saved: writes committed and acknowledged
/// just before the crash were then missing from reads until its next commit (the Raft
/// simulation found it: `distfs-sim`, a reader after a restarted leader's first round).
/// An acknowledged write is in the leader's log, so once the log as it stood is applied,
/// every write acknowledged before the read is in the state.
pub async fn leadership_round(raft: &MetaRaft, settle: Duration) -> Result<(), RoundError> {
    let last = raft.metrics().borrow().last_log_index;
    raft.ensure_linearizable().await.map_err(|e| RoundError::Raft(Box::new(e)))?;
    if last.is_some() {
        raft.wait(Some(settle))
            .applied_index_at_least(last, "read barrier")
            .await
            .map_err(|_| RoundError::Unsettled { waited: settle })?;
    }
    Ok(())
}

/// A leader's permission to answer reads locally in `term` until `until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLease {
    pub term: u64,
    pub until: Instant,
    /// From here on a read still uses the lease but asks for it to be renewed in the
    /// background, so that steady reads never wait for a round.
    pub renew_after: Instant,
}

/// What a read does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseCheck {
    /// Answer from local state.
    Local,
    /// Answer from local state, and have the lease renewed in the background.
    LocalRenew,
    /// Confirm leadership with a quorum round first.
    Round,
}

/// How long a round started at some time lets the leader answer reads locally.
pub fn lease_length(election_timeout_min: Duration) -> Duration {
    #[cfg(feature = "sim-bugs")]
    if sim_bugs::LEASE_UNCHECKED.load(std::sync::atomic::Ordering::Relaxed)
        || sim_bugs::LEASE_TOO_LONG.load(std::sync::atomic::Ordering::Relaxed)
    {
        return election_timeout_min * 100;
    }
    election_timeout_min / 2
}

/// Deliberately wrong behaviour the simulator must catch (`sim-bugs` feature only, off
/// unless a test switches it on).
#[cfg(feature = "sim-bugs")]
pub mod sim_bugs {
    use std::sync::atomic::AtomicBool;

    /// The lease lasts 100 × `election_timeout_min` and outlives the term and the
    /// leadership it was given in: a deposed leader keeps answering reads from its own
    /// state after another leader acknowledged writes it does not have.
    pub static LEASE_UNCHECKED: AtomicBool = AtomicBool::new(false);

    /// The lease lasts 100 × `election_timeout_min` (its checks of the term and the
    /// leadership stay): a leader cut off from the majority keeps answering reads after
    /// the majority elected another and acknowledged writes.
    pub static LEASE_TOO_LONG: AtomicBool = AtomicBool::new(false);
}

/// The lease a leadership round gives: `started` is when it began (before the heartbeats
/// went out), `term` the term this server led in when it began.
pub fn after_round(started: Instant, term: u64, election_timeout_min: Duration) -> ReadLease {
    let len = lease_length(election_timeout_min);
    ReadLease { term, until: started + len, renew_after: started + len / 2 }
}

/// The lease to keep after a round gave `new`: `new`, unless `current` is of the same
/// term and lasts longer (two rounds can finish out of order).
pub fn keep(current: Option<ReadLease>, new: ReadLease) -> ReadLease {
    match current {
        Some(c) if c.term == new.term && c.until >= new.until => c,
        _ => new,
    }
}

/// Whether a read at `now` may use `lease`, given the current Raft view: this server's
/// term and whether it believes it leads.
pub fn check(lease: Option<ReadLease>, term: u64, leads: bool, now: Instant) -> LeaseCheck {
    #[cfg(feature = "sim-bugs")]
    let (term, leads) = match lease {
        Some(l) if sim_bugs::LEASE_UNCHECKED.load(std::sync::atomic::Ordering::Relaxed) => (l.term, true),
        _ => (term, leads),
    };
    match lease {
        Some(l) if leads && l.term == term && now < l.until => {
            if now < l.renew_after {
                LeaseCheck::Local
            } else {
                LeaseCheck::LocalRenew
            }
        }
        _ => LeaseCheck::Round,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(600);

    #[test]
    fn a_round_lets_reads_stay_local_for_half_the_minimum_election_timeout() {
        let t0 = Instant::now();
        let l = after_round(t0, 7, MIN);
        assert_eq!(l.until, t0 + Duration::from_millis(300));
        assert_eq!(check(Some(l), 7, true, t0), LeaseCheck::Local);
        assert_eq!(check(Some(l), 7, true, t0 + Duration::from_millis(149)), LeaseCheck::Local);
        assert_eq!(check(Some(l), 7, true, t0 + Duration::from_millis(150)), LeaseCheck::LocalRenew);
        assert_eq!(check(Some(l), 7, true, t0 + Duration::from_millis(299)), LeaseCheck::LocalRenew);
        assert_eq!(check(Some(l), 7, true, t0 + Duration::from_millis(300)), LeaseCheck::Round, "expired");
    }

    #[test]
    fn a_later_round_never_shortens_the_lease_of_its_term() {
        let t0 = Instant::now();
        let early = after_round(t0, 7, MIN);
        let late = after_round(t0 + Duration::from_millis(100), 7, MIN);
        assert_eq!(keep(Some(late), early), late, "an older round finishing last");
        assert_eq!(keep(Some(early), late), late);
        assert_eq!(keep(Some(late), after_round(t0, 8, MIN)).term, 8, "a new term replaces it");
        assert_eq!(keep(None, early), early);
    }

    #[test]
    fn the_lease_ends_with_the_term_or_the_leadership() {
        let t0 = Instant::now();
        let l = after_round(t0, 7, MIN);
        assert_eq!(check(Some(l), 8, true, t0), LeaseCheck::Round, "a newer term: maybe another leader");
        assert_eq!(check(Some(l), 7, false, t0), LeaseCheck::Round, "no longer leading");
        assert_eq!(check(None, 7, true, t0), LeaseCheck::Round, "no round yet in this term");
    }

    #[test]
    fn the_lease_is_far_shorter_than_the_followers_promise() {
        // openraft's followers refuse votes for election_timeout_max > election_timeout_min
        // after a heartbeat; the lease must end well before.
        assert!(lease_length(MIN) * 2 <= MIN);
    }
}
