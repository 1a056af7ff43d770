//! `SimDisk`: an in-memory `Disk` with the failure modes of a real one. Every entry
//! (file or directory) has a current state and a durable state. A file's bytes become
//! durable when it is written with `sync` (or by `sync_fs`); its name becomes durable when
//! its parent directory is fsynced. A crash throws the current state away and keeps the
//! durable one: unsynced files vanish, and a name made durable over unsynced bytes keeps
//! a torn prefix of them. Faults: EIO/ENOSPC on writes, a "power cut" after a given
//! number of operations (every later call fails until the restart), bit flips in stored
//! files (media corruption, survives restarts).

use distfs_storage::disk::{Disk, Entry, FsStats, ReadFile};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
struct Node {
    /// `None` for a directory.
    data: Option<Arc<Vec<u8>>>,
    data_synced: bool,
}

#[derive(Debug)]
struct State {
    cur: BTreeMap<PathBuf, Node>,
    dur: BTreeMap<PathBuf, Node>,
    rng: StdRng,
    /// Writes fail with EIO while this is > 0 (counts down per write).
    eio_writes: u32,
    /// Writes fail with ENOSPC while this is > 0.
    enospc_writes: u32,
    /// The power goes after this many more operations.
    cut_after: Option<u32>,
    dead: bool,
}

/// See the module docs. Cloning shares the disk.
#[derive(Clone, Debug)]
pub struct SimDisk {
    st: Arc<Mutex<State>>,
}

fn dir_node() -> Node {
    Node { data: None, data_synced: true }
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated I/O error: {what}"))
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: not found", p.display()))
}

