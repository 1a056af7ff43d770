//! `Reader`: typed reads of the state tables, the same over a read transaction (serving)
//! and a write transaction (apply). Each call opens and drops its table.

use super::*;
use distfs_types::{BlockId, DirEntry, FileKind, Slice};
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata};

/// Counts for `ClusterStatus` / `StatFs`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub blocks: u64,
    pub logical_bytes: u64,
    pub under_replicated: u64,
    pub gc_pending: u64,
}

pub trait Reader {
    fn meta_get<T: DeserializeOwned>(&self, key: &str) -> FsResult<Option<T>>;
    fn format(&self) -> FsResult<Option<Format>>;
    fn inode(&self, ino: InodeId) -> FsResult<Option<Inode>>;
    fn dentry(&self, parent: InodeId, name: &str) -> FsResult<Option<Dentry>>;
    /// Entries of `dir` with names after `after`, at most `limit`; and whether more follow.
    fn readdir(&self, dir: InodeId, after: Option<&str>, limit: usize) -> FsResult<(Vec<DirEntry>, bool)>;
    fn chunk(&self, ino: InodeId, index: u64) -> FsResult<Vec<Slice>>;
    /// Non-empty chunks of `ino` in `[first, last]`.
    fn chunks(&self, ino: InodeId, first: u64, last: u64) -> FsResult<Vec<(u64, Vec<Slice>)>>;
    fn block(&self, id: BlockId) -> FsResult<Option<BlockRec>>;
    fn node(&self, id: NodeId) -> FsResult<Option<NodeRec>>;
    fn nodes(&self) -> FsResult<Vec<(NodeId, NodeRec)>>;
    /// Blocks `node` should delete, at most `limit`.
    fn gc_for_node(&self, node: NodeId, limit: usize) -> FsResult<Vec<BlockId>>;
    fn bad_replicas(&self) -> FsResult<Vec<BadReplica>>;
    fn inode_count(&self) -> FsResult<u64>;
    /// Full scan of inodes and blocks (admin paths only).
    fn stats(&self, replication: u32) -> FsResult<Stats>;
    /// Every client session and the end of its lease.
    /// Up to `limit` orphans (nlink 0, waiting for `FreeOrphans`), lowest inode first.
    fn orphans(&self, limit: usize) -> FsResult<Vec<InodeId>>;
    /// The lease expiry of one client session (`None`: no such session).
    fn session(&self, id: u64) -> FsResult<Option<Timestamp>>;
    fn sessions(&self) -> FsResult<Vec<(u64, Timestamp)>>;
    /// One extended attribute's value.
    fn xattr(&self, ino: InodeId, name: &str) -> FsResult<Option<Vec<u8>>>;
    /// The extended attributes of `ino`: name and value length, sorted by name.
    fn xattr_names(&self, ino: InodeId) -> FsResult<Vec<(String, usize)>>;
    /// Whether the inode has any extended attribute.
    fn has_xattrs(&self, ino: InodeId) -> FsResult<bool>;

    /// The formatted parameters, or `Unavailable` before the first format.
    fn format_or_unavailable(&self) -> FsResult<Format> {
        self.format()?.ok_or_else(|| FsError::Unavailable { reason: "the file system is not formatted yet".into() })
    }
}

