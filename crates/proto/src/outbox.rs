//! The sending half of a connection, shared by every task that writes frames on it.
//!
//! A frame is written by the task that has it, on its own thread, when the socket takes
//! it at once (the usual case: a few hundred bytes into an empty send buffer). Only when
//! the socket is full, or other frames are already waiting, is the frame queued for the
//! connection's flusher task. A call on the client and a reply on the server thus cost
//! no hand-off to a writer task (which matters when the sender is not a runtime worker:
//! the mount's FUSE thread, `distfs_fuse`'s `lazy.rs`); under load the flusher batches
//! what piles up into vectored writes.
//!
//! Bytes leave in the order frames were accepted: a frame goes straight to the socket
//! only while nothing is queued, and everything happens under one lock that is never
//! held across an await (a write is a non-blocking poll). `send` is cancel-safe: a frame
//! is either accepted whole or not at all.

use bytes::{Buf, Bytes};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::io::AsyncWrite;
use tokio::sync::Notify;

use crate::frame::Frame;

/// Bytes queued behind a full socket beyond which `send` waits for the flusher (a peer
/// that does not read cannot make us buffer without bound).
const MAX_QUEUED: usize = 64 << 20;
/// Buffers handed to one vectored write.
const MAX_IOV: usize = 64;

struct State<W> {
    w: W,
    /// Bytes accepted but not yet taken by the socket, in order.
    queue: VecDeque<Bytes>,
    queued: usize,
    /// A write went through but the stream (TLS) still holds bytes to flush.
    unflushed: bool,
    /// Why the stream can no longer be written.
    failed: Option<String>,
}

struct Shared<W> {
    state: Mutex<State<W>>,
    /// Wakes the flusher: bytes were queued, or the last handle went away.
    work: Notify,
    /// Wakes senders waiting for room.
    room: Notify,
    handles: AtomicUsize,
    /// Set with `State::failed`, readable without the lock.
    broken: AtomicBool,
}

/// A handle on a connection's sending half; clones share it. When the last handle is
/// dropped the flusher writes what is queued, shuts the stream down if asked to, and ends.
pub(crate) struct Outbox<W: AsyncWrite + Unpin + Send + 'static> {
    shared: Arc<Shared<W>>,
}

impl<W: AsyncWrite + Unpin + Send + 'static> Clone for Outbox<W> {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        Outbox { shared: self.shared.clone() }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Drop for Outbox<W> {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.work.notify_one();
        }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Outbox<W> {
    /// Wraps the write half `w` and spawns its flusher. With `shutdown`, the flusher shuts
    /// the stream down once the last handle is gone and everything is written (a server
    /// closing a connection); without, it just drops it.
    pub(crate) fn new(w: W, shutdown: bool) -> (Outbox<W>, tokio::task::JoinHandle<()>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { w, queue: VecDeque::new(), queued: 0, unflushed: false, failed: None }),
            work: Notify::new(),
            room: Notify::new(),
            handles: AtomicUsize::new(1),
            broken: AtomicBool::new(false),
        });
        let flusher = tokio::spawn(flush_loop(shared.clone(), shutdown));
        (Outbox { shared }, flusher)
    }

    /// Whether the stream failed (no lock taken).
    pub(crate) fn is_failed(&self) -> bool {
        self.shared.broken.load(Ordering::Acquire)
    }

    /// Why the stream failed, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.shared.state.lock().expect("outbox lock").failed.clone()
    }

    /// Accepts one frame: written now if the socket takes it, else queued for the flusher.
    /// Fails only if the stream already failed (the reason is returned).
    pub(crate) async fn send(&self, frame: &Frame) -> Result<(), String> {
        let fixed = Bytes::copy_from_slice(&frame.fixed());
        let mut parts = [fixed, frame.header.clone(), frame.body.clone()];
        let len: usize = parts.iter().map(Bytes::len).sum();
        loop {
            let room = self.shared.room.notified();
            {
                let mut st = self.shared.state.lock().expect("outbox lock");
                if let Some(why) = &st.failed {
                    return Err(why.clone());
                }
                if st.queued == 0 || st.queued + len <= MAX_QUEUED {
                    self.accept(&mut st, &mut parts);
                    return match &st.failed {
                        Some(why) => Err(why.clone()),
                        None => Ok(()),
                    };
                }
            }
            room.await;
        }
    }

    fn accept(&self, st: &mut State<W>, parts: &mut [Bytes; 3]) {
        if st.queue.is_empty() && !st.unflushed {
            // Nothing ahead of us and the flusher is not waiting on the stream (our poll
            // would take its place as the stream's waker): try the socket now.
            let mut cx = Context::from_waker(Waker::noop());
            match write_parts(&mut st.w, &mut cx, parts) {
                Poll::Ready(Ok(())) => {
                    match Pin::new(&mut st.w).poll_flush(&mut cx) {
                        Poll::Ready(Ok(())) => st.unflushed = false,
                        Poll::Ready(Err(e)) => fail(&self.shared.broken, st, e),
                        Poll::Pending => {
                            st.unflushed = true;
                            self.shared.work.notify_one();
                        }
                    }
                    return;
                }
                Poll::Ready(Err(e)) => {
                    fail(&self.shared.broken, st, e);
                    return;
                }
                Poll::Pending => {}
            }
        }
        let was_empty = st.queue.is_empty();
        for p in parts.iter_mut().filter(|p| !p.is_empty()) {
            st.queued += p.len();
            st.queue.push_back(std::mem::take(p));
        }
        if was_empty {
            self.shared.work.notify_one();
        }
    }
}

