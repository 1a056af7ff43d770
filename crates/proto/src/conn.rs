//! The calling side: a pool of multiplexed connections per peer address. Each connection
//! has a reader task and an `Outbox`; a call registers its request id, writes its frame
//! itself (`crate::outbox`) and waits for the matching reply or its deadline. A broken
//! connection fails every call waiting on it with `ConnectionLost` and is replaced on the
//! next call. A new connection
//! runs TLS (when configured) and the `Hello` handshake before any call uses it; bodies
//! are then compressed as negotiated.

use crate::compress::Compression;
use crate::error::{ProtoError, RpcError};
use crate::frame::{read_frame, Frame, Kind, Limits, ReadError, FLAG_ERROR, FLAG_RESPONSE};
use crate::handshake::{client_handshake, HandshakeError, Hello, PeerKind};
use crate::messages::{MetaRequest, MetaResponse, StorageRequest, StorageResponse};
use crate::outbox::Outbox;
use crate::tls::ClientTls;
use crate::transport::{BoxStream, Connector, TcpConnector};
use bytes::Bytes;
use distfs_types::FsError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Tunables of the calling side.
#[derive(Clone, Debug)]
pub struct RpcConfig {
    /// Connections kept per peer; calls are spread over them.
    pub conns_per_peer: usize,
    pub connect_timeout: Duration,
    /// Deadline of a call that does not name its own.
    pub request_timeout: Duration,
    pub limits: Limits,
    /// TLS and compression of new connections.
    pub transport: ClientTransport,
}

/// How the calling side opens connections: TLS or plain TCP, and the compression it asks
/// for. The default is plain TCP without compression (tests, `local up`).
#[derive(Clone, Debug)]
pub struct ClientTransport {
    pub tls: Option<Arc<ClientTls>>,
    pub compression: Compression,
    pub peer: PeerKind,
}

impl Default for ClientTransport {
    fn default() -> Self {
        ClientTransport { tls: None, compression: Compression::None, peer: PeerKind::Client }
    }
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            conns_per_peer: 2,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            limits: Limits::default(),
            transport: ClientTransport::default(),
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Frame>>>>;

type ConnOutbox = Outbox<tokio::io::WriteHalf<BoxStream>>;

struct Conn {
    out: ConnOutbox,
    pending: Pending,
    dead: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
    /// Negotiated in the handshake; applied by each call to its own frame.
    compression: Compression,
}

impl Conn {
    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire) || self.out.is_failed()
    }
}

struct Inner {
    config: RpcConfig,
    connector: Arc<dyn Connector>,
    next_id: AtomicU64,
    rr: AtomicUsize,
    pool: Mutex<HashMap<String, Vec<Arc<Conn>>>>,
    /// Peers to which an extra connection is being opened in the background.
    growing: Mutex<std::collections::HashSet<String>>,
}

/// Requests in flight on the least busy connection from which a call makes the pool open
/// one more connection (in the background) while it holds fewer than `conns_per_peer`.
const GROW_WHEN_BUSY: usize = 2;

/// What a call does with the pool of one peer.
#[derive(Debug, PartialEq, Eq)]
enum Pick {
    /// Use this connection.
    Use(usize),
    /// Use this one, and open one more in the background.
    UseAndGrow(usize),
    /// No live connection: open one and wait for it.
    Open,
}

/// Picks a connection from the in-flight counts of the live ones: the least busy (ties
/// go round-robin from `rr`); one more is opened only when even that one is busy, so a
/// client that calls one at a time keeps one connection (10,000 clients, 10,000 sockets).
fn pick(in_flight: &[usize], max: usize, rr: usize, growing: bool) -> Pick {
    if in_flight.is_empty() {
        return Pick::Open;
    }
    let n = in_flight.len();
    let i = (0..n).map(|k| (rr + k) % n).min_by_key(|&i| in_flight[i]).unwrap_or(0);
    if in_flight[i] >= GROW_WHEN_BUSY && n < max && !growing {
        Pick::UseAndGrow(i)
    } else {
        Pick::Use(i)
    }
}

