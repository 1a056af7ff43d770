//! Typed headers of every service. A request enum per service, a response enum per
//! service; bulk data never goes in a typed header, it travels as the frame body.

use distfs_types::{
    Attr, BlockId, BlockRef, DirEntry, InodeId, LockInfo, LockKind, NodeId, NodeInfo, SetAttr, Slice, Timestamp,
};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// Metadata service
// ---------------------------------------------------------------------------------------

/// How `Rename` treats an existing target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenameMode {
    /// POSIX `rename(2)`: atomically replace the target if it exists.
    Replace,
    /// `RENAME_NOREPLACE`: fail with `AlreadyExists` if the target exists.
    NoReplace,
    /// `RENAME_EXCHANGE`: swap source and target; both must exist.
    Exchange,
}

/// A storage node as a client needs it to send or fetch a block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    pub id: NodeId,
    pub addr: String,
    /// False when the node is suspect or dead: try it last.
    pub healthy: bool,
}

/// A block the client should write, and where (R nodes, ring order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockTarget {
    pub id: BlockId,
    pub targets: Vec<NodeAddr>,
}

/// A block written by the client: the replicas that acknowledged it durably.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenBlock {
    pub block: BlockRef,
    pub replicas: Vec<NodeId>,
}

/// A slice written into one chunk, ready to commit. `blocks` concatenated hold the bytes
/// of chunk range `[offset, offset + len)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceWrite {
    pub chunk: u64,
    pub offset: u64,
    pub len: u64,
    pub blocks: Vec<WrittenBlock>,
    /// The bytes themselves, kept in the metadata (a small file: `blocks` is empty, the
    /// slice lies in chunk 0 below `INLINE_MAX`).
    pub inline: Option<distfs_types::Inline>,
}

/// The committed slices of one chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLayout {
    pub index: u64,
    pub slices: Vec<Slice>,
}

/// Replica list of one block in a layout answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockReplicas {
    pub id: BlockId,
    /// Nodes that hold a copy the metadata believes good, in no particular order.
    pub replicas: Vec<NodeId>,
}

/// Everything a reader needs for a range of a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub attr: Attr,
    pub chunk_size: u64,
    pub chunks: Vec<ChunkLayout>,
    pub blocks: Vec<BlockReplicas>,
    /// Addresses of every node named in `blocks`.
    pub nodes: Vec<NodeAddr>,
}

/// A copy of a block that a client or node found bad.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadReplica {
    pub block: BlockId,
    pub node: NodeId,
    pub reason: String,
}

/// Cluster-wide summary for `distfs cluster status` and `df`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub leader: Option<u64>,
    pub term: u64,
    pub last_applied: u64,
    pub replication: u32,
    pub chunk_size: u64,
    pub block_size: u32,
    pub nodes: Vec<NodeInfo>,
    pub files: u64,
    pub directories: u64,
    pub blocks: u64,
    /// Logical bytes referenced by files (one copy).
    pub logical_bytes: u64,
    /// Blocks with fewer good replicas than the replication factor.
    pub under_replicated: u64,
    /// Replicas reported corrupt or missing, newest last (bounded).
    pub bad_replicas: Vec<BadReplica>,
    /// Blocks waiting to be deleted from storage nodes.
    pub gc_pending: u64,
    /// Blocks with no live copy at all (every holder dead or bad).
    #[serde(default)]
    pub missing: u64,
    /// What the repair worker of the leader is doing.
    #[serde(default)]
    pub repair: RepairProgress,
}

/// Progress of the leader's repair worker (soft state: resets on a leader change).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairProgress {
    /// Copies planned and not yet done (including those in flight).
    pub queued_blocks: u64,
    pub queued_bytes: u64,
    pub in_flight: u64,
    /// Copies made and recorded since this leader took over.
    pub done_blocks: u64,
    pub done_bytes: u64,
    pub failed: u64,
    /// Extra copies trimmed (above R, or moved by the rebalancer).
    pub trimmed: u64,
    /// Copies made by the rebalancer (included in `done_blocks`).
    pub rebalanced: u64,
    /// Repair throughput over the last few seconds.
    pub rate_bytes_per_sec: u64,
}

/// A block `fsck` found wanting, with the files that use it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckBlock {
    pub block: BlockId,
    pub len: u32,
    /// Copies that count towards R (on live, non-draining nodes).
    pub live: u32,
    /// Every node listed as holding it.
    pub replicas: Vec<NodeId>,
    /// Paths of files referring to it (`<inode N>/name` when a path cannot be built).
    pub files: Vec<String>,
}

