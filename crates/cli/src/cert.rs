//! `distfs cert`: a cluster CA and the certificates it issues (rcgen, ECDSA P-256).
//! A certificate names its holder in a SAN URI, `distfs://ROLE/NAME[?uid=U&gid=G]`
//! (`distfs_proto::Identity`), which servers read to authorise requests. Node
//! certificates also carry the host names and addresses the server is reached at.
//!
//! Layout of a CA directory: `ca.pem`, `ca.key` (keep it offline), and what `issue`
//! writes: `nodes/NAME/{ca.pem,node.pem,node.key}` and
//! `clients/NAME/{ca.pem,client.pem,client.key}` (a client directory is what
//! `DISTFS_TLS_DIR` points at).

use anyhow::{bail, Context};
use distfs_proto::{Identity, Role};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// How long certificates are valid unless told otherwise.
pub const DEFAULT_CA_DAYS: i64 = 3650;
pub const DEFAULT_DAYS: i64 = 365;

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

fn write_public(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Creates a new cluster CA in `dir` (refuses to overwrite one).
pub fn init(dir: &Path, name: &str, days: i64) -> anyhow::Result<()> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert_path.exists() || key_path.exists() {
        bail!("{} already holds a CA (ca.pem/ca.key); remove them first to start over", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // A random suffix: two clusters' CAs never share a subject, so a certificate of one
    // is refused by the other as "unknown issuer", not matched to the wrong CA.
    dn.push(DnType::CommonName, format!("DistFS cluster CA {name} {:08x}", rand::random::<u32>()));
    dn.push(DnType::OrganizationName, "DistFS");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
    let key = KeyPair::generate().context("cannot generate a key")?;
    let cert = params.self_signed(&key).context("cannot sign the CA certificate")?;
    write_private(&key_path, &key.serialize_pem())?;
    write_public(&cert_path, &cert.pem())?;
    Ok(())
}

/// What to issue.
#[derive(Clone, Debug)]
pub struct Request {
    pub identity: Identity,
    /// DNS names and IP addresses the holder is reached at (node certificates).
    pub hosts: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Request {
    /// Valid from a few minutes ago for `days` days.
    pub fn new(identity: Identity, hosts: Vec<String>, days: i64) -> Request {
        let now = OffsetDateTime::now_utc();
        Request { identity, hosts, not_before: now - Duration::minutes(5), not_after: now + Duration::days(days) }
    }
}

/// Issues a certificate from the CA in `ca_dir` into `out` (created): `ca.pem` and
/// `STEM.pem`/`STEM.key` where STEM is `node` or `client`. Returns `out`.
pub fn issue(ca_dir: &Path, req: &Request, out: &Path) -> anyhow::Result<PathBuf> {
    let id = &req.identity;
    if !distfs_proto::auth::valid_name(&id.name) {
        bail!("`{}` is not a valid name (letters, digits, `-`, `_`, `.`; at most 64)", id.name);
    }
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.pem"))
        .with_context(|| format!("no CA in {} (run `distfs cert init` first)", ca_dir.display()))?;
    let ca_key_pem = std::fs::read_to_string(ca_dir.join("ca.key"))
        .with_context(|| format!("cannot read {}", ca_dir.join("ca.key").display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("ca.key is not a private key")?;
    let issuer = CertificateParams::from_ca_cert_pem(&ca_pem)
        .context("ca.pem is not a certificate")?
        .self_signed(&ca_key)
        .context("ca.key does not belong to ca.pem")?;

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.name.clone());
    dn.push(DnType::OrganizationalUnitName, id.role.as_str());
    params.distinguished_name = dn;
    let mut sans = vec![SanType::URI(id.to_uri().try_into().context("identity URI")?)];
    for h in &req.hosts {
        match h.parse::<std::net::IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            Err(_) => sans.push(SanType::DnsName(h.clone().try_into().with_context(|| format!("host `{h}`"))?)),
        }
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match id.role {
        Role::Node => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Role::Client | Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.not_before = req.not_before;
    params.not_after = req.not_after;
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().context("cannot generate a key")?;
    let cert = params.signed_by(&key, &issuer, &ca_key).context("cannot sign the certificate")?;

    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let stem = if id.role == Role::Node { "node" } else { "client" };
    write_public(&out.join("ca.pem"), &ca_pem)?;
    write_public(&out.join(format!("{stem}.pem")), &cert.pem())?;
    write_private(&out.join(format!("{stem}.key")), &key.serialize_pem())?;
    Ok(out.to_path_buf())
}

/// Where `issue` puts a certificate by default: `CA_DIR/nodes/NAME` or `CA_DIR/clients/NAME`.
pub fn default_out(ca_dir: &Path, id: &Identity) -> PathBuf {
    ca_dir.join(if id.role == Role::Node { "nodes" } else { "clients" }).join(&id.name)
}

/// Default hosts of a node certificate: its name and the loopback names.
pub fn default_hosts(name: &str) -> Vec<String> {
    let mut h = vec![name.to_string(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
    h.dedup();
    h
}
