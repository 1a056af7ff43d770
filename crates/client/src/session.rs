//! Open-file registration of a client session (so an unlinked file keeps its data while
//! this client holds it open) and extended attributes: thin typed wrappers over
//! `MetaRequest`.

use crate::error::Result;
use crate::ns::expect_resp;
use crate::Client;
use distfs_proto::{MetaRequest, MetaResponse, XattrMode};
use distfs_types::{Attr, InodeId, LockInfo, LockKind};

/// A new random client session id.
pub fn new_session_id() -> u64 {
    rand::random::<u64>().max(1)
}

impl Client {
    /// Registers that `session` holds `ino` open; answers its current attributes.
    pub async fn open_file(&self, ino: InodeId, session: u64) -> Result<Attr> {
        let r = self.meta_call(MetaRequest::OpenFile { ino, session }).await?;
        expect_resp!(r, MetaResponse::Attr(a) => a, "OpenFile")
    }

    /// Sets or clears (`kind: None`) an advisory lock of `(session, owner)` over bytes
    /// `[start, end]`; `LockConflict` when another owner holds a conflicting one.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_lock(
        &self,
        ino: InodeId,
        session: u64,
        owner: u64,
        start: u64,
        end: u64,
        kind: Option<LockKind>,
        pid: u32,
    ) -> Result<()> {
        let r = self.meta_call(MetaRequest::SetLock { ino, session, owner, start, end, kind, pid }).await?;
        expect_resp!(r, MetaResponse::Done => (), "SetLock")
    }

    /// The first lock of another owner that a `kind` lock over `[start, end]` would
    /// conflict with.
    pub async fn get_lock(
        &self,
        ino: InodeId,
        session: u64,
        owner: u64,
        start: u64,
        end: u64,
        kind: LockKind,
    ) -> Result<Option<LockInfo>> {
        let r = self.meta_call(MetaRequest::GetLock { ino, session, owner, start, end, kind }).await?;
        expect_resp!(r, MetaResponse::Lock(l) => l, "GetLock")
    }

    pub async fn release_file(&self, ino: InodeId, session: u64) -> Result<()> {
        let r = self.meta_call(MetaRequest::ReleaseFile { ino, session }).await?;
        expect_resp!(r, MetaResponse::Done => (), "ReleaseFile")
    }

    /// Extends the session's lease; `NotFound` when it already expired. `true`: the
    /// metadata leader asks for every inode the session holds open (`hold_files`).
    pub async fn renew_session(&self, session: u64) -> Result<bool> {
        let r = self.meta_call(MetaRequest::RenewSession { session }).await?;
        expect_resp!(r, MetaResponse::Renewed { resync } => resync, "RenewSession")
    }

    /// Registers every inode in `held` as open by `session` (with the leader that asked
    /// for it), in pages; answers the inodes that no longer exist.
    pub async fn hold_files(&self, session: u64, held: &[InodeId]) -> Result<Vec<InodeId>> {
        let mut gone = Vec::new();
        let mut pages = held.chunks(distfs_proto::MAX_HOLD_FILES).peekable();
        if pages.peek().is_none() {
            return self.hold_page(session, &[], true).await;
        }
        while let Some(page) = pages.next() {
            gone.extend(self.hold_page(session, page, pages.peek().is_none()).await?);
        }
        Ok(gone)
    }

    async fn hold_page(&self, session: u64, inos: &[InodeId], last: bool) -> Result<Vec<InodeId>> {
        let r = self.meta_call(MetaRequest::HoldFiles { session, inos: inos.to_vec(), last }).await?;
        expect_resp!(r, MetaResponse::Held { gone } => gone, "HoldFiles")
    }

    pub async fn close_session(&self, session: u64) -> Result<()> {
        let r = self.meta_call(MetaRequest::CloseSession { session }).await?;
        expect_resp!(r, MetaResponse::Done => (), "CloseSession")
    }

    pub async fn getxattr(&self, ino: InodeId, name: &str) -> Result<Vec<u8>> {
        let r = self.meta_call(MetaRequest::GetXattr { ino, name: name.to_string() }).await?;
        expect_resp!(r, MetaResponse::Xattr { value } => value, "GetXattr")
    }

    pub async fn listxattr(&self, ino: InodeId) -> Result<Vec<String>> {
        let r = self.meta_call(MetaRequest::ListXattr { ino }).await?;
        expect_resp!(r, MetaResponse::XattrNames { names } => names, "ListXattr")
    }

    pub async fn setxattr(&self, ino: InodeId, name: &str, value: &[u8], mode: XattrMode) -> Result<()> {
        let req = MetaRequest::SetXattr { ino, name: name.to_string(), value: value.to_vec(), mode };
        let r = self.meta_call(req).await?;
        expect_resp!(r, MetaResponse::Done => (), "SetXattr")
    }

    pub async fn removexattr(&self, ino: InodeId, name: &str) -> Result<()> {
        let r = self.meta_call(MetaRequest::RemoveXattr { ino, name: name.to_string() }).await?;
        expect_resp!(r, MetaResponse::Done => (), "RemoveXattr")
    }
}