/// A copy a storage node holds that the metadata does not list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    pub node: NodeId,
    pub block: BlockId,
}

/// What `fsck` found (and, with `repair`, what it did).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckReport {
    pub blocks: u64,
    pub replication: u32,
    /// Fewer than R live copies, at least one.
    pub under_replicated: Vec<FsckBlock>,
    /// No live copy.
    pub missing: Vec<FsckBlock>,
    /// Bad-replica reports whose block is not back at R yet.
    pub corrupt: Vec<BadReplica>,
    /// Copies held by nodes the metadata does not list (from the nodes' block reports).
    pub orphaned: Vec<Orphan>,
    /// With `repair`: copies queued for repair and orphans queued for deletion.
    pub repairs_queued: u64,
    pub orphans_deleted: u64,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.under_replicated.is_empty()
            && self.missing.is_empty()
            && self.corrupt.is_empty()
            && self.orphaned.is_empty()
    }
}

/// File-system capacity for `df` / `statfs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    pub capacity: u64,
    pub used: u64,
    pub available: u64,
    pub files: u64,
    pub block_size: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaRequest {
    // --- namespace --------------------------------------------------------------------
    Lookup {
        parent: InodeId,
        name: String,
    },
    /// Resolves an absolute path (`/a/b/c`) without following a final symlink.
    ResolvePath {
        path: String,
    },
    GetAttr {
        ino: InodeId,
    },
    SetAttr {
        ino: InodeId,
        set: SetAttr,
    },
    Mkdir {
        parent: InodeId,
        name: String,
        perm: u32,
        uid: u32,
        gid: u32,
    },
    /// Creates a regular file. With `exclusive` an existing name is `AlreadyExists`;
    /// without, an existing regular file is returned as it is (`O_CREAT`). With
    /// `open_session`, the same entry also registers the file as held open by that
    /// session (what `OpenFile` does), so a create-and-open costs one metadata write.
    Create {
        parent: InodeId,
        name: String,
        perm: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
        open_session: Option<u64>,
    },
    Symlink {
        parent: InodeId,
        name: String,
        target: String,
        uid: u32,
        gid: u32,
    },
    Readlink {
        ino: InodeId,
    },
    Link {
        ino: InodeId,
        new_parent: InodeId,
        new_name: String,
    },
    Unlink {
        parent: InodeId,
        name: String,
    },
    Rmdir {
        parent: InodeId,
        name: String,
    },
    Rename {
        parent: InodeId,
        name: String,
        new_parent: InodeId,
        new_name: String,
        mode: RenameMode,
    },
    /// Lists entries with names strictly after `after`, at most `limit` of them; with
    /// `attrs`, also each entry's attributes (the mount's READDIRPLUS: `ls -l` and
    /// `find` then cost no lookup per name).
    ReadDir {
        ino: InodeId,
        after: Option<String>,
        limit: u32,
        attrs: bool,
    },
    StatFs,
    // --- data -------------------------------------------------------------------------
    /// Asks for `count` new block ids and, for each, the nodes to write it to.
    AllocateBlocks {
        ino: InodeId,
        count: u32,
    },
    /// Atomically commits written slices: all become visible under one new sequence
    /// number, or none does. The file grows to at least `min_size`.
    CommitWrite {
        ino: InodeId,
        slices: Vec<SliceWrite>,
        min_size: u64,
        mtime: Timestamp,
        bad: Vec<BadReplica>,
    },
    /// Layout of chunks `[first_chunk, last_chunk]`.
    GetLayout {
        ino: InodeId,
        first_chunk: u64,
        last_chunk: u64,
    },
    ReportBadReplica {
        bad: BadReplica,
    },
    // --- node registry ----------------------------------------------------------------
    /// A storage node announces itself; `node` is its id from an earlier registration,
    /// `token` the random registration token kept in its data directory: the same token
    /// always gets the same id (a registration whose answer was lost is not a new node).
    RegisterNode {
        node: Option<NodeId>,
        token: Option<u128>,
        addr: String,
        zone: String,
        capacity: u64,
        used: u64,
        blocks: u64,
    },
    /// Sent every second. `deleted` acknowledges blocks removed on the metadata's request.
    Heartbeat {
        node: NodeId,
        capacity: u64,
        used: u64,
        blocks: u64,
        load: u32,
        deleted: Vec<BlockId>,
    },
    ClusterStatus,
    // --- metadata membership ----------------------------------------------------------
    /// Who is this server? Answered by any metadata server, leader or not.
    MetaServerInfo,
    /// Adds the metadata server listening at `addr` (started with `join = true`) as a
    /// voting member, after it has caught up as a learner.
    AddMetaServer {
        addr: String,
    },
    /// Removes metadata server `id` from the group.
    RemoveMetaServer {
        id: u64,
    },
    /// Raft state as the answering server sees it (any server answers).
    MetaStatus,
    // --- self-healing and membership (additive) ----------------------------------------
    /// A page of the blocks a storage node holds. `first` starts a report, `last` ends it;
    /// the leader compares the whole report with the block map.
    BlockReport {
        node: NodeId,
        blocks: Vec<BlockId>,
        first: bool,
        last: bool,
    },
    /// Marks a node Draining (no new writes, copies moved away); `dry_run` only counts.
    NodeDrain {
        node: NodeId,
        dry_run: bool,
    },
    /// Takes a drained (or dead and fully repaired) node out of the cluster.
    NodeRemove {
        node: NodeId,
    },
    /// Maintenance on (for `window_ms`) or off.
    NodeMaintenance {
        node: NodeId,
        on: bool,
        window_ms: u64,
    },
    Fsck {
        repair: bool,
    },
    // --- open files of client sessions (POSIX delete-while-open) -----------------------
    /// Session `session` holds `ino` open: an unlinked inode keeps its data until every
    /// session that holds it releases it or lets its lease expire. The leader keeps
    /// opens in memory (no log write; a new leader asks mounts for theirs again, see
    /// `HoldFiles`); the session's first open starts its lease. Answers the inode's
    /// attributes.
    OpenFile {
        ino: InodeId,
        session: u64,
    },
    /// Session `session` no longer holds `ino` open.
    ReleaseFile {
        ino: InodeId,
        session: u64,
    },
    /// Extends the session's lease by `SESSION_LEASE`. `NotFound` when the session has
    /// expired (its opens were released; the client registers them again). Answered
    /// `Renewed`.
    RenewSession {
        session: u64,
    },
    /// Ends a session: every file it holds open is released.
    CloseSession {
        session: u64,
    },
    // --- advisory locks (fcntl, flock), cluster-wide --------------------------------------
    /// Sets (`kind: Some`) or clears (`None`) the lock of `(session, owner)` over bytes
    /// `[start, end]` of `ino`. `LockConflict` when another owner holds a conflicting
    /// lock; a blocking caller waits and asks again.
    SetLock {
        ino: InodeId,
        session: u64,
        owner: u64,
        start: u64,
        end: u64,
        kind: Option<LockKind>,
        pid: u32,
    },
    /// The first lock of another owner that a `kind` lock over `[start, end]` would
    /// conflict with (`Lock(None)`: none).
    GetLock {
        ino: InodeId,
        session: u64,
        owner: u64,
        start: u64,
        end: u64,
        kind: LockKind,
    },
    // --- extended attributes ------------------------------------------------------------
    GetXattr {
        ino: InodeId,
        name: String,
    },
    ListXattr {
        ino: InodeId,
    },
    SetXattr {
        ino: InodeId,
        name: String,
        value: Vec<u8>,
        mode: XattrMode,
    },
    RemoveXattr {
        ino: InodeId,
        name: String,
    },
    /// A storage node is shutting down cleanly (it has finished its requests in flight
    /// and flushed): it gets no new writes from now on. Answered `Done`.
    Deregister {
        node: NodeId,
    },
    /// Snapshots: create, list, delete, restore (`snapshots.rs`). Answered `Snapshots`.
    Snapshot(crate::snapshots::SnapshotOp),
    /// Issue 10: dedup lookups and commits (`dedup.rs`).
    Dedup(crate::dedup::DedupRequest),
    /// Session `session` holds these inodes open: a mount registers what it holds again
    /// when a new metadata leader asks for it (`Renewed { resync: true }`), in pages of at
    /// most `MAX_HOLD_FILES`; `last` marks the final page. Answered `Held`.
    HoldFiles {
        session: u64,
        inos: Vec<InodeId>,
        last: bool,
    },
    /// A write (`MetaRequest::is_write`) with its request id: `MetaClient` sends every
    /// attempt of one logical call with the same id, and the state machine applies it at
    /// most once, answering a retry with the stored result. `slot` < `ONCE_SLOTS` is the
    /// client's slot the call holds (one call per slot at a time); `seq` grows with every
    /// call of the client.
    Once {
        client: u64,
        slot: u32,
        seq: u64,
        req: Box<MetaRequest>,
    },
    /// `OpenFile` for reading (protocol v5): registers the open as `OpenFile` does and
    /// answers the file's `Layout` of chunks `[first_chunk, last_chunk]`, attributes
    /// included, read from one state after the registration. A reader opens in one round
    /// trip instead of three (open, attributes, layout), and its size and layout are of
    /// the same version.
    OpenRead {
        ino: InodeId,
        session: u64,
        first_chunk: u64,
        last_chunk: u64,
    },
}

