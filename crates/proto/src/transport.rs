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
