//! Statahead (after Lustre's): a run of LOOKUPs in one directory that each had to ask the
//! metadata service (`stat` of every file, `rm` of every file, opening one file after
//! another) makes the mount fetch the next page of that directory, with attributes, in
//! one call; the LOOKUPs of those names that follow are answered here.
//!
//! Freshness: a fetched entry is used for at most the entry TTL after its fetch began,
//! and the kernel is given only the time left: the bound the kernel's own cache keeps
//! for a name it looked up when the fetch began. Names not found are never answered
//! here. This mount's own changes are seen at once, precisely: each names what it
//! touches (`Touch`: names in directories and inodes whose attributes change, the
//! directories themselves included). When a change begins, the fetched entries it
//! touches are dropped; while it runs, nothing it touches is answered; and a page whose
//! fetch overlapped it (began before it ended) keeps none of what it touches. An inode
//! is kept under one name at most, and files with more than one link are not kept, so
//! a change that names an inode finds its one entry. Unlike a generation moved by every
//! change, this lets an `rm` of every file use the pages: its unlinks drop only the
//! names they remove.
//!
//! Cost control: a fetch begins only after `RUN` successful lookups of the directory
//! went to the service within `WINDOW`; a fetch of which fewer than `USEFUL` entries were
//! used makes the run the next one needs four times longer (random lookups in a large
//! directory turn it off).

use distfs_types::{Attr, FileKind, InodeId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lookups of one directory that went to the service, within `WINDOW`, before a fetch.
const RUN: u32 = 4;
const WINDOW: Duration = Duration::from_secs(1);
/// Entries per fetch (one metadata page).
pub(crate) const PAGE: u32 = 1000;
/// A fetch with fewer entries used than this was not worth it.
const USEFUL: u32 = 16;
/// Fetched entries kept at most (all are dropped when a fetch would pass it).
const MAX_ENTRIES: usize = 50_000;
/// Directories tracked at most (their runs are forgotten past it).
const MAX_DIRS: usize = 10_000;
/// Ended changes remembered for the fetches in flight; past it those fetches are voided.
const MAX_ENDED: usize = 4_096;

/// What a change of this mount touches: names in directories (created, removed or
/// pointed elsewhere) and inodes whose attributes it changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Touch {
    names: Vec<(InodeId, String)>,
    inodes: Vec<InodeId>,
}

impl Touch {
    /// A change of `ino`'s attributes or contents.
    pub fn inode(ino: InodeId) -> Touch {
        Touch { names: Vec::new(), inodes: vec![ino] }
    }

    /// A change of what `name` in `dir` is, which also changes `dir` (its times, and
    /// its link count for directories).
    pub fn name(dir: InodeId, name: &str) -> Touch {
        Touch { names: vec![(dir, name.to_string())], inodes: vec![dir] }
    }

    /// And a change of `name` in `dir` too (the other side of a rename).
    pub fn and_name(mut self, dir: InodeId, name: &str) -> Touch {
        self.names.push((dir, name.to_string()));
        self.inodes.push(dir);
        self
    }

    /// And a change of `ino` too (the file a hard link adds a name to).
    pub fn and_inode(mut self, ino: InodeId) -> Touch {
        self.inodes.push(ino);
        self
    }

    fn hits(&self, dir: InodeId, name: &str, ino: InodeId) -> bool {
        self.inodes.contains(&ino) || self.names.iter().any(|(d, n)| *d == dir && n == name)
    }
}

/// The names and inodes of several changes, to look entries up in.
#[derive(Default)]
struct Touched {
    names: HashSet<(InodeId, String)>,
    inodes: HashSet<InodeId>,
}

impl Touched {
    fn hits(&self, dir: InodeId, name: &str, ino: InodeId) -> bool {
        self.inodes.contains(&ino) || self.names.contains(&(dir, name.to_string()))
    }
}

pub(crate) struct Statahead {
    enabled: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    dirs: HashMap<InodeId, Dir>,
    entries: HashMap<InodeId, HashMap<String, Fetched>>,
    /// Where each kept inode is kept (one name each).
    by_ino: HashMap<InodeId, (InodeId, String)>,
    count: usize,
    /// Moved at the start and the end of every change.
    seq: u64,
    /// Changes under way, by the `seq` they began at.
    active: HashMap<u64, Touch>,
    /// Changes that ended (at the `seq` given) while fetches were in flight.
    ended: VecDeque<(u64, Touch)>,
    /// The `seq` at which each fetch in flight began.
    in_flight: Vec<u64>,
    /// Fetches that began before this `seq` are dropped (`ended` overflowed).
    voided_below: u64,
}