/// Calls one `MetaClient` has in flight at most, each in its own slot; the metadata
/// service keeps the last result of every slot of every client (`MetaRequest::Once`).
pub const ONCE_SLOTS: u32 = 1024;

impl MetaRequest {
    /// True for the requests that change state through one Raft command, so that
    /// `MetaClient` sends them in a `Once` envelope: applied twice they would answer
    /// wrongly (`AlreadyExists` for a create retried after its answer was lost) or do
    /// twice what was asked once (a commit's block references). Heartbeats, block reports
    /// and `fsck` write idempotent commands (or several) and go without, as do opens,
    /// releases, registrations of held files and lease renewals (leader memory, or a
    /// lease moved forward: the same done twice).
    pub fn is_write(&self) -> bool {
        use crate::snapshots::SnapshotOp;
        use MetaRequest as M;
        match self {
            M::SetAttr { .. }
            | M::Mkdir { .. }
            | M::Create { .. }
            | M::Symlink { .. }
            | M::Link { .. }
            | M::Unlink { .. }
            | M::Rmdir { .. }
            | M::Rename { .. }
            | M::CommitWrite { .. }
            | M::ReportBadReplica { .. }
            | M::RegisterNode { .. }
            | M::NodeDrain { .. }
            | M::NodeRemove { .. }
            | M::NodeMaintenance { .. }
            | M::CloseSession { .. }
            | M::SetLock { .. }
            | M::SetXattr { .. }
            | M::RemoveXattr { .. }
            | M::Dedup(crate::dedup::DedupRequest::CommitWrite { .. }) => true,
            M::Snapshot(op) => !matches!(op, SnapshotOp::List),
            _ => false,
        }
    }
}

