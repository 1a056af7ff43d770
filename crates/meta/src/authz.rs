//! Authorisation of metadata requests by the caller's `Identity` (from its TLS
//! certificate): internal requests need a cluster member (node certificate), admin
//! requests an admin, and a plain client gets POSIX permission checks of its uid/gid on
//! the directories and files a request touches (root, admins and nodes bypass them, as
//! does every peer of a plain-TCP server). New files and directories of a plain client
//! are owned by its uid/gid, whatever the request says.
//!
//! The checks read the state the request will act on just before it runs; a concurrent
//! `chmod` can slip between the check and the change (as on most network file systems).

use crate::service::Service;
use crate::state::Reader;
use distfs_proto::{Identity, MetaRequest};
use distfs_types::{Attr, FileKind, FsError, FsResult, InodeId};

const R: u32 = 4;
const W: u32 = 2;
const X: u32 = 1;

fn denied(who: &Identity, what: impl std::fmt::Display) -> FsError {
    FsError::PermissionDenied { what: format!("{who} may not {what}") }
}

/// May `who` do `want` (rwx bits) on `attr`?
pub(crate) fn may(attr: &Attr, who: &Identity, want: u32) -> bool {
    if who.bypasses_permissions() || who.uid() == 0 {
        return true;
    }
    let bits = if attr.uid == who.uid() {
        attr.perm >> 6
    } else if attr.gid == who.gid() {
        attr.perm >> 3
    } else {
        attr.perm
    };
    bits & want == want
}

fn require(attr: &Attr, who: &Identity, want: u32, what: &str) -> FsResult<()> {
    if may(attr, who, want) {
        return Ok(());
    }
    let need =
        [(R, 'r'), (W, 'w'), (X, 'x')].iter().filter(|(b, _)| want & b != 0).map(|(_, c)| *c).collect::<String>();
    Err(denied(who, format_args!("{what} (needs {need} on inode {}, mode {:o})", attr.ino, attr.perm & 0o7777)))
}

/// The role a request needs, checked before anything else.
pub(crate) fn check_role(who: &Identity, req: &MetaRequest) -> FsResult<()> {
    use MetaRequest as M;
    match req {
        M::RegisterNode { .. } | M::Heartbeat { .. } | M::BlockReport { .. } | M::Deregister { .. }
            if !who.is_member() =>
        {
            Err(denied(who, "send storage-node requests (registration, heartbeats, block reports, deregistration)"))
        }
        M::NodeDrain { .. } if !who.is_admin() => Err(denied(who, "drain storage nodes (needs an admin certificate)")),
        M::NodeRemove { .. } if !who.is_admin() => {
            Err(denied(who, "remove storage nodes (needs an admin certificate)"))
        }
        M::NodeMaintenance { .. } if !who.is_admin() => {
            Err(denied(who, "put storage nodes in maintenance (needs an admin certificate)"))
        }
        M::AddMetaServer { .. } | M::RemoveMetaServer { .. } if !who.is_admin() => {
            Err(denied(who, "change the metadata membership (needs an admin certificate)"))
        }
        M::Snapshot(op) if op.changes_state() && !who.is_admin() => {
            Err(denied(who, "create, delete or restore snapshots (needs an admin certificate)"))
        }
        M::Fsck { repair: true } if !who.is_admin() => {
            Err(denied(who, "run fsck --repair (needs an admin certificate)"))
        }
        _ => Ok(()),
    }
}

/// A client's new inodes belong to it: the uid/gid of the request are replaced by the
/// identity's.
pub(crate) fn own_inodes(who: &Identity, req: &mut MetaRequest) {
    if who.bypasses_permissions() {
        return;
    }
    match req {
        MetaRequest::Mkdir { uid, gid, .. }
        | MetaRequest::Create { uid, gid, .. }
        | MetaRequest::Symlink { uid, gid, .. } => {
            *uid = who.uid();
            *gid = who.gid();
        }
        _ => {}
    }
}

