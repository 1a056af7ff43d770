//! Shared vocabulary of DistFS: ids as newtypes, POSIX attributes, the chunk/slice/block
//! layout model, node descriptions, human sizes/durations for configs, and the wire error
//! type every service returns. No I/O lives here.

pub mod attr;
pub mod error;
pub mod ids;
pub mod layout;
pub mod lock;
pub mod node;
pub mod units;

pub use attr::{Attr, DirEntry, FileKind, SetAttr, Timestamp};
pub use error::{FsError, FsResult};
pub use ids::{BlockId, InodeId, NodeId, Seq};
pub use layout::{
    visible_extents, BlockLocation, BlockRef, Extent, Inline, Slice, BLOCK_SIZE_DEFAULT, CHUNK_SIZE_DEFAULT, CRC_CHUNK,
    INLINE_MAX,
};
pub use lock::{LockInfo, LockKind};
pub use node::{AdminState, NodeInfo, NodeState};
pub use units::{ByteSize, Duration as HumanDuration};

/// Longest file name accepted by the namespace (as in Linux NAME_MAX).
pub const NAME_MAX: usize = 255;
/// Longest symlink target accepted (as in Linux PATH_MAX).
pub const PATH_MAX: usize = 4096;
