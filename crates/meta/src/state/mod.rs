//! The replicated state machine: table layout in redb, versioned record encoding, the
//! `Command` log payload and the pure `apply` over one redb write transaction. Namespace
//! ops live in `namespace.rs`, data/blocks/GC/nodes in `data.rs`, reads in `read.rs`,
//! snapshots in `snapshot.rs`.

mod data;
pub mod dedup;
mod heal;
pub mod invariants;
pub(crate) mod locks;
mod namespace;
pub mod once;
pub(crate) mod open_files;
mod read;
mod snapshot;
mod snapshot_ext;
#[cfg(test)]
mod snapshot_tests;
pub mod snapshots;
#[cfg(test)]
mod tests;
mod xattr;

pub use heal::{all_blocks, file_paths, node_admin};
pub use read::{Reader, Stats};
pub use snapshot::Dump;
pub use snapshot_ext::ExtDump;
pub use snapshots::SnapCmd;
pub(crate) use xattr::validate_name as validate_xattr_name;

use crate::error::{db_err, decode_err, MetaError};
use distfs_proto::{BadReplica, RenameMode, SliceWrite, XattrMode};
use distfs_types::{Attr, FsError, FsResult, InodeId, NodeId, SetAttr, Timestamp};
use openraft::{BasicNode, LogId, StoredMembership};
use redb::{Database, Durability, ReadableDatabase, TableDefinition, WriteTransaction};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

pub(crate) const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
pub(crate) const DENTRIES: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("dentries");
pub(crate) const CHUNKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("chunks");
pub(crate) const BLOCKS: TableDefinition<u128, &[u8]> = TableDefinition::new("blocks");
/// GC queue: (node, block) = a copy the node must delete.
pub(crate) const GC: TableDefinition<(u64, u128), ()> = TableDefinition::new("gc");
pub(crate) const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes");
pub(crate) const BAD: TableDefinition<u64, &[u8]> = TableDefinition::new("bad_replicas");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Client sessions: session id -> lease expiry (`Timestamp`).
pub(crate) const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");
/// Open files: (inode, session) = the session holds the inode open.
pub(crate) const OPENS: TableDefinition<(u64, u64), ()> = TableDefinition::new("opens");
/// The same, keyed by session first (to release a session's opens).
pub(crate) const SESSION_OPENS: TableDefinition<(u64, u64), ()> = TableDefinition::new("session_opens");
/// Orphans: inodes whose last link went (nlink 0), kept until the leader's sweeper frees
/// them with `FreeOrphans` (an open file's data outlives its names; `open_files.rs`).
pub(crate) const ORPHANS: TableDefinition<u64, ()> = TableDefinition::new("orphans");
/// Extended attributes: (inode, name) -> raw value.
pub(crate) const XATTRS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("xattrs");
/// The current Raft snapshot (not part of the state it describes).
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

pub(crate) const K_FORMAT: &str = "format";
/// The version of the record encodings in this database (`SCHEMA_VERSION`).
pub(crate) const K_SCHEMA: &str = "schema";
/// Record encodings this build reads and writes. 2: slices carry `inline` data. A
/// database without the key but with a format was written by schema 1.
pub const SCHEMA_VERSION: u32 = 2;
pub(crate) const K_NEXT_INO: &str = "next_ino";
pub(crate) const K_NEXT_SEQ: &str = "next_seq";
pub(crate) const K_NEXT_NODE: &str = "next_node";
pub(crate) const K_NEXT_BAD: &str = "next_bad";
pub(crate) const K_LAST_APPLIED: &str = "last_applied";
pub(crate) const K_MEMBERSHIP: &str = "membership";
/// Operator state of storage nodes: `BTreeMap<u64, AdminState>` (absent = Normal).
pub(crate) const K_NODE_ADMIN: &str = "node_admin";
/// Ids of storage nodes an operator removed: `BTreeSet<u64>`. Such an id (or the token
/// that registered it) never registers again, so a removed node that is still running
/// cannot come back on its own with the blocks the cluster dropped.
pub(crate) const K_REMOVED_NODES: &str = "removed_nodes";

/// Most bad-replica records kept (oldest dropped first).
pub const BAD_REPLICAS_KEPT: u64 = 128;

/// Record format version written in front of every stored value.
const RECORD_V1: u8 = 1;

pub(crate) fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![RECORD_V1];
    out.extend(postcard::to_stdvec(v).expect("postcard encoding of an in-memory record"));
    out
}

