//! The serving side: accepts streams, reads frames, runs each request concurrently on the
//! handler (inline until it first waits, then as its own task) and writes replies in
//! completion order (multiplexing). A broken frame gets an error frame naming the
//! problem, then the connection is closed; other connections are not affected. Each
//! accepted stream goes through the `ServerTransport` first: TLS (the caller's
//! certificate names its `Identity`) or plain TCP, then the `Hello` handshake.

use crate::auth::Identity;
use crate::compress::Compression;
use crate::error::ProtoError;
use crate::frame::{read_frame, write_frame, Frame, Kind, Limits, ReadError, FLAG_ERROR, FLAG_RESPONSE, MAGIC};
use crate::handshake::{server_handshake, HANDSHAKE_TIMEOUT};
use crate::outbox::Outbox;
use crate::tls::ServerTls;
use bytes::Bytes;
use distfs_types::FsError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

/// One request as the handler sees it.
#[derive(Debug)]
pub struct Incoming {
    pub kind: Kind,
    pub header: Bytes,
    pub body: Bytes,
    /// CRC32C of each 64 KiB piece of `body`, computed as the frame was checked (`None`
    /// for a body under one piece or one that arrived compressed).
    pub pieces: Option<Arc<[u32]>>,
    pub peer: SocketAddr,
    /// Who sent it (from the TLS certificate; `Identity::unauthenticated()` on plain TCP).
    pub identity: Arc<Identity>,
}

/// A successful answer: encoded typed header and raw body.
#[derive(Debug)]
pub struct Reply {
    pub header: Bytes,
    pub body: Bytes,
    /// CRC32C of each 64 KiB piece of `body`, when the handler has them (block data): the
    /// frame's checksum is then derived from them.
    pub pieces: Option<Arc<[u32]>>,
}

impl Reply {
    pub fn new<T: serde::Serialize>(value: &T) -> Reply {
        Reply { header: crate::encode(value), body: Bytes::new(), pieces: None }
    }
    pub fn with_body<T: serde::Serialize>(value: &T, body: Bytes) -> Reply {
        Reply { header: crate::encode(value), body, pieces: None }
    }
    /// A reply whose body is block data with the CRC32C `pieces` of its 64 KiB pieces.
    pub fn with_block<T: serde::Serialize>(value: &T, body: Bytes, pieces: &[u32]) -> Reply {
        Reply { header: crate::encode(value), body, pieces: Some(Arc::from(pieces)) }
    }
}

/// A service: decodes the typed header for its kinds and answers.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Incoming) -> impl Future<Output = Result<Reply, FsError>> + Send;

    /// Called once when a connection from `peer` has closed (read end reached or failed).
    /// The metadata service uses it to notice a storage node that died. Default: nothing.
    fn disconnected(&self, _peer: SocketAddr) {}
}

/// How a server takes connections: TLS with client certificates, or plain TCP, and the
/// compression algorithms it agrees to when a caller asks.
#[derive(Debug, Default)]
pub struct ServerTransport {
    pub tls: Option<ServerTls>,
    pub accept_compression: Vec<Compression>,
}

impl ServerTransport {
    /// Plain TCP; accepts lz4 and zstd.
    pub fn plain() -> ServerTransport {
        ServerTransport { tls: None, accept_compression: vec![Compression::Lz4, Compression::Zstd] }
    }
}

/// Accepts plain-TCP connections until `shutdown` fires.
pub async fn serve<H: Handler>(listener: TcpListener, handler: Arc<H>, limits: Limits, shutdown: CancellationToken) {
    serve_with(listener, Arc::new(ServerTransport::plain()), handler, limits, shutdown).await
}

/// Accepts connections through `transport` until `shutdown` fires.
pub async fn serve_with<H: Handler>(
    listener: TcpListener,
    transport: Arc<ServerTransport>,
    handler: Arc<H>,
    limits: Limits,
    shutdown: CancellationToken,
) {
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
        let transport = transport.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = accept_conn(stream, peer, transport, handler, limits) => {}
                }
            }
            .instrument(tracing::debug_span!("conn", %peer)),
        );
    }
}

/// TLS (if configured), then the handshake, then requests.
async fn accept_conn<H: Handler>(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    transport: Arc<ServerTransport>,
    handler: Arc<H>,
    limits: Limits,
) {
    let Some(tls) = &transport.tls else {
        serve_stream(stream, peer, Identity::unauthenticated(), &transport.accept_compression, handler, limits).await;
        return;
    };
    // A plain-TCP DistFS caller gets a readable answer instead of a TLS failure.
    let mut head = [0u8; 4];
    if let Ok(Ok(4)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut head)).await {
        if u32::from_le_bytes(head) == MAGIC {
            warn!(%peer, "refused a plain-TCP connection: this server requires TLS");
            let e = FsError::PermissionDenied {
                what: "this server requires TLS: configure the cluster CA and a certificate \
                       (--tls-ca/--tls-cert/--tls-key or DISTFS_TLS_DIR)"
                    .into(),
            };
            let _ = write_frame(&mut stream, &error_frame(Kind::Hello as u16, 0, &e)).await;
            linger_close(stream).await;
            return;
        }
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
        Ok(Ok((s, identity))) => {
            debug!(%peer, %identity, "TLS connection");
            serve_stream(s, peer, identity, &transport.accept_compression, handler, limits).await
        }
        Ok(Err(e)) => warn!(%peer, "refused a TLS connection: {e}"),
        Err(_) => warn!(%peer, "refused a connection: no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
    }
}