#[derive(Default)]
struct Dir {
    misses: u32,
    since: Option<Instant>,
    fetching: bool,
    /// A fetch of it has begun before.
    fetched: bool,
    /// Entries used from this directory's last fetch.
    used: u32,
    /// Fetches in a row that were not worth it.
    wasted: u32,
}

struct Fetched {
    attr: Attr,
    at: Instant,
}

/// A fetch to run: list `dir` after `after`, then hand the page to `Statahead::fetched`.
pub(crate) struct Fetch {
    pub dir: InodeId,
    pub after: String,
    seq: u64,
    at: Instant,
}

/// A change this mount is making: what it touches is not answered from fetched entries
/// until it is dropped.
pub(crate) struct Change<'a>(&'a Statahead, u64);

impl Drop for Change<'_> {
    fn drop(&mut self) {
        self.0.end(self.1);
    }
}

/// `Change` for a request that runs as a task of its own.
pub(crate) struct OwnedChange(std::sync::Arc<crate::state::Inner>, u64);

impl OwnedChange {
    pub fn new(inner: &std::sync::Arc<crate::state::Inner>, touch: Touch) -> OwnedChange {
        let id = inner.statahead.begin(touch);
        OwnedChange(inner.clone(), id)
    }
}

impl Drop for OwnedChange {
    fn drop(&mut self) {
        self.0.statahead.end(self.1);
    }
}

impl State {
    /// Drops the kept entry of `name` in `dir`.
    fn forget_name(&mut self, dir: InodeId, name: &str) {
        let Some(names) = self.entries.get_mut(&dir) else { return };
        if let Some(f) = names.remove(name) {
            self.count -= 1;
            self.by_ino.remove(&f.attr.ino);
        }
        if names.is_empty() {
            self.entries.remove(&dir);
        }
    }

    fn forget(&mut self, touch: &Touch) {
        for (dir, name) in &touch.names {
            self.forget_name(*dir, name);
        }
        for ino in &touch.inodes {
            if let Some((dir, name)) = self.by_ino.get(ino).cloned() {
                self.forget_name(dir, &name);
            }
        }
    }

    /// What the changes under way and those that ended after `since` touch, together:
    /// looked up once per entry of a page instead of scanning every change per entry.
    fn touched_since(&self, since: u64) -> Touched {
        let ended = self.ended.iter().filter(|(end, _)| *end > since).map(|(_, t)| t);
        let mut all = Touched::default();
        for t in self.active.values().chain(ended) {
            all.names.extend(t.names.iter().cloned());
            all.inodes.extend(t.inodes.iter().copied());
        }
        all
    }

    /// Keeps of `ended` only what the fetches in flight may not have seen.
    fn prune_ended(&mut self) {
        match self.in_flight.iter().min() {
            None => self.ended.clear(),
            Some(&oldest) => self.ended.retain(|(end, _)| *end > oldest),
        }
    }
}

