//! Extended attributes: set (with `XATTR_CREATE`/`XATTR_REPLACE`), remove, and removal
//! of all of an inode's attributes when the inode is freed. Limits are Linux's: names of
//! 1..=255 bytes, values up to 64 KiB; plus at most 1 MiB of names and values per inode.

use super::namespace::get_inode;
use super::*;
use distfs_proto::{XATTR_NAME_MAX, XATTR_SIZE_MAX, XATTR_TOTAL_MAX};
use redb::ReadableTable;

/// Checks an attribute name (also used by the read handlers).
pub(crate) fn validate_name(name: &str) -> FsResult<()> {
    if name.is_empty() || name.len() > XATTR_NAME_MAX {
        return Err(FsError::OutOfRange {
            reason: format!("extended attribute names are 1..={XATTR_NAME_MAX} bytes, got {}", name.len()),
        });
    }
    if name.contains('\0') {
        return Err(FsError::invalid("extended attribute name contains NUL"));
    }
    Ok(())
}

/// Stamps the inode's ctime (an attribute change).
fn touch(txn: &WriteTransaction, ino: InodeId, now: Timestamp) -> FsResult<()> {
    let mut i = get_inode(txn, ino)?;
    i.attr.ctime = now;
    i.attr.version += 1;
    put_inode(txn, &i)
}

pub(super) fn set(
    txn: &WriteTransaction,
    ino: InodeId,
    name: &str,
    value: &[u8],
    mode: XattrMode,
    now: Timestamp,
) -> FsResult<CommandResult> {
    validate_name(name)?;
    if value.len() > XATTR_SIZE_MAX {
        return Err(FsError::TooBig {
            what: format!("value of extended attribute `{name}`"),
            len: value.len(),
            max: XATTR_SIZE_MAX,
        });
    }
    get_inode(txn, ino)?;
    let existing = txn.xattr_names(ino)?;
    let old = existing.iter().find(|(n, _)| n == name).map(|(_, l)| *l);
    match (mode, old) {
        (XattrMode::Create, Some(_)) => {
            return Err(FsError::AlreadyExists { what: format!("extended attribute `{name}`") })
        }
        (XattrMode::Replace, None) => return Err(FsError::NoData { what: format!("`{name}` of inode {ino}") }),
        _ => {}
    }
    let total: usize = existing.iter().filter(|(n, _)| n != name).map(|(n, l)| n.len() + l).sum();
    if total + name.len() + value.len() > XATTR_TOTAL_MAX {
        return Err(FsError::NoSpace {
            reason: format!("extended attributes of inode {ino} would exceed {XATTR_TOTAL_MAX} bytes"),
        });
    }
    txn.open_table(XATTRS).map_err(db_err)?.insert((ino.0, name), value).map_err(db_err)?;
    touch(txn, ino, now)?;
    Ok(CommandResult::Done)
}

pub(super) fn remove(txn: &WriteTransaction, ino: InodeId, name: &str, now: Timestamp) -> FsResult<CommandResult> {
    validate_name(name)?;
    get_inode(txn, ino)?;
    let gone = txn.open_table(XATTRS).map_err(db_err)?.remove((ino.0, name)).map_err(db_err)?.is_some();
    if !gone {
        return Err(FsError::NoData { what: format!("`{name}` of inode {ino}") });
    }
    touch(txn, ino, now)?;
    Ok(CommandResult::Done)
}

/// Drops every extended attribute of `ino` (the inode is being freed).
pub(crate) fn remove_all(txn: &WriteTransaction, ino: InodeId) -> FsResult<()> {
    let mut t = txn.open_table(XATTRS).map_err(db_err)?;
    let names: Vec<String> = t
        .range((ino.0, "")..(ino.0.saturating_add(1), ""))
        .map_err(db_err)?
        .map(|item| item.map(|(k, _)| k.value().1.to_string()).map_err(db_err))
        .collect::<FsResult<_>>()?;
    for n in names {
        t.remove((ino.0, n.as_str())).map_err(db_err)?;
    }
    Ok(())
}
