//! The one place where DistFS errors become errno values for the kernel. Every other file
//! of the adapter calls `errno_of`/`errno_of_client` and never picks an errno itself for a
//! failed client call.

use distfs_client::ClientError;
use distfs_types::FsError;
use fuser::Errno;

/// The errno a program sees for `e`.
///
/// `Unavailable` and `NotLeader` become `EIO`, not `EAGAIN`: they reach this point only
/// after the client retried for its whole metadata deadline, so the cluster really is
/// unreachable, and programs treat `EAGAIN` on a regular file as "would block" and spin or
/// misreport it, whereas `EIO` is the errno every program already handles as a failed I/O.
pub fn errno_of(e: &FsError) -> Errno {
    match e {
        FsError::NotFound { .. } => Errno::ENOENT,
        FsError::AlreadyExists { .. } => Errno::EEXIST,
        FsError::NotADirectory { .. } => Errno::ENOTDIR,
        FsError::IsADirectory { .. } => Errno::EISDIR,
        FsError::DirectoryNotEmpty { .. } => Errno::ENOTEMPTY,
        FsError::InvalidArgument { .. } => Errno::EINVAL,
        FsError::NameTooLong { .. } => Errno::ENAMETOOLONG,
        FsError::PermissionDenied { .. } => Errno::EACCES,
        FsError::NoSpace { .. } => Errno::ENOSPC,
        FsError::StaleInode { .. } => Errno::ESTALE,
        FsError::NotLeader { .. } | FsError::Unavailable { .. } => Errno::EIO,
        FsError::NotEnoughReplicas { .. }
        | FsError::Corrupt { .. }
        | FsError::BlockNotFound { .. }
        | FsError::Io { .. }
        | FsError::Protocol { .. }
        | FsError::Internal { .. } => Errno::EIO,
        FsError::NoData { .. } => Errno::ENODATA,
        FsError::TooBig { .. } => Errno::E2BIG,
        FsError::OutOfRange { .. } => Errno::ERANGE,
        FsError::LockConflict { .. } => Errno::EAGAIN,
        FsError::ReadOnly { .. } => Errno::EROFS,
    }
}

/// The errno of a failed client call.
pub fn errno_of_client(e: &ClientError) -> Errno {
    errno_of(&e.as_fs())
}

/// Errors of the adapter itself (not from the cluster).
pub mod local {
    use fuser::Errno;

    /// A file handle the kernel sent that this mount never handed out.
    pub const BAD_HANDLE: Errno = Errno::EBADF;
    /// A name that is not valid UTF-8: DistFS names are UTF-8 strings.
    pub const BAD_NAME: Errno = Errno::EINVAL;
    /// Looking up such a name: it cannot exist.
    pub const BAD_NAME_LOOKUP: Errno = Errno::ENOENT;
    /// Device nodes, FIFOs and sockets: DistFS stores files, directories and symlinks.
    pub const UNSUPPORTED_NODE: Errno = Errno::EPERM;
    /// `getxattr`/`listxattr` with a buffer smaller than the answer.
    pub const XATTR_BUFFER_TOO_SMALL: Errno = Errno::ERANGE;
    /// POSIX ACL xattrs (`system.posix_acl_*`): not stored, see `xattr.rs`.
    pub const XATTR_UNSUPPORTED: Errno = Errno::EOPNOTSUPP;
    /// Reading a POSIX ACL xattr: there is none (the mode bits apply), answered without
    /// asking the metadata service (`ls -l` asks for two per entry).
    pub const NO_ACL: Errno = Errno::ENODATA;
    /// `setxattr` with both `XATTR_CREATE` and `XATTR_REPLACE`, or unknown flags.
    pub const BAD_XATTR_FLAGS: Errno = Errno::EINVAL;
    /// Offsets and sizes past what a file can hold.
    pub const TOO_BIG: Errno = Errno::EFBIG;
}

#[cfg(test)]
mod tests {
    use super::*;
    use distfs_types::{BlockId, InodeId, NodeId};

    #[test]
    fn every_variant_has_its_errno() {
        let b = BlockId(7);
        let n = NodeId(1);
        let s = || "x".to_string();
        let cases = vec![
            (FsError::NotFound { what: s() }, libc::ENOENT),
            (FsError::AlreadyExists { what: s() }, libc::EEXIST),
            (FsError::NotADirectory { what: s() }, libc::ENOTDIR),
            (FsError::IsADirectory { what: s() }, libc::EISDIR),
            (FsError::DirectoryNotEmpty { what: s() }, libc::ENOTEMPTY),
            (FsError::InvalidArgument { reason: s() }, libc::EINVAL),
            (FsError::NameTooLong { len: 300, max: 255 }, libc::ENAMETOOLONG),
            (FsError::PermissionDenied { what: s() }, libc::EACCES),
            (FsError::NoSpace { reason: s() }, libc::ENOSPC),
            (FsError::StaleInode { ino: InodeId(9) }, libc::ESTALE),
            (FsError::NotLeader { leader: None }, libc::EIO),
            (FsError::Unavailable { reason: s() }, libc::EIO),
            (FsError::NotEnoughReplicas { block: b, acked: 1, needed: 2, detail: s() }, libc::EIO),
            (FsError::Corrupt { block: b, node: n, detail: s() }, libc::EIO),
            (FsError::BlockNotFound { block: b, node: n }, libc::EIO),
            (FsError::Io { reason: s() }, libc::EIO),
            (FsError::Protocol { reason: s() }, libc::EIO),
            (FsError::Internal { reason: s() }, libc::EIO),
            (FsError::NoData { what: s() }, libc::ENODATA),
            (FsError::TooBig { what: s(), len: 70_000, max: 65_536 }, libc::E2BIG),
            (FsError::OutOfRange { reason: s() }, libc::ERANGE),
            (FsError::LockConflict { what: s() }, libc::EAGAIN),
            (FsError::ReadOnly { what: s() }, libc::EROFS),
        ];
        // `errno_of` matches exhaustively, so a new FsError variant does not compile
        // until it is mapped; this list must then grow with it.
        for (e, want) in cases {
            assert_eq!(errno_of(&e).code(), want, "{e:?}");
        }
    }

    #[test]
    fn client_errors_map_through_their_fs_error() {
        let e = ClientError::AllReplicasFailed { block: BlockId(1), attempts: vec![] };
        assert_eq!(errno_of_client(&e).code(), libc::EIO);
        let e = ClientError::Fs(FsError::NotFound { what: "a".into() });
        assert_eq!(errno_of_client(&e).code(), libc::ENOENT);
        let e = ClientError::Unexpected { request: "Lookup" };
        assert_eq!(errno_of_client(&e).code(), libc::EIO);
    }
}
