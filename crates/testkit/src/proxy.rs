//! A loopback TCP proxy that loses answers: it forwards every byte from its clients to
//! one server and the server's frames back, but while told to lose answers it closes the
//! connection instead of forwarding the next answer to a request. The request was
//! delivered and handled (a write is committed); only its answer is lost, which is what a
//! client sees when a connection drops or an attempt times out just after the commit.

use distfs_proto::frame::FIXED_LEN;
use distfs_proto::{FrameHeader, Kind, Limits, FLAG_RESPONSE};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct LossyProxy {
    addr: String,
    /// Answers still to lose.
    to_lose: Arc<AtomicUsize>,
    /// Answers lost so far.
    lost: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: String) -> LossyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let (to_lose, lost) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (l, n) = (to_lose.clone(), lost.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream.clone(), l.clone(), n.clone()));
            }
        });
        LossyProxy { addr, to_lose, lost, task }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Loses the next `n` answers (0: forwards everything again).
    pub fn lose_answers(&self, n: usize) {
        self.to_lose.store(n, Ordering::SeqCst);
    }

    /// Answers lost so far.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, upstream: String, to_lose: Arc<AtomicUsize>, lost: Arc<AtomicUsize>) {
    let Ok(server) = TcpStream::connect(&upstream).await else { return };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
    });
    // Server to client, frame by frame (the server is ours: its lengths are within the
    // default limits, checked before anything is allocated).
    let limits = Limits::default();
    loop {
        let mut fixed = [0u8; FIXED_LEN];
        if sr.read_exact(&mut fixed).await.is_err() {
            break;
        }
        let Ok(h) = FrameHeader::parse(&fixed, &limits) else { break };
        let mut rest = vec![0u8; h.header_len as usize + h.body_len as usize];
        if sr.read_exact(&mut rest).await.is_err() {
            break;
        }
        let answer = h.flags & FLAG_RESPONSE != 0 && h.kind != Kind::Hello as u16 && h.request_id != 0;
        if answer && to_lose.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            lost.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if cw.write_all(&fixed).await.is_err() || cw.write_all(&rest).await.is_err() {
            break;
        }
    }
    up.abort();
}
