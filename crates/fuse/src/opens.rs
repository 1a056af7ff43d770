//! This mount's client session: it registers each inode it holds open with the metadata
//! service (once per inode, however many handles), so a file unlinked or renamed over
//! while open keeps its data until the last handle closes, here or on any other mount.
//! A named background task renews the session's lease; at unmount the session is closed.
//! A mount that dies without closing lets its lease expire, and its opens are released.

use crate::data::gone_is_stale;
use crate::state::Inner;
use distfs_client::{ClientError, Result};
use distfs_proto::SESSION_LEASE;
use distfs_types::{Attr, FsError, InodeId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use tracing::{debug, info, warn};

/// The session of one mount and the inodes it holds open (with their handle counts).
pub(crate) struct Session {
    pub id: u64,
    /// Held across the metadata call of a first open or an immediate release, so an open
    /// and a release of the same inode never overtake each other.
    held: tokio::sync::Mutex<Held>,
    /// Wakes the releaser: a release was queued.
    queued: Arc<tokio::sync::Notify>,
    /// The releaser finished a batch (a first open waiting on it may go on).
    released: tokio::sync::Notify,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Inodes this mount has taken locks on (unlocks elsewhere need no metadata call).
    locked: std::sync::Mutex<std::collections::HashSet<InodeId>>,
}

/// What this mount holds open at the metadata.
#[derive(Default)]
struct Held {
    /// Inodes with open handles, and how many.
    count: HashMap<InodeId, u32>,
    /// Last handle closed, release not sent yet: a new open of the inode takes the
    /// registration back without a metadata call.
    pending: HashSet<InodeId>,
    /// Releases the releaser is sending now: a first open of one of these waits for the
    /// batch, so the release cannot undo the new open's registration.
    in_flight: HashSet<InodeId>,
}

impl Session {
    pub fn new() -> Session {
        Session {
            id: distfs_client::session::new_session_id(),
            held: tokio::sync::Mutex::default(),
            queued: Arc::new(tokio::sync::Notify::new()),
            released: tokio::sync::Notify::new(),
            tasks: std::sync::Mutex::new(Vec::new()),
            locked: std::sync::Mutex::default(),
        }
    }

    pub fn has_locks(&self, ino: InodeId) -> bool {
        self.locked.lock().expect("locked set").contains(&ino)
    }

    pub fn note_locks(&self, ino: InodeId) {
        self.locked.lock().expect("locked set").insert(ino);
    }
}

impl Inner {
    /// Notes one more handle of `ino`; the first registers the open with the metadata
    /// and answers the inode's attributes as of then. An inode whose release is still
    /// queued is held again without a metadata call (the caller reads fresh attributes
    /// anyway: `None`).
    pub async fn hold(&self, ino: InodeId) -> Result<Option<Attr>> {
        loop {
            let mut held = self.session.held.lock().await;
            if let Some(n) = held.count.get_mut(&ino) {
                *n += 1;
                return Ok(None);
            }
            if held.pending.remove(&ino) {
                held.count.insert(ino, 1);
                return Ok(None);
            }
            if held.in_flight.contains(&ino) {
                let done = self.session.released.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                drop(held);
                done.await;
                continue;
            }
            let attr = self.client.open_file(ino, self.session.id).await.map_err(|e| gone_is_stale(ino, e))?;
            held.count.insert(ino, 1);
            return Ok(Some(attr));
        }
    }

    /// Creates (or, without `O_EXCL`, opens an existing) file and holds it: one metadata
    /// write registers the open together with the create. The held map stays locked
    /// across the call, as in `hold`, so a release of the same inode cannot overtake it.
    pub async fn create_held(&self, parent: InodeId, name: &str, perm: u32, exclusive: bool) -> Result<Attr> {
        let mut held = self.session.held.lock().await;
        let attr = self.client.create_open(parent, name, perm, exclusive, Some(self.session.id)).await?;
        held.pending.remove(&attr.ino);
        *held.count.entry(attr.ino).or_insert(0) += 1;
        if held.in_flight.contains(&attr.ino) {
            // An existing file whose queued release is on its way: it may land after the
            // create's registration. Register again once it has.
            while held.in_flight.contains(&attr.ino) {
                let done = self.session.released.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                drop(held);
                done.await;
                held = self.session.held.lock().await;
            }
            self.client.open_file(attr.ino, self.session.id).await.map_err(|e| gone_is_stale(attr.ino, e))?;
        }
        Ok(attr)
    }

    /// One handle of `ino` fewer. The last queues the release for the releaser (which
    /// sends what queued up while its previous batch was on its way: closing a file
    /// costs no metadata round trip); the metadata then frees the inode if it has no
    /// name left. An inode this mount took locks on is released at once, as POSIX drops
    /// the locks with the close. A failure is logged: the lease covers it.
    pub async fn unhold(&self, ino: InodeId) {
        let mut held = self.session.held.lock().await;
        let Some(n) = held.count.get_mut(&ino) else { return };
        *n -= 1;
        if *n > 0 {
            return;
        }
        held.count.remove(&ino);
        // The metadata drops this session's locks on the inode with the release.
        if self.session.locked.lock().expect("locked set").remove(&ino) {
            if let Err(e) = self.client.release_file(ino, self.session.id).await {
                warn!(%ino, error = %e, "could not release an open file; the session lease will");
            }
            return;
        }
        held.pending.insert(ino);
        self.session.queued.notify_one();
    }

    /// Sends the queued releases, concurrently (the metadata leader puts them in one
    /// Raft append), and returns how many it sent.
    async fn release_queued(&self) -> usize {
        let batch: Vec<InodeId> = {
            let mut held = self.session.held.lock().await;
            let batch: Vec<InodeId> = held.pending.drain().collect();
            held.in_flight.extend(batch.iter().copied());
            batch
        };
        if batch.is_empty() {
            return 0;
        }
        let session = self.session.id;
        futures::future::join_all(batch.iter().map(|&ino| async move {
            if let Err(e) = self.client.release_file(ino, session).await {
                warn!(%ino, error = %e, "could not release an open file; the session lease will");
            }
        }))
        .await;
        let mut held = self.session.held.lock().await;
        for ino in &batch {
            held.in_flight.remove(ino);
        }
        drop(held);
        self.session.released.notify_waiters();
        batch.len()
    }

    /// Starts the lease renewal and the release tasks (once the session exists).
    pub fn start_renewer(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        let weak = Arc::downgrade(self);
        let renew = rt.spawn(async move { renew_loop(weak).await });
        let weak = Arc::downgrade(self);
        let queued = Arc::clone(&self.session.queued);
        let release = rt.spawn(async move { release_loop(weak, queued).await });
        self.session.tasks.lock().expect("session tasks").extend([renew, release]);
    }

    /// Stops renewing and closes the session: every open of this mount is released.
    pub async fn close_session(&self) {
        for t in self.session.tasks.lock().expect("session tasks").drain(..) {
            t.abort();
        }
        *self.session.held.lock().await = Held::default();
        match self.client.close_session(self.session.id).await {
            Ok(()) => info!(session = format_args!("{:016x}", self.session.id), "client session closed"),
            Err(e) => warn!(error = %e, "could not close the client session; its lease will expire"),
        }
    }

    /// Renews the lease; when it had expired (a long partition), registers every inode
    /// still held again (an inode freed meanwhile stays gone: its handles get `ESTALE`).
    async fn renew(&self) {
        match self.client.renew_session(self.session.id).await {
            Ok(()) => {}
            Err(ClientError::Fs(FsError::NotFound { .. })) => {
                let held = self.session.held.lock().await;
                if held.count.is_empty() {
                    return;
                }
                warn!(files = held.count.len(), "the client session had expired; registering its open files again");
                for ino in held.count.keys() {
                    if let Err(e) = self.client.open_file(*ino, self.session.id).await {
                        warn!(%ino, error = %e, "could not register an open file again");
                    }
                }
            }
            Err(e) => warn!(error = %e, "could not renew the client session lease"),
        }
    }
}

/// Renews the session's lease four times per lease period while the mount exists.
async fn renew_loop(inner: Weak<Inner>) {
    let every = SESSION_LEASE / 4;
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        debug!("renewing the client session lease");
        inner.renew().await;
    }
}

/// Sends queued releases while the mount exists: wakes on the first one queued and sends
/// everything queued by then, then again for what queued meanwhile.
async fn release_loop(inner: Weak<Inner>, queued: Arc<tokio::sync::Notify>) {
    loop {
        queued.notified().await;
        let Some(inner) = inner.upgrade() else { return };
        let n = inner.release_queued().await;
        debug!(released = n, "sent queued releases");
    }
}