fn fail<W>(broken: &AtomicBool, st: &mut State<W>, e: std::io::Error) {
    st.failed.get_or_insert_with(|| format!("write: {e}"));
    broken.store(true, Ordering::Release);
}

/// Writes `parts` (advancing them) until all are written or the stream would block.
fn write_parts<W: AsyncWrite + Unpin>(
    w: &mut W,
    cx: &mut Context<'_>,
    parts: &mut [Bytes],
) -> Poll<std::io::Result<()>> {
    loop {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let mut k = 0;
        for p in parts.iter().filter(|p| !p.is_empty()).take(MAX_IOV) {
            slices[k] = IoSlice::new(p);
            k += 1;
        }
        if k == 0 {
            return Poll::Ready(Ok(()));
        }
        let n = match Pin::new(&mut *w).poll_write_vectored(cx, &slices[..k]) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        advance(parts.iter_mut(), n);
    }
}

fn advance<'a>(parts: impl Iterator<Item = &'a mut Bytes>, mut n: usize) {
    for p in parts {
        if n == 0 {
            break;
        }
        let k = n.min(p.len());
        p.advance(k);
        n -= k;
    }
}

/// Writes out what senders queued; ends when the stream fails or the last handle is gone
/// and nothing is left to write.
async fn flush_loop<W: AsyncWrite + Unpin + Send>(shared: Arc<Shared<W>>, shutdown: bool) {
    loop {
        let work = shared.work.notified();
        let done = poll_fn(|cx| {
            let mut st = shared.state.lock().expect("outbox lock");
            let st = &mut *st;
            if st.failed.is_some() {
                return Poll::Ready(true);
            }
            while !st.queue.is_empty() {
                let parts = st.queue.make_contiguous();
                let n = parts.len().min(MAX_IOV);
                let parts = &mut parts[..n];
                let before: usize = parts.iter().map(Bytes::len).sum();
                let r = write_parts(&mut st.w, cx, parts);
                let written = before - parts.iter().map(Bytes::len).sum::<usize>();
                while st.queue.front().is_some_and(Bytes::is_empty) {
                    st.queue.pop_front();
                }
                st.queued -= written;
                if written > 0 {
                    shared.room.notify_waiters();
                }
                match r {
                    Poll::Ready(Ok(())) => st.unflushed = true,
                    Poll::Ready(Err(e)) => {
                        fail(&shared.broken, st, e);
                        shared.room.notify_waiters();
                        return Poll::Ready(true);
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            if st.unflushed {
                match Pin::new(&mut st.w).poll_flush(cx) {
                    Poll::Ready(Ok(())) => st.unflushed = false,
                    Poll::Ready(Err(e)) => {
                        fail(&shared.broken, st, e);
                        return Poll::Ready(true);
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            Poll::Ready(shared.handles.load(Ordering::Acquire) == 0)
        })
        .await;
        if done {
            break;
        }
        work.await;
    }
    if shutdown {
        let _ = poll_fn(|cx| {
            let mut st = shared.state.lock().expect("outbox lock");
            if st.failed.is_some() {
                return Poll::Ready(Ok(()));
            }
            Pin::new(&mut st.w).poll_shutdown(cx)
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::Outbox;
    use crate::frame::{read_frame, Frame, Limits};
    use bytes::Bytes;
    use std::time::Duration;

    fn frame(sender: u64, seq: u64, len: usize) -> Frame {
        let body: Vec<u8> = (0..len).map(|i| (sender as usize * 31 + seq as usize * 7 + i) as u8).collect();
        Frame::new(2, 0, sender << 32 | seq, Bytes::from(vec![sender as u8; 3]), body.into())
    }

    /// A pipe far smaller than the frames: almost every write blocks part way, so frames
    /// go through the queue, the flusher and partial vectored writes, from many tasks at
    /// once. Every frame must arrive whole (the reader checks each CRC), each sender's
    /// frames in order, and the stream must end cleanly after the last handle is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_from_many_tasks_arrive_whole_and_in_order_through_a_tiny_pipe() {
        let (a, mut b) = tokio::io::duplex(257);
        let (out, flusher) = Outbox::new(a, true);
        let mut senders = Vec::new();
        for s in 0..8u64 {
            let out = out.clone();
            senders.push(tokio::spawn(async move {
                for q in 0..150u64 {
                    let len = [0, 1, 100, 4096, 70_000][(s + q) as usize % 5];
                    out.send(&frame(s, q, len)).await.expect("stream is healthy");
                }
            }));
        }
        drop(out);
        let reader = tokio::spawn(async move {
            let mut next = [0u64; 8];
            let limits = Limits::default();
            while let Some(f) = read_frame(&mut b, &limits).await.expect("a whole, valid frame") {
                let (s, q) = (f.request_id >> 32, f.request_id & 0xffff_ffff);
                assert_eq!(q, next[s as usize], "sender {s}'s frames arrive in order");
                let len = [0, 1, 100, 4096, 70_000][(s + q) as usize % 5];
                // (The pieces' CRCs the reader kept are not part of what was sent.)
                assert_eq!(Frame { pieces: None, ..f }, frame(s, q, len));
                next[s as usize] += 1;
            }
            next
        });
        for t in senders {
            t.await.unwrap();
        }
        let next = tokio::time::timeout(Duration::from_secs(30), reader).await.expect("stream ends").unwrap();
        assert_eq!(next, [150; 8], "every frame arrived, then end of stream");
        flusher.await.unwrap();
    }

    /// A reader that went away: the send that hits the broken pipe, and every later one,
    /// fails with the reason instead of queueing forever.
    #[tokio::test]
    async fn a_closed_peer_fails_sends_with_the_reason() {
        let (a, b) = tokio::io::duplex(64);
        let (out, _flusher) = Outbox::new(a, false);
        drop(b);
        let mut failed = None;
        for q in 0..100 {
            if let Err(why) = out.send(&frame(0, q, 1000)).await {
                failed = Some(why);
                break;
            }
            tokio::task::yield_now().await;
        }
        let why = failed.expect("a send fails once the peer is gone");
        assert!(why.starts_with("write:"), "{why}");
        assert!(out.is_failed());
        assert!(out.send(&frame(0, 999, 1)).await.is_err());
    }
}
