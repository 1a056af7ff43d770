//! Statahead (after Lustre's): a run of LOOKUPs in one directory that each had to ask the
//! metadata service (`stat` of every file, `ls` without readdirplus, opening one file
//! after another) makes the mount fetch the next page of that directory, with
//! attributes, in one call; the LOOKUPs of those names that follow are answered here.
//!
//! Freshness: a fetched entry is used for at most the entry TTL after its fetch began,
//! and the kernel is given only the time left: the bound the kernel's own cache keeps
//! for a name it looked up when the fetch began. Names not found are never answered
//! here. This mount's own changes (namespace, attributes, data commits, xattrs) are seen
//! at once: while one runs nothing is answered from fetched entries, and each begins and
//! ends by moving a generation, so entries fetched before or during it are not used.
//!
//! Cost control: a fetch begins only after `RUN` successful lookups of the directory
//! went to the service within `WINDOW`; a fetch of which fewer than `USEFUL` entries were
//! used makes the run the next one needs four times longer (random lookups in a large
//! directory turn it off).

use distfs_types::{Attr, InodeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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

pub(crate) struct Statahead {
    enabled: bool,
    /// Moved at the start and the end of every change this mount makes.
    gen: AtomicU64,
    /// Changes under way.
    active: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    dirs: HashMap<InodeId, Dir>,
    entries: HashMap<InodeId, HashMap<String, Fetched>>,
    count: usize,
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
    /// The generation of the run's lookups.
    gen: u64,
}

struct Fetched {
    attr: Attr,
    at: Instant,
    gen: u64,
}

/// A fetch to run: list `dir` after `after`, then hand the page to `Statahead::fetched`.
pub(crate) struct Fetch {
    pub dir: InodeId,
    pub after: String,
    pub gen: u64,
    pub at: Instant,
}

/// A change this mount is making: nothing is answered from fetched entries until it
/// is dropped.
pub(crate) struct Change<'a>(&'a Statahead);

impl Drop for Change<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// `Change` for a request that runs as a task of its own.
pub(crate) struct OwnedChange(std::sync::Arc<crate::state::Inner>);

impl OwnedChange {
    pub fn new(inner: &std::sync::Arc<crate::state::Inner>) -> OwnedChange {
        inner.statahead.begin();
        OwnedChange(inner.clone())
    }
}

impl Drop for OwnedChange {
    fn drop(&mut self) {
        self.0.statahead.end();
    }
}

impl Statahead {
    pub fn new(enabled: bool) -> Statahead {
        Statahead { enabled, gen: AtomicU64::new(0), active: AtomicU64::new(0), state: Mutex::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.gen.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        self.gen.fetch_add(1, Ordering::AcqRel);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Marks the start of a change; it ends when the guard is dropped.
    pub fn change(&self) -> Change<'_> {
        self.begin();
        Change(self)
    }

    /// `name` in `dir` from a fetch still fresh for `ttl`: its attributes and the time
    /// left.
    pub fn get(&self, dir: InodeId, name: &str, ttl: Duration) -> Option<(Attr, Duration)> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let gen = self.gen.load(Ordering::Acquire);
        let mut s = self.state();
        let f = s.entries.get(&dir)?.get(name)?;
        let left = ttl.checked_sub(f.at.elapsed()).filter(|_| f.gen == gen)?;
        let attr = f.attr.clone();
        if let Some(d) = s.dirs.get_mut(&dir) {
            d.used += 1;
        }
        Some((attr, left))
    }