impl Statahead {
    pub fn new(enabled: bool) -> Statahead {
        Statahead { enabled, state: Mutex::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A change begins: what it touches is dropped and, until `end`, not answered.
    fn begin(&self, touch: Touch) -> u64 {
        if !self.enabled {
            return 0;
        }
        let mut s = self.state();
        s.seq += 1;
        let id = s.seq;
        s.forget(&touch);
        s.active.insert(id, touch);
        id
    }

    fn end(&self, id: u64) {
        if !self.enabled {
            return;
        }
        let mut s = self.state();
        s.seq += 1;
        let Some(touch) = s.active.remove(&id) else { return };
        if s.in_flight.is_empty() {
            return;
        }
        if s.ended.len() >= MAX_ENDED {
            s.ended.clear();
            s.voided_below = s.seq;
            return;
        }
        let seq = s.seq;
        s.ended.push_back((seq, touch));
    }

    /// Marks the start of a change; it ends when the guard is dropped.
    pub fn change(&self, touch: Touch) -> Change<'_> {
        Change(self, self.begin(touch))
    }

    /// `name` in `dir` from a fetch still fresh for `ttl`: its attributes and the time
    /// left.
    pub fn get(&self, dir: InodeId, name: &str, ttl: Duration) -> Option<(Attr, Duration)> {
        let mut s = self.state();
        let f = s.entries.get(&dir)?.get(name)?;
        let left = ttl.checked_sub(f.at.elapsed())?;
        let attr = f.attr.clone();
        if s.active.values().any(|t| t.hits(dir, name, attr.ino)) {
            return None;
        }
        if let Some(d) = s.dirs.get_mut(&dir) {
            d.used += 1;
        }
        Some((attr, left))
    }

    /// Notes that `name` in `dir` was found by asking the service; returns the fetch to
    /// run when this makes a run.
    pub fn found(&self, dir: InodeId, name: &str) -> Option<Fetch> {
        if !self.enabled {
            return None;
        }
        let now = Instant::now();
        let mut s = self.state();
        if s.dirs.len() >= MAX_DIRS && !s.dirs.contains_key(&dir) {
            s.dirs.retain(|_, d| d.fetching);
        }
        let d = s.dirs.entry(dir).or_default();
        if d.since.is_none_or(|t| now.duration_since(t) > WINDOW) {
            d.since = Some(now);
            d.misses = 0;
        }
        d.misses += 1;
        // The last fetch of this directory, if any, judged by the entries used so far.
        let wasted = match (d.fetched, d.used >= USEFUL) {
            (false, _) => d.wasted,
            (true, true) => 0,
            (true, false) => d.wasted + 1,
        };
        if d.fetching || d.misses < RUN.saturating_mul(1 << (2 * wasted).min(20)) {
            return None;
        }
        d.wasted = wasted;
        d.fetched = true;
        d.fetching = true;
        d.misses = 0;
        d.used = 0;
        let seq = s.seq;
        s.in_flight.push(seq);
        Some(Fetch { dir, after: name.to_string(), seq, at: now })
    }

    /// Takes in a fetched page (or its failure) and returns the inodes it kept: not
    /// those that a change overlapping the fetch touched, nor files with more than one
    /// link.
    pub fn fetched(&self, f: Fetch, page: Option<Vec<(String, Attr)>>) -> HashSet<InodeId> {
        let mut s = self.state();
        if let Some(d) = s.dirs.get_mut(&f.dir) {
            d.fetching = false;
        }
        if let Some(i) = s.in_flight.iter().position(|&q| q == f.seq) {
            s.in_flight.swap_remove(i);
        }
        let mut kept = HashSet::new();
        if let Some(page) = page.filter(|_| f.seq >= s.voided_below) {
            if s.count + page.len() > MAX_ENTRIES {
                s.entries.clear();
                s.by_ino.clear();
                s.count = 0;
            }
            let touched = s.touched_since(f.seq);
            for (name, attr) in page {
                let linked = attr.kind != FileKind::Dir && attr.nlink > 1;
                if linked || touched.hits(f.dir, &name, attr.ino) {
                    continue;
                }
                if let Some((dir, old)) = s.by_ino.get(&attr.ino).cloned() {
                    s.forget_name(dir, &old);
                }
                s.forget_name(f.dir, &name);
                kept.insert(attr.ino);
                s.by_ino.insert(attr.ino, (f.dir, name.clone()));
                s.entries.entry(f.dir).or_default().insert(name, Fetched { attr, at: f.at });
                s.count += 1;
            }
        }
        s.prune_ended();
        kept
    }

    #[cfg(test)]
    fn used(&self, dir: InodeId) -> u32 {
        self.state().dirs.get(&dir).map_or(0, |d| d.used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ino: u64) -> Attr {
        Attr { kind: FileKind::File, nlink: 1, ..crate::fs::dot_attr(InodeId(ino)) }
    }

    fn page(from: u64, n: u64) -> Vec<(String, Attr)> {
        (from..from + n).map(|i| (format!("f{i:05}"), attr(100 + i))).collect()
    }

    const TTL: Duration = Duration::from_secs(1);
    const DIR: InodeId = InodeId(1);

    /// A run in `dir` and its fetch.
    fn run(sa: &Statahead, dir: InodeId) -> Fetch {
        let mut fetch = None;
        for i in 0..RUN {
            fetch = sa.found(dir, &format!("r{i:05}"));
        }
        fetch.expect("a run starts a fetch")
    }

    fn has(sa: &Statahead, dir: InodeId, i: u64) -> bool {
        sa.get(dir, &format!("f{i:05}"), TTL).is_some()
    }

    #[test]
    fn a_run_of_lookups_fetches_the_names_after_and_they_are_answered_until_the_ttl() {
        let sa = Statahead::new(true);
        for i in 0..RUN - 1 {
            assert!(sa.found(DIR, &format!("f{i:05}")).is_none());
        }
        let f = sa.found(DIR, "f00003").expect("a run starts a fetch");
        assert_eq!(f.after, "f00003");
        assert!(sa.found(DIR, "f00004").is_none(), "one fetch at a time");
        let at = f.at;
        assert_eq!(sa.fetched(f, Some(page(4, 10))).len(), 10);
        let (a, left) = sa.get(DIR, "f00007", TTL).expect("fetched");
        assert_eq!(a.ino, InodeId(107));
        assert!(left <= TTL.saturating_sub(at.elapsed()) + Duration::from_millis(1));
        assert!(sa.get(DIR, "f00020", TTL).is_none(), "not fetched");
        assert!(sa.get(InodeId(2), "f00007", TTL).is_none(), "another directory");
        assert!(sa.get(DIR, "f00007", Duration::ZERO).is_none(), "past its ttl");
        assert_eq!(sa.used(DIR), 1);
    }

    #[test]
    fn a_change_hides_what_it_touches_and_only_that() {
        let sa = Statahead::new(true);
        let f = run(&sa, DIR);
        sa.fetched(f, Some(page(0, 10)));
        // An unlink of f00005: that name, and the directory's own entry in its parent.
        let grand = InodeId(7);
        let f = run(&sa, grand);
        sa.fetched(f, Some(vec![("d".into(), crate::fs::dot_attr(DIR))]));
        assert!(sa.get(grand, "d", TTL).is_some());
        {
            let _c = sa.change(Touch::name(DIR, "f00005"));
            assert!(!has(&sa, DIR, 5), "answered during the change");
            assert!(has(&sa, DIR, 6), "an untouched name");
        }
        assert!(!has(&sa, DIR, 5), "answered after the change");
        assert!(sa.get(grand, "d", TTL).is_none(), "the directory's attributes changed");
        assert!(has(&sa, DIR, 6));
        // A setattr of inode 107 (f00007) hides its entry; a rename both names.
        drop(sa.change(Touch::inode(InodeId(107))));
        assert!(!has(&sa, DIR, 7));
        drop(sa.change(Touch::name(DIR, "f00001").and_name(InodeId(2), "g")));
        assert!(!has(&sa, DIR, 1));
        assert!(has(&sa, DIR, 2) && has(&sa, DIR, 3), "the rest is still answered");
    }

    #[test]
    fn a_page_keeps_nothing_a_change_that_overlapped_its_fetch_touched() {
        let sa = Statahead::new(true);
        // Ended before the fetch began: the page already shows it.
        drop(sa.change(Touch::name(DIR, "f00000")));
        let during = sa.change(Touch::name(DIR, "f00001"));
        let f = run(&sa, DIR);
        let ended = sa.change(Touch::inode(InodeId(102)));
        drop(ended);
        drop(sa.change(Touch::name(DIR, "f00003")));
        let kept = sa.fetched(f, Some(page(0, 6)));
        assert!(has(&sa, DIR, 0), "a change that ended before the fetch");
        assert!(!has(&sa, DIR, 1) && !has(&sa, DIR, 2) && !has(&sa, DIR, 3), "overlapping changes");
        assert!(has(&sa, DIR, 4) && has(&sa, DIR, 5));
        assert_eq!(kept, [100, 104, 105].map(InodeId).into_iter().collect());
        drop(during);
        assert!(!has(&sa, DIR, 1));
        // With no fetch in flight, nothing of the ended changes is kept around.
        assert!(sa.state().ended.is_empty());
    }

    #[test]
    fn an_inode_is_kept_under_one_name_and_files_with_more_links_not_at_all() {
        let sa = Statahead::new(true);
        let f = run(&sa, DIR);
        let mut p = page(0, 3);
        p[1].1.nlink = 2;
        sa.fetched(f, Some(p));
        assert!(!has(&sa, DIR, 1), "a file with two links");
        // The same inode under a new name (renamed by another mount): the old name goes.
        let f = run(&sa, InodeId(2));
        sa.fetched(f, Some(vec![("moved".into(), attr(100))]));
        assert!(!has(&sa, DIR, 0));
        drop(sa.change(Touch::inode(InodeId(100))));
        assert!(sa.get(InodeId(2), "moved", TTL).is_none());
        assert!(has(&sa, DIR, 2));
    }

    #[test]
    fn lookups_with_an_unlink_between_each_still_make_a_run() {
        // `rm` of every file: lookup, unlink, lookup, unlink...
        let sa = Statahead::new(true);
        let mut fetch = None;
        for i in 0..RUN {
            let name = format!("f{i:05}");
            fetch = sa.found(DIR, &name);
            drop(sa.change(Touch::name(DIR, &name)));
        }
        let f = fetch.expect("a run across unlinks");
        sa.fetched(f, Some(page(RUN as u64, 10)));
        assert!(has(&sa, DIR, RUN as u64 + 1));
    }

    #[test]
    fn fetches_that_go_unused_make_the_next_run_longer() {
        let sa = Statahead::new(true);
        let mut lookups_per_fetch = Vec::new();
        let mut n = 0;
        for _ in 0..4 {
            let mut k = 0;
            let f = loop {
                k += 1;
                n += 1;
                if let Some(f) = sa.found(DIR, &format!("x{n}")) {
                    break f;
                }
            };
            sa.fetched(f, Some(page(n * 1000, 10)));
            lookups_per_fetch.push(k);
        }
        assert_eq!(lookups_per_fetch[0], RUN);
        assert!(lookups_per_fetch.windows(2).all(|w| w[1] > w[0]), "{lookups_per_fetch:?}");
    }
}
