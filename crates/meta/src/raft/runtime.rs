//! The async runtime of the Raft group: tokio for everything (tasks, timers, oneshots),
//! but openraft's randomness (the election timeout, `AsyncRuntime::thread_rng`) comes
//! from a thread-local `StdRng` that is seeded from entropy unless `seed_raft_rng` seeded
//! it. That is the seam the deterministic simulator uses: with a current-thread tokio
//! runtime on paused (virtual) time and a seeded rng, a whole Raft group replays exactly.

use openraft::{AsyncRuntime, OptionalSend, TokioInstant, TokioRuntime};
use rand08::rngs::StdRng;
use rand08::{RngCore, SeedableRng};
use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

thread_local! {
    static RNG: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Seeds this thread's Raft rng (election timeouts of every Raft instance whose core
/// runs on this thread). The simulator calls it before starting a run.
pub fn seed_raft_rng(seed: u64) {
    RNG.with(|r| *r.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

fn with_rng<T>(f: impl FnOnce(&mut StdRng) -> T) -> T {
    RNG.with(|r| {
        let mut r = r.borrow_mut();
        f(r.get_or_insert_with(StdRng::from_entropy))
    })
}

/// A handle to the thread-local rng (what openraft's `thread_rng()` returns).
#[derive(Debug, Default, Clone, Copy)]
pub struct RaftRng;

impl RngCore for RaftRng {
    fn next_u32(&mut self) -> u32 {
        with_rng(|r| r.next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        with_rng(|r| r.next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        with_rng(|r| r.fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand08::Error> {
        with_rng(|r| r.try_fill_bytes(dest))
    }
}

/// tokio, with the rng above.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct MetaRuntime;

type Tokio = TokioRuntime;

impl AsyncRuntime for MetaRuntime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = RaftRng;
    type OneshotSender<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <Tokio as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        RaftRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        Tokio::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand08::Rng;

    #[test]
    fn a_seeded_rng_repeats_and_an_unseeded_one_still_works() {
        let draw = || (0..8).map(|_| MetaRuntime::thread_rng().gen_range(150u64..300)).collect::<Vec<_>>();
        seed_raft_rng(7);
        let a = draw();
        seed_raft_rng(7);
        assert_eq!(draw(), a);
        seed_raft_rng(8);
        assert_ne!(draw(), a);
        let other = std::thread::spawn(draw).join().expect("thread");
        assert!(other.iter().all(|t| (150..300).contains(t)));
    }
}
