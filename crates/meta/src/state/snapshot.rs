//! Snapshots of the state machine: every state table dumped into one postcard blob
//! (`Dump`), and installing such a blob in place of the current state.

use super::snapshot_ext::ExtDump;
use super::*;
use redb::ReadableTable;

const DUMP_V1: u8 = 1;
/// Version 1 followed by the `ExtDump` blob.
const DUMP_V2: u8 = 2;
/// Version 2 followed by the `DedupDump` blob (issue 10).
const DUMP_V3: u8 = 3;
/// Version 3 followed by the `OnceDump` blob (stored results of writes, node tokens).
const DUMP_V4: u8 = 4;
/// Version 4 followed by the orphan table.
const DUMP_V5: u8 = 5;

/// All state tables, raw values (each already versioned by `enc`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dump {
    pub inodes: Vec<(u64, Vec<u8>)>,
    pub dentries: Vec<(u64, String, Vec<u8>)>,
    pub chunks: Vec<(u64, u64, Vec<u8>)>,
    pub blocks: Vec<(u128, Vec<u8>)>,
    pub gc: Vec<(u64, u128)>,
    pub nodes: Vec<(u64, Vec<u8>)>,
    pub bad: Vec<(u64, Vec<u8>)>,
    pub meta: Vec<(String, Vec<u8>)>,
    /// Tables added later, encoded after the fields above (snapshot version 2).
    #[serde(skip)]
    pub ext: ExtDump,
    #[serde(skip)]
    pub dedup: super::dedup::DedupDump,
    #[serde(skip)]
    pub once: super::once::OnceDump,
    /// The orphan table (version 5); from an older dump, the inodes with nlink 0.
    #[serde(skip)]
    pub orphans: Vec<u64>,
}

macro_rules! dump_table {
    ($txn:expr, $def:expr, |$k:ident, $v:ident| $e:expr) => {{
        let t = $txn.open_table($def).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (kg, vg) = item.map_err(db_err)?;
            let ($k, $v) = (kg.value(), vg.value());
            out.push($e);
        }
        out
    }};
}

/// Decodes the next section of a dump and moves past it.
fn section<T: DeserializeOwned>(rest: &mut &[u8]) -> FsResult<T> {
    let (v, after) = postcard::take_from_bytes(rest).map_err(|e| decode_err("snapshot", e))?;
    *rest = after;
    Ok(v)
}