/// A cheap-to-clone handle to the connection pool.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

impl Default for RpcClient {
    fn default() -> Self {
        RpcClient::new(RpcConfig::default())
    }
}

impl RpcClient {
    pub fn new(config: RpcConfig) -> RpcClient {
        RpcClient::with_connector(config, Arc::new(TcpConnector))
    }

    pub fn with_connector(config: RpcConfig, connector: Arc<dyn Connector>) -> RpcClient {
        RpcClient {
            inner: Arc::new(Inner {
                config,
                connector,
                next_id: AtomicU64::new(1),
                rr: AtomicUsize::new(0),
                pool: Mutex::new(HashMap::new()),
                growing: Mutex::default(),
            }),
        }
    }

    pub fn config(&self) -> &RpcConfig {
        &self.inner.config
    }

    /// Drops pooled connections to `addr` (after the peer was found dead, say).
    pub fn forget(&self, addr: &str) {
        self.inner.pool.lock().expect("pool lock").remove(addr);
    }

    /// Sends one request frame and returns the reply's typed header and body. A remote
    /// error comes back as `RpcError::Remote`.
    pub async fn call_raw(
        &self,
        addr: &str,
        kind: Kind,
        header: Bytes,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<(Bytes, Bytes), RpcError> {
        self.call_frame(addr, kind, header, body, None, timeout).await.map(|f| (f.header, f.body))
    }

    /// `call_raw` with the CRC32C of the body's 64 KiB pieces, when the caller has them;
    /// answers the whole reply frame (with the pieces of its body, when read in pieces).
    async fn call_frame(
        &self,
        addr: &str,
        kind: Kind,
        header: Bytes,
        body: Bytes,
        pieces: Option<Arc<[u32]>>,
        timeout: Option<Duration>,
    ) -> Result<Frame, RpcError> {
        let timeout = timeout.unwrap_or(self.inner.config.request_timeout);
        let fut = async {
            let conn = self.conn(addr).await?;
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            conn.pending.lock().expect("pending lock").insert(id, tx);
            if conn.dead.load(Ordering::Acquire) {
                // The reader ended (and cleared `pending`) before our entry went in.
                conn.pending.lock().expect("pending lock").remove(&id);
                return Err(lost(addr, &conn));
            }
            let frame = Frame { kind: kind as u16, flags: 0, request_id: id, header, body, pieces };
            let frame = crate::compress::compress_frame(frame, conn.compression);
            let guard = PendingGuard { pending: &conn.pending, id };
            // Written on this thread when the socket takes it (no hand-off to a writer).
            if conn.out.send(&frame).await.is_err() {
                return Err(lost(addr, &conn));
            }
            let reply = rx.await.map_err(|_| lost(addr, &conn))?;
            drop(guard);
            if reply.flags & FLAG_ERROR != 0 {
                let e: FsError = crate::decode(&reply.header)
                    .map_err(|source| RpcError::Protocol { addr: addr.to_string(), source })?;
                return Err(RpcError::Remote(e));
            }
            Ok(reply)
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(RpcError::Timeout { addr: addr.to_string(), timeout_ms: timeout.as_millis() as u64 }),
        }
    }

    /// Typed call: encodes `req`, decodes the reply as `Resp`.
    pub async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        addr: &str,
        kind: Kind,
        req: &Req,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<(Resp, Bytes), RpcError> {
        let (h, b) = self.call_raw(addr, kind, crate::encode(req), body, timeout).await?;
        let resp = crate::decode(&h).map_err(|source| RpcError::Protocol { addr: addr.to_string(), source })?;
        Ok((resp, b))
    }

    /// A call to a metadata server.
    pub async fn meta(
        &self,
        addr: &str,
        req: &MetaRequest,
        timeout: Option<Duration>,
    ) -> Result<MetaResponse, RpcError> {
        self.call(addr, Kind::Meta, req, Bytes::new(), timeout).await.map(|(r, _)| r)
    }

    /// A call to a storage node.
    pub async fn storage(
        &self,
        addr: &str,
        req: &StorageRequest,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<(StorageResponse, Bytes), RpcError> {
        self.storage_with_pieces(addr, req, body, timeout).await.map(|(r, b, _)| (r, b))
    }

    /// `storage`, also answering the CRC32C of the reply body's 64 KiB pieces as they were
    /// computed to check the frame (`None` for a body under one piece or compressed). A
    /// request that carries block data with its pieces' CRCs (`PutBlock`, `PutPacked`)
    /// sends with them, reading none of its bytes for the frame's checksum.
    pub async fn storage_with_pieces(
        &self,
        addr: &str,
        req: &StorageRequest,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<(StorageResponse, Bytes, Option<Arc<[u32]>>), RpcError> {
        let pieces = req.body_pieces().map(Arc::from);
        let f = self.call_frame(addr, Kind::Storage, crate::encode(req), body, pieces, timeout).await?;
        let resp = crate::decode(&f.header).map_err(|source| RpcError::Protocol { addr: addr.to_string(), source })?;
        Ok((resp, f.body, f.pieces))
    }

    async fn conn(&self, addr: &str) -> Result<Arc<Conn>, RpcError> {
        let n = self.inner.config.conns_per_peer.max(1);
        {
            let mut pool = self.inner.pool.lock().expect("pool lock");
            let conns = pool.entry(addr.to_string()).or_default();
            conns.retain(|c| !c.is_dead());
            let busy: Vec<usize> = conns.iter().map(|c| c.pending.lock().expect("pending lock").len()).collect();
            let growing = self.inner.growing.lock().expect("growing lock").contains(addr);
            let rr = self.inner.rr.fetch_add(1, Ordering::Relaxed);
            match pick(&busy, n, rr, growing) {
                Pick::Use(i) => return Ok(conns[i].clone()),
                Pick::UseAndGrow(i) => {
                    let conn = conns[i].clone();
                    drop(pool);
                    self.grow(addr);
                    return Ok(conn);
                }
                Pick::Open => {}
            }
        }
        let conn = Arc::new(self.connect(addr).await?);
        Ok(self.add(addr, conn))
    }

    /// Keeps `conn` in the pool of `addr` if there is room; answers the one to use.
    fn add(&self, addr: &str, conn: Arc<Conn>) -> Arc<Conn> {
        let n = self.inner.config.conns_per_peer.max(1);
        let mut pool = self.inner.pool.lock().expect("pool lock");
        let conns = pool.entry(addr.to_string()).or_default();
        if conns.len() < n {
            conns.push(conn.clone());
        }
        conn
    }

    /// Opens one more connection to `addr` off the call's path (one at a time per peer).
    fn grow(&self, addr: &str) {
        if !self.inner.growing.lock().expect("growing lock").insert(addr.to_string()) {
            return;
        }
        let (me, addr) = (self.clone(), addr.to_string());
        tokio::spawn(async move {
            match me.connect(&addr).await {
                Ok(c) => {
                    me.add(&addr, Arc::new(c));
                }
                Err(e) => tracing::debug!(%addr, error = %e, "could not open an extra connection"),
            }
            me.inner.growing.lock().expect("growing lock").remove(&addr);
        });
    }

    async fn connect(&self, addr: &str) -> Result<Conn, RpcError> {
        let cfg = &self.inner.config;
        let open = async {
            let stream = self.inner.connector.connect(addr).await.map_err(|e| connect_error(addr, e))?;
            let mut stream = match &cfg.transport.tls {
                Some(tls) => tls.connect(stream, addr).await.map_err(|e| connect_error(addr, e))?,
                None => stream,
            };
            let hello = Hello::new(cfg.transport.peer, cfg.transport.compression);
            match client_handshake(&mut stream, &hello, &cfg.limits).await {
                Ok(ack) => Ok((stream, ack.compression)),
                Err(HandshakeError::Io(e)) => Err(connect_error(addr, crate::tls::explain_client_error(e))),
                Err(HandshakeError::Refused(error)) => Err(RpcError::Refused { addr: addr.to_string(), error }),
            }
        };
        let (stream, compression) = match tokio::time::timeout(cfg.connect_timeout, open).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(RpcError::Connect {
                    addr: addr.to_string(),
                    reason: format!("timed out after {} ms", cfg.connect_timeout.as_millis()),
                })
            }
        };
        let (mut rd, wr) = tokio::io::split(stream);
        let pending: Pending = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        // The flusher ends once the pool and every call have dropped the connection.
        let (out, _flusher) = Outbox::new(wr, false);

        let (pending_r, dead_r, failure_r) = (pending.clone(), dead.clone(), failure.clone());
        let limits = cfg.limits;
        tokio::spawn(async move {
            let reason = loop {
                match read_frame(&mut rd, &limits).await {
                    Ok(Some(f)) if f.flags & FLAG_RESPONSE != 0 => {
                        if f.request_id == 0 && f.flags & FLAG_ERROR != 0 {
                            // A connection-level error from the server: report it.
                            let why = crate::decode::<FsError>(&f.header)
                                .map(|e| e.to_string())
                                .unwrap_or_else(|_| "server closed the connection".into());
                            break why;
                        }
                        let waiter = pending_r.lock().expect("pending lock").remove(&f.request_id);
                        if let Some(w) = waiter {
                            let _ = w.send(f);
                        }
                    }
                    Ok(Some(_)) => {
                        break ProtoError::BadHeader { reason: "request frame sent to a client".into() }.to_string()
                    }
                    Ok(None) => break "closed by peer".to_string(),
                    Err(ReadError::Io(e)) => break e.to_string(),
                    Err(ReadError::Proto(e)) => break e.to_string(),
                }
            };
            failure_r.lock().expect("failure lock").get_or_insert(reason);
            dead_r.store(true, Ordering::Release);
            // Dropping the senders wakes every waiter with `ConnectionLost`.
            pending_r.lock().expect("pending lock").clear();
        });
        Ok(Conn { out, pending, dead, failure, compression })
    }
}

/// Removes a call's entry when the call is abandoned (timeout or cancellation).
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().expect("pending lock").remove(&self.id);
    }
}

