//! Namespace calls: thin typed wrappers over `MetaRequest`, plus path helpers for the
//! CLI (`resolve`, `mkdir_p`, `split`).

use crate::error::{ClientError, Result};
use crate::Client;
use distfs_proto::{ClusterStatus, MetaRequest, MetaResponse, RenameMode, StatFs};
use distfs_types::{Attr, DirEntry, FsError, InodeId, SetAttr};

/// Splits an absolute path into its parent path and final name. `None` for the root.
pub fn split(path: &str) -> Result<Option<(String, String)>> {
    let norm = normalize(path)?;
    if norm == "/" {
        return Ok(None);
    }
    let idx = norm.rfind('/').expect("normalized paths start with '/'");
    let parent = if idx == 0 { "/".to_string() } else { norm[..idx].to_string() };
    Ok(Some((parent, norm[idx + 1..].to_string())))
}

/// Makes a path canonical: absolute, no empty or `.` components, `..` resolved lexically.
pub fn normalize(path: &str) -> Result<String> {
    if !path.starts_with('/') {
        return Err(
            FsError::invalid(format!("`{path}` is not an absolute path in the file system (start it with /)")).into()
        );
    }
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

macro_rules! expect_resp {
    ($resp:expr, $pat:pat => $out:expr, $name:literal) => {
        match $resp {
            $pat => Ok($out),
            _ => Err($crate::ClientError::Unexpected { request: $name }),
        }
    };
}

impl Client {
    /// The answer to a namespace change: the inode it made (or linked), if any; the
    /// directories it touched go to `dirs_seen`.
    fn changed(&self, r: MetaResponse, request: &'static str) -> Result<Option<Attr>> {
        match r {
            MetaResponse::Changed { attr, dirs } => {
                if let Some(f) = &self.dirs_seen {
                    f(&dirs);
                }
                Ok(attr)
            }
            _ => Err(ClientError::Unexpected { request }),
        }
    }

    /// `changed` for a change that makes an inode.
    fn made(&self, r: MetaResponse, request: &'static str) -> Result<Attr> {
        self.changed(r, request)?.ok_or(ClientError::Unexpected { request })
    }

    /// `changed` for a change that makes nothing (a removal, a rename).
    fn removed(&self, r: MetaResponse, request: &'static str) -> Result<()> {
        match self.changed(r, request)? {
            None => Ok(()),
            Some(_) => Err(ClientError::Unexpected { request }),
        }
    }

    /// Attributes of the inode at `path` (a final symlink is not followed).
    pub async fn resolve(&self, path: &str) -> Result<Attr> {
        let path = normalize(path)?;
        let r = self.meta_call(MetaRequest::ResolvePath { path }).await?;
        expect_resp!(r, MetaResponse::Attr(a) => a, "ResolvePath")
    }

    /// Like `resolve`, but `Ok(None)` when nothing is there.
    pub async fn try_resolve(&self, path: &str) -> Result<Option<Attr>> {
        match self.resolve(path).await {
            Ok(a) => Ok(Some(a)),
            Err(ClientError::Fs(FsError::NotFound { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn lookup(&self, parent: InodeId, name: &str) -> Result<Attr> {
        let r = self.meta_call(MetaRequest::Lookup { parent, name: name.to_string() }).await?;
        expect_resp!(r, MetaResponse::Attr(a) => a, "Lookup")
    }

    pub async fn getattr(&self, ino: InodeId) -> Result<Attr> {
        let r = self.meta_call(MetaRequest::GetAttr { ino }).await?;
        expect_resp!(r, MetaResponse::Attr(a) => a, "GetAttr")
    }

    pub async fn setattr(&self, ino: InodeId, set: SetAttr) -> Result<Attr> {
        let r = self.meta_call(MetaRequest::SetAttr { ino, set }).await?;
        expect_resp!(r, MetaResponse::Attr(a) => a, "SetAttr")
    }

    /// Truncates or extends a file to `size` bytes.
    pub async fn truncate(&self, ino: InodeId, size: u64) -> Result<Attr> {
        self.setattr(ino, SetAttr { size: Some(size), ..Default::default() }).await
    }

    pub async fn mkdir(&self, parent: InodeId, name: &str, perm: u32) -> Result<Attr> {
        let (uid, gid) = ids();
        let r = self.meta_call(MetaRequest::Mkdir { parent, name: name.to_string(), perm, uid, gid }).await?;
        self.made(r, "Mkdir")
    }

    /// Creates every missing directory on `path`; an existing directory is fine.
    pub async fn mkdir_p(&self, path: &str, perm: u32) -> Result<Attr> {
        let path = normalize(path)?;
        let mut cur = self.getattr(InodeId::ROOT).await?;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            cur = match self.lookup(cur.ino, part).await {
                Ok(a) => a,
                Err(ClientError::Fs(FsError::NotFound { .. })) => {
                    match self.mkdir(cur.ino, part, perm).await {
                        Ok(a) => a,
                        // Lost a race with another creator: use theirs.
                        Err(ClientError::Fs(FsError::AlreadyExists { .. })) => self.lookup(cur.ino, part).await?,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            if cur.kind != distfs_types::FileKind::Dir {
                return Err(FsError::NotADirectory { what: part.to_string() }.into());
            }
        }
        Ok(cur)
    }

    pub async fn create(&self, parent: InodeId, name: &str, perm: u32, exclusive: bool) -> Result<Attr> {
        self.create_open(parent, name, perm, exclusive, None).await
    }

    /// `create`, and with `session` the file is held open by that session in the same
    /// metadata write (see `open_file`).
    pub async fn create_open(
        &self,
        parent: InodeId,
        name: &str,
        perm: u32,
        exclusive: bool,
        session: Option<u64>,
    ) -> Result<Attr> {
        let (uid, gid) = ids();
        let req =
            MetaRequest::Create { parent, name: name.to_string(), perm, uid, gid, exclusive, open_session: session };
        let r = self.meta_call(req).await?;
        self.made(r, "Create")
    }

    pub async fn symlink(&self, parent: InodeId, name: &str, target: &str) -> Result<Attr> {
        let (uid, gid) = ids();
        let req = MetaRequest::Symlink { parent, name: name.to_string(), target: target.to_string(), uid, gid };
        let r = self.meta_call(req).await?;
        self.made(r, "Symlink")
    }

    pub async fn readlink(&self, ino: InodeId) -> Result<String> {
        let r = self.meta_call(MetaRequest::Readlink { ino }).await?;
        expect_resp!(r, MetaResponse::Target(t) => t, "Readlink")
    }

    pub async fn link(&self, ino: InodeId, new_parent: InodeId, new_name: &str) -> Result<Attr> {
        let r = self.meta_call(MetaRequest::Link { ino, new_parent, new_name: new_name.to_string() }).await?;
        self.made(r, "Link")
    }

    pub async fn unlink(&self, parent: InodeId, name: &str) -> Result<()> {
        let r = self.meta_call(MetaRequest::Unlink { parent, name: name.to_string() }).await?;
        self.removed(r, "Unlink")
    }

    pub async fn rmdir(&self, parent: InodeId, name: &str) -> Result<()> {
        let r = self.meta_call(MetaRequest::Rmdir { parent, name: name.to_string() }).await?;
        self.removed(r, "Rmdir")
    }

    pub async fn rename(
        &self,
        parent: InodeId,
        name: &str,
        new_parent: InodeId,
        new_name: &str,
        mode: RenameMode,
    ) -> Result<()> {
        let req =
            MetaRequest::Rename { parent, name: name.to_string(), new_parent, new_name: new_name.to_string(), mode };
        let r = self.meta_call(req).await?;
        self.removed(r, "Rename")
    }

    /// One page of a directory listing: entries after `after`, and whether more follow.
    pub async fn readdir_page(&self, ino: InodeId, after: Option<String>, limit: u32) -> Result<(Vec<DirEntry>, bool)> {
        let r = self.meta_call(MetaRequest::ReadDir { ino, after, limit, attrs: false }).await?;
        expect_resp!(r, MetaResponse::Entries { entries, more, .. } => (entries, more), "ReadDir")
    }

    /// `readdir_page` with each entry's attributes and whether it has extended attributes.
    pub async fn readdir_plus_page(
        &self,
        ino: InodeId,
        after: Option<String>,
        limit: u32,
    ) -> Result<(Vec<(DirEntry, Attr, bool)>, bool)> {
        let r = self.meta_call(MetaRequest::ReadDir { ino, after, limit, attrs: true }).await?;
        match r {
            MetaResponse::Entries { entries, more, attrs, has_xattrs }
                if attrs.len() == entries.len() && has_xattrs.len() == entries.len() =>
            {
                Ok((entries.into_iter().zip(attrs).zip(has_xattrs).map(|((e, a), x)| (e, a, x)).collect(), more))
            }
            _ => Err(ClientError::Unexpected { request: "ReadDir" }),
        }
    }

    /// A whole directory listing, fetched page by page.
    pub async fn readdir(&self, ino: InodeId) -> Result<Vec<DirEntry>> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let (page, more) = self.readdir_page(ino, after.take(), 1000).await?;
            after = page.last().map(|e| e.name.clone());
            all.extend(page);
            if !more || after.is_none() {
                return Ok(all);
            }
        }
    }

    pub async fn statfs(&self) -> Result<StatFs> {
        let r = self.meta_call(MetaRequest::StatFs).await?;
        expect_resp!(r, MetaResponse::StatFs(s) => s, "StatFs")
    }

    /// One administrative metadata call (node membership, fsck), answered as it comes.
    pub async fn admin(&self, req: MetaRequest) -> Result<MetaResponse> {
        self.meta_call(req).await
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        let r = self.meta_call(MetaRequest::ClusterStatus).await?;
        expect_resp!(r, MetaResponse::Status(s) => s, "ClusterStatus")
    }
}

pub(crate) use expect_resp;

/// The caller's uid and gid, recorded as the owner of what it creates.
fn ids() -> (u32, u32) {
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_and_split() {
        assert_eq!(normalize("/a//b/./c/../d/").unwrap(), "/a/b/d");
        assert_eq!(normalize("/").unwrap(), "/");
        assert!(normalize("a/b").is_err());
        assert_eq!(split("/a/b").unwrap(), Some(("/a".into(), "b".into())));
        assert_eq!(split("/a").unwrap(), Some(("/".into(), "a".into())));
        assert_eq!(split("/").unwrap(), None);
    }
}
