//! Extended attributes on the mount: get/list with the kernel's size protocol (size 0
//! asks for the length; a buffer too small is `ERANGE`), set with `XATTR_CREATE` /
//! `XATTR_REPLACE`, remove. The kernel asks for `security.capability` before every write
//! to a file; a miss is remembered per inode for the attribute TTL so writes do not each
//! cost a metadata round trip (this mount's own set/remove forgets it at once); a file
//! this mount creates with `O_EXCL` starts out known to have none.

use crate::errno::{errno_of_client, local};
use crate::state::Inner;
use distfs_client::Result;
use distfs_proto::XattrMode;
use distfs_types::{FsError, InodeId};
use fuser::{Errno, ReplyXattr};
use std::time::Instant;

const CAPS: &str = "security.capability";
/// POSIX ACLs travel as these xattrs. Without `FUSE_POSIX_ACL` the kernel would pass
/// them through raw and never apply them to the mode or to permission checks; `cp -a`
/// would then skip its chmod (the ACL "set" the mode) and leave files 0600. Refusing
/// them makes tools fall back to plain modes, as on a file system without ACLs. Reading
/// one answers `ENODATA` ("no ACL") on the mount itself, with no round trip.
const ACL_PREFIX: &str = "system.posix_acl_";

/// True for the names this mount does not store (POSIX ACLs).
pub(crate) fn unsupported(name: &str) -> bool {
    name.starts_with(ACL_PREFIX)
}

/// What a get/list answers, before the size protocol.
pub(crate) fn reply_sized(reply: ReplyXattr, bytes: &[u8], size: u32) {
    if size == 0 {
        reply.size(bytes.len() as u32)
    } else if bytes.len() > size as usize {
        reply.error(local::XATTR_BUFFER_TOO_SMALL)
    } else {
        reply.data(bytes)
    }
}

/// The mode of `setxattr(2)` flags, or `EINVAL` for both or unknown flags.
pub(crate) fn mode_of(flags: i32) -> std::result::Result<XattrMode, Errno> {
    match flags {
        0 => Ok(XattrMode::Any),
        libc::XATTR_CREATE => Ok(XattrMode::Create),
        libc::XATTR_REPLACE => Ok(XattrMode::Replace),
        _ => Err(local::BAD_XATTR_FLAGS),
    }
}

impl Inner {
    pub async fn getxattr(&self, ino: InodeId, name: &str) -> Result<Vec<u8>> {
        let caps = name == CAPS;
        if caps {
            let no_caps = self.no_caps.lock().expect("no_caps lock");
            if no_caps.get(&ino).is_some_and(|until| *until > Instant::now()) {
                return Err(FsError::NoData { what: format!("`{name}` of inode {ino}") }.into());
            }
        }
        let r = self.client.getxattr(ino, name).await;
        if caps && matches!(&r, Err(e) if errno_of_client(e) == Errno::ENODATA) {
            self.has_no_caps(ino);
        }
        r
    }

    /// Remembers for the attribute TTL that `ino` has no `security.capability` (a miss,
    /// or a file this mount just created with `O_EXCL`: a new inode has none).
    pub fn has_no_caps(&self, ino: InodeId) {
        let mut no_caps = self.no_caps.lock().expect("no_caps lock");
        if no_caps.len() > 100_000 {
            no_caps.clear();
        }
        no_caps.insert(ino, Instant::now() + self.attr_ttl);
    }

    /// The names as `listxattr(2)` returns them: each followed by a NUL.
    pub async fn listxattr(&self, ino: InodeId) -> Result<Vec<u8>> {
        let names = self.client.listxattr(ino).await?;
        let mut out = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
        for n in names {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    pub async fn setxattr(&self, ino: InodeId, name: &str, value: &[u8], mode: XattrMode) -> Result<()> {
        self.no_caps.lock().expect("no_caps lock").remove(&ino);
        self.fresh_dirs.forget(ino);
        self.client.setxattr(ino, name, value, mode).await
    }

    pub async fn removexattr(&self, ino: InodeId, name: &str) -> Result<()> {
        self.no_caps.lock().expect("no_caps lock").remove(&ino);
        self.fresh_dirs.forget(ino);
        self.client.removexattr(ino, name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setxattr_flags() {
        assert_eq!(mode_of(0), Ok(XattrMode::Any));
        assert_eq!(mode_of(libc::XATTR_CREATE), Ok(XattrMode::Create));
        assert_eq!(mode_of(libc::XATTR_REPLACE), Ok(XattrMode::Replace));
        assert_eq!(mode_of(3), Err(Errno::EINVAL));
    }
}
