//! Running a kernel request's future on the FUSE thread until it first waits.
//!
//! `tokio::runtime::Handle::spawn` from a thread outside the runtime puts the task in the
//! shared queue and wakes an idle worker: on a virtual machine that is an interrupt to a
//! halted CPU, tens of µs, once per request. Instead the FUSE thread polls the request's
//! future itself (inside the runtime's context, so sockets and timers work): that writes
//! the request to the server at once (`distfs_proto` writes a frame on the caller's
//! thread). Only when the future waits, typically for the reply, is it handed to the
//! runtime, and that happens from whichever thread wakes it: the connection's reader
//! task on a worker, where a spawn runs next on the same worker without waking another.
//! A future that completes in its first poll (an answer from the mount's caches) never
//! becomes a task at all.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

type Job = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

enum State {
    /// The first poll is running on the FUSE thread.
    Polling,
    /// Woken while its first poll ran: spawn it as soon as that poll returns.
    WokenWhilePolling,
    /// Waiting, parked here until its first wake.
    Parked(Job),
    /// Handed to the runtime (or finished): later wakes of this waker mean nothing.
    Gone,
}

struct Lazy {
    state: Mutex<State>,
    rt: tokio::runtime::Handle,
}

impl Wake for Lazy {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut st = self.state.lock().expect("lazy task lock");
        match std::mem::replace(&mut *st, State::Gone) {
            State::Polling => *st = State::WokenWhilePolling,
            State::Parked(job) => {
                drop(st);
                self.rt.spawn(job);
            }
            other => *st = other,
        }
    }
}

/// Polls `fut` once here, in `rt`'s context; if it is not done, it becomes a task of `rt`
/// when it is first woken.
pub(crate) fn run_here_then_spawn<F>(rt: &tokio::runtime::Handle, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let _enter = rt.enter();
    let lazy = Arc::new(Lazy { state: Mutex::new(State::Polling), rt: rt.clone() });
    let waker = Waker::from(lazy.clone());
    let mut job: Job = Box::pin(fut);
    if job.as_mut().poll(&mut Context::from_waker(&waker)).is_ready() {
        *lazy.state.lock().expect("lazy task lock") = State::Gone;
        return;
    }
    let mut st = lazy.state.lock().expect("lazy task lock");
    match std::mem::replace(&mut *st, State::Gone) {
        State::WokenWhilePolling => {
            drop(st);
            rt.spawn(job);
        }
        _ => *st = State::Parked(job),
    }
}

#[cfg(test)]
mod tests {
    use super::run_here_then_spawn;
    use std::time::Duration;

    /// A future that waits on something woken from a runtime worker finishes there; one
    /// woken while its first poll still runs is not lost; one that never waits runs
    /// entirely on the calling thread.
    #[test]
    fn a_job_runs_here_until_it_waits_and_finishes_on_the_runtime() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let here = std::thread::current().id();

        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let d = done_tx.clone();
        run_here_then_spawn(rt.handle(), async move {
            d.send(("ready", std::thread::current().id() == here)).unwrap();
        });
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)).unwrap(), ("ready", true));

        for round in 0..200 {
            let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
            let d = done_tx.clone();
            run_here_then_spawn(rt.handle(), async move {
                let v = rx.await.unwrap();
                d.send(("woken", v == round)).unwrap();
            });
            // Woken from a worker: the job moves to the runtime.
            rt.spawn(async move { tx.send(round).unwrap() });
            assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)).unwrap(), ("woken", true));
        }

        for _ in 0..200 {
            // Woken during its own first poll (yield_now wakes at once).
            let d = done_tx.clone();
            run_here_then_spawn(rt.handle(), async move {
                tokio::task::yield_now().await;
                d.send(("yielded", true)).unwrap();
            });
            assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)).unwrap(), ("yielded", true));
        }

        // A timer needs the runtime's context during the first poll.
        let d = done_tx.clone();
        run_here_then_spawn(rt.handle(), async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            d.send(("slept", true)).unwrap();
        });
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)).unwrap(), ("slept", true));
    }
}
