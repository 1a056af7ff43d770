//! TLS for every connection (rustls with the `ring` provider, TLS 1.3 only): both sides
//! present a certificate issued by the cluster CA (mutual authentication). A server reads
//! the caller's identity from its certificate's `distfs://` SAN URI; a client checks that
//! the server holds a node certificate. Failures become `PermissionDenied` I/O errors
//! whose text says what went wrong in operator terms (no certificate, another CA,
//! expired, a plain-TCP peer).

use crate::auth::{Identity, IDENTITY_URI_PREFIX};
use crate::error::TlsError;
use crate::transport::{BoxStream, ConnectFuture, Connector};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a side's TLS material lives (PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The cluster CA certificate: peers must present a certificate it issued.
    pub ca: PathBuf,
    /// This side's certificate chain; a client may go without (it is then refused).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Load { path: path.display().to_string(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Load { path: path.display().to_string(), reason: "no certificate in the file".into() });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::Load { path: path.display().to_string(), reason: e.to_string() })
}

fn roots(ca: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|e| TlsError::Load { path: ca.display().to_string(), reason: e.to_string() })?;
    }
    Ok(Arc::new(roots))
}

fn cfg_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config { reason: e.to_string() }
}

/// The identity named by a certificate (its first `distfs://` SAN URI).
pub fn identity_of(der: &[u8]) -> Result<Identity, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("unparsable certificate: {e}"))?;
    let san = cert.subject_alternative_name().map_err(|e| format!("bad subjectAltName: {e}"))?;
    let uri = san
        .and_then(|s| {
            s.value.general_names.iter().find_map(|g| match g {
                GeneralName::URI(u) if u.starts_with(IDENTITY_URI_PREFIX) => Some(u.to_string()),
                _ => None,
            })
        })
        .ok_or_else(|| "the certificate names no DistFS identity (no distfs:// SAN URI)".to_string())?;
    Identity::from_uri(&uri)
}

/// The server side: mandatory client certificates from the cluster CA.
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    /// This server's own identity (from its certificate).
    pub identity: Identity,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerTls({})", self.identity)
    }
}

impl ServerTls {
    pub fn load(paths: &TlsPaths) -> Result<ServerTls, TlsError> {
        let cert = paths.cert.as_deref().ok_or_else(|| cfg_err("a server needs `cert`"))?;
        let key = paths.key.as_deref().ok_or_else(|| cfg_err("a server needs `key`"))?;
        let certs = load_certs(cert)?;
        let identity =
            identity_of(&certs[0]).map_err(|reason| TlsError::Load { path: cert.display().to_string(), reason })?;
        if identity.role != crate::auth::Role::Node {
            return Err(TlsError::Load {
                path: cert.display().to_string(),
                reason: format!(
                    "a server needs a node certificate (`distfs cert issue --node NAME`), this is a {identity}"
                ),
            });
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&paths.ca)?, provider())
            .build()
            .map_err(cfg_err)?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(cfg_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, load_key(key)?)
            .map_err(cfg_err)?;
        Ok(ServerTls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), identity })
    }

    /// Runs the TLS handshake on an accepted stream and reads the caller's identity.
    pub async fn accept<S>(&self, stream: S) -> io::Result<(tokio_rustls::server::TlsStream<S>, Identity)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let s = self.acceptor.accept(stream).await.map_err(|e| explain(e, Side::Server, ""))?;
        let der =
            s.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or_else(|| {
                io::Error::new(io::ErrorKind::PermissionDenied, "the client presented no certificate")
            })?;
        let identity = identity_of(der).map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
        Ok((s, identity))
    }
}

/// The client side: trusts the cluster CA, presents its certificate if it has one.
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
    /// Our identity, when we have a certificate.
    pub identity: Option<Identity>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.identity {
            Some(i) => write!(f, "ClientTls({i})"),
            None => f.write_str("ClientTls(no certificate)"),
        }
    }
}