impl Dump {
    /// Reads every state table in one consistent view.
    pub fn read(txn: &redb::ReadTransaction) -> FsResult<Dump> {
        Ok(Dump {
            inodes: dump_table!(txn, INODES, |k, v| (k, v.to_vec())),
            dentries: dump_table!(txn, DENTRIES, |k, v| (k.0, k.1.to_string(), v.to_vec())),
            chunks: dump_table!(txn, CHUNKS, |k, v| (k.0, k.1, v.to_vec())),
            blocks: dump_table!(txn, BLOCKS, |k, v| (k, v.to_vec())),
            gc: dump_table!(txn, GC, |k, _v| k),
            nodes: dump_table!(txn, NODES, |k, v| (k, v.to_vec())),
            bad: dump_table!(txn, BAD, |k, v| (k, v.to_vec())),
            meta: dump_table!(txn, META, |k, v| (k.to_string(), v.to_vec())),
            ext: ExtDump::read(txn)?,
            dedup: super::dedup::DedupDump::read(txn)?,
            once: super::once::OnceDump::read(txn)?,
            orphans: dump_table!(txn, ORPHANS, |k, _v| k),
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![DUMP_V5];
        out.extend(postcard::to_stdvec(self).expect("postcard encoding of a dump"));
        out.extend(postcard::to_stdvec(&self.ext).expect("postcard encoding of a dump"));
        out.extend(postcard::to_stdvec(&self.dedup).expect("postcard encoding of a dump"));
        out.extend(postcard::to_stdvec(&self.once).expect("postcard encoding of a dump"));
        out.extend(postcard::to_stdvec(&self.orphans).expect("postcard encoding of a dump"));
        out
    }

    pub fn from_bytes(b: &[u8]) -> FsResult<Dump> {
        match b.split_first() {
            Some((&v, mut rest)) if (DUMP_V1..=DUMP_V5).contains(&v) => {
                // Each version appends one section to the previous version's.
                let mut d: Dump = section(&mut rest)?;
                if v >= DUMP_V2 {
                    d.ext = section(&mut rest)?;
                }
                if v >= DUMP_V3 {
                    d.dedup = section(&mut rest)?;
                }
                if v >= DUMP_V4 {
                    d.once = section(&mut rest)?;
                }
                if v >= DUMP_V5 {
                    d.orphans = section(&mut rest)?;
                } else {
                    // Earlier builds kept unlinked open files as inodes with nlink 0.
                    for (k, v) in &d.inodes {
                        let i: Inode = dec("inodes", v)?;
                        if i.attr.nlink == 0 && i.attr.kind != distfs_types::FileKind::Dir {
                            d.orphans.push(*k);
                        }
                    }
                }
                Ok(d)
            }
            Some((v, _)) => Err(decode_err("snapshot", format!("unknown snapshot version {v}"))),
            None => Err(decode_err("snapshot", "empty snapshot")),
        }
    }

    /// Replaces the whole state in `txn` by this dump.
    pub fn install(&self, txn: &WriteTransaction) -> FsResult<()> {
        macro_rules! clear {
            ($def:expr) => {
                txn.open_table($def).map_err(db_err)?.retain(|_, _| false).map_err(db_err)?
            };
        }
        clear!(INODES);
        clear!(DENTRIES);
        clear!(CHUNKS);
        clear!(BLOCKS);
        clear!(GC);
        clear!(NODES);
        clear!(BAD);
        clear!(META);
        let mut t = txn.open_table(INODES).map_err(db_err)?;
        for (k, v) in &self.inodes {
            t.insert(*k, v.as_slice()).map_err(db_err)?;
        }
        drop(t);
        let mut t = txn.open_table(DENTRIES).map_err(db_err)?;
        for (p, n, v) in &self.dentries {
            t.insert((*p, n.as_str()), v.as_slice()).map_err(db_err)?;
        }
        drop(t);
        let mut t = txn.open_table(CHUNKS).map_err(db_err)?;
        for (i, c, v) in &self.chunks {
            t.insert((*i, *c), v.as_slice()).map_err(db_err)?;
        }
        drop(t);
        let mut t = txn.open_table(BLOCKS).map_err(db_err)?;
        for (k, v) in &self.blocks {
            t.insert(*k, v.as_slice()).map_err(db_err)?;
        }
        drop(t);
        let mut t = txn.open_table(GC).map_err(db_err)?;
        for k in &self.gc {
            t.insert(*k, ()).map_err(db_err)?;
        }
        drop(t);
        let mut t = txn.open_table(NODES).map_err(db_err)?;
        for (k, v) in &self.nodes {
            t.insert(*k, v.as_slice()).map_err(db_err)?;
        }
        drop(t);
        let mut t = txn.open_table(BAD).map_err(db_err)?;
        for (k, v) in &self.bad {
            t.insert(*k, v.as_slice()).map_err(db_err)?;
        }
        drop(t);
        let mut t = txn.open_table(META).map_err(db_err)?;
        for (k, v) in &self.meta {
            t.insert(k.as_str(), v.as_slice()).map_err(db_err)?;
        }
        drop(t);
        self.ext.install(txn)?;
        self.dedup.install(txn)?;
        self.once.install(txn)?;
        clear!(ORPHANS);
        let mut t = txn.open_table(ORPHANS).map_err(db_err)?;
        for k in &self.orphans {
            t.insert(*k, ()).map_err(db_err)?;
        }
        Ok(())
    }
}

impl StateStore {
    /// The state as a snapshot blob, with the applied log id and membership it reflects.
    pub fn dump(&self) -> FsResult<(Vec<u8>, Option<LogId<u64>>, Membership)> {
        let txn = self.read()?;
        let dump = Dump::read(&txn)?;
        let last: Option<Option<LogId<u64>>> = txn.meta_get(K_LAST_APPLIED)?;
        let m: Option<Membership> = txn.meta_get(K_MEMBERSHIP)?;
        Ok((dump.to_bytes(), last.flatten(), m.unwrap_or_default()))
    }

    /// Replaces the state by a snapshot blob, durably.
    pub fn install(&self, blob: &[u8], last: Option<LogId<u64>>, membership: &Membership) -> FsResult<()> {
        let dump = Dump::from_bytes(blob)?;
        let txn = self.db.begin_write().map_err(db_err)?;
        dump.install(&txn)?;
        meta_put(&txn, K_LAST_APPLIED, &last)?;
        meta_put(&txn, K_MEMBERSHIP, membership)?;
        txn.commit().map_err(db_err)
    }

    /// Records a snapshot point (its openraft metadata) durably. A blob an earlier
    /// version kept is dropped: the state itself is the snapshot.
    pub fn save_snapshot(&self, meta: &[u8]) -> FsResult<()> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(SNAPSHOT).map_err(db_err)?;
            t.insert("meta", meta).map_err(db_err)?;
            t.remove("data").map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Whether a snapshot point was recorded.
    pub fn has_snapshot(&self) -> FsResult<bool> {
        let txn = self.read()?;
        let t = txn.open_table(SNAPSHOT).map_err(db_err)?;
        let found = t.get("meta").map_err(db_err)?.is_some();
        Ok(found)
    }
}