pub(crate) fn dec<T: DeserializeOwned>(table: &str, bytes: &[u8]) -> FsResult<T> {
    match bytes.split_first() {
        Some((&RECORD_V1, rest)) => postcard::from_bytes(rest).map_err(|e| decode_err(table, e)),
        Some((v, _)) => Err(decode_err(table, format!("unknown record version {v}"))),
        None => Err(decode_err(table, "empty record")),
    }
}

/// An inode as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub attr: Attr,
    /// Parent directory of a directory (for `..` and the rename loop check); unused otherwise.
    pub parent: InodeId,
    /// Target of a symlink.
    pub target: Option<String>,
}

/// A directory entry's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dentry {
    pub ino: InodeId,
    pub kind: distfs_types::FileKind,
}

/// A block as the metadata tracks it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRec {
    pub len: u32,
    /// Number of slices referring to the block.
    pub refs: u32,
    /// Nodes holding a copy believed good.
    pub replicas: Vec<NodeId>,
}

/// A registered storage node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRec {
    pub addr: String,
    pub zone: String,
    pub capacity: u64,
}

/// Parameters fixed when the file system is formatted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Format {
    pub chunk_size: u64,
    pub block_size: u32,
    pub replication: u32,
}

/// A state change, as carried in the Raft log. Timestamps are decided by the leader
/// before proposing, so every replica applies identically. New variants go at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Format {
        format: Format,
        now: Timestamp,
    },
    Mkdir {
        parent: InodeId,
        name: String,
        perm: u32,
        uid: u32,
        gid: u32,
        now: Timestamp,
    },
    /// `open`: also held open by this session, lease until the timestamp (`OpenFile`).
    Create {
        parent: InodeId,
        name: String,
        perm: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
        now: Timestamp,
        open: Option<(u64, Timestamp)>,
    },
    Symlink {
        parent: InodeId,
        name: String,
        target: String,
        uid: u32,
        gid: u32,
        now: Timestamp,
    },
    Link {
        ino: InodeId,
        new_parent: InodeId,
        new_name: String,
        now: Timestamp,
    },
    Unlink {
        parent: InodeId,
        name: String,
        now: Timestamp,
    },
    Rmdir {
        parent: InodeId,
        name: String,
        now: Timestamp,
    },
    Rename {
        parent: InodeId,
        name: String,
        new_parent: InodeId,
        new_name: String,
        mode: RenameMode,
        now: Timestamp,
    },
    SetAttr {
        ino: InodeId,
        set: SetAttr,
        now: Timestamp,
    },
    CommitWrite {
        ino: InodeId,
        slices: Vec<SliceWrite>,
        min_size: u64,
        mtime: Timestamp,
        bad: Vec<BadReplica>,
        now: Timestamp,
    },
    ReportBadReplica {
        bad: BadReplica,
    },
    RegisterNode {
        node: Option<NodeId>,
        addr: String,
        zone: String,
        capacity: u64,
    },
    /// A node deleted these blocks on our request.
    GcAck {
        node: NodeId,
        blocks: Vec<distfs_types::BlockId>,
    },
    /// Repair, trim and rebalance: `add` now holds a verified copy; the copies on `drop`
    /// leave the list and are queued for deletion (never the last copy). A block freed
    /// meanwhile sends `add`'s copy to the GC queue instead.
    UpdateReplicas {
        block: distfs_types::BlockId,
        add: Option<NodeId>,
        drop: Vec<NodeId>,
    },
    /// Several `UpdateReplicas` in one entry: the repair worker records the copies that
    /// finished together with one log write.
    UpdateReplicasMany {
        updates: Vec<(distfs_types::BlockId, Option<NodeId>, Vec<NodeId>)>,
    },
    /// Drain / maintenance decisions of the operator.
    SetNodeAdmin {
        node: NodeId,
        admin: distfs_types::AdminState,
    },
    /// Takes a node out: off every replica list, out of the registry and the GC queue.
    RemoveNode {
        node: NodeId,
    },
    /// Queues copies for deletion (orphans found by `fsck --repair`).
    GcQueue {
        node: NodeId,
        blocks: Vec<distfs_types::BlockId>,
    },
    /// `session` holds `ino` open; its lease runs at least until `expires`.
    OpenFile {
        ino: InodeId,
        session: u64,
        expires: Timestamp,
    },
    ReleaseFile {
        ino: InodeId,
        session: u64,
    },
    RenewSession {
        session: u64,
        expires: Timestamp,
    },
    CloseSession {
        session: u64,
    },
    /// Ends every session whose lease expired before `now` (decided by the leader).
    ExpireSessions {
        now: Timestamp,
    },
    /// Sets or clears an advisory lock (fcntl/flock); `LockConflict` when another owner
    /// holds a conflicting lock (nothing changes then).
    SetLock {
        ino: InodeId,
        req: crate::locks::LockReq,
    },
    SetXattr {
        ino: InodeId,
        name: String,
        value: Vec<u8>,
        mode: XattrMode,
        now: Timestamp,
    },
    RemoveXattr {
        ino: InodeId,
        name: String,
        now: Timestamp,
    },
    /// Snapshot create, delete, restore (`snapshots.rs`).
    Snapshot(SnapCmd),
    /// Issue 10: deduplicated commits (`dedup.rs`).
    Dedup(dedup::DedupCommand),
    /// Frees these orphans (nlink 0) and their data; the leader proposes it for orphans
    /// no session holds open (`crate::opens`). An inode that is no orphan is left alone.
    /// `term`: the leader's term when it decided; an entry that ends up in another
    /// term's log position frees nothing (its leader's open table was not that term's).
    FreeOrphans {
        term: u64,
        inos: Vec<InodeId>,
    },
    /// Starts a client session or extends its lease to at least `expires`.
    TouchSession {
        session: u64,
        expires: Timestamp,
    },
    /// A client's write with its request id, applied at most once (`once.rs`); `now`
    /// (the leader's) dates the client's activity.
    Once {
        client: u64,
        slot: u32,
        seq: u64,
        now: Timestamp,
        cmd: Box<Command>,
    },
    /// `RegisterNode` with the node's registration token: the same token gets the same id.
    RegisterNodeToken {
        token: u128,
        node: Option<NodeId>,
        addr: String,
        zone: String,
        capacity: u64,
    },
    /// Commands of concurrent clients proposed as one log entry, so that they share its
    /// fdatasync (group commit, `batch.rs`). Each is applied as if it were an entry of
    /// its own, in order: one that fails leaves no trace and does not undo the others.
    Batch(Vec<Command>),
}