/// Most inodes one `HoldFiles` may carry.
pub const MAX_HOLD_FILES: usize = 4096;

/// How long a client session's lease lasts without renewal: after it, the files the
/// session holds open are released (a crashed client's opens do not pin data forever).
pub const SESSION_LEASE: std::time::Duration = std::time::Duration::from_secs(30);
/// Longest extended attribute name, in bytes (Linux `XATTR_NAME_MAX`).
pub const XATTR_NAME_MAX: usize = 255;
/// Largest extended attribute value, in bytes (Linux `XATTR_SIZE_MAX`).
pub const XATTR_SIZE_MAX: usize = 65536;
/// Most bytes of names + values of the extended attributes of one inode.
pub const XATTR_TOTAL_MAX: usize = 1 << 20;

/// `setxattr(2)` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum XattrMode {
    /// Create or replace.
    Any,
    /// `XATTR_CREATE`: fail with `AlreadyExists` if the attribute exists.
    Create,
    /// `XATTR_REPLACE`: fail with `NoData` if the attribute does not exist.
    Replace,
}

/// One member of the metadata Raft group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaMember {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
    /// Last log index known replicated to it (leader's view only).
    pub matched: Option<u64>,
    /// Entries it is behind the leader's last log index (leader's view only).
    pub lag: Option<u64>,
}