macro_rules! impl_reader {
    ($t:ty) => {
        impl Reader for $t {
            fn meta_get<T: DeserializeOwned>(&self, key: &str) -> FsResult<Option<T>> {
                let t = self.open_table(META).map_err(db_err)?;
                let v = t.get(key).map_err(db_err)?;
                v.map(|g| dec("meta", g.value())).transpose()
            }

            fn format(&self) -> FsResult<Option<Format>> {
                self.meta_get(K_FORMAT)
            }

            fn inode(&self, ino: InodeId) -> FsResult<Option<Inode>> {
                let t = self.open_table(INODES).map_err(db_err)?;
                let v = t.get(ino.0).map_err(db_err)?;
                v.map(|g| dec("inodes", g.value())).transpose()
            }

            fn dentry(&self, parent: InodeId, name: &str) -> FsResult<Option<Dentry>> {
                let t = self.open_table(DENTRIES).map_err(db_err)?;
                let v = t.get((parent.0, name)).map_err(db_err)?;
                v.map(|g| dec("dentries", g.value())).transpose()
            }

            fn readdir(&self, dir: InodeId, after: Option<&str>, limit: usize) -> FsResult<(Vec<DirEntry>, bool)> {
                let t = self.open_table(DENTRIES).map_err(db_err)?;
                let start = (dir.0, after.unwrap_or(""));
                let end = (dir.0.saturating_add(1), "");
                let mut out = Vec::new();
                for item in t.range(start..end).map_err(db_err)? {
                    let (k, v) = item.map_err(db_err)?;
                    let (_, name) = k.value();
                    if Some(name) == after {
                        continue;
                    }
                    if out.len() == limit {
                        return Ok((out, true));
                    }
                    let d: Dentry = dec("dentries", v.value())?;
                    out.push(DirEntry { name: name.to_string(), ino: d.ino, kind: d.kind });
                }
                Ok((out, false))
            }

            fn chunk(&self, ino: InodeId, index: u64) -> FsResult<Vec<Slice>> {
                let t = self.open_table(CHUNKS).map_err(db_err)?;
                let v = t.get((ino.0, index)).map_err(db_err)?;
                Ok(v.map(|g| dec("chunks", g.value())).transpose()?.unwrap_or_default())
            }

            fn chunks(&self, ino: InodeId, first: u64, last: u64) -> FsResult<Vec<(u64, Vec<Slice>)>> {
                let t = self.open_table(CHUNKS).map_err(db_err)?;
                let mut out = Vec::new();
                for item in t.range((ino.0, first)..=(ino.0, last)).map_err(db_err)? {
                    let (k, v) = item.map_err(db_err)?;
                    out.push((k.value().1, dec("chunks", v.value())?));
                }
                Ok(out)
            }

            fn block(&self, id: BlockId) -> FsResult<Option<BlockRec>> {
                let t = self.open_table(BLOCKS).map_err(db_err)?;
                let v = t.get(id.0).map_err(db_err)?;
                v.map(|g| dec("blocks", g.value())).transpose()
            }

            fn node(&self, id: NodeId) -> FsResult<Option<NodeRec>> {
                let t = self.open_table(NODES).map_err(db_err)?;
                let v = t.get(id.0).map_err(db_err)?;
                v.map(|g| dec("nodes", g.value())).transpose()
            }

            fn nodes(&self) -> FsResult<Vec<(NodeId, NodeRec)>> {
                let t = self.open_table(NODES).map_err(db_err)?;
                let mut out = Vec::new();
                for item in t.iter().map_err(db_err)? {
                    let (k, v) = item.map_err(db_err)?;
                    out.push((NodeId(k.value()), dec("nodes", v.value())?));
                }
                Ok(out)
            }

            fn gc_for_node(&self, node: NodeId, limit: usize) -> FsResult<Vec<BlockId>> {
                let t = self.open_table(GC).map_err(db_err)?;
                let mut out = Vec::new();
                for item in t.range((node.0, 0u128)..=(node.0, u128::MAX)).map_err(db_err)? {
                    if out.len() == limit {
                        break;
                    }
                    let (k, _) = item.map_err(db_err)?;
                    out.push(BlockId(k.value().1));
                }
                Ok(out)
            }

            fn bad_replicas(&self) -> FsResult<Vec<BadReplica>> {
                let t = self.open_table(BAD).map_err(db_err)?;
                let mut out = Vec::new();
                for item in t.iter().map_err(db_err)? {
                    let (_, v) = item.map_err(db_err)?;
                    out.push(dec("bad_replicas", v.value())?);
                }
                Ok(out)
            }

            fn inode_count(&self) -> FsResult<u64> {
                let t = self.open_table(INODES).map_err(db_err)?;
                t.len().map_err(db_err)
            }

            fn stats(&self, replication: u32) -> FsResult<Stats> {
                let mut s = Stats::default();
                {
                    let t = self.open_table(INODES).map_err(db_err)?;
                    for item in t.iter().map_err(db_err)? {
                        let (_, v) = item.map_err(db_err)?;
                        let i: Inode = dec("inodes", v.value())?;
                        match i.attr.kind {
                            FileKind::File => s.files += 1,
                            FileKind::Dir => s.directories += 1,
                            FileKind::Symlink => s.symlinks += 1,
                        }
                    }
                }
                {
                    let t = self.open_table(BLOCKS).map_err(db_err)?;
                    for item in t.iter().map_err(db_err)? {
                        let (_, v) = item.map_err(db_err)?;
                        let b: BlockRec = dec("blocks", v.value())?;
                        s.blocks += 1;
                        s.logical_bytes += b.len as u64;
                        if (b.replicas.len() as u32) < replication {
                            s.under_replicated += 1;
                        }
                    }
                }
                s.gc_pending = self.open_table(GC).map_err(db_err)?.len().map_err(db_err)?;
                Ok(s)
            }

            fn orphans(&self, limit: usize) -> FsResult<Vec<InodeId>> {
                let t = self.open_table(ORPHANS).map_err(db_err)?;
                let mut out = Vec::new();
                for item in t.iter().map_err(db_err)?.take(limit) {
                    out.push(InodeId(item.map_err(db_err)?.0.value()));
                }
                Ok(out)
            }

            fn session(&self, id: u64) -> FsResult<Option<Timestamp>> {
                let t = self.open_table(SESSIONS).map_err(db_err)?;
                let v = t.get(id).map_err(db_err)?;
                v.map(|g| dec("sessions", g.value())).transpose()
            }

            fn sessions(&self) -> FsResult<Vec<(u64, Timestamp)>> {
                let t = self.open_table(SESSIONS).map_err(db_err)?;
                let mut out = Vec::new();
                for item in t.iter().map_err(db_err)? {
                    let (k, v) = item.map_err(db_err)?;
                    out.push((k.value(), dec("sessions", v.value())?));
                }
                Ok(out)
            }

            fn xattr(&self, ino: InodeId, name: &str) -> FsResult<Option<Vec<u8>>> {
                let t = self.open_table(XATTRS).map_err(db_err)?;
                let v = t.get((ino.0, name)).map_err(db_err)?;
                Ok(v.map(|g| g.value().to_vec()))
            }

            fn xattr_names(&self, ino: InodeId) -> FsResult<Vec<(String, usize)>> {
                let t = self.open_table(XATTRS).map_err(db_err)?;
                let mut out = Vec::new();
                for item in t.range((ino.0, "")..(ino.0.saturating_add(1), "")).map_err(db_err)? {
                    let (k, v) = item.map_err(db_err)?;
                    out.push((k.value().1.to_string(), v.value().len()));
                }
                Ok(out)
            }

            fn has_xattrs(&self, ino: InodeId) -> FsResult<bool> {
                let t = self.open_table(XATTRS).map_err(db_err)?;
                let mut r = t.range((ino.0, "")..(ino.0.saturating_add(1), "")).map_err(db_err)?;
                let found = r.next().transpose().map_err(db_err)?.is_some();
                Ok(found)
            }
        }
    };
}

impl_reader!(ReadTransaction);
impl_reader!(WriteTransaction);
