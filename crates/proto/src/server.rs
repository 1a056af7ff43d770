//! The serving side: accepts streams, reads frames, runs each request concurrently on the
//! handler and writes replies in completion order (multiplexing). A broken frame gets an
//! error frame naming the problem, then the connection is closed; other connections are
//! not affected.

use crate::error::ProtoError;
use crate::frame::{read_frame, write_frame, Frame, Kind, Limits, ReadError, FLAG_ERROR, FLAG_RESPONSE};
use bytes::Bytes;
use distfs_types::FsError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

/// One request as the handler sees it.
#[derive(Debug)]
pub struct Incoming {
    pub kind: Kind,
    pub header: Bytes,
    pub body: Bytes,
    pub peer: SocketAddr,
}

/// A successful answer: encoded typed header and raw body.
#[derive(Debug)]
pub struct Reply {
    pub header: Bytes,
    pub body: Bytes,
}

impl Reply {
    pub fn new<T: serde::Serialize>(value: &T) -> Reply {
        Reply { header: crate::encode(value), body: Bytes::new() }
    }
    pub fn with_body<T: serde::Serialize>(value: &T, body: Bytes) -> Reply {
        Reply { header: crate::encode(value), body }
    }
}

/// A service: decodes the typed header for its kinds and answers.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Incoming) -> impl Future<Output = Result<Reply, FsError>> + Send;

    /// Called once when a connection from `peer` has closed (read end reached or failed).
    /// The metadata service uses it to notice a storage node that died. Default: nothing.
    fn disconnected(&self, _peer: SocketAddr) {}
}

/// Accepts connections until `shutdown` fires.
pub async fn serve<H: Handler>(listener: TcpListener, handler: Arc<H>, limits: Limits, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = serve_conn(stream, peer, handler, limits) => {}
                }
            }
            .instrument(tracing::debug_span!("conn", %peer)),
        );
    }
}

/// Serves one stream until it closes or sends something unacceptable.
pub async fn serve_conn<S, H>(stream: S, peer: SocketAddr, handler: Arc<H>, limits: Limits)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: Handler,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Frame>(256);
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::with_capacity(64 << 10, wr);
        while let Some(f) = rx.recv().await {
            if write_frame(&mut w, &f).await.is_err() {
                return;
            }
            // Flush when no other reply is ready, so replies batch under load.
            if rx.is_empty() && tokio::io::AsyncWriteExt::flush(&mut w).await.is_err() {
                return;
            }
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
    });
    loop {
        match read_frame(&mut rd, &limits).await {
            Ok(None) => break,
            Ok(Some(frame)) => {
                if frame.flags & FLAG_RESPONSE != 0 {
                    let _ = tx.send(error_frame(frame.kind, frame.request_id, &unexpected_response())).await;
                    break;
                }
                let kind = match Kind::from_u16(frame.kind) {
                    Ok(k) => k,
                    Err(e) => {
                        // The frame was well formed: answer it, keep the connection.
                        let _ = tx.send(error_frame(frame.kind, frame.request_id, &proto_fs(&e))).await;
                        continue;
                    }
                };
                let handler = handler.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let id = frame.request_id;
                    let req = Incoming { kind, header: frame.header, body: frame.body, peer };
                    let reply = match handler.handle(req).await {
                        Ok(r) => Frame {
                            kind: kind as u16,
                            flags: FLAG_RESPONSE,
                            request_id: id,
                            header: r.header,
                            body: r.body,
                        },
                        Err(e) => error_frame(kind as u16, id, &e),
                    };
                    let _ = tx.send(reply).await;
                });
            }
            Err(ReadError::Io(e)) => {
                debug!(error = %e, "connection read failed");
                break;
            }
            Err(ReadError::Proto(e)) => {
                warn!(error = %e, "bad frame from peer; closing connection");
                let _ = tx.send(error_frame(0, 0, &proto_fs(&e))).await;
                break;
            }
        }
    }
    drop(tx);
    handler.disconnected(peer);
    let _ = writer.await;
}

fn unexpected_response() -> FsError {
    FsError::Protocol { reason: "a response frame was sent to a server".into() }
}

fn proto_fs(e: &ProtoError) -> FsError {
    FsError::Protocol { reason: e.to_string() }
}

fn error_frame(kind: u16, request_id: u64, e: &FsError) -> Frame {
    Frame { kind, flags: FLAG_RESPONSE | FLAG_ERROR, request_id, header: crate::encode(e), body: Bytes::new() }
}
