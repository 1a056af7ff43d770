//! The connection handshake, the first frame each way after TCP (and TLS) connect: the
//! caller's `Hello` (protocol versions it speaks, the compression it wants, what it is)
//! and the server's `HelloAck` (the version and compression chosen, and the identity
//! the server sees), or an error frame: a version range with nothing in common gets
//! "peer speaks protocol v3, this server speaks v2..v2".

use crate::auth::Identity;
use crate::compress::Compression;
use crate::frame::{
    read_frame, write_frame, Frame, Kind, Limits, ReadError, FLAG_ERROR, FLAG_RESPONSE, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
use bytes::Bytes;
use distfs_types::FsError;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// How long a server waits for a new connection's `Hello` (and TLS handshake).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What kind of program opens a connection (for logs and errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerKind {
    Client,
    Storage,
    Meta,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub min_version: u16,
    pub max_version: u16,
    /// What the caller wants its and the server's bodies compressed with.
    pub compression: Compression,
    pub peer: PeerKind,
    /// Program and version, e.g. `distfs 0.1.0`.
    pub agent: String,
}

impl Hello {
    pub fn new(peer: PeerKind, compression: Compression) -> Hello {
        Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            compression,
            peer,
            agent: format!("distfs {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    pub version: u16,
    /// Used for bodies in both directions (`None` when the server does not accept the
    /// wanted one).
    pub compression: Compression,
    /// Who the server takes the caller for.
    pub identity: Identity,
}

/// What a handshake settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub version: u16,
    pub compression: Compression,
}

fn range(min: u16, max: u16) -> String {
    if min == max {
        format!("v{min}")
    } else {
        format!("v{min}..v{max}")
    }
}

/// The server's choice for `hello`, or the error to answer.
pub fn negotiate(hello: &Hello, accept: &[Compression]) -> Result<Negotiated, FsError> {
    let version = hello.max_version.min(PROTOCOL_VERSION);
    if hello.min_version > hello.max_version || version < hello.min_version.max(MIN_PROTOCOL_VERSION) {
        return Err(FsError::Protocol {
            reason: format!(
                "peer speaks protocol {}, this server speaks {}",
                range(hello.min_version, hello.max_version),
                range(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)
            ),
        });
    }
    let compression = if accept.contains(&hello.compression) { hello.compression } else { Compression::None };
    Ok(Negotiated { version, compression })
}

/// Why a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    Io(std::io::Error),
    /// The server answered with an error (or sent nonsense).
    Refused(FsError),
}

/// The calling side: sends `hello`, waits for the answer (the caller bounds the time).
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    hello: &Hello,
    limits: &Limits,
) -> Result<HelloAck, HandshakeError> {
    let f = Frame::new(Kind::Hello as u16, 0, 0, crate::encode(hello), Bytes::new());
    let sent = async {
        write_frame(s, &f).await?;
        s.flush().await
    }
    .await;
    let read = read_frame(s, limits).await;
    // A server that refused us (a TLS alert, an error frame) may have closed before our
    // Hello arrived: its answer, still readable, says more than our failed write.
    if let Err(e) = &sent {
        let answer_says_more = match &read {
            Ok(Some(_)) | Err(ReadError::Proto(_)) => true,
            Err(ReadError::Io(r)) => r.get_ref().is_some_and(|i| i.is::<rustls::Error>()),
            Ok(None) => false,
        };
        if !answer_says_more {
            return Err(HandshakeError::Io(std::io::Error::new(e.kind(), e.to_string())));
        }
    }
    let reply = match read {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(HandshakeError::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the server closed the connection during the handshake",
            )))
        }
        Err(ReadError::Io(e)) => return Err(HandshakeError::Io(e)),
        Err(ReadError::Proto(e)) => return Err(HandshakeError::Refused(FsError::Protocol { reason: e.to_string() })),
    };
    let protocol = |reason: String| HandshakeError::Refused(FsError::Protocol { reason });
    if reply.flags & FLAG_ERROR != 0 {
        let e: FsError = crate::decode(&reply.header).map_err(|e| protocol(e.to_string()))?;
        return Err(HandshakeError::Refused(e));
    }
    if reply.kind != Kind::Hello as u16 || reply.flags & FLAG_RESPONSE == 0 {
        return Err(protocol(format!("expected the server's HelloAck, got a frame of kind {}", reply.kind)));
    }
    let ack: HelloAck = crate::decode(&reply.header).map_err(|e| protocol(e.to_string()))?;
    if ack.version < hello.min_version.max(MIN_PROTOCOL_VERSION) || ack.version > hello.max_version {
        return Err(protocol(format!("the server chose protocol v{} which we did not offer", ack.version)));
    }
    Ok(ack)
}