/// What a successfully applied command returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Done,
    Attr(Attr),
    Registered(NodeId),
    /// A `Batch`'s results, one per command in its order.
    Batch(Vec<FsResult<CommandResult>>),
}

/// The Raft response type: the outcome of applying one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse(pub Result<CommandResult, FsError>);

/// Applies one command inside `txn`. Pure: the outcome depends only on the transaction's
/// state and the command. On `Err` the caller must abort the transaction (partial changes
/// may have been made). `FsError::Io` means the store failed, not the command.
pub fn apply(txn: &WriteTransaction, cmd: &Command) -> FsResult<CommandResult> {
    if !matches!(cmd, Command::Format { .. }) && txn.format()?.is_none() {
        return Err(FsError::Unavailable { reason: "the file system is not formatted yet".into() });
    }
    snapshots::guard(txn, cmd)?;
    match cmd {
        Command::Format { format, now } => data::format(txn, format, *now),
        Command::Mkdir { parent, name, perm, uid, gid, now } => {
            namespace::mkdir(txn, *parent, name, *perm, *uid, *gid, *now)
        }
        Command::Create { parent, name, perm, uid, gid, exclusive, now, open } => {
            let created = namespace::create(txn, *parent, name, *perm, *uid, *gid, *exclusive, *now)?;
            match (open, &created) {
                (Some((session, expires)), CommandResult::Attr(a)) => open_files::open(txn, a.ino, *session, *expires),
                _ => Ok(created),
            }
        }
        Command::Symlink { parent, name, target, uid, gid, now } => {
            namespace::symlink(txn, *parent, name, target, *uid, *gid, *now)
        }
        Command::Link { ino, new_parent, new_name, now } => namespace::link(txn, *ino, *new_parent, new_name, *now),
        Command::Unlink { parent, name, now } => namespace::unlink(txn, *parent, name, *now),
        Command::Rmdir { parent, name, now } => namespace::rmdir(txn, *parent, name, *now),
        Command::Rename { parent, name, new_parent, new_name, mode, now } => {
            namespace::rename(txn, *parent, name, *new_parent, new_name, *mode, *now)
        }
        Command::SetAttr { ino, set, now } => namespace::setattr(txn, *ino, set, *now),
        Command::CommitWrite { ino, slices, min_size, mtime, bad, now } => {
            data::commit_write(txn, *ino, slices, *min_size, *mtime, bad, *now)
        }
        Command::ReportBadReplica { bad } => {
            data::mark_bad(txn, bad)?;
            Ok(CommandResult::Done)
        }
        Command::RegisterNode { node, addr, zone, capacity } => data::register_node(txn, *node, addr, zone, *capacity),
        Command::GcAck { node, blocks } => data::gc_ack(txn, *node, blocks),
        Command::UpdateReplicas { block, add, drop } => heal::update_replicas(txn, *block, *add, drop),
        Command::UpdateReplicasMany { updates } => {
            for (block, add, drop) in updates {
                heal::update_replicas(txn, *block, *add, drop)?;
            }
            Ok(CommandResult::Done)
        }
        Command::SetNodeAdmin { node, admin } => heal::set_node_admin(txn, *node, *admin),
        Command::RemoveNode { node } => heal::remove_node(txn, *node),
        Command::GcQueue { node, blocks } => heal::gc_queue(txn, *node, blocks),
        Command::OpenFile { ino, session, expires } => open_files::open(txn, *ino, *session, *expires),
        Command::ReleaseFile { ino, session } => open_files::release(txn, *ino, *session),
        Command::RenewSession { session, expires } => open_files::renew(txn, *session, *expires),
        Command::CloseSession { session } => open_files::close_session(txn, *session),
        Command::ExpireSessions { now } => open_files::expire(txn, *now),
        Command::SetLock { ino, req } => locks::set_lock(txn, *ino, *req),
        Command::SetXattr { ino, name, value, mode, now } => xattr::set(txn, *ino, name, value, *mode, *now),
        Command::RemoveXattr { ino, name, now } => xattr::remove(txn, *ino, name, *now),
        Command::Snapshot(c) => snapshots::apply(txn, c),
        Command::Dedup(c) => dedup::apply(txn, c),
        Command::FreeOrphans { inos, .. } => open_files::free_orphans(txn, inos),
        Command::TouchSession { session, expires } => open_files::touch_session(txn, *session, *expires),
        Command::RegisterNodeToken { token, node, addr, zone, capacity } => {
            once::register_node(txn, *token, *node, addr, zone, *capacity)
        }
        // `StateStore::apply_entry` unwraps the outer one.
        Command::Once { .. } => Err(FsError::invalid("a request id inside another (nested `Once`)")),
        Command::Batch(_) => Err(FsError::invalid("a batch inside a command")),
    }
}