/// Raft state of the metadata group, for `distfs meta status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaStatus {
    /// The server that answered.
    pub server: u64,
    pub leader: Option<u64>,
    pub leader_addr: Option<String>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    /// Log index covered by the latest snapshot.
    pub snapshot_index: Option<u64>,
    pub members: Vec<MetaMember>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    Attr(Attr),
    Lock(Option<LockInfo>),
    Entries {
        entries: Vec<DirEntry>,
        more: bool,
        /// With `ReadDir::attrs`: the attributes of each entry, in the same order.
        attrs: Vec<Attr>,
        /// With `ReadDir::attrs`: whether each entry has any extended attribute (the
        /// mount then answers `ls -l`'s questions for the others without a round trip).
        has_xattrs: Vec<bool>,
    },
    Target(String),
    Done,
    Allocated {
        blocks: Vec<BlockTarget>,
    },
    Layout(Layout),
    StatFs(StatFs),
    Registered {
        node: NodeId,
    },
    /// Blocks the node should delete (garbage collection).
    HeartbeatAck {
        delete: Vec<BlockId>,
    },
    Status(ClusterStatus),
    ServerInfo {
        id: u64,
        addr: String,
    },
    MetaStatus(MetaStatus),
    /// Answer to `NodeDrain`: what must move (still to move, for a drain in progress).
    Drain {
        blocks: u64,
        bytes: u64,
    },
    Fsck(FsckReport),
    /// The value of one extended attribute.
    Xattr {
        value: Vec<u8>,
    },
    /// The names of an inode's extended attributes, sorted.
    XattrNames {
        names: Vec<String>,
    },
    /// Answer to `Snapshot`: the snapshots concerned (all of them for `List`).
    Snapshots(Vec<crate::snapshots::SnapshotInfo>),
    /// Answer to `DedupRequest::Lookup`: per fingerprint, the block stored with it.
    Fingerprints {
        blocks: Vec<Option<BlockRef>>,
    },
    /// Answer to `RenewSession`: with `resync`, the leader does not know what this
    /// session holds open (it was elected since): send every held inode in `HoldFiles`.
    Renewed {
        resync: bool,
    },
    /// Answer to `HoldFiles`: the inodes that no longer exist (their handles are stale).
    Held {
        gone: Vec<InodeId>,
    },
    /// Answer to a namespace change (`Mkdir`, `Create`, `Symlink`, `Link`, `Unlink`,
    /// `Rmdir`, `Rename`): the inode made or linked (`None` for a removal or a rename)
    /// and each directory the change touched, as it is after the change, so a client
    /// that caches attributes (the mount) need not ask for them again.
    Changed {
        attr: Option<Attr>,
        dirs: Vec<Attr>,
    },
}

// ---------------------------------------------------------------------------------------
// Storage node
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageRequest {
    /// Stores the frame body as block `block`. `crcs` holds the CRC32C of every 64 KiB
    /// of the body; the node verifies them before acknowledging. Acknowledged means
    /// durable per the node's sync policy.
    PutBlock {
        block: BlockId,
        crcs: Vec<u32>,
    },
    /// Reads `[offset, offset+len)` of a block. The answer covers the range widened to
    /// 64 KiB boundaries, with the CRC32C of each 64 KiB piece, so the reader verifies
    /// every byte end to end.
    GetBlock {
        block: BlockId,
        offset: u32,
        len: u32,
    },
    DeleteBlocks {
        blocks: Vec<BlockId>,
    },
    Ping,
    /// Repair: fetch `block` from one of `from` (in order) with `GetBlock`, verify every
    /// CRC, store it durably like `PutBlock`, answer `Stored`.
    CopyBlock {
        block: BlockId,
        from: Vec<NodeAddr>,
    },
    /// A whole-block read on behalf of a repair copy (a peer's `CopyBlock`): answered
    /// like `GetBlock` over the whole block, but background work, so it does not count
    /// as client activity when the node decides how many copies it runs at once.
    FetchForCopy {
        block: BlockId,
    },
    /// Issue 10: `PutBlock` of a compressed block (`dedup.rs` has the details).
    PutPacked(crate::dedup::PackedPut),
}

impl StorageRequest {
    /// The CRC32C of the body's 64 KiB pieces, for a request whose body is block data.
    pub fn body_pieces(&self) -> Option<&[u32]> {
        match self {
            StorageRequest::PutBlock { crcs, .. } => Some(crcs),
            StorageRequest::PutPacked(p) => Some(&p.crcs),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageResponse {
    Stored,
    /// Body holds the bytes from `offset` (64 KiB aligned); `crcs[i]` covers body bytes
    /// `[i*64KiB, min((i+1)*64KiB, body.len()))`.
    Block {
        offset: u32,
        crcs: Vec<u32>,
    },
    Deleted {
        count: u32,
    },
    Pong {
        node: Option<NodeId>,
    },
    /// Answer to `FetchForCopy` of a compressed block: the stored bytes as they are.
    Packed(crate::dedup::PackedPut),
}
