//! TLS over loopback with certificates made here (rcgen): the server attaches the
//! caller's certificate identity to each request; a caller without a certificate, or
//! whose server certificate is not a node's, is refused with a final error.

use bytes::Bytes;
use distfs_proto::*;
use distfs_types::FsError;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

struct WhoAmI;

impl Handler for WhoAmI {
    async fn handle(&self, req: Incoming) -> Result<Reply, FsError> {
        Ok(Reply::new(&*req.identity))
    }
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, format!("test CA {}", rand_suffix()));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    Ca { cert: p.self_signed(&key).unwrap(), key }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// Writes `STEM.pem`/`STEM.key` for `identity` (and `ca.pem`) into `dir`.
fn issue(ca: &Ca, dir: &Path, stem: &str, identity: &Identity) {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, identity.name.clone());
    p.subject_alt_names =
        vec![SanType::URI(identity.to_uri().try_into().unwrap()), SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
}

fn paths(dir: &Path, stem: Option<&str>) -> TlsPaths {
    TlsPaths {
        ca: dir.join("ca.pem"),
        cert: stem.map(|s| dir.join(format!("{s}.pem"))),
        key: stem.map(|s| dir.join(format!("{s}.key"))),
    }
}

async fn serve_tls(dir: &Path, stem: &str) -> (String, CancellationToken) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let tls = ServerTls::load(&paths(dir, Some(stem))).unwrap();
    let transport = Arc::new(ServerTransport { tls: Some(tls), accept_compression: vec![Compression::Lz4] });
    tokio::spawn(serve_with(l, transport, Arc::new(WhoAmI), Limits::default(), stop.clone()));
    (addr, stop)
}

fn client(dir: &Path, stem: Option<&str>, compression: Compression) -> RpcClient {
    let tls = ClientTls::load(&paths(dir, stem)).unwrap();
    RpcClient::new(RpcConfig {
        transport: ClientTransport { tls: Some(Arc::new(tls)), compression, peer: PeerKind::Client },
        ..RpcConfig::default()
    })
}

#[tokio::test]
async fn identity_reaches_the_handler_and_refusals_are_final() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ca = ca();
    issue(&ca, d, "node", &Identity::node("n1"));
    let alice =
        Identity { name: "alice".into(), role: Role::Client, uid: Some(1000), gid: Some(50), authenticated: true };
    issue(&ca, d, "alice", &alice);
    // A server needs a node certificate.
    assert!(ServerTls::load(&paths(d, Some("alice"))).unwrap_err().to_string().contains("node certificate"));
    let (addr, _stop) = serve_tls(d, "node").await;

    for compression in [Compression::None, Compression::Lz4] {
        let c = client(d, Some("alice"), compression);
        let (who, _): (Identity, Bytes) =
            c.call(&addr, Kind::Storage, &StorageRequest::Ping, Bytes::from(vec![b'a'; 100_000]), None).await.unwrap();
        assert_eq!(who, alice);
    }

    // No client certificate: refused by the server, and the error says so.
    let err = client(d, None, Compression::None)
        .call::<_, Identity>(&addr, Kind::Storage, &StorageRequest::Ping, Bytes::new(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Refused { .. }) && !err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("requires a client certificate"), "{err}");
    assert!(matches!(err.into_fs(), FsError::PermissionDenied { .. }));

    // A server holding a client certificate is not trusted by callers.
    let fake = tmp.path().join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    issue(&ca, &fake, "node", &alice);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = l.local_addr().unwrap().to_string();
    // ServerTls::load refuses a non-node certificate, so this impostor is plain rustls.
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(fake.join("node.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(fake.join("node.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let a = acceptor.clone();
            tokio::spawn(async move {
                let _ = a.accept(s).await;
            });
        }
    });
    let err = client(d, Some("alice"), Compression::None)
        .call::<_, Identity>(&fake_addr, Kind::Storage, &StorageRequest::Ping, Bytes::new(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not of a cluster node"), "{err}");
}