/// A failure to open a connection: a TLS refusal (`PermissionDenied`, explained by the
/// TLS layer) is final; anything else may pass.
fn connect_error(addr: &str, e: std::io::Error) -> RpcError {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        RpcError::Refused { addr: addr.to_string(), error: FsError::PermissionDenied { what: e.to_string() } }
    } else {
        RpcError::Connect { addr: addr.to_string(), reason: e.to_string() }
    }
}

fn lost(addr: &str, conn: &Conn) -> RpcError {
    let reason = conn.failure.lock().expect("failure lock").clone();
    let reason = reason.or_else(|| conn.out.failure()).unwrap_or_else(|| "connection closed".into());
    RpcError::ConnectionLost { addr: addr.to_string(), reason }
}

#[cfg(test)]
mod tests {
    use super::{pick, Pick};

    #[test]
    fn one_call_at_a_time_keeps_one_connection() {
        assert_eq!(pick(&[], 2, 0, false), Pick::Open);
        assert_eq!(pick(&[0], 2, 0, false), Pick::Use(0));
        assert_eq!(pick(&[1], 2, 7, false), Pick::Use(0));
    }

    #[test]
    fn a_busy_pool_grows_in_the_background_up_to_its_size() {
        assert_eq!(pick(&[2], 2, 0, false), Pick::UseAndGrow(0));
        assert_eq!(pick(&[2], 2, 0, true), Pick::Use(0), "one extra connection opening at a time");
        assert_eq!(pick(&[5, 3], 2, 0, false), Pick::Use(1), "full: the least busy");
        assert_eq!(pick(&[3], 1, 0, false), Pick::Use(0), "a pool of one never grows");
    }

    #[test]
    fn ties_rotate() {
        assert_eq!(pick(&[1, 1], 2, 0, false), Pick::Use(0));
        assert_eq!(pick(&[1, 1], 2, 1, false), Pick::Use(1));
    }
}
