//! Who is calling: the identity a server attaches to every request. With TLS it comes
//! from the verified peer certificate, whose SAN URI names it (`distfs://ROLE/NAME`, with
//! `?uid=U&gid=G` for a client); on a plain-TCP server every peer is `unauthenticated`,
//! which is trusted like an admin (plain TCP is for tests and `local up` only).

use serde::{Deserialize, Serialize};

/// The scheme of the SAN URI that carries a DistFS identity.
pub const IDENTITY_URI_PREFIX: &str = "distfs://";

/// What a certificate allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A metadata server or a storage node: internal requests (heartbeats, Raft, copies).
    Node,
    /// A client: the file system, with POSIX permissions checked for its uid/gid.
    Client,
    /// A client that may also run admin commands and bypasses permission checks.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "node" => Some(Role::Node),
            "client" => Some(Role::Client),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The caller of a request, as the server established it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    /// POSIX identity of a client (`None`: root for admins and nodes, nobody otherwise).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// False on a plain-TCP server: nobody proved anything.
    pub authenticated: bool,
}

/// uid/gid of a client certificate that names none.
pub const NOBODY: u32 = 65534;

impl Identity {
    /// Every peer of a plain-TCP server: trusted as before security existed.
    pub fn unauthenticated() -> Identity {
        Identity { name: "unauthenticated".into(), role: Role::Admin, uid: None, gid: None, authenticated: false }
    }

    pub fn node(name: &str) -> Identity {
        Identity { name: name.into(), role: Role::Node, uid: None, gid: None, authenticated: true }
    }

    /// May run admin commands (drain, remove, maintenance, metadata membership, fsck repair).
    pub fn is_admin(&self) -> bool {
        !self.authenticated || self.role == Role::Admin
    }

    /// May send what only cluster members send (registration, heartbeats, Raft, copies, deletes).
    pub fn is_member(&self) -> bool {
        !self.authenticated || self.role == Role::Node
    }

    /// Not subject to POSIX permission checks (admins, nodes, plain TCP).
    pub fn bypasses_permissions(&self) -> bool {
        !self.authenticated || matches!(self.role, Role::Admin | Role::Node)
    }

    /// The uid permission checks use.
    pub fn uid(&self) -> u32 {
        if self.bypasses_permissions() {
            self.uid.unwrap_or(0)
        } else {
            self.uid.unwrap_or(NOBODY)
        }
    }

    pub fn gid(&self) -> u32 {
        if self.bypasses_permissions() {
            self.gid.unwrap_or(0)
        } else {
            self.gid.unwrap_or(NOBODY)
        }
    }

    /// The SAN URI that carries this identity in a certificate.
    pub fn to_uri(&self) -> String {
        let mut s = format!("{IDENTITY_URI_PREFIX}{}/{}", self.role.as_str(), self.name);
        let mut sep = '?';
        if let Some(u) = self.uid {
            s.push_str(&format!("{sep}uid={u}"));
            sep = '&';
        }
        if let Some(g) = self.gid {
            s.push_str(&format!("{sep}gid={g}"));
        }
        s
    }

    /// Parses `distfs://ROLE/NAME[?uid=U&gid=G]`.
    pub fn from_uri(uri: &str) -> Result<Identity, String> {
        let rest = uri.strip_prefix(IDENTITY_URI_PREFIX).ok_or_else(|| format!("`{uri}` is not a distfs:// URI"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (role, name) = path.split_once('/').ok_or_else(|| format!("`{uri}` has no name"))?;
        let role = Role::parse(role).ok_or_else(|| format!("`{uri}`: unknown role `{role}`"))?;
        if !valid_name(name) {
            return Err(format!("`{uri}`: bad name `{name}`"));
        }
        let (mut uid, mut gid) = (None, None);
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| format!("`{uri}`: bad query `{kv}`"))?;
            let n: u32 = v.parse().map_err(|_| format!("`{uri}`: `{k}` is not a number"))?;
            match k {
                "uid" => uid = Some(n),
                "gid" => gid = Some(n),
                _ => return Err(format!("`{uri}`: unknown key `{k}`")),
            }
        }
        Ok(Identity { name: name.into(), role, uid, gid, authenticated: true })
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.authenticated {
            write!(f, "{} `{}`", self.role.as_str(), self.name)
        } else {
            f.write_str("unauthenticated peer")
        }
    }
}

/// A certificate name: letters, digits, `-`, `_`, `.`; 1 to 64 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip_and_rejects() {
        let i =
            Identity { name: "alice".into(), role: Role::Client, uid: Some(1000), gid: Some(100), authenticated: true };
        assert_eq!(i.to_uri(), "distfs://client/alice?uid=1000&gid=100");
        assert_eq!(Identity::from_uri(&i.to_uri()).unwrap(), i);
        let n = Identity::node("meta-1");
        assert_eq!(Identity::from_uri(&n.to_uri()).unwrap(), n);
        for bad in
            ["http://x/y", "distfs://boss/x", "distfs://client/", "distfs://client/a b", "distfs://client/a?uid=x"]
        {
            assert!(Identity::from_uri(bad).is_err(), "{bad}");
        }
        assert!(!i.is_admin() && !i.is_member() && !i.bypasses_permissions());
        assert!(Identity::unauthenticated().is_admin() && Identity::unauthenticated().is_member());
    }
}
