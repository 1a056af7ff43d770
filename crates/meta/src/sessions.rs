//! Client sessions and extended attributes at the service edge: the handlers of
//! `OpenFile`/`ReleaseFile`/`RenewSession`/`CloseSession` and of the xattr requests, and
//! the leader's expiry worker, which proposes `ExpireSessions` with its own clock's `now`
//! when some session's lease has run out (apply itself never reads a clock).

use crate::service::Service;
use crate::state::{open_files, Command, CommandResult, Reader};
use distfs_proto::{MetaRequest, MetaResponse, MAX_HOLD_FILES, SESSION_LEASE};
use distfs_types::{Attr, FsError, FsResult, InodeId, Timestamp};
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
    /// Registers that `session` holds `ino` open, then reads what the open answers from
    /// the state after a read barrier (`None`: the inode is gone, `StaleInode`). Registered
    /// first, then checked: an inode freed meanwhile is seen gone. A failed open is
    /// released again.
    async fn hold_then_read<T>(
        &self,
        ino: InodeId,
        session: u64,
        now: Timestamp,
        read: impl FnOnce(&redb::ReadTransaction) -> FsResult<Option<T>>,
    ) -> FsResult<T> {
        self.ensure_session(session, now).await?;
        self.opens().hold(ino, session)?;
        let found = async {
            self.read_barrier().await?;
            read(&self.store.read()?)?.ok_or(FsError::StaleInode { ino })
        }
        .await;
        if found.is_err() {
            self.opens().release(ino, session);
        }
        found
    }

    pub(crate) async fn handle_sessions_xattrs(&self, req: MetaRequest, now: Timestamp) -> FsResult<MetaResponse> {
        let expires = plus(now, SESSION_LEASE);
        match req {
            MetaRequest::OpenFile { ino, session } => {
                let i = self.hold_then_read(ino, session, now, |r| r.inode(ino)).await?;
                Ok(MetaResponse::Attr(i.attr))
            }
            MetaRequest::OpenRead { ino, session, first_chunk, last_chunk } => {
                let l = self
                    .hold_then_read(ino, session, now, |r| {
                        r.inode(ino)?.map(|i| self.layout_of(r, i.attr, first_chunk, last_chunk)).transpose()
                    })
                    .await?;
                Ok(MetaResponse::Layout(l))
            }
            MetaRequest::HoldFiles { session, inos, last } => {
                if inos.len() > MAX_HOLD_FILES {
                    return Err(FsError::invalid(format!(
                        "{} inodes in one HoldFiles (at most {MAX_HOLD_FILES})",
                        inos.len()
                    )));
                }
                self.ensure_session(session, now).await?;
                let mut gone = self.opens().hold_many(session, &inos, last);
                self.read_barrier().await?;
                let r = self.store.read()?;
                for ino in inos {
                    if !gone.contains(&ino) && r.inode(ino)?.is_none() {
                        self.opens().release(ino, session);
                        gone.push(ino);
                    }
                }
                Ok(MetaResponse::Held { gone })
            }
            MetaRequest::ReleaseFile { ino, session } => {
                self.leader_here()?;
                self.opens().release(ino, session);
                // Closing a file drops its owner's POSIX locks: a log write only then.
                let locked =
                    crate::state::locks::locks_of(&self.store.read()?, ino)?.iter().any(|l| l.session == session);
                if locked {
                    self.write(Command::ReleaseFile { ino, session }).await?;
                }
                Ok(MetaResponse::Done)
            }
            MetaRequest::RenewSession { session } => {
                self.write(Command::RenewSession { session, expires }).await?;
                Ok(MetaResponse::Renewed { resync: self.opens().needs_resync(session) })
            }
            MetaRequest::CloseSession { session } => {
                self.write(Command::CloseSession { session }).await?;
                self.opens().close(session);
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

    /// Starts the session's lease if this leader's state does not know it yet (its first
    /// open, or its first after it expired): one log write per session, not per open.
    async fn ensure_session(&self, session: u64, now: Timestamp) -> FsResult<()> {
        if self.store.read()?.session(session)?.is_none() {
            self.write_unkeyed(Command::TouchSession { session, expires: plus(now, SESSION_LEASE) }).await?;
        }
        Ok(())
    }

    /// Creates a file held open by `session`: the create is one log write, the open is
    /// registered in the table once it applied. The ticket makes the orphan sweeper wait
    /// for that registration (the inode could lose its name in between).
    pub(crate) async fn create_open(&self, create: Command, session: u64, now: Timestamp) -> FsResult<Attr> {
        self.ensure_session(session, now).await?;
        let ticket = CreateTicket { service: self, ticket: self.opens().begin_create() };
        let attr = match self.write(create).await? {
            CommandResult::Attr(a) => a,
            other => return Err(FsError::internal(format!("unexpected apply result {other:?}"))),
        };
        self.opens().hold(attr.ino, session)?;
        drop(ticket);
        Ok(attr)
    }
}

/// A create-and-open in flight; its end is noted however the call ends (also when the
/// request is dropped with its connection).
struct CreateTicket<'a> {
    service: &'a Service,
    ticket: u64,
}

impl Drop for CreateTicket<'_> {
    fn drop(&mut self) {
        self.service.opens().end_create(self.ticket);
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
        if !service.is_leader() {
            continue;
        }
        let now = Timestamp::now();
        let due = service.store.read().and_then(|r| open_files::expired(&r, now));
        match due {
            Ok(d) if d.is_empty() => {}
            Ok(due) => match service.write(Command::ExpireSessions { now }).await {
                Ok(_) => {
                    let mut opens = service.opens();
                    for session in due {
                        opens.close(session);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not expire client sessions; will retry"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot read client sessions"),
        }
    }
}

/// How often the leader looks for orphans to free.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Most orphans freed by one `FreeOrphans` entry.
const SWEEP_BATCH: usize = 1000;
/// Longest wait for the create-and-open calls in flight at a sweep.
const SWEEP_CREATE_WAIT: Duration = Duration::from_secs(30);

/// While this server leads: frees the orphans (unlinked inodes) no session holds open,
/// `SWEEP_BATCH` per log entry (the rules are in `crate::opens`).
pub(crate) async fn sweep_orphans_when_leader(service: Arc<Service>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        if !service.is_leader() {
            continue;
        }
        let read = service.store.read().and_then(|r| Ok((r.orphans(SWEEP_BATCH)?, r.sessions()?)));
        let (orphans, live) = match read {
            Ok((o, _)) if o.is_empty() => continue,
            Ok((o, s)) => (o, s.into_iter().map(|(id, _)| id).collect::<Vec<u64>>()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the orphan table");
                continue;
            }
        };
        // Every create-and-open that may have returned one of these inodes started
        // before the read above: wait until their opens are registered.
        let mark = service.opens().last_ticket();
        let waited = tokio::time::timeout(SWEEP_CREATE_WAIT, async {
            while service.opens().creates_pending_up_to(mark) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!("creates in flight for {SWEEP_CREATE_WAIT:?}; orphans are freed at the next sweep");
            continue;
        }
        let (term, claimed) = {
            let mut opens = service.opens();
            (service.raft.metrics().borrow().current_term, opens.claim(&orphans, service.clock.now(), &live))
        };
        if claimed.is_empty() {
            continue;
        }
        let n = claimed.len();
        match service.write(Command::FreeOrphans { term, inos: claimed.clone() }).await {
            Ok(_) => tracing::debug!(orphans = n, "freed unlinked files nobody holds open"),
            Err(e) => tracing::warn!(error = %e, orphans = n, "could not free orphans; will retry"),
        }
        service.opens().unclaim(&claimed);
    }
}