/// For unit tests: what the leader's sweeper does, with `opens` as its open table (no
/// grace period): frees the orphans nobody holds.
#[cfg(test)]
pub(crate) fn sweep_orphans(store: &StateStore, opens: &mut crate::opens::OpenTable) {
    let orphans = store.read().and_then(|r| r.orphans(usize::MAX)).expect("read orphans");
    let claimed = opens.claim(&orphans, std::time::Instant::now(), &[]);
    if !claimed.is_empty() {
        let cmd = Command::FreeOrphans { term: 0, inos: claimed.clone() };
        store.apply_entry(None, None, Some(&cmd)).expect("store works").expect("a command").expect("free orphans");
        opens.unclaim(&claimed);
    }
}

/// An open table past its grace period, for unit tests.
#[cfg(test)]
pub(crate) fn test_open_table() -> crate::opens::OpenTable {
    let t0 = std::time::Instant::now();
    let mut t = crate::opens::OpenTable::new(std::time::Duration::ZERO, t0);
    t.observe_term(1, t0);
    t
}

// --- small write helpers shared by the op modules ---------------------------------------

pub(crate) fn meta_put<T: Serialize>(txn: &WriteTransaction, key: &str, v: &T) -> FsResult<()> {
    let mut t = txn.open_table(META).map_err(db_err)?;
    t.insert(key, enc(v).as_slice()).map_err(db_err)?;
    Ok(())
}

/// Takes the next value of a counter.
pub(crate) fn next_counter(txn: &WriteTransaction, key: &str) -> FsResult<u64> {
    let v: u64 = txn.meta_get(key)?.unwrap_or(1);
    meta_put(txn, key, &(v + 1))?;
    Ok(v)
}

