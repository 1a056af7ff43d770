//! Client and server over real loopback TCP: multiplexed calls, remote errors, and a
//! server that survives garbage from one peer while serving another.

use bytes::Bytes;
use distfs_proto::*;
use distfs_types::FsError;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

struct Echo;

impl Handler for Echo {
    async fn handle(&self, req: Incoming) -> Result<Reply, FsError> {
        match decode::<StorageRequest>(&req.header).map_err(|e| FsError::Protocol { reason: e.to_string() })? {
            StorageRequest::Ping => Ok(Reply::new(&StorageResponse::Pong { node: None })),
            StorageRequest::GetBlock { len, .. } => {
                // Answer slowly for long reads so replies come back out of order.
                tokio::time::sleep(Duration::from_millis(len as u64 % 50)).await;
                Ok(Reply::with_body(&StorageResponse::Block { offset: 0, crcs: vec![] }, req.body))
            }
            _ => Err(FsError::not_found("nothing here")),
        }
    }
}

async fn start() -> (String, CancellationToken) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    tokio::spawn(serve(l, Arc::new(Echo), Limits::default(), stop.clone()));
    (addr, stop)
}

#[tokio::test]
async fn multiplexed_calls_get_their_own_answers() {
    let (addr, _stop) = start().await;
    let c = RpcClient::default();
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let (c, addr) = (c.clone(), addr.clone());
        tasks.push(tokio::spawn(async move {
            let body = Bytes::from(vec![i as u8; 1000 + i as usize]);
            let req = StorageRequest::GetBlock { block: distfs_types::BlockId(1), offset: 0, len: i * 7 };
            let (resp, got) = c.storage(&addr, &req, body.clone(), None).await.unwrap();
            assert_eq!(resp, StorageResponse::Block { offset: 0, crcs: vec![] });
            assert_eq!(got, body);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let err = c.storage(&addr, &StorageRequest::DeleteBlocks { blocks: vec![] }, Bytes::new(), None).await.unwrap_err();
    assert!(matches!(err, RpcError::Remote(FsError::NotFound { .. })), "{err:?}");
}

#[tokio::test]
async fn garbage_gets_an_error_and_the_server_keeps_serving() {
    let (addr, _stop) = start().await;
    let c = RpcClient::default();
    let cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        {
            let mut f = Frame::new(2, 0, 9, encode(&StorageRequest::Ping), Bytes::new()).to_bytes();
            f[4] = 77; // wrong version
            f
        },
        {
            let mut f = Frame::new(2, 0, 9, Bytes::new(), Bytes::new()).to_bytes();
            f[24..28].copy_from_slice(&u32::MAX.to_le_bytes()); // oversized body
            f
        },
        Frame::new(2, 0, 9, Bytes::from_static(&[0xff; 40]), Bytes::new()).to_bytes(),
        Frame::new(999, 0, 9, Bytes::new(), Bytes::new()).to_bytes(),
        Frame::new(2, 0, 9, encode(&StorageRequest::Ping), Bytes::new()).to_bytes()[..20].to_vec(),
    ];
    for (i, bytes) in cases.into_iter().enumerate() {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        s.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("case {i}: server neither answered nor closed"))
            .unwrap();
        if !answer.is_empty() {
            let f = frame::read_frame(&mut answer.as_slice(), &Limits::default()).await.unwrap().unwrap();
            assert_ne!(f.flags & FLAG_ERROR, 0, "case {i}: expected an error frame");
            let e: FsError = decode(&f.header).unwrap();
            assert!(matches!(e, FsError::Protocol { .. }), "case {i}: {e:?}");
        }
        // Another client is still served.
        let (pong, _) = c.storage(&addr, &StorageRequest::Ping, Bytes::new(), None).await.unwrap();
        assert_eq!(pong, StorageResponse::Pong { node: None }, "case {i}");
    }
}

#[tokio::test]
async fn unreachable_peer_is_a_connect_error_and_silence_a_timeout() {
    let c = RpcClient::new(RpcConfig { connect_timeout: Duration::from_millis(500), ..Default::default() });
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap().to_string();
    drop(l);
    let err = c.storage(&dead, &StorageRequest::Ping, Bytes::new(), None).await.unwrap_err();
    assert!(matches!(err, RpcError::Connect { .. }), "{err:?}");
    assert!(err.is_transient());

    // A listener that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let err =
        c.storage(&addr, &StorageRequest::Ping, Bytes::new(), Some(Duration::from_millis(300))).await.unwrap_err();
    assert!(matches!(err, RpcError::Timeout { .. }), "{err:?}");
}

/// A server that accepts only lz4 serves callers that ask for lz4, zstd or nothing;
/// bodies arrive intact either way, compressible or not.
#[tokio::test]
async fn callers_with_any_compression_interoperate() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let transport = Arc::new(ServerTransport { tls: None, accept_compression: vec![Compression::Lz4] });
    tokio::spawn(serve_with(l, transport, Arc::new(Echo), Limits::default(), stop.clone()));
    let text: Vec<u8> = b"abcabcabd ".iter().copied().cycle().take(1 << 20).collect();
    let mut x = 7u64;
    let noise: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for want in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let c = RpcClient::new(RpcConfig {
            transport: ClientTransport { compression: want, ..Default::default() },
            ..Default::default()
        });
        for body in [&text, &noise] {
            let req = StorageRequest::GetBlock { block: distfs_types::BlockId(1), offset: 0, len: 0 };
            let (_, got) = c.storage(&addr, &req, Bytes::from(body.clone()), None).await.unwrap();
            assert!(got[..] == body[..], "{want}: body changed");
        }
    }
}

/// A caller of an unknown protocol version is told both versions, over real TCP.
#[tokio::test]
async fn unknown_protocol_version_gets_a_clear_error() {
    let (addr, _stop) = start().await;
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut hello = handshake::Hello::new(PeerKind::Client, Compression::None);
    hello.min_version = PROTOCOL_VERSION + 1;
    hello.max_version = PROTOCOL_VERSION + 1;
    match handshake::client_handshake(&mut s, &hello, &Limits::default()).await {
        Err(handshake::HandshakeError::Refused(FsError::Protocol { reason })) => assert_eq!(
            reason,
            format!("peer speaks protocol v{}, this server speaks v{PROTOCOL_VERSION}", PROTOCOL_VERSION + 1)
        ),
        other => panic!("{other:?}"),
    }
}
