//! Extended attributes on the mount: get/list with the kernel's size protocol (size 0
//! asks for the length; a buffer too small is `ERANGE`), set with `XATTR_CREATE` /
//! `XATTR_REPLACE`, remove. The kernel asks for `security.capability` before every write
//! to a file, and `ls -l` asks each entry for `security.selinux` and the POSIX ACL names.
//! What is known missing is remembered per inode for the attribute TTL so those questions
//! do not each cost a metadata round trip: a miss of `security.capability`, an entry a
//! READDIRPLUS listing said has no extended attribute at all, and a file this mount
//! created with `O_EXCL` (none either). This mount's own set/remove forgets it at once;
//! another client's set shows here within the attribute TTL, like its attribute changes.

use crate::errno::{errno_of_client, local};
use crate::state::Inner;
use distfs_client::Result;
use distfs_proto::XattrMode;
use distfs_types::{FsError, InodeId};
use fuser::{Errno, ReplyXattr};
use std::time::Instant;

const CAPS: &str = "security.capability";

/// What an inode is known not to have (`Inner::no_xattrs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Absent {
    /// No extended attribute at all.
    All,
    /// No `security.capability`.
    Caps,
}
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
        if self.known_absent(ino, name) {
            return Err(FsError::NoData { what: format!("`{name}` of inode {ino}") }.into());
        }
        let r = self.client.getxattr(ino, name).await;
        if caps && matches!(&r, Err(e) if errno_of_client(e) == Errno::ENODATA) {
            self.has_no_xattrs(ino, Absent::Caps);
        }
        r
    }

    /// Whether `name` of `ino` is known missing (within the attribute TTL). An empty
    /// `name` asks whether the inode is known to have none at all.
    fn known_absent(&self, ino: InodeId, name: &str) -> bool {
        let known = self.no_xattrs.lock().expect("no_xattrs lock");
        match known.get(&ino) {
            Some((until, what)) if *until > Instant::now() => *what == Absent::All || name == CAPS,
            _ => false,
        }
    }

    /// Remembers for the attribute TTL that `ino` has no extended attribute (`All`: from
    /// a listing, or a file this mount just created with `O_EXCL`) or no
    /// `security.capability` (`Caps`: a miss). `Caps` does not replace a fresh `All`.
    pub fn has_no_xattrs(&self, ino: InodeId, what: Absent) {
        let mut known = self.no_xattrs.lock().expect("no_xattrs lock");
        if known.len() > 100_000 {
            known.clear();
        }
        let now = Instant::now();
        if what == Absent::Caps && known.get(&ino).is_some_and(|(u, w)| *u > now && *w == Absent::All) {
            return;
        }
        known.insert(ino, (now + self.attr_ttl, what));
    }

    /// The names as `listxattr(2)` returns them: each followed by a NUL.
    pub async fn listxattr(&self, ino: InodeId) -> Result<Vec<u8>> {
        if self.known_absent(ino, "") {
            return Ok(Vec::new());
        }
        let names = self.client.listxattr(ino).await?;
        let mut out = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
        for n in names {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    pub async fn setxattr(&self, ino: InodeId, name: &str, value: &[u8], mode: XattrMode) -> Result<()> {
        self.no_xattrs.lock().expect("no_xattrs lock").remove(&ino);
        self.fresh_dirs.forget(ino);
        self.client.setxattr(ino, name, value, mode).await
    }

    pub async fn removexattr(&self, ino: InodeId, name: &str) -> Result<()> {
        self.no_xattrs.lock().expect("no_xattrs lock").remove(&ino);
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
