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
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use tracing::{debug, info, warn};

/// The session of one mount and the inodes it holds open (with their handle counts).
pub(crate) struct Session {
    pub id: u64,
    /// Opens and releases take it shared and then lock their own inode's count, so those
    /// of different inodes run side by side (a first open or a last release is a metadata
    /// round trip). A resync of every held inode with a new leader and a create that may
    /// open an existing file take it alone.
    gate: tokio::sync::RwLock<()>,
    /// Handles per held inode. An inode's count stays locked across the metadata call of
    /// a first open or a last release, so those never overtake each other on one inode;
    /// a count back at 0 leaves the map.
    held: std::sync::Mutex<HashMap<InodeId, Arc<tokio::sync::Mutex<u32>>>>,
    renewer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Inodes this mount has taken locks on (unlocks elsewhere need no metadata call).
    locked: std::sync::Mutex<std::collections::HashSet<InodeId>>,
}

impl Session {
    pub fn new() -> Session {
        Session {
            id: distfs_client::session::new_session_id(),
            gate: tokio::sync::RwLock::default(),
            held: std::sync::Mutex::default(),
            renewer: std::sync::Mutex::new(None),
            locked: std::sync::Mutex::default(),
        }
    }

    pub fn has_locks(&self, ino: InodeId) -> bool {
        self.locked.lock().expect("locked set").contains(&ino)
    }

    pub fn note_locks(&self, ino: InodeId) {
        self.locked.lock().expect("locked set").insert(ino);
    }

    /// Locks the handle count of `ino` (a new one at 0 when the mount holds none).
    async fn lock_count(&self, ino: InodeId) -> Count<'_> {
        loop {
            let entry = self.held.lock().expect("held map").entry(ino).or_default().clone();
            let n = entry.clone().lock_owned().await;
            // The count went to 0 and left the map while this waited: take the new one.
            if self.held.lock().expect("held map").get(&ino).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                return Count { session: self, ino, entry, n };
            }
        }
    }

    /// The inodes held open now; call with the gate taken alone (no count is locked).
    fn held_inodes(&self) -> Vec<InodeId> {
        self.held.lock().expect("held map").keys().copied().collect()
    }
}

/// The locked handle count of one inode; a count left at 0 leaves the map when dropped
/// (before its lock is released).
struct Count<'a> {
    session: &'a Session,
    ino: InodeId,
    entry: Arc<tokio::sync::Mutex<u32>>,
    n: tokio::sync::OwnedMutexGuard<u32>,
}

impl Drop for Count<'_> {
    fn drop(&mut self) {
        if *self.n == 0 {
            let mut held = self.session.held.lock().expect("held map");
            if held.get(&self.ino).is_some_and(|e| Arc::ptr_eq(e, &self.entry)) {
                held.remove(&self.ino);
            }
        }
    }
}

/// What the first open of an inode learnt from the metadata as it registered the open.
pub(crate) enum Held {
    Attr(Attr),
    Reader(Box<distfs_client::FileReader>),
}

impl Inner {
    /// Notes one more handle of `ino`; the first registers the open with the metadata
    /// and answers the inode's attributes as of then.
    /// With `read`, the first also opens a reader in the same round trip.
    pub async fn hold(&self, ino: InodeId, read: bool) -> Result<Option<Held>> {
        let _shared = self.session.gate.read().await;
        let mut count = self.session.lock_count(ino).await;
        if *count.n > 0 {
            *count.n += 1;
            return Ok(None);
        }
        let (client, session) = (&self.client, self.session.id);
        let now = match read {
            true => client.open_read(ino, session).await.map(|r| Held::Reader(Box::new(r))),
            false => client.open_file(ino, session).await.map(Held::Attr),
        };
        let now = now.map_err(|e| gone_is_stale(ino, e))?;
        *count.n = 1;
        Ok(Some(now))
    }

