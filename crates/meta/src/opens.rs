//! The leader's table of open files: which client session holds which inode open. It
//! lives in memory only, so an open and a release cost no log write (a small read through
//! a mount is then lookup + read, with no metadata write at all).
//!
//! What makes that safe is how orphans are freed. The state machine never frees an inode
//! whose last link goes: it keeps it with nlink 0 in its orphan table. The leader's
//! sweeper (`sessions.rs`) proposes `FreeOrphans` for those this table says nobody holds,
//! and only:
//! - once every live session has registered what it holds with this leader, or at the
//!   latest after `grace` since it became leader in this term: a new leader's table
//!   starts empty, and every live mount registers what it holds again within one lease
//!   (`RenewSession` answers `resync`, the mount sends `HoldFiles`; a mount also does so
//!   when it starts);
//! - after every create-and-open that was in flight when it read the orphans has
//!   registered its open (`begin_create` tickets);
//! - for inodes it has `claim`ed: an open of a claimed inode is refused (`StaleInode`), so
//!   no open can slip in between the decision and the apply. An open registers first and
//!   then checks, through a linearizable read, that the inode still exists.
//!
//! Plain data and decisions, no I/O: the clock's `now` is passed in.

use distfs_types::{FsError, FsResult, InodeId};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long a new leader waits before it frees an orphan: one session lease (every
/// live mount renews within it and registers its opens again) and a margin for the
/// registration that follows the renewal.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(distfs_proto::SESSION_LEASE.as_secs() + 5);

#[derive(Debug)]
pub struct OpenTable {
    term: u64,
    since: Instant,
    grace: Duration,
    by_ino: HashMap<InodeId, HashSet<u64>>,
    by_session: HashMap<u64, HashSet<InodeId>>,
    /// Sessions that registered everything they hold in this term (`HoldFiles`, last page).
    synced: HashSet<u64>,
    /// Orphans the sweeper decided to free; not to be opened again.
    claimed: HashSet<InodeId>,
    /// Tickets of the create-and-open calls in flight.
    creates: BTreeSet<u64>,
    next_ticket: u64,
}

impl OpenTable {
    pub fn new(grace: Duration, now: Instant) -> OpenTable {
        OpenTable {
            term: 0,
            since: now,
            grace,
            by_ino: HashMap::new(),
            by_session: HashMap::new(),
            synced: HashSet::new(),
            claimed: HashSet::new(),
            creates: BTreeSet::new(),
            next_ticket: 1,
        }
    }

    /// A new term starts an empty table (what an earlier term registered is unknown to
    /// the mounts' new leader and will be registered again), and the grace period anew.
    /// Tickets of creates in flight survive: they finish in any term.
    pub fn observe_term(&mut self, term: u64, now: Instant) {
        if term != self.term {
            self.term = term;
            self.since = now;
            self.by_ino.clear();
            self.by_session.clear();
            self.synced.clear();
            self.claimed.clear();
        }
    }

    /// `session` holds `ino` open; `StaleInode` when the inode is about to be freed.
    pub fn hold(&mut self, ino: InodeId, session: u64) -> FsResult<()> {
        if self.claimed.contains(&ino) {
            return Err(FsError::StaleInode { ino });
        }
        self.by_ino.entry(ino).or_default().insert(session);
        self.by_session.entry(session).or_default().insert(ino);
        Ok(())
    }

    /// `session` no longer holds `ino` open (nothing when it did not).
    pub fn release(&mut self, ino: InodeId, session: u64) {
        if let Some(s) = self.by_ino.get_mut(&ino) {
            s.remove(&session);
            if s.is_empty() {
                self.by_ino.remove(&ino);
            }
        }
        if let Some(s) = self.by_session.get_mut(&session) {
            s.remove(&ino);
            if s.is_empty() {
                self.by_session.remove(&session);
            }
        }
    }

    /// One page of a session's registration; the inodes refused (claimed) are returned.
    pub fn hold_many(&mut self, session: u64, inos: &[InodeId], last: bool) -> Vec<InodeId> {
        let refused = inos.iter().copied().filter(|ino| self.hold(*ino, session).is_err()).collect();
        if last {
            self.synced.insert(session);
        }
        refused
    }

    /// Whether the session must register what it holds (`resync`).
    pub fn needs_resync(&self, session: u64) -> bool {
        !self.synced.contains(&session)
    }

    /// The session ended (closed or expired): it holds nothing any more.
    pub fn close(&mut self, session: u64) {
        for ino in self.by_session.remove(&session).unwrap_or_default() {
            if let Some(s) = self.by_ino.get_mut(&ino) {
                s.remove(&session);
                if s.is_empty() {
                    self.by_ino.remove(&ino);
                }
            }
        }
        self.synced.remove(&session);
    }

    pub fn is_held(&self, ino: InodeId) -> bool {
        self.by_ino.contains_key(&ino)
    }

    /// Inodes held open, in all.
    pub fn held_count(&self) -> usize {
        self.by_ino.len()
    }

    /// A create-and-open starts: its ticket is returned by `end_create` once its open is
    /// registered (or it failed).
    pub fn begin_create(&mut self) -> u64 {
        let t = self.next_ticket;
        self.next_ticket += 1;
        self.creates.insert(t);
        t
    }

    pub fn end_create(&mut self, ticket: u64) {
        self.creates.remove(&ticket);
    }

    /// The newest ticket handed out so far (0 for none).
    pub fn last_ticket(&self) -> u64 {
        self.next_ticket - 1
    }

    /// Whether a create with a ticket up to `ticket` is still in flight.
    pub fn creates_pending_up_to(&self, ticket: u64) -> bool {
        self.creates.first().is_some_and(|t| *t <= ticket)
    }

    /// Whether orphans may be freed at `now`, given the sessions alive in the state:
    /// when each has registered with this leader, or once the grace period is over.
    pub fn may_free(&self, now: Instant, live: &[u64]) -> bool {
        now.saturating_duration_since(self.since) >= self.grace || live.iter().all(|s| self.synced.contains(s))
    }

    /// Of `orphans`, the ones nobody holds, now claimed for freeing (none while
    /// `may_free` says no, and none already claimed by a sweep in progress).
    pub fn claim(&mut self, orphans: &[InodeId], now: Instant, live: &[u64]) -> Vec<InodeId> {
        if !self.may_free(now, live) {
            return Vec::new();
        }
        let free: Vec<InodeId> =
            orphans.iter().copied().filter(|i| !self.is_held(*i) && !self.claimed.contains(i)).collect();
        self.claimed.extend(free.iter().copied());
        free
    }

    /// The sweep of these inodes is over (applied, or failed: then they may be claimed
    /// again by the next sweep).
    pub fn unclaim(&mut self, inos: &[InodeId]) {
        for i in inos {
            self.claimed.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Duration = Duration::from_secs(35);

    fn table() -> (OpenTable, Instant) {
        let t0 = Instant::now();
        let mut t = OpenTable::new(G, t0);
        t.observe_term(1, t0);
        (t, t0)
    }

    #[test]
    fn nothing_is_freed_before_every_live_session_registered_or_the_grace_period_ended() {
        let (mut t, t0) = table();
        let live = [3, 4];
        let soon = t0 + Duration::from_secs(1);
        assert!(t.claim(&[InodeId(5)], t0 + G - Duration::from_millis(1), &live).is_empty());
        assert_eq!(t.claim(&[InodeId(5)], t0 + G, &live), vec![InodeId(5)]);
        // A new term starts the grace period again, and forgets the claim.
        t.observe_term(2, t0 + G);
        assert!(t.claim(&[InodeId(5)], t0 + G + Duration::from_secs(1), &live).is_empty());
        assert_eq!(t.claim(&[InodeId(5)], t0 + G + G, &live), vec![InodeId(5)]);
        // Early: once each live session has registered (no session at all: at once).
        t.observe_term(3, t0);
        assert_eq!(t.claim(&[InodeId(6)], soon, &[]), vec![InodeId(6)]);
        t.hold_many(3, &[], true);
        assert!(t.claim(&[InodeId(7)], soon, &live).is_empty(), "session 4 has not registered");
        t.hold_many(4, &[InodeId(7)], true);
        assert!(t.claim(&[InodeId(7)], soon, &live).is_empty(), "held by 4");
        assert_eq!(t.claim(&[InodeId(8)], soon, &live), vec![InodeId(8)]);
    }

    #[test]
    fn a_held_orphan_is_not_claimed_until_every_session_released_it() {
        let (mut t, t0) = table();
        let late = t0 + G;
        let f = InodeId(9);
        t.hold(f, 1).unwrap();
        t.hold(f, 2).unwrap();
        t.hold(f, 2).unwrap(); // a second registration of the same session is one
        assert!(t.claim(&[f], late, &[]).is_empty());
        t.release(f, 1);
        assert!(t.claim(&[f], late, &[]).is_empty(), "session 2 still holds it");
        t.release(f, 2);
        assert_eq!(t.claim(&[f], late, &[]), vec![f]);
        assert!(t.claim(&[f], late, &[]).is_empty(), "claimed once only");
        assert!(matches!(t.hold(f, 3), Err(FsError::StaleInode { .. })), "a claimed inode cannot be opened");
        t.unclaim(&[f]);
        t.hold(f, 3).expect("a failed sweep gives the inode back");
    }

    #[test]
    fn closing_a_session_releases_everything_it_held() {
        let (mut t, t0) = table();
        t.hold(InodeId(1), 7).unwrap();
        t.hold(InodeId(2), 7).unwrap();
        t.hold(InodeId(2), 8).unwrap();
        t.close(7);
        assert_eq!(t.claim(&[InodeId(1), InodeId(2)], t0 + G, &[]), vec![InodeId(1)]);
        assert_eq!(t.held_count(), 1);
    }

    #[test]
    fn a_new_term_asks_every_session_to_register_again() {
        let (mut t, t0) = table();
        assert!(t.needs_resync(4));
        let refused = t.hold_many(4, &[InodeId(1), InodeId(2)], false);
        assert!(refused.is_empty());
        assert!(t.needs_resync(4), "not synced before the last page");
        t.hold_many(4, &[InodeId(3)], true);
        assert!(!t.needs_resync(4));
        assert!(t.is_held(InodeId(1)) && t.is_held(InodeId(3)));
        t.observe_term(1, t0 + G);
        assert!(!t.needs_resync(4), "same term: nothing forgotten");
        t.observe_term(2, t0 + G);
        assert!(t.needs_resync(4));
        assert!(!t.is_held(InodeId(1)));
    }

    #[test]
    fn registration_refuses_claimed_inodes_and_keeps_the_rest() {
        let (mut t, t0) = table();
        assert_eq!(t.claim(&[InodeId(1)], t0 + G, &[]), vec![InodeId(1)]);
        assert_eq!(t.hold_many(3, &[InodeId(1), InodeId(2)], true), vec![InodeId(1)]);
        assert!(t.is_held(InodeId(2)) && !t.is_held(InodeId(1)));
    }

    #[test]
    fn creates_in_flight_are_tracked_by_ticket() {
        let (mut t, _) = table();
        assert_eq!(t.last_ticket(), 0);
        assert!(!t.creates_pending_up_to(0));
        let a = t.begin_create();
        let b = t.begin_create();
        let mark = t.last_ticket();
        let c = t.begin_create();
        assert!(t.creates_pending_up_to(mark));
        t.end_create(a);
        assert!(t.creates_pending_up_to(mark));
        t.end_create(b);
        assert!(!t.creates_pending_up_to(mark), "only `c`, started after the mark, is left");
        t.end_create(c);
        // Tickets survive a new term: a create in flight finishes in any term.
        let d = t.begin_create();
        t.observe_term(5, Instant::now());
        assert!(t.creates_pending_up_to(d));
    }
}
