//! Transport security against real processes with `tls.mode = "on"`: a client without a
//! certificate, with one from another CA, with an expired one, or speaking plain TCP is
//! refused by the metadata server and by every storage node with a clear error, and
//! nothing is written; internal storage requests need a node certificate; admin
//! commands need an admin certificate; a client's POSIX permissions are enforced; and
//! peers that ask for lz4, zstd or no compression interoperate with servers that accept
//! some, all or none of them.

mod common;

use bytes::Bytes;
use common::*;
use distfs_proto::{ClientTls, ClientTransport, Identity, RpcClient, RpcConfig, RpcError, StorageRequest, TlsPaths};
use distfs_testkit::{ClusterOpts, ProcessCluster};
use distfs_types::{BlockId, FsError, InodeId};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

fn tls_opts() -> ClusterOpts {
    ClusterOpts { storage_nodes: 2, replication: 2, tls: true, ..ClusterOpts::default() }
}

/// A directory for `DISTFS_TLS_DIR` with the cluster's CA and the given client files.
fn tls_dir(c: &ProcessCluster, name: &str, cert_from: Option<&Path>) -> PathBuf {
    let d = c.dir().join("bad").join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(c.ca_dir().join("ca.pem"), d.join("ca.pem")).unwrap();
    if let Some(src) = cert_from {
        std::fs::copy(src.join("client.pem"), d.join("client.pem")).unwrap();
        std::fs::copy(src.join("client.key"), d.join("client.key")).unwrap();
    }
    d
}

fn transport_of(dir: Option<&Path>) -> ClientTransport {
    let Some(d) = dir else { return ClientTransport::default() };
    let (cert, key) = (d.join("client.pem"), d.join("client.key"));
    let paths =
        TlsPaths { ca: d.join("ca.pem"), cert: cert.exists().then_some(cert), key: key.exists().then_some(key) };
    ClientTransport { tls: Some(Arc::new(ClientTls::load(&paths).expect("load client TLS"))), ..Default::default() }
}

/// The CLI as a client holding the certificate in `dir` (plain TCP with `None`).
async fn cli_as(c: &ProcessCluster, dir: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = c.cli();
    cmd.env_remove("DISTFS_TLS_DIR").args(["--timeout", "5s"]);
    if let Some(d) = dir {
        cmd.env("DISTFS_TLS_DIR", d);
    }
    cmd.args(args);
    run(cmd).await
}

async fn storage_addrs(c: &ProcessCluster) -> Vec<String> {
    c.client().cluster_status().await.unwrap().nodes.into_iter().map(|n| n.addr).collect()
}

fn rpc(transport: ClientTransport) -> RpcClient {
    RpcClient::new(RpcConfig { connect_timeout: Duration::from_secs(5), transport, ..RpcConfig::default() })
}

/// A PutBlock of 64 KiB to `addr`.
async fn put_block(rpc: &RpcClient, addr: &str, id: u64) -> Result<(), RpcError> {
    let data = random_bytes(64 << 10, id);
    let req = StorageRequest::PutBlock { block: BlockId(id as u128), crcs: vec![crc32c::crc32c(&data)] };
    rpc.storage(addr, &req, Bytes::from(data), None).await.map(|_| ())
}