impl ClientTls {
    pub fn load(paths: &TlsPaths) -> Result<ClientTls, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(cfg_err)?
            .with_root_certificates(roots(&paths.ca)?);
        let (config, identity) = match (&paths.cert, &paths.key) {
            (Some(cert), Some(key)) => {
                let certs = load_certs(cert)?;
                let identity = identity_of(&certs[0])
                    .map_err(|reason| TlsError::Load { path: cert.display().to_string(), reason })?;
                (builder.with_client_auth_cert(certs, load_key(key)?).map_err(cfg_err)?, Some(identity))
            }
            (None, None) => (builder.with_no_client_auth(), None),
            _ => return Err(cfg_err("give both a certificate and its key, or neither")),
        };
        Ok(ClientTls { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), identity })
    }

    /// TLS over an open stream to `addr`; the server must hold a node certificate valid
    /// for the host part of `addr`.
    pub async fn connect(&self, stream: BoxStream, addr: &str) -> io::Result<BoxStream> {
        let host = host_of(addr);
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("`{host}` is not a host name or address: {e}"))
        })?;
        let s = self.connector.connect(name, stream).await.map_err(|e| explain(e, Side::Client, host))?;
        let der =
            s.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or_else(|| {
                io::Error::new(io::ErrorKind::PermissionDenied, "the server presented no certificate")
            })?;
        let who = identity_of(der).map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
        if who.role != crate::auth::Role::Node {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the server presented a certificate of {who}, not of a cluster node"),
            ));
        }
        Ok(Box::new(s))
    }
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// Rewrites a rustls failure as a `PermissionDenied` error saying what happened.
fn explain(e: io::Error, side: Side, host: &str) -> io::Error {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else { return e };
    let expired = |c: &CertificateError| format!("{c:?}").starts_with("Expired");
    let why = match (tls, side) {
        (rustls::Error::AlertReceived(AlertDescription::CertificateRequired), _) => {
            "the server requires a client certificate and none was configured (--tls-cert/--tls-key or DISTFS_TLS_DIR)"
                .to_string()
        }
        // A CA with the same name as ours but another key shows as a bad signature.
        (rustls::Error::AlertReceived(AlertDescription::UnknownCA | AlertDescription::DecryptError), Side::Client) => {
            "the server does not trust our certificate: it was not issued by this cluster's CA".to_string()
        }
        (rustls::Error::AlertReceived(AlertDescription::CertificateExpired), Side::Client) => {
            "the server refused our certificate: it has expired (or is not valid yet)".to_string()
        }
        (rustls::Error::AlertReceived(a), Side::Client) => format!("the server refused the TLS handshake ({a:?})"),
        (rustls::Error::NoCertificatesPresented, Side::Server) => "the client presented no certificate".to_string(),
        (
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature),
            Side::Server,
        ) => "the client's certificate was not issued by this cluster's CA".to_string(),
        (rustls::Error::InvalidCertificate(c), Side::Server) if expired(c) => {
            "the client's certificate has expired (or is not valid yet)".to_string()
        }
        (
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature),
            Side::Client,
        ) => "the server's certificate was not issued by our cluster CA".to_string(),
        (rustls::Error::InvalidCertificate(c), Side::Client) if expired(c) => {
            "the server's certificate has expired (or is not valid yet)".to_string()
        }
        (rustls::Error::InvalidCertificate(c), Side::Client) if format!("{c:?}").starts_with("NotValidForName") => {
            format!("the server's certificate is not valid for `{host}` (issue it with --host {host})")
        }
        (rustls::Error::InvalidMessage(_), Side::Client) => {
            "the server does not speak TLS (does it run with tls.mode = \"off\"?)".to_string()
        }
        (rustls::Error::InvalidMessage(_), Side::Server) => "the client does not speak TLS".to_string(),
        (other, _) => format!("TLS: {other}"),
    };
    io::Error::new(io::ErrorKind::PermissionDenied, why)
}

