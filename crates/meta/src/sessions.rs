//! Client sessions and extended attributes at the service edge: the handlers of
//! `OpenFile`/`ReleaseFile`/`RenewSession`/`CloseSession` and of the xattr requests, and
//! the leader's expiry worker, which proposes `ExpireSessions` with its own clock's `now`
//! when some session's lease has run out (apply itself never reads a clock).

use crate::service::Service;
use crate::state::{open_files, Command, CommandResult, Reader};
use distfs_proto::{MetaRequest, MetaResponse, SESSION_LEASE};
use distfs_types::{FsError, FsResult, InodeId, Timestamp};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the leader looks for expired sessions.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

pub(crate) fn plus(t: Timestamp, d: Duration) -> Timestamp {
    let nanos = t.nanos as u64 + d.subsec_nanos() as u64;
    Timestamp {
        secs: t.secs + d.as_secs() as i64 + (nanos / 1_000_000_000) as i64,
        nanos: (nanos % 1_000_000_000) as u32,
    }
}

impl Service {
    pub(crate) async fn handle_sessions_xattrs(&self, req: MetaRequest, now: Timestamp) -> FsResult<MetaResponse> {
        let expires = plus(now, SESSION_LEASE);
        match req {
            MetaRequest::OpenFile { ino, session } => {
                match self.write(Command::OpenFile { ino, session, expires }).await? {
                    CommandResult::Attr(a) => Ok(MetaResponse::Attr(a)),
                    other => Err(FsError::internal(format!("unexpected apply result {other:?}"))),
                }
            }
            MetaRequest::ReleaseFile { ino, session } => {
                self.write(Command::ReleaseFile { ino, session }).await?;
                Ok(MetaResponse::Done)
            }
            MetaRequest::RenewSession { session } => {
                self.write(Command::RenewSession { session, expires }).await?;
                Ok(MetaResponse::Done)
            }
            MetaRequest::CloseSession { session } => {
                self.write(Command::CloseSession { session }).await?;
                Ok(MetaResponse::Done)
            }
            MetaRequest::GetXattr { ino, name } => {
                crate::state::validate_xattr_name(&name)?;
                self.read_barrier().await?;
                let r = self.store.read()?;
                exists(&r, ino)?;
                match r.xattr(ino, &name)? {
                    Some(value) => Ok(MetaResponse::Xattr { value }),
                    None => Err(FsError::NoData { what: format!("`{name}` of inode {ino}") }),
                }
            }
            MetaRequest::ListXattr { ino } => {
                self.read_barrier().await?;
                let r = self.store.read()?;
                exists(&r, ino)?;
                let names = r.xattr_names(ino)?.into_iter().map(|(n, _)| n).collect();
                Ok(MetaResponse::XattrNames { names })
            }
            MetaRequest::SetXattr { ino, name, value, mode } => {
                self.write(Command::SetXattr { ino, name, value, mode, now }).await?;
                Ok(MetaResponse::Done)
            }
            MetaRequest::RemoveXattr { ino, name } => {
                self.write(Command::RemoveXattr { ino, name, now }).await?;
                Ok(MetaResponse::Done)
            }
            MetaRequest::SetLock { ino, session, owner, start, end, kind, pid } => {
                let req = crate::locks::LockReq { session, owner, start, end, kind, pid };
                self.write(Command::SetLock { ino, req }).await?;
                Ok(MetaResponse::Done)
            }
            MetaRequest::GetLock { ino, session, owner, start, end, kind } => {
                self.read_barrier().await?;
                let r = self.store.read()?;
                exists(&r, ino)?;
                let locks = crate::state::locks::locks_of(&r, ino)?;
                let c = crate::locks::conflict(&locks, session, owner, start, end, kind);
                Ok(MetaResponse::Lock(c.map(|l| l.info())))
            }
            other => Err(FsError::internal(format!("{other:?} is not a session or xattr request"))),
        }
    }
}

fn exists(r: &impl Reader, ino: InodeId) -> FsResult<()> {
    r.inode(ino)?.map(|_| ()).ok_or_else(|| FsError::not_found(format!("inode {ino}")))
}

/// While this server leads: every `EXPIRY_CHECK`, ends the sessions whose lease ran out.
pub(crate) async fn expire_sessions_when_leader(service: Arc<Service>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EXPIRY_CHECK) => {}
        }
        if service.raft.metrics().borrow().current_leader != Some(service.id) {
            continue;
        }
        let now = Timestamp::now();
        let due = service.store.read().and_then(|r| open_files::expired(&r, now));
        match due {
            Ok(d) if d.is_empty() => {}
            Ok(_) => {
                if let Err(e) = service.write(Command::ExpireSessions { now }).await {
                    tracing::warn!(error = %e, "could not expire client sessions; will retry");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read client sessions"),
        }
    }
}