fn all_block_files(c: &ProcessCluster) -> usize {
    (0..c.storage_count()).map(|i| c.block_files(i).len()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_without_a_valid_certificate_are_refused_everywhere_and_write_nothing() {
    let c = ProcessCluster::start(bins(), tls_opts()).await;
    let local = c.dir().join("local.bin");
    std::fs::write(&local, random_bytes(300_000, 1)).unwrap();
    let local = local.display().to_string();

    // Another cluster's CA, and an admin certificate from it.
    let other = c.dir().join("other-ca");
    c.cert(&["init", "--dir", &other.display().to_string()]);
    c.cert(&["issue", "--dir", &other.display().to_string(), "--client", "mallory", "--admin"]);
    // An admin certificate from the right CA that expired yesterday.
    let expired_src = c.dir().join("expired-src");
    let now = time::OffsetDateTime::now_utc();
    let req = distfs::cert::Request {
        identity: Identity { role: distfs_proto::Role::Admin, ..Identity::node("old-admin") },
        hosts: vec![],
        not_before: now - time::Duration::days(30),
        not_after: now - time::Duration::days(1),
    };
    distfs::cert::issue(&c.ca_dir(), &req, &expired_src).unwrap();

    let no_cert = tls_dir(&c, "no-cert", None);
    let other_ca = tls_dir(&c, "other-ca", Some(&other.join("clients").join("mallory")));
    let expired = tls_dir(&c, "expired", Some(&expired_src));
    let cases: Vec<(&str, Option<&Path>, &str)> = vec![
        ("no certificate", Some(&no_cert), "requires a client certificate"),
        ("another CA", Some(&other_ca), "not issued by this cluster's CA"),
        ("expired", Some(&expired), "expired"),
        ("plain TCP", None, "requires TLS"),
    ];
    let nodes = storage_addrs(&c).await;
    assert_eq!(nodes.len(), 2);
    for (what, dir, want) in &cases {
        // The metadata server, through the CLI: exit code 9 and the reason.
        for args in [vec!["put", &local, "/stolen"], vec!["mkdir", "/evil"], vec!["ls", "/"]] {
            let out = cli_as(&c, *dir, &args).await;
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(9), "{what}: {args:?} should be refused: {err}");
            assert!(err.contains(want), "{what}: `{want}` not in: {err}");
            assert!(err.contains("refused the connection"), "{what}: {err}");
        }
        // Every storage node, with a direct block write.
        let client = rpc(transport_of(*dir));
        for (i, addr) in nodes.iter().enumerate() {
            let err = put_block(&client, addr, 900 + i as u64).await.unwrap_err();
            assert!(matches!(err, RpcError::Refused { .. }), "{what} at {addr}: {err:?}");
            assert!(!err.is_transient(), "{what}: a refusal is final");
            assert!(err.to_string().contains(want), "{what} at {addr}: `{want}` not in `{err}`");
        }
    }

    // Nothing was written: the namespace is empty and no node holds a block.
    let root = c.client().readdir(InodeId::ROOT).await.unwrap();
    assert!(root.is_empty(), "namespace changed: {root:?}");
    assert_eq!(all_block_files(&c), 0, "a refused client stored a block");

    // The same operations with the admin certificate work (the refusals were about
    // the certificates, not the cluster).
    distfs_ok(&c, &["put", &local, "/ok"]).await;
    let admin = rpc(c.client_transport());
    put_block(&admin, &nodes[0], 77).await.expect("a cluster client may write blocks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roles_and_permissions_are_enforced() {
    let c = ProcessCluster::start(bins(), tls_opts()).await;
    let bob = c.issue_client("bob", &["--uid", "1000", "--gid", "1000"]);
    let carol = c.issue_client("carol", &["--uid", "2000", "--gid", "2000"]);
    let local = c.dir().join("f.bin");
    std::fs::write(&local, random_bytes(100_000, 2)).unwrap();
    let local = local.display().to_string();
    let nodes = c.client().cluster_status().await.unwrap().nodes;
    let node_id = nodes[0].id.0.to_string();

    // A storage node serves block reads and writes to any client of the cluster, but
    // deletes and repair copies only to nodes.
    let as_bob = rpc(transport_of(Some(&bob)));
    put_block(&as_bob, &nodes[0].addr, 5).await.expect("client block write");
    for req in [
        StorageRequest::DeleteBlocks { blocks: vec![BlockId(5)] },
        StorageRequest::CopyBlock { block: BlockId(6), from: vec![] },
    ] {
        match as_bob.storage(&nodes[0].addr, &req, Bytes::new(), None).await {
            Err(RpcError::Remote(FsError::PermissionDenied { what })) => {
                assert!(what.contains("needs a node certificate"), "{what}")
            }
            other => panic!("{req:?} from a client: {other:?}"),
        }
    }
    assert_eq!(all_block_files(&c), 1, "the refused delete removed the block");
    // Raft messages to a metadata server need a node certificate too.
    let raft = as_bob
        .call_raw(c.meta_addr(), distfs_proto::Kind::Raft, Bytes::from_static(b"x"), Bytes::new(), None)
        .await
        .unwrap_err();
    assert!(matches!(&raft, RpcError::Remote(FsError::PermissionDenied { what }) if what.contains("Raft")), "{raft:?}");

    // Admin commands need an admin certificate.
    for args in [
        vec!["node", "drain", node_id.as_str()],
        vec!["node", "remove", node_id.as_str()],
        vec!["node", "maintenance", node_id.as_str(), "on"],
        vec!["meta", "remove", "1"],
        vec!["fsck", "--repair"],
    ] {
        let out = cli_as(&c, Some(&bob), &args).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(9), "{args:?} as bob (meta {}): {err}", c.meta_list());
        assert!(err.contains("client `bob` may not") && err.contains("admin certificate"), "{args:?}: {err}");
    }
    let after = c.client().cluster_status().await.unwrap().nodes;
    assert_eq!(
        after.iter().map(|n| (n.id, n.admin)).collect::<Vec<_>>(),
        nodes.iter().map(|n| (n.id, n.admin)).collect::<Vec<_>>(),
        "a refused admin command changed a node"
    );
    // Read-only status is open to clients; the admin may drain.
    assert!(cli_as(&c, Some(&bob), &["cluster", "status"]).await.status.success());
    distfs_ok(&c, &["node", "drain", &node_id, "--dry-run"]).await;

    // POSIX permissions for the certificate's uid/gid: the root directory (0755, root)
    // is not bob's; his home is.
    let out = cli_as(&c, Some(&bob), &["put", &local, "/bob-at-root"]).await;
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert!(stderr(&out).contains("permission denied"), "{}", stderr(&out));
    let admin = c.client();
    let home = admin.mkdir(InodeId::ROOT, "bob", 0o755).await.unwrap();
    admin
        .setattr(home.ino, distfs_types::SetAttr { uid: Some(1000), gid: Some(1000), ..Default::default() })
        .await
        .unwrap();
    let out = cli_as(&c, Some(&bob), &["put", &local, "/bob/f"]).await;
    assert!(out.status.success(), "bob in his home: {}", stderr(&out));
    let f = admin.resolve("/bob/f").await.unwrap();
    assert_eq!((f.uid, f.gid), (1000, 1000), "new files belong to the certificate's uid/gid");
    // Carol may read (0644 by default) but not write, remove or chmod.
    let out = cli_as(&c, Some(&carol), &["cat", "/bob/f"]).await;
    assert!(out.status.success() && out.stdout == std::fs::read(&local).unwrap(), "{}", stderr(&out));
    for args in
        [vec!["put", &local, "/bob/g"], vec!["rm", "/bob/f"], vec!["mkdir", "/bob/d"], vec!["mv", "/bob/f", "/bob/h"]]
    {
        let out = cli_as(&c, Some(&carol), &args).await;
        assert_eq!(out.status.code(), Some(9), "carol {args:?}: {}", stderr(&out));
    }
    assert_eq!(admin.readdir(home.ino).await.unwrap().len(), 1, "carol changed bob's home");
    // Bob can lock his home against reading; carol then cannot list it.
    let bob_client = distfs_client::Client::new(distfs_client::ClientConfig {
        meta: c.meta_addrs().to_vec(),
        transport: transport_of(Some(&bob)),
        ..Default::default()
    });
    bob_client
        .setattr(home.ino, distfs_types::SetAttr { perm: Some(0o700), ..Default::default() })
        .await
        .expect("the owner may chmod");
    let out = cli_as(&c, Some(&carol), &["ls", "/bob"]).await;
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert!(cli_as(&c, Some(&bob), &["rm", "/bob/f"]).await.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compressed_and_uncompressed_peers_interoperate() {
    // The metadata servers accept no compression, storage nodes accept lz4 and zstd and
    // ask for zstd on the connections they open (heartbeats, copies between nodes).
    let opts = ClusterOpts {
        meta_extra: "[compression]\naccept = []\n".into(),
        storage_extra: "[compression]\nsend = \"zstd\"\naccept = [\"lz4\", \"zstd\"]\n".into(),
        storage_nodes: 3,
        // Three metadata servers: Raft between them runs over TLS too.
        meta_servers: 3,
        ..tls_opts()
    };
    let mut c = ProcessCluster::start(bins(), opts).await;
    let text: Vec<u8> =
        b"compressible line of text, repeated many times over\n".iter().copied().cycle().take(6 << 20).collect();
    let noise = random_bytes(5 << 20, 9);
    let admin_dir = c.ca_dir().join("clients").join("admin");
    let mut written = Vec::new();
    for (i, algo) in ["none", "lz4", "zstd"].iter().enumerate() {
        for (kind, data) in [("text", &text), ("noise", &noise)] {
            let local = c.dir().join(format!("{kind}-{algo}"));
            std::fs::write(&local, data).unwrap();
            let remote = format!("/{kind}-{i}");
            let out =
                cli_as(&c, Some(&admin_dir), &["--compression", algo, "put", &local.display().to_string(), &remote])
                    .await;
            assert!(out.status.success(), "put with {algo}: {}", stderr(&out));
            written.push((remote, data.clone()));
        }
    }
    // Every file reads back the same with every setting, whoever wrote it.
    for algo in ["none", "lz4", "zstd"] {
        for (remote, data) in &written {
            let out = cli_as(&c, Some(&admin_dir), &["--compression", algo, "cat", remote]).await;
            assert!(out.status.success(), "cat {remote} with {algo}: {}", stderr(&out));
            assert!(out.stdout == **data, "{remote} read with {algo} differs");
        }
    }
    // Draining a node makes the others copy its blocks from it, node to node, over
    // connections where both sides agreed on zstd; the files still read back the same.
    let victim = c.client().cluster_status().await.unwrap().nodes[0].id;
    distfs_ok(&c, &["node", "drain", &victim.0.to_string()]).await;
    distfs_testkit::wait_for("the drain to finish", Duration::from_secs(60), || async {
        let s = c.client().cluster_status().await.ok()?;
        s.nodes.iter().any(|n| n.id == victim && n.admin == distfs_types::AdminState::Drained).then_some(())
    })
    .await;
    let victim_idx = (0..c.storage_count()).find(|&i| c.node_id(i) == Some(victim)).unwrap();
    c.kill_storage(victim_idx);
    for (remote, data) in &written {
        let out = cli_as(&c, Some(&admin_dir), &["--compression", "lz4", "cat", remote]).await;
        assert!(out.status.success() && out.stdout == **data, "{remote} after the drain: {}", stderr(&out));
    }
}

/// `distfs local up --tls` makes its CA and certificates, runs every process with TLS and
/// serves a client holding the admin certificate it prints; a plain client is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_up_with_tls() {
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", distfs_testkit::free_port());
    let data = tmp.path().join("data");
    let log = std::fs::File::create(tmp.path().join("up.log")).unwrap();
    let mut up = Kill(
        std::process::Command::new(env!("CARGO_BIN_EXE_distfs"))
            .args([
                "local",
                "up",
                "--tls",
                "--storage",
                "2",
                "--replication",
                "2",
                "--sync",
                "none",
                "--listen",
                &listen,
            ])
            .arg("--dir")
            .arg(&data)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let admin = data.join("tls").join("clients").join("admin");
    let cli = |tls: bool, args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_distfs"));
        cmd.env("DISTFS_META", &listen).env_remove("DISTFS_TLS_DIR").args(["--timeout", "3s"]).args(args);
        if tls {
            cmd.env("DISTFS_TLS_DIR", &admin);
        }
        cmd
    };
    // Ready when both storage nodes are up; a `local up` that exits (its port taken by
    // another test between `free_port` and its bind) fails at once, with its log.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(cli(true, &["cluster", "status", "--json"])).await;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).matches("\"Up\"").count() == 2 {
            break;
        }
        let log = || std::fs::read_to_string(tmp.path().join("up.log")).unwrap_or_default();
        if let Some(status) = up.0.try_wait().expect("poll local up") {
            panic!("local up --tls exited ({status}) before it was ready:\n{}", log());
        }
        assert!(std::time::Instant::now() < deadline, "local up --tls not ready after 30 s:\n{}", log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let src = tmp.path().join("src.bin");
    std::fs::write(&src, random_bytes(3 << 20, 5)).unwrap();
    let out = run(cli(true, &["put", src.to_str().unwrap(), "/f"])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(cli(true, &["cat", "/f"])).await;
    assert!(out.status.success() && out.stdout == std::fs::read(&src).unwrap(), "{}", stderr(&out));
    let out = run(cli(false, &["ls", "/"])).await;
    assert_eq!(out.status.code(), Some(9), "plain client: {}", stderr(&out));
    assert!(stderr(&out).contains("requires TLS"), "{}", stderr(&out));
}