impl SimDisk {
    /// A disk holding the (durable) directory `root` and its ancestors.
    pub fn new(seed: u64, root: &Path) -> SimDisk {
        let mut cur = BTreeMap::new();
        for a in root.ancestors() {
            cur.insert(a.to_path_buf(), dir_node());
        }
        let st = State {
            dur: cur.clone(),
            cur,
            rng: StdRng::seed_from_u64(seed),
            eio_writes: 0,
            enospc_writes: 0,
            cut_after: None,
            dead: false,
        };
        SimDisk { st: Arc::new(Mutex::new(st)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `n` writes fail with EIO.
    pub fn fail_writes(&self, n: u32) {
        self.lock().eio_writes = n;
    }

    /// The next `n` writes fail with ENOSPC.
    pub fn fill(&self, n: u32) {
        self.lock().enospc_writes = n;
    }

    /// The power goes after `n` more disk operations (possibly in the middle of a block write).
    pub fn cut_power_after(&self, n: u32) {
        self.lock().cut_after = Some(n);
    }

    /// True once the power is gone (the node must be restarted).
    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Power loss: everything not durable is gone. The disk works again afterwards.
    pub fn crash(&self) {
        let mut st = self.lock();
        let dur = st.dur.clone();
        // An entry survives only if all its ancestors did.
        let kept: BTreeMap<PathBuf, Node> = dur
            .iter()
            .filter(|(p, _)| p.ancestors().skip(1).all(|a| dur.contains_key(a)))
            .map(|(p, n)| (p.clone(), n.clone()))
            .collect();
        st.cur = kept.clone();
        st.dur = kept;
        st.dead = false;
        st.cut_after = None;
        st.eio_writes = 0;
        st.enospc_writes = 0;
    }

    /// Flips one random bit of a random stored file under `dir`; returns its path.
    pub fn flip_bit(&self, dir: &Path) -> Option<PathBuf> {
        let mut st = self.lock();
        let files: Vec<PathBuf> = st
            .cur
            .iter()
            .filter(|(p, n)| p.starts_with(dir) && n.data.as_ref().is_some_and(|d| !d.is_empty()))
            .map(|(p, _)| p.clone())
            .collect();
        if files.is_empty() {
            return None;
        }
        let path = files[st.rng.random_range(0..files.len())].clone();
        let len = st.cur[&path].data.as_ref().map_or(0, |d| d.len());
        let byte = st.rng.random_range(0..len);
        let bit = st.rng.random_range(0..8u32);
        let st = &mut *st;
        for map in [&mut st.cur, &mut st.dur] {
            if let Some(Node { data: Some(d), .. }) = map.get_mut(&path) {
                if d.len() > byte {
                    Arc::make_mut(d)[byte] ^= 1 << bit;
                }
            }
        }
        Some(path)
    }

    /// Counts one operation against a pending power cut; fails once the power is gone.
    fn tick(st: &mut State, what: &str) -> io::Result<()> {
        if st.dead {
            return Err(eio(what));
        }
        if let Some(n) = st.cut_after.as_mut() {
            if *n == 0 {
                st.dead = true;
                return Err(eio(what));
            }
            *n -= 1;
        }
        Ok(())
    }
}

struct SimFile(Arc<Vec<u8>>);

impl ReadFile for SimFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
}

fn parent_exists(st: &State, p: &Path) -> io::Result<()> {
    match p.parent() {
        Some(d) if st.cur.get(d).is_some_and(|n| n.data.is_none()) => Ok(()),
        _ => Err(not_found(p)),
    }
}

impl Disk for SimDisk {
    fn write_new(&self, path: &Path, parts: &[&[u8]], sync: bool) -> io::Result<()> {
        let mut st = self.lock();
        Self::tick(&mut st, "write")?;
        if st.eio_writes > 0 {
            st.eio_writes -= 1;
            return Err(eio("write"));
        }
        if st.enospc_writes > 0 {
            st.enospc_writes -= 1;
            return Err(io::Error::from_raw_os_error(28));
        }
        parent_exists(&st, path)?;
        if st.cur.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{}: exists", path.display())));
        }
        let data: Vec<u8> = parts.concat();
        st.cur.insert(path.to_path_buf(), Node { data: Some(Arc::new(data)), data_synced: sync });
        Ok(())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        let mut st = self.lock();
        Self::tick(&mut st, "open")?;
        match st.cur.get(path) {
            Some(Node { data: Some(d), .. }) => Ok(Box::new(SimFile(d.clone()))),
            Some(_) => Err(io::Error::other(format!("{}: is a directory", path.display()))),
            None => Err(not_found(path)),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        Self::tick(&mut st, "rename")?;
        parent_exists(&st, to)?;
        let node = st.cur.remove(from).ok_or_else(|| not_found(from))?;
        st.cur.insert(to.to_path_buf(), node);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        Self::tick(&mut st, "remove")?;
        st.cur.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn create_dir(&self, path: &Path) -> io::Result<bool> {
        let mut st = self.lock();
        Self::tick(&mut st, "mkdir")?;
        if st.cur.contains_key(path) {
            return Ok(false);
        }
        for a in path.ancestors() {
            st.cur.entry(a.to_path_buf()).or_insert_with(dir_node);
        }
        Ok(true)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<Entry>> {
        let mut st = self.lock();
        Self::tick(&mut st, "list")?;
        if !st.cur.contains_key(dir) {
            return Err(not_found(dir));
        }
        Ok(st
            .cur
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, n)| Entry {
                name: p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                is_dir: n.data.is_none(),
            })
            .collect())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let mut st = self.lock();
        Self::tick(&mut st, "stat")?;
        Ok(st.cur.contains_key(path))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        Self::tick(&mut st, "fsync dir")?;
        let children: Vec<(PathBuf, Node)> =
            st.cur.iter().filter(|(p, _)| p.parent() == Some(dir)).map(|(p, n)| (p.clone(), n.clone())).collect();
        st.dur.retain(|p, _| p.parent() != Some(dir));
        for (p, mut n) in children {
            if let (Some(d), false) = (&n.data, n.data_synced) {
                // The name is durable, the bytes are not: a crash leaves a torn prefix.
                let keep = st.rng.random_range(0..=d.len());
                n.data = Some(Arc::new(d[..keep].to_vec()));
            }
            st.dur.insert(p, n);
        }
        Ok(())
    }

    fn sync_fs(&self, _path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        Self::tick(&mut st, "syncfs")?;
        for n in st.cur.values_mut() {
            n.data_synced = true;
        }
        st.dur = st.cur.clone();
        Ok(())
    }

    fn stat_fs(&self, _path: &Path) -> io::Result<FsStats> {
        let mut st = self.lock();
        Self::tick(&mut st, "statfs")?;
        Ok(FsStats { total: 1 << 40, available: 1 << 40 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(d: &SimDisk, p: &Path) -> io::Result<Vec<u8>> {
        let mut f = d.open(p)?;
        let mut buf = vec![0; f.size()? as usize];
        f.read_at(0, &mut buf)?;
        Ok(buf)
    }

    #[test]
    fn only_synced_data_under_synced_names_survives_a_crash() {
        let root = Path::new("/r");
        let d = SimDisk::new(1, root);
        d.write_new(&root.join("a"), &[b"synced"], true).unwrap();
        d.write_new(&root.join("b"), &[b"unsynced, name synced"], false).unwrap();
        d.sync_dir(root).unwrap();
        d.write_new(&root.join("c"), &[b"synced data, name not"], true).unwrap();
        d.crash();
        assert_eq!(read(&d, &root.join("a")).unwrap(), b"synced");
        let b = read(&d, &root.join("b")).unwrap();
        assert!(b"unsynced, name synced".starts_with(&b), "torn prefix expected, got {b:?}");
        assert_eq!(read(&d, &root.join("c")).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn power_cut_fails_every_later_call_until_restart() {
        let root = Path::new("/r");
        let d = SimDisk::new(1, root);
        d.cut_power_after(1);
        d.write_new(&root.join("a"), &[b"x"], true).unwrap();
        assert!(d.exists(&root.join("a")).is_err());
        assert!(d.is_dead());
        d.crash();
        assert!(!d.is_dead());
        assert!(!d.exists(&root.join("a")).unwrap(), "its name was never fsynced");
    }

    #[test]
    fn bit_flips_survive_restarts() {
        let root = Path::new("/r");
        let d = SimDisk::new(7, root);
        d.write_new(&root.join("a"), &[&[0u8; 64]], true).unwrap();
        d.sync_dir(root).unwrap();
        assert_eq!(d.flip_bit(root), Some(root.join("a")));
        d.crash();
        let a = read(&d, &root.join("a")).unwrap();
        assert_eq!(a.iter().map(|b| b.count_ones()).sum::<u32>(), 1);
    }
}