/// Serves one plain stream (handshake included) until it closes or sends something
/// unacceptable. The peer is unauthenticated.
pub async fn serve_conn<S, H>(stream: S, peer: SocketAddr, handler: Arc<H>, limits: Limits)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: Handler,
{
    let accept = [Compression::Lz4, Compression::Zstd];
    serve_stream(stream, peer, Identity::unauthenticated(), &accept, handler, limits).await
}

async fn serve_stream<S, H>(
    mut stream: S,
    peer: SocketAddr,
    identity: Identity,
    accept: &[Compression],
    handler: Arc<H>,
    limits: Limits,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: Handler,
{
    let negotiated = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        server_handshake(&mut stream, &identity, accept, &limits),
    )
    .await
    {
        Ok(Ok((hello, n))) => {
            debug!(%peer, %identity, agent = %hello.agent, kind = ?hello.peer, compression = %n.compression, "handshake done");
            n
        }
        Ok(Err(e)) => {
            warn!(%peer, error = %e, "handshake failed; closing connection");
            linger_close(stream).await;
            return;
        }
        Err(_) => {
            debug!(%peer, "no handshake within {HANDSHAKE_TIMEOUT:?}; closing connection");
            return;
        }
    };
    let compression = negotiated.compression;
    let identity = Arc::new(identity);
    let (mut rd, wr) = tokio::io::split(stream);
    // Replies are written by the task that has them (`crate::outbox`); the flusher
    // writes what a full socket queued and shuts the stream down at the end.
    let (tx, writer) = Outbox::new(wr, true);
    loop {
        match read_frame(&mut rd, &limits).await {
            Ok(None) => break,
            Ok(Some(frame)) => {
                if frame.flags & FLAG_RESPONSE != 0 {
                    send(&tx, error_frame(frame.kind, frame.request_id, &unexpected_response()), compression).await;
                    break;
                }
                let kind = match Kind::from_u16(frame.kind) {
                    Ok(Kind::Hello) => {
                        let e = FsError::Protocol { reason: "a second Hello on one connection".into() };
                        send(&tx, error_frame(frame.kind, frame.request_id, &e), compression).await;
                        continue;
                    }
                    Ok(k) => k,
                    Err(e) => {
                        // The frame was well formed: answer it, keep the connection.
                        send(&tx, error_frame(frame.kind, frame.request_id, &proto_fs(&e)), compression).await;
                        continue;
                    }
                };
                let handler = handler.clone();
                let tx = tx.clone();
                let identity = identity.clone();
                let mut task = Box::pin(async move {
                    let id = frame.request_id;
                    let req =
                        Incoming { kind, header: frame.header, body: frame.body, pieces: frame.pieces, peer, identity };
                    let reply = match handler.handle(req).await {
                        Ok(r) => Frame {
                            kind: kind as u16,
                            flags: FLAG_RESPONSE,
                            request_id: id,
                            header: r.header,
                            body: r.body,
                            pieces: r.pieces,
                        },
                        Err(e) => error_frame(kind as u16, id, &e),
                    };
                    send(&tx, reply, compression).await;
                });
                // Run the request here until it first has to wait: one answered from
                // local state (a `stat` within the read lease, a read from the page
                // cache) then costs no task at all, and its reply leaves from this
                // thread. Only a request that waits (Raft, disk, a peer) gets a task.
                let done = std::future::poll_fn(|cx| Poll::Ready(task.as_mut().poll(cx).is_ready())).await;
                if !done {
                    tokio::spawn(task);
                }
            }
            Err(ReadError::Io(e)) => {
                debug!(error = %e, "connection read failed");
                break;
            }
            Err(ReadError::Proto(e)) => {
                warn!(error = %e, "bad frame from peer; closing connection");
                send(&tx, error_frame(0, 0, &proto_fs(&e)), compression).await;
                break;
            }
        }
    }
    drop(tx);
    handler.disconnected(peer);
    let _ = writer.await;
}

/// Closes after an error answer so the peer can read it: our side is shut down first,
/// then what the peer still sends is read and dropped for a moment (closing with unread
/// bytes would reset the connection and could destroy the answer in flight).
async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    use tokio::io::AsyncReadExt;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
    let drain = async {
        let mut buf = [0u8; 8192];
        let mut total = 0usize;
        while total < (1 << 20) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

/// Sends one reply (compressed as negotiated); a failed stream is noticed by the reader.
async fn send<W: AsyncWrite + Unpin + Send + 'static>(out: &Outbox<W>, f: Frame, compression: Compression) {
    let _ = out.send(&crate::compress::compress_frame(f, compression)).await;
}

fn unexpected_response() -> FsError {
    FsError::Protocol { reason: "a response frame was sent to a server".into() }
}

fn proto_fs(e: &ProtoError) -> FsError {
    FsError::Protocol { reason: e.to_string() }
}

fn error_frame(kind: u16, request_id: u64, e: &FsError) -> Frame {
    Frame::new(kind, FLAG_RESPONSE | FLAG_ERROR, request_id, crate::encode(e), Bytes::new())
}
