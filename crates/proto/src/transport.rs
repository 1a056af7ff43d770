//! The transport seam: how a byte stream to a peer is opened. Production uses TCP; the
//! simulator and fault-injecting tests provide their own `Connector`.

use std::future::Future;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

pub type BoxStream = Box<dyn Stream>;
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = std::io::Result<BoxStream>> + Send + 'a>>;

/// Opens streams to peers by address.
pub trait Connector: Send + Sync + 'static {
    fn connect<'a>(&'a self, addr: &'a str) -> ConnectFuture<'a>;
}

/// Plain TCP with `TCP_NODELAY` (frames are written whole; Nagle only adds latency).
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> ConnectFuture<'a> {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as BoxStream)
        })
    }
}

/// Connections a listening socket queues before `accept` (the kernel caps it at
/// `net.core.somaxconn`). tokio's `TcpListener::bind` asks for 1,024: with thousands of
/// clients connecting at once the queue overflows, the kernel drops their SYNs and each
/// waits a whole SYN retransmission (1 s, then 3 s) before it is served.
pub const LISTEN_BACKLOG: u32 = 16_384;

/// Binds a server's listening socket (address reuse on, `LISTEN_BACKLOG`), trying each
/// address `addr` resolves to, like `TcpListener::bind`.
pub async fn bind_listener(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr} resolves to no address"))
    }))
}