impl Service {
    /// POSIX permission checks for a client that does not bypass them.
    pub(crate) async fn check_permissions(&self, who: &Identity, req: &MetaRequest) -> FsResult<()> {
        if who.bypasses_permissions() || who.uid() == 0 {
            return Ok(());
        }
        use MetaRequest as M;
        let needs_state = !matches!(
            req,
            M::StatFs
                | M::ClusterStatus
                | M::MetaServerInfo
                | M::MetaStatus
                | M::Fsck { .. }
                | M::GetAttr { .. }
                | M::Readlink { .. }
                | M::ReportBadReplica { .. }
                | M::OpenFile { .. }
                | M::HoldFiles { .. }
                | M::ReleaseFile { .. }
                | M::RenewSession { .. }
                | M::CloseSession { .. }
        );
        if !needs_state {
            return Ok(());
        }
        self.read_barrier().await?;
        let r = self.store.read()?;
        let attr = |ino: InodeId| -> FsResult<Attr> {
            r.inode(ino)?.map(|i| i.attr).ok_or_else(|| FsError::not_found(format!("inode {ino}")))
        };
        // Removing `name` from `parent`: w+x on the directory, and with the sticky bit
        // only the owner of the entry or of the directory.
        let removable = |parent: InodeId, name: &str, what: &str| -> FsResult<()> {
            let p = attr(parent)?;
            require(&p, who, W | X, what)?;
            if p.perm & 0o1000 != 0 && p.uid != who.uid() {
                if let Some(d) = r.dentry(parent, name)? {
                    let victim = attr(d.ino)?;
                    if victim.uid != who.uid() {
                        return Err(denied(
                            who,
                            format_args!("{what}: `{name}` in a sticky directory belongs to uid {}", victim.uid),
                        ));
                    }
                }
            }
            Ok(())
        };
        match req {
            M::Lookup { parent, .. } => require(&attr(*parent)?, who, X, "look up names in this directory"),
            M::ResolvePath { path } => {
                // x on every directory walked through (symlinks are resolved without
                // further checks).
                let mut cur = attr(InodeId::ROOT)?;
                for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
                    if cur.kind != FileKind::Dir || comp == ".." {
                        break;
                    }
                    require(&cur, who, X, "search this directory")?;
                    let Some(d) = r.dentry(cur.ino, comp)? else { break };
                    cur = attr(d.ino)?;
                }
                Ok(())
            }
            M::SetAttr { ino, set } => {
                let a = attr(*ino)?;
                let owner = a.uid == who.uid();
                if set.perm.is_some() && !owner {
                    return Err(denied(who, format_args!("chmod inode {ino} (owned by uid {})", a.uid)));
                }
                if set.uid.is_some_and(|u| u != a.uid) {
                    return Err(denied(who, format_args!("chown inode {ino} (only root may)")));
                }
                if set.gid.is_some_and(|g| g != a.gid) && !(owner && set.gid == Some(who.gid())) {
                    return Err(denied(who, format_args!("chgrp inode {ino} to a group it is not in")));
                }
                if set.size.is_some() {
                    require(&a, who, W, "truncate this file")?;
                }
                if (set.atime.is_some() || set.mtime.is_some()) && !owner {
                    require(&a, who, W, "set the times of this file")?;
                }
                Ok(())
            }
            // Opening an existing file with O_CREAT (not O_EXCL) needs write on the file,
            // not on the directory.
            M::Create { parent, name, exclusive: false, .. } if r.dentry(*parent, name)?.is_some() => {
                require(&attr(*parent)?, who, X, "look up names in this directory")?;
                let d = r.dentry(*parent, name)?.ok_or_else(|| FsError::not_found(name.clone()))?;
                let a = attr(d.ino)?;
                if a.kind == FileKind::File {
                    require(&a, who, W, "open this file for writing")
                } else {
                    Ok(())
                }
            }
            M::Mkdir { parent, .. } | M::Create { parent, .. } | M::Symlink { parent, .. } => {
                require(&attr(*parent)?, who, W | X, "create entries in this directory")
            }
            M::Link { new_parent, .. } => require(&attr(*new_parent)?, who, W | X, "create entries in this directory"),
            M::Unlink { parent, name } | M::Rmdir { parent, name } => {
                removable(*parent, name, "remove entries from this directory")
            }
            M::Rename { parent, name, new_parent, new_name, .. } => {
                removable(*parent, name, "move entries out of this directory")?;
                removable(*new_parent, new_name, "move entries into this directory")
            }
            M::ReadDir { ino, attrs: false, .. } => require(&attr(*ino)?, who, R, "list this directory"),
            // The entries' attributes are what a lookup in the directory answers.
            M::ReadDir { ino, attrs: true, .. } => {
                require(&attr(*ino)?, who, R | X, "list this directory with attributes")
            }
            M::AllocateBlocks { ino, .. } | M::CommitWrite { ino, .. } => {
                require(&attr(*ino)?, who, W, "write this file")
            }
            M::GetLayout { ino, .. } | M::OpenRead { ino, .. } => require(&attr(*ino)?, who, R, "read this file"),
            M::GetXattr { ino, .. } | M::ListXattr { ino } => {
                require(&attr(*ino)?, who, R, "read extended attributes of this inode")
            }
            M::SetXattr { ino, .. } | M::RemoveXattr { ino, .. } => {
                require(&attr(*ino)?, who, W, "change extended attributes of this inode")
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distfs_proto::Role;
    use distfs_types::Timestamp;

    fn attr(perm: u32, uid: u32, gid: u32) -> Attr {
        Attr {
            ino: InodeId(5),
            kind: FileKind::File,
            perm,
            uid,
            gid,
            size: 0,
            nlink: 1,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            version: 0,
        }
    }

    fn client(uid: u32, gid: u32) -> Identity {
        Identity { name: "c".into(), role: Role::Client, uid: Some(uid), gid: Some(gid), authenticated: true }
    }

    #[test]
    fn mode_bits_by_owner_group_other() {
        let a = attr(0o640, 1000, 100);
        assert!(may(&a, &client(1000, 1), R | W));
        assert!(may(&a, &client(2000, 100), R));
        assert!(!may(&a, &client(2000, 100), W));
        assert!(!may(&a, &client(2000, 200), R));
        assert!(may(&a, &client(0, 0), R | W | X), "root bypasses");
        assert!(may(&a, &Identity::node("n"), W));
        assert!(may(&a, &Identity::unauthenticated(), W));
    }

    #[test]
    fn roles_gate_admin_and_internal_requests() {
        let c = client(1000, 1000);
        let admin = Identity { role: Role::Admin, ..c.clone() };
        let drain = MetaRequest::NodeDrain { node: distfs_types::NodeId(1), dry_run: false };
        assert!(matches!(check_role(&c, &drain), Err(FsError::PermissionDenied { .. })));
        assert!(check_role(&admin, &drain).is_ok());
        assert!(check_role(&Identity::node("n"), &drain).is_err());
        let hb = MetaRequest::BlockReport { node: distfs_types::NodeId(1), blocks: vec![], first: true, last: true };
        assert!(check_role(&c, &hb).is_err() && check_role(&admin, &hb).is_err());
        assert!(check_role(&Identity::node("n"), &hb).is_ok());
        assert!(check_role(&Identity::unauthenticated(), &drain).is_ok());
        let mut mk = MetaRequest::Mkdir { parent: InodeId::ROOT, name: "d".into(), perm: 0o755, uid: 0, gid: 0 };
        own_inodes(&c, &mut mk);
        assert!(matches!(mk, MetaRequest::Mkdir { uid: 1000, gid: 1000, .. }));
    }
}