/// Explains an I/O error that carries a rustls failure (a TLS alert seen after the
/// handshake, as TLS 1.3 reports a refused client certificate); others pass unchanged.
pub fn explain_client_error(e: io::Error) -> io::Error {
    explain(e, Side::Client, "")
}

/// A `Connector` that runs TLS over another connector's streams (TCP, or a test's
/// link filter).
pub struct TlsConnector {
    pub inner: Arc<dyn Connector>,
    pub tls: Arc<ClientTls>,
}

impl Connector for TlsConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> ConnectFuture<'a> {
        Box::pin(async move {
            let s = self.inner.connect(addr).await?;
            self.tls.connect(s, addr).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:7400"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7400"), "::1");
        assert_eq!(host_of("meta-1.example:7400"), "meta-1.example");
    }
}

/// Whether a server speaks TLS. There is no default: a server refuses to start until its
/// configuration says one or the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS with client certificates on every connection, in and out.
    On,
    /// Plain TCP, no authentication: for tests and `distfs local up` only.
    Off,
}

/// The `[tls]` section of a server's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// `"on"` or `"off"`; required.
    pub mode: Option<TlsMode>,
    /// The cluster CA certificate (PEM).
    pub ca: Option<PathBuf>,
    /// This server's node certificate (PEM), from `distfs cert issue --node NAME`.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

/// The `[compression]` section of a server's configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionSettings {
    /// What this server asks for on connections it opens (to other servers).
    pub send: crate::compress::Compression,
    /// What it agrees to when a caller asks (an empty list: never compress).
    pub accept: Vec<crate::compress::Compression>,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        CompressionSettings {
            send: crate::compress::Compression::None,
            accept: vec![crate::compress::Compression::Lz4, crate::compress::Compression::Zstd],
        }
    }
}

impl TlsSettings {
    /// Plain TCP, said explicitly (tests, `local up`).
    pub fn off() -> TlsSettings {
        TlsSettings { mode: Some(TlsMode::Off), ..TlsSettings::default() }
    }

    /// The files of `mode = "on"`.
    pub fn on(ca: PathBuf, cert: PathBuf, key: PathBuf) -> TlsSettings {
        TlsSettings { mode: Some(TlsMode::On), ca: Some(ca), cert: Some(cert), key: Some(key) }
    }

    /// `(key, reason)` of the first problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self.mode {
            None => Err((
                "tls.mode",
                "is required: \"on\" (with tls.ca, tls.cert and tls.key; see `distfs cert`) or \"off\" for plain TCP \
                 (tests and local clusters only)"
                    .into(),
            )),
            Some(TlsMode::Off) => Ok(()),
            Some(TlsMode::On) => {
                for (key, v) in [("tls.ca", &self.ca), ("tls.cert", &self.cert), ("tls.key", &self.key)] {
                    if v.is_none() {
                        return Err((key, "is required with tls.mode = \"on\"".into()));
                    }
                }
                Ok(())
            }
        }
    }

    fn paths(&self) -> Option<TlsPaths> {
        match (self.mode, &self.ca) {
            (Some(TlsMode::On), Some(ca)) => {
                Some(TlsPaths { ca: ca.clone(), cert: self.cert.clone(), key: self.key.clone() })
            }
            _ => None,
        }
    }

    /// The accepting side of a server with these settings (certificates loaded now).
    pub fn server_transport(&self, c: &CompressionSettings) -> Result<crate::server::ServerTransport, TlsError> {
        let tls = self.paths().map(|p| ServerTls::load(&p)).transpose()?;
        Ok(crate::server::ServerTransport { tls, accept_compression: c.accept.clone() })
    }

    /// The calling side of a server with these settings (its own node certificate).
    pub fn client_transport(
        &self,
        peer: crate::handshake::PeerKind,
        c: &CompressionSettings,
    ) -> Result<crate::conn::ClientTransport, TlsError> {
        let tls = self.paths().map(|p| ClientTls::load(&p).map(Arc::new)).transpose()?;
        Ok(crate::conn::ClientTransport { tls, compression: c.send, peer })
    }
}