    /// Creates (or, without `O_EXCL`, opens an existing) file and holds it: one metadata
    /// write registers the open together with the create. An exclusive create makes a
    /// new inode, which no handle of this mount can hold yet, so it runs beside opens
    /// and releases. One that may open an existing file runs alone: a release of that
    /// file in flight could reach the metadata after it and undo its registration.
    pub async fn create_held(&self, parent: InodeId, name: &str, perm: u32, exclusive: bool) -> Result<Attr> {
        let (_shared, _alone);
        if exclusive {
            _shared = self.session.gate.read().await;
        } else {
            _alone = self.session.gate.write().await;
        }
        let attr = self.client.create_open(parent, name, perm, exclusive, Some(self.session.id)).await?;
        *self.session.lock_count(attr.ino).await.n += 1;
        Ok(attr)
    }

    /// One handle of `ino` fewer; the last releases the open at the metadata (which then
    /// frees the inode if it has no name left). A failure is logged: the lease covers it.
    pub async fn unhold(&self, ino: InodeId) {
        let _shared = self.session.gate.read().await;
        let mut count = self.session.lock_count(ino).await;
        if *count.n == 0 {
            return;
        }
        *count.n -= 1;
        if *count.n > 0 {
            return;
        }
        // The metadata drops this session's locks on the inode with the release.
        self.session.locked.lock().expect("locked set").remove(&ino);
        if let Err(e) = self.client.release_file(ino, self.session.id).await {
            warn!(%ino, error = %e, "could not release an open file; the session lease will");
        }
    }

    /// Starts the lease renewal task (once the session exists).
    pub fn start_renewer(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        let weak = Arc::downgrade(self);
        let task = rt.spawn(async move { renew_loop(weak).await });
        *self.session.renewer.lock().expect("renewer lock") = Some(task);
    }

    /// Stops renewing and closes the session: every open of this mount is released.
    pub async fn close_session(&self) {
        if let Some(t) = self.session.renewer.lock().expect("renewer lock").take() {
            t.abort();
        }
        // Without waiting for opens or releases in flight: closing the session releases
        // everything it holds at the metadata, and an open that lands after the close
        // only starts a session whose lease then runs out.
        self.session.held.lock().expect("held map").clear();
        match self.client.close_session(self.session.id).await {
            Ok(()) => info!(session = format_args!("{:016x}", self.session.id), "client session closed"),
            Err(e) => warn!(error = %e, "could not close the client session; its lease will expire"),
        }
    }

    /// Renews the lease. A leader elected since the last renewal does not know what this
    /// mount holds open, and a lease that expired (a long partition) released it all:
    /// either way every inode still held is registered again (an inode freed meanwhile
    /// stays gone: its handles get `ESTALE`).
    async fn renew(&self) {
        let resync = match self.client.renew_session(self.session.id).await {
            Ok(resync) => resync,
            Err(ClientError::Fs(FsError::NotFound { .. })) => {
                warn!("the client session had expired; registering its open files again");
                true
            }
            Err(e) => {
                warn!(error = %e, "could not renew the client session lease");
                false
            }
        };
        if resync {
            self.register_held().await;
        }
    }

    /// Registers every inode this mount holds open with the leader (all of them, in
    /// pages); at mount start this also starts the session.
    async fn register_held(&self) {
        let _alone = self.session.gate.write().await;
        let inos = self.session.held_inodes();
        match self.client.hold_files(self.session.id, &inos).await {
            Ok(gone) if gone.is_empty() => debug!(files = inos.len(), "open files registered with the leader"),
            Ok(gone) => {
                warn!(files = inos.len(), gone = gone.len(), "open files registered; some were freed meanwhile")
            }
            Err(e) => warn!(error = %e, files = inos.len(), "could not register the open files; will retry"),
        }
    }
}

/// Renews the session's lease at once (which starts the session and registers it with
/// the leader, so deletes are not held back for it) and then four times per lease period
/// while the mount exists.
async fn renew_loop(inner: Weak<Inner>) {
    let every = SESSION_LEASE / 4;
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(every).await;
        }
        let Some(inner) = inner.upgrade() else { return };
        if std::mem::take(&mut first) {
            inner.register_held().await;
            continue;
        }
        debug!("renewing the client session lease");
        inner.renew().await;
    }
}