    /// Notes that `name` in `dir` was found by asking the service; returns the fetch to
    /// run when this makes a run.
    pub fn found(&self, dir: InodeId, name: &str) -> Option<Fetch> {
        if !self.enabled || self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let gen = self.gen.load(Ordering::Acquire);
        let now = Instant::now();
        let mut s = self.state();
        if s.dirs.len() >= MAX_DIRS && !s.dirs.contains_key(&dir) {
            s.dirs.retain(|_, d| d.fetching);
        }
        let d = s.dirs.entry(dir).or_default();
        // A run is lookups with no change of this mount between them: a change would
        // void the fetch (`rm` of every file looks each up, then unlinks it).
        if d.since.is_none_or(|t| now.duration_since(t) > WINDOW) || d.gen != gen {
            d.since = Some(now);
            d.misses = 0;
            d.gen = gen;
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
        Some(Fetch { dir, after: name.to_string(), gen, at: now })
    }

    /// Takes in a fetched page (or its failure); false when it came too late to be used
    /// (a change of this mount overlapped it).
    pub fn fetched(&self, f: Fetch, page: Option<Vec<(String, Attr)>>) -> bool {
        let gen = self.gen.load(Ordering::Acquire);
        let mut s = self.state();
        if let Some(d) = s.dirs.get_mut(&f.dir) {
            d.fetching = false;
        }
        let Some(page) = page.filter(|_| gen == f.gen) else { return false };
        if s.count + page.len() > MAX_ENTRIES {
            s.entries.clear();
            s.count = 0;
        }
        let e = s.entries.entry(f.dir).or_default();
        let before = e.len();
        for (name, attr) in page {
            e.insert(name, Fetched { attr, at: f.at, gen: f.gen });
        }
        let added = e.len() - before;
        s.count += added;
        true
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
        crate::fs::dot_attr(InodeId(ino))
    }

    fn page(from: u64, n: u64) -> Vec<(String, Attr)> {
        (from..from + n).map(|i| (format!("f{i:05}"), attr(100 + i))).collect()
    }

    const TTL: Duration = Duration::from_secs(1);

    #[test]
    fn a_run_of_lookups_fetches_the_names_after_and_they_are_answered_until_the_ttl() {
        let sa = Statahead::new(true);
        let dir = InodeId(1);
        for i in 0..RUN - 1 {
            assert!(sa.found(dir, &format!("f{i:05}")).is_none());
        }
        let f = sa.found(dir, "f00003").expect("a run starts a fetch");
        assert_eq!(f.after, "f00003");
        assert!(sa.found(dir, "f00004").is_none(), "one fetch at a time");
        let at = f.at;
        sa.fetched(f, Some(page(4, 10)));
        let (a, left) = sa.get(dir, "f00007", TTL).expect("fetched");
        assert_eq!(a.ino, InodeId(107));
        assert!(left <= TTL.saturating_sub(at.elapsed()) + Duration::from_millis(1));
        assert!(sa.get(dir, "f00020", TTL).is_none(), "not fetched");
        assert!(sa.get(InodeId(2), "f00007", TTL).is_none(), "another directory");
        assert!(sa.get(dir, "f00007", Duration::ZERO).is_none(), "past its ttl");
        assert_eq!(sa.used(dir), 1);
    }

    #[test]
    fn a_change_of_this_mount_hides_fetched_entries_and_voids_fetches_under_way() {
        let sa = Statahead::new(true);
        let dir = InodeId(1);
        let mut fetch = None;
        for i in 0..RUN {
            fetch = sa.found(dir, &format!("f{i:05}"));
        }
        let f = fetch.expect("fetch");
        sa.fetched(f, Some(page(4, 10)));
        {
            let _c = sa.change();
            assert!(sa.get(dir, "f00005", TTL).is_none(), "answered during a change");
            assert!(sa.found(dir, "f00001").is_none(), "fetch started during a change");
        }
        assert!(sa.get(dir, "f00005", TTL).is_none(), "entries from before a change");
        // A fetch that a change overlaps is dropped when it arrives.
        let mut fetch = None;
        for i in 0..RUN * 16 {
            fetch = fetch.or(sa.found(dir, &format!("g{i:05}")));
        }
        let f = fetch.expect("a new run fetches again");
        drop(sa.change());
        sa.fetched(f, Some(page(20, 10)));
        assert!(sa.get(dir, "f00025", TTL).is_none(), "a page fetched across a change");
        // Lookups with a change between each (an `rm` of every file) make no run.
        let dir = InodeId(9);
        for i in 0..RUN * 4 {
            assert!(sa.found(dir, &format!("h{i:05}")).is_none(), "a run across changes");
            drop(sa.change());
        }
    }

    #[test]
    fn fetches_that_go_unused_make_the_next_run_longer() {
        let sa = Statahead::new(true);
        let dir = InodeId(1);
        let mut lookups_per_fetch = Vec::new();
        let mut n = 0;
        for _ in 0..4 {
            let mut k = 0;
            let f = loop {
                k += 1;
                n += 1;
                if let Some(f) = sa.found(dir, &format!("x{n}")) {
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