pub(crate) fn put_inode(txn: &WriteTransaction, inode: &Inode) -> FsResult<()> {
    let mut t = txn.open_table(INODES).map_err(db_err)?;
    t.insert(inode.attr.ino.0, enc(inode).as_slice()).map_err(db_err)?;
    Ok(())
}

pub(crate) fn del_inode(txn: &WriteTransaction, ino: InodeId) -> FsResult<()> {
    {
        let mut t = txn.open_table(INODES).map_err(db_err)?;
        t.remove(ino.0).map_err(db_err)?;
    }
    xattr::remove_all(txn, ino)?;
    locks::drop_inode_locks(txn, ino)
}

/// Applies `cmd` in `txn`; when the command fails, `txn` is aborted and a fresh one
/// begun (the failed command leaves no trace). The outer `Err` is a store failure.
fn apply_or_abort(
    txn: WriteTransaction,
    cmd: &Command,
    begin: impl Fn() -> FsResult<WriteTransaction>,
) -> FsResult<(WriteTransaction, FsResult<CommandResult>)> {
    let r = apply(&txn, cmd);
    match &r {
        Err(e @ FsError::Io { .. }) => Err(e.clone()),
        Err(_) => {
            txn.abort().map_err(db_err)?;
            Ok((begin()?, r))
        }
        Ok(_) => Ok((txn, r)),
    }
}

/// Durability of state-machine commits: the Raft log is the durable record; the state
/// is re-applied from it after a crash. `StateStore::flush` makes it durable (snapshots).
const APPLY_DURABILITY: Durability = Durability::None;

/// The state machine's database.
#[derive(Clone)]
pub struct StateStore {
    db: Arc<Database>,
}

pub type Membership = StoredMembership<u64, BasicNode>;

/// Refuses a database whose records this build would misread; stamps a new one.
fn check_schema(txn: &WriteTransaction) -> Result<(), MetaError> {
    let corrupt = |e: FsError| MetaError::Corrupt { table: "meta", reason: e.to_string() };
    let found: Option<u32> = txn.meta_get(K_SCHEMA).map_err(corrupt)?;
    let found = match found {
        Some(v) => v,
        None if txn.meta_get::<Format>(K_FORMAT).map_err(corrupt)?.is_some() => 1,
        None => return meta_put(txn, K_SCHEMA, &SCHEMA_VERSION).map_err(corrupt),
    };
    if found != SCHEMA_VERSION {
        return Err(MetaError::Corrupt {
            table: "meta",
            reason: format!(
                "this data directory holds schema {found}, this build reads schema {SCHEMA_VERSION} only; \
                 run the DistFS version that wrote it (no migration exists yet)"
            ),
        });
    }
    Ok(())
}

impl StateStore {
    /// Opens (creating if needed) the state database at `path`.
    pub fn open(path: &Path) -> Result<StateStore, MetaError> {
        Self::open_with_cache(path, 256 << 20)
    }

