//! Group commit above openraft. openraft 0.9 appends one client write at a time and
//! waits for its fdatasync before it takes the next (`RaftCore::append_to_log`), so
//! concurrent writers would each pay a flush of their own. Every write therefore goes
//! through one queue: a driver task proposes what is queued, and whatever arrives while
//! that proposal is in flight goes out next as one `Command::Batch` entry, which costs
//! one fdatasync on every member. No timer: a lone write is proposed at once, on its own,
//! and waits for nothing (its caller proposes it itself, `try_lead`); batches form only
//! when writes overlap.

use crate::state::{Command, CommandResult};
use distfs_types::{FsError, FsResult};
use std::sync::{Mutex, PoisonError};
use tokio::sync::oneshot;

/// At most this many commands in one entry (entries stay small for followers and
/// snapshots; a full batch is already one fdatasync for 64 writes).
pub(crate) const MAX_BATCH: usize = 64;

type Waiter = (Command, oneshot::Sender<FsResult<CommandResult>>);

/// The queue of writes waiting to be proposed, and whether a driver is running.
#[derive(Default)]
pub(crate) struct Batcher {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    driving: bool,
    waiting: Vec<Waiter>,
}

impl Batcher {
    /// Takes the driver's role when no driver runs: the caller proposes its own command
    /// at once, then calls `hand_off`.
    pub(crate) fn try_lead(&self) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        !std::mem::replace(&mut q.driving, true)
    }

    /// The lone proposal of `try_lead` is done (or its caller went away). `true`: writes
    /// queued meanwhile, and the caller must start a driver for them; `false`: none, and
    /// the role is free again.
    pub(crate) fn hand_off(&self) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.driving = !q.waiting.is_empty();
        q.driving
    }

    /// Queues a command with where its result goes. `true`: no driver is running, and the
    /// caller must start one (`next` until it returns `None`).
    pub(crate) fn push(&self, cmd: Command, tx: oneshot::Sender<FsResult<CommandResult>>) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.waiting.push((cmd, tx));
        !std::mem::replace(&mut q.driving, true)
    }

    /// The driver's next proposal: the oldest `MAX_BATCH` queued commands, as one command
    /// (itself when alone, else a `Batch`) with their result senders. `None` when nothing
    /// is queued: the driver stops, and the next `push` starts another.
    pub(crate) fn next(&self) -> Option<(Command, Vec<oneshot::Sender<FsResult<CommandResult>>>)> {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.waiting.is_empty() {
            q.driving = false;
            return None;
        }
        let n = q.waiting.len().min(MAX_BATCH);
        let (mut cmds, txs): (Vec<Command>, Vec<_>) = q.waiting.drain(..n).unzip();
        let cmd = match cmds.pop() {
            Some(only) if cmds.is_empty() => only,
            Some(last) => {
                cmds.push(last);
                Command::Batch(cmds)
            }
            None => return None,
        };
        Some((cmd, txs))
    }
}

/// Each queued command's answer, from the answer to the proposal that carried `n` of
/// them: a batch answers one result per command; an error of the proposal itself (not
/// the leader, Raft stopped) is every command's.
pub(crate) fn split(n: usize, res: FsResult<CommandResult>) -> Vec<FsResult<CommandResult>> {
    match res {
        Ok(CommandResult::Batch(rs)) if n > 1 && rs.len() == n => rs,
        Ok(r) if n == 1 => vec![Ok(r)],
        Ok(r) => vec![Err(FsError::internal(format!("a batch of {n} commands was answered {r:?}"))); n],
        Err(e) => vec![Err(e); n],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distfs_types::{InodeId, Timestamp};

    fn mkdir(name: &str) -> Command {
        Command::Mkdir {
            parent: InodeId::ROOT,
            name: name.into(),
            perm: 0o755,
            uid: 0,
            gid: 0,
            now: Timestamp::default(),
        }
    }

    fn names(cmd: &Command) -> Vec<String> {
        match cmd {
            Command::Mkdir { name, .. } => vec![name.clone()],
            Command::Batch(cs) => cs.iter().flat_map(names).collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_leader_proposes_alone_and_hands_what_queued_meanwhile_to_a_driver() {
        let b = Batcher::default();
        assert!(b.try_lead(), "idle: the caller proposes itself");
        assert!(!b.try_lead(), "one at a time");
        let (tx, _rx) = oneshot::channel();
        assert!(!b.push(mkdir("q"), tx), "queued behind the leader's proposal");
        assert!(b.hand_off(), "something queued: a driver must take over");
        let (cmd, _) = b.next().expect("the queued write");
        assert_eq!(names(&cmd), ["q"]);
        assert!(b.next().is_none());
        assert!(b.try_lead());
        assert!(!b.hand_off(), "nothing queued: the role is free");
        assert!(b.try_lead());
    }

    #[test]
    fn a_lone_write_goes_alone_and_writes_queued_behind_it_go_as_one_batch_in_order() {
        let b = Batcher::default();
        let (tx, _rx1) = oneshot::channel();
        assert!(b.push(mkdir("a"), tx), "the first write starts the driver");
        let (first, txs) = b.next().expect("one queued");
        assert!(matches!(first, Command::Mkdir { .. }), "a lone write is not wrapped: {first:?}");
        assert_eq!(txs.len(), 1);
        // While it is in flight, three more arrive; none starts a second driver.
        let mut rxs = Vec::new();
        for n in ["b", "c", "d"] {
            let (tx, rx) = oneshot::channel();
            assert!(!b.push(mkdir(n), tx), "a driver is running");
            rxs.push(rx);
        }
        let (batch, txs) = b.next().expect("three queued");
        assert_eq!(names(&batch), ["b", "c", "d"]);
        assert!(matches!(batch, Command::Batch(_)));
        assert_eq!(txs.len(), 3);
        assert!(b.next().is_none(), "queue empty: the driver stops");
        let (tx, _rx) = oneshot::channel();
        assert!(b.push(mkdir("e"), tx), "and the next write starts a new one");
    }

    #[test]
    fn a_long_queue_is_cut_into_batches_of_at_most_max_batch() {
        let b = Batcher::default();
        let mut keep = Vec::new();
        for i in 0..MAX_BATCH * 2 + 1 {
            let (tx, rx) = oneshot::channel();
            b.push(mkdir(&format!("d{i}")), tx);
            keep.push(rx);
        }
        let sizes: Vec<usize> = std::iter::from_fn(|| b.next()).map(|(_, txs)| txs.len()).collect();
        assert_eq!(sizes, [MAX_BATCH, MAX_BATCH, 1]);
    }

    #[test]
    fn a_batch_answer_is_split_per_command_and_a_proposal_error_goes_to_all() {
        let exists = FsError::AlreadyExists { what: "d".into() };
        let rs = vec![Ok(CommandResult::Done), Err(exists.clone())];
        assert_eq!(split(2, Ok(CommandResult::Batch(rs.clone()))), rs);
        assert_eq!(split(1, Ok(CommandResult::Done)), vec![Ok(CommandResult::Done)]);
        let gone = FsError::NotLeader { leader: None };
        assert_eq!(split(3, Err(gone.clone())), vec![Err(gone.clone()), Err(gone.clone()), Err(gone)]);
        // A batch answered with the wrong count is an internal error for each, never a
        // result handed to the wrong caller.
        let wrong = split(2, Ok(CommandResult::Batch(vec![Ok(CommandResult::Done)])));
        assert!(wrong.iter().all(|r| matches!(r, Err(FsError::Internal { .. }))), "{wrong:?}");
    }
}
