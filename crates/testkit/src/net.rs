//! A link filter for in-process clusters: a `Connector` per server that refuses, and
//! breaks, connections across a cut link. Cutting A↔B makes both A's and B's connectors
//! fail for the other, so a partition holds in both directions, including for
//! connections already open (they fail on their next read or write).

use distfs_proto::transport::{BoxStream, ConnectFuture, Connector};
use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The set of cut links, shared by every connector made from it.
#[derive(Clone, Default)]
pub struct Partitions {
    cut: Arc<Mutex<HashSet<(String, String)>>>,
}

impl Partitions {
    /// Cuts every link between `node` and each of `others`, both directions.
    pub fn isolate(&self, node: &str, others: &[String]) {
        let mut cut = self.cut.lock().expect("partition lock");
        for o in others.iter().filter(|o| o.as_str() != node) {
            cut.insert((node.to_string(), o.clone()));
            cut.insert((o.clone(), node.to_string()));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.cut.lock().expect("partition lock").clear();
    }

    pub fn is_cut(&self, from: &str, to: &str) -> bool {
        self.cut.lock().expect("partition lock").contains(&(from.to_string(), to.to_string()))
    }

    /// The connector server `me` uses for its outgoing connections.
    pub fn connector(&self, me: &str) -> Arc<dyn Connector> {
        Arc::new(FilterConnector { me: me.to_string(), parts: self.clone() })
    }
}

struct FilterConnector {
    me: String,
    parts: Partitions,
}

impl Connector for FilterConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> ConnectFuture<'a> {
        Box::pin(async move {
            if self.parts.is_cut(&self.me, addr) {
                return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "link cut by the test"));
            }
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(CutStream { inner: s, me: self.me.clone(), peer: addr.to_string(), parts: self.parts.clone() })
                as BoxStream)
        })
    }
}

struct CutStream {
    inner: tokio::net::TcpStream,
    me: String,
    peer: String,
    parts: Partitions,
}

impl CutStream {
    fn check(&self) -> io::Result<()> {
        if self.parts.is_cut(&self.me, &self.peer) {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "link cut by the test"))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for CutStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CutStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