    /// Opens (creating if needed) the state database at `path` with a page cache of
    /// `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<StateStore, MetaError> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| MetaError::storage("open state db", e))?;
        Self::init(db)
    }

    /// A state store in memory (tests, simulator).
    pub fn in_memory() -> Result<StateStore, MetaError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| MetaError::storage("create in-memory state db", e))?;
        Self::init(db)
    }

    /// A state store on any redb backend (the simulator's crash-aware in-memory disk).
    pub fn with_backend(backend: impl redb::StorageBackend) -> Result<StateStore, MetaError> {
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|e| MetaError::storage("open state db on backend", e))?;
        Self::init(db)
    }

    fn init(db: Database) -> Result<StateStore, MetaError> {
        let txn = db.begin_write().map_err(|e| MetaError::storage("init state db", e))?;
        {
            let s = |e| MetaError::storage("create tables", e);
            txn.open_table(INODES).map_err(s)?;
            txn.open_table(DENTRIES).map_err(s)?;
            txn.open_table(CHUNKS).map_err(s)?;
            txn.open_table(BLOCKS).map_err(s)?;
            txn.open_table(GC).map_err(s)?;
            txn.open_table(NODES).map_err(s)?;
            txn.open_table(BAD).map_err(s)?;
            txn.open_table(META).map_err(s)?;
            txn.open_table(SNAPSHOT).map_err(s)?;
            txn.open_table(SESSIONS).map_err(s)?;
            txn.open_table(OPENS).map_err(s)?;
            txn.open_table(SESSION_OPENS).map_err(s)?;
            txn.open_table(XATTRS).map_err(s)?;
            txn.open_table(ORPHANS).map_err(s)?;
            dedup::create_tables(&txn).map_err(s)?;
            once::create_tables(&txn).map_err(s)?;
        }
        check_schema(&txn)?;
        txn.commit().map_err(|e| MetaError::storage("init state db", e))?;
        Ok(StateStore { db: Arc::new(db) })
    }

    /// A consistent read view of the state.
    pub fn read(&self) -> FsResult<redb::ReadTransaction> {
        self.db.begin_read().map_err(db_err)
    }

    pub fn db(&self) -> &Arc<Database> {
        &self.db
    }

    /// Applies one log entry in its own write transaction, together with the applied log
    /// id (and the membership, for membership entries). A command that fails leaves no
    /// trace but the applied log id. The outer `Err` is a store failure.
    pub fn apply_entry(
        &self,
        log_id: Option<LogId<u64>>,
        membership: Option<&Membership>,
        cmd: Option<&Command>,
    ) -> Result<Option<FsResult<CommandResult>>, FsError> {
        let Some(Command::Batch(cmds)) = cmd else { return self.apply_one(log_id, true, membership, cmd) };
        // Each command in its own transaction, as separate entries would be; only the
        // last records the applied id, so a crash mid-batch (these commits are not
        // durable) re-applies the whole entry.
        let mut out = Vec::with_capacity(cmds.len());
        for c in cmds {
            let r = if matches!(c, Command::Batch(_)) {
                Err(FsError::invalid("a batch inside a batch"))
            } else {
                self.apply_one(log_id, false, None, Some(c))?.unwrap_or(Ok(CommandResult::Done))
            };
            out.push(r);
        }
        self.apply_one(log_id, true, membership, None)?;
        Ok(Some(Ok(CommandResult::Batch(out))))
    }

    /// `apply_entry` of one command; `record` says whether this transaction also
    /// records `log_id` as applied.
    fn apply_one(
        &self,
        log_id: Option<LogId<u64>>,
        record: bool,
        membership: Option<&Membership>,
        cmd: Option<&Command>,
    ) -> Result<Option<FsResult<CommandResult>>, FsError> {
        let begin = || -> FsResult<WriteTransaction> {
            let mut txn = self.db.begin_write().map_err(db_err)?;
            txn.set_durability(APPLY_DURABILITY).map_err(db_err)?;
            Ok(txn)
        };
        let mut txn = begin()?;
        let result = match cmd {
            Some(Command::FreeOrphans { term, .. }) if log_id.is_some_and(|l| l.leader_id.term != *term) => {
                tracing::info!(?log_id, term, "orphan sweep of an earlier term ignored");
                Some(Ok(CommandResult::Done))
            }
            Some(Command::Once { client, slot, seq, now, cmd }) => {
                let key = once::OnceKey { client: *client, slot: *slot, seq: *seq };
                let found = once::lookup(&txn.open_table(once::RESULTS).map_err(db_err)?, key)?;
                Some(match found {
                    once::Lookup::Done(r) => r,
                    once::Lookup::Refused(e) => Err(e),
                    once::Lookup::New => {
                        let (t, r) = apply_or_abort(txn, cmd, begin)?;
                        txn = t;
                        once::record(&txn, key, *now, &r)?;
                        r
                    }
                })
            }
            Some(c) => {
                let (t, r) = apply_or_abort(txn, c, begin)?;
                txn = t;
                Some(r)
            }
            None => None,
        };
        if log_id.is_some() && record {
            meta_put(&txn, K_LAST_APPLIED, &log_id)?;
        }
        if let Some(m) = membership {
            meta_put(&txn, K_MEMBERSHIP, m)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(result)
    }

    /// Makes every earlier commit durable.
    pub fn flush(&self) -> FsResult<()> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Last applied log id and membership.
    pub fn applied_state(&self) -> FsResult<(Option<LogId<u64>>, Membership)> {
        let r = self.read()?;
        let last: Option<Option<LogId<u64>>> = r.meta_get(K_LAST_APPLIED)?;
        let m: Option<Membership> = r.meta_get(K_MEMBERSHIP)?;
        Ok((last.flatten(), m.unwrap_or_default()))
    }
}