/// The serving side: reads the caller's `Hello`, answers it. On failure the error frame
/// has already been sent (when the stream still works); the caller closes.
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    identity: &Identity,
    accept: &[Compression],
    limits: &Limits,
) -> Result<(Hello, Negotiated), FsError> {
    // Before the handshake nothing is trusted: the Hello is small and has no body.
    let hello_limits = Limits { max_header: limits.max_header.min(64 << 10), max_body: 0 };
    let result = async {
        let f = match read_frame(s, &hello_limits).await {
            Ok(Some(f)) => f,
            Ok(None) => return Err(FsError::Protocol { reason: "closed before the handshake".into() }),
            Err(ReadError::Io(e)) => return Err(FsError::Io { reason: e.to_string() }),
            Err(ReadError::Proto(e)) => return Err(FsError::Protocol { reason: e.to_string() }),
        };
        if f.kind != Kind::Hello as u16 || f.flags & FLAG_RESPONSE != 0 {
            return Err(FsError::Protocol {
                reason: format!("expected a Hello frame first (handshake), got a frame of kind {}", f.kind),
            });
        }
        let hello: Hello = crate::decode(&f.header).map_err(|e| FsError::Protocol { reason: e.to_string() })?;
        let n = negotiate(&hello, accept)?;
        Ok((hello, n))
    }
    .await;
    let reply = match &result {
        Ok((_, n)) => Frame::new(
            Kind::Hello as u16,
            FLAG_RESPONSE,
            0,
            crate::encode(&HelloAck { version: n.version, compression: n.compression, identity: identity.clone() }),
            Bytes::new(),
        ),
        Err(FsError::Io { .. }) => return result,
        Err(e) => Frame::new(Kind::Hello as u16, FLAG_RESPONSE | FLAG_ERROR, 0, crate::encode(e), Bytes::new()),
    };
    let _ = write_frame(s, &reply).await;
    let _ = s.flush().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(
        hello: Hello,
        accept: Vec<Compression>,
    ) -> (Result<HelloAck, HandshakeError>, Result<Negotiated, FsError>) {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            server_handshake(&mut b, &Identity::node("n1"), &accept, &Limits::default()).await.map(|(_, n)| n)
        });
        let client = client_handshake(&mut a, &hello, &Limits::default()).await;
        (client, server.await.unwrap())
    }

    #[tokio::test]
    async fn handshake_agrees_on_version_and_compression() {
        let all = vec![Compression::Lz4, Compression::Zstd];
        let (c, s) = pair(Hello::new(PeerKind::Client, Compression::Zstd), all.clone()).await;
        let ack = c.unwrap();
        assert_eq!((ack.version, ack.compression), (PROTOCOL_VERSION, Compression::Zstd));
        assert_eq!(ack.identity, Identity::node("n1"));
        assert_eq!(s.unwrap().compression, Compression::Zstd);
        // A server that accepts no compression: the client gets none, not an error.
        let (c, _) = pair(Hello::new(PeerKind::Client, Compression::Lz4), vec![]).await;
        assert_eq!(c.unwrap().compression, Compression::None);
        let (c, _) = pair(Hello::new(PeerKind::Storage, Compression::None), all).await;
        assert_eq!(c.unwrap().compression, Compression::None);
    }

    #[tokio::test]
    async fn unknown_version_is_refused_naming_both() {
        let mut hello = Hello::new(PeerKind::Client, Compression::None);
        hello.min_version = PROTOCOL_VERSION + 1;
        hello.max_version = PROTOCOL_VERSION + 1;
        let (c, s) = pair(hello, vec![]).await;
        let want = format!(
            "peer speaks protocol v{}, this server speaks {}",
            PROTOCOL_VERSION + 1,
            range(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)
        );
        match c {
            Err(HandshakeError::Refused(FsError::Protocol { reason })) => assert_eq!(reason, want),
            other => panic!("{other:?}"),
        }
        assert!(s.unwrap_err().to_string().contains(&want));
        // A range that overlaps ours is fine.
        let mut hello = Hello::new(PeerKind::Client, Compression::None);
        hello.max_version = PROTOCOL_VERSION + 3;
        assert_eq!(pair(hello, vec![]).await.0.unwrap().version, PROTOCOL_VERSION);
    }

    #[tokio::test]
    async fn a_request_before_hello_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let f = Frame::new(Kind::Storage as u16, 0, 5, crate::encode(&crate::StorageRequest::Ping), Bytes::new());
        write_frame(&mut a, &f).await.unwrap();
        let r = server_handshake(&mut b, &Identity::unauthenticated(), &[], &Limits::default()).await;
        assert!(r.unwrap_err().to_string().contains("expected a Hello frame first"));
        let reply = read_frame(&mut a, &Limits::default()).await.unwrap().unwrap();
        assert_ne!(reply.flags & FLAG_ERROR, 0);
    }
}
