//! End to end over the real protocol: a `MetaServer` on 127.0.0.1:0 driven by
//! `MetaClient` (namespace, node registry, allocate/commit/layout, GC via heartbeats),
//! restart on the same data directory, and liveness (Suspect/Dead) from missed heartbeats.

use distfs_meta::{MetaConfig, MetaServer};
use distfs_proto::{MetaClient, MetaRequest, MetaResponse, RenameMode, RpcClient, SliceWrite, WrittenBlock};
use distfs_types::{BlockId, BlockRef, DirEntry, FileKind, HumanDuration, InodeId, NodeId, NodeState, Timestamp};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn config(dir: &std::path::Path) -> MetaConfig {
    MetaConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        suspect_after: HumanDuration::from_millis(300),
        dead_after: HumanDuration::from_millis(800),
        raft: distfs_meta::RaftConfig {
            heartbeat_interval: HumanDuration::from_millis(50),
            election_timeout_min: HumanDuration::from_millis(150),
            election_timeout_max: HumanDuration::from_millis(300),
            snapshot_after_logs: 10_000,
        },
        tls: distfs_proto::TlsSettings::off(),
        ..MetaConfig::default()
    }
}

async fn start(cfg: MetaConfig) -> (MetaServer, MetaClient) {
    let server = MetaServer::start(cfg, CancellationToken::new()).await.expect("server starts");
    server.wait_is_leader(Duration::from_secs(10)).await.expect("becomes leader");
    let client = MetaClient::new(RpcClient::default(), vec![server.local_addr().to_string()])
        .with_deadline(Duration::from_secs(5));
    (server, client)
}

async fn call(c: &MetaClient, req: MetaRequest) -> MetaResponse {
    c.call(&req).await.unwrap_or_else(|e| panic!("{req:?} failed: {e}"))
}

async fn attr(c: &MetaClient, req: MetaRequest) -> distfs_types::Attr {
    match call(c, req).await {
        MetaResponse::Attr(a) | MetaResponse::Changed { attr: Some(a), .. } => a,
        other => panic!("expected Attr, got {other:?}"),
    }
}

/// The directories a namespace change answered with, checked against what `GetAttr`
/// says of each right after: the answer is the state after the change.
async fn changed_dirs(c: &MetaClient, req: MetaRequest) -> Vec<distfs_types::Attr> {
    let dirs = match call(c, req).await {
        MetaResponse::Changed { dirs, .. } => dirs,
        other => panic!("expected Changed, got {other:?}"),
    };
    for d in &dirs {
        assert_eq!(&attr(c, MetaRequest::GetAttr { ino: d.ino }).await, d, "directory {} as answered", d.ino);
    }
    dirs
}

async fn heartbeat(c: &MetaClient, node: NodeId, deleted: Vec<BlockId>) -> Vec<BlockId> {
    let req = MetaRequest::Heartbeat { node, capacity: 1 << 40, used: 0, blocks: 0, load: 0, deleted };
    match call(c, req).await {
        MetaResponse::HeartbeatAck { delete } => delete,
        other => panic!("expected HeartbeatAck, got {other:?}"),
    }
}

async fn list(c: &MetaClient, ino: InodeId) -> Vec<DirEntry> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        match call(c, MetaRequest::ReadDir { ino, after: after.clone(), limit: 2, attrs: false }).await {
            MetaResponse::Entries { entries, more, .. } => {
                after = entries.last().map(|e| e.name.clone());
                out.extend(entries);
                if !more {
                    return out;
                }
            }
            other => panic!("expected Entries, got {other:?}"),
        }
    }
}

/// The whole namespace as (path, kind, size) for comparing before and after a restart.
async fn tree(c: &MetaClient) -> Vec<(String, FileKind, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![(String::new(), InodeId::ROOT)];
    while let Some((path, ino)) = todo.pop() {
        for e in list(c, ino).await {
            let p = format!("{path}/{}", e.name);
            let a = attr(c, MetaRequest::GetAttr { ino: e.ino }).await;
            if e.kind == FileKind::Dir {
                todo.push((p.clone(), e.ino));
            }
            out.push((p, e.kind, a.size));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_write_gc_and_restart_over_the_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nodes heartbeat once per phase here: a loaded machine must not make them Suspect
    // in between (liveness has its own test below).
    let patient = MetaConfig {
        suspect_after: HumanDuration::from_secs(30),
        dead_after: HumanDuration::from_secs(60),
        ..config(dir.path())
    };
    let (server, c) = start(patient.clone()).await;

    // Phase 1: three storage nodes register and heartbeat.
    let mut nodes = Vec::new();
    for i in 0..3 {
        let req = MetaRequest::RegisterNode {
            node: None,
            token: None,
            addr: format!("127.0.0.1:{}", 9000 + i),
            zone: format!("z{i}"),
            capacity: 1 << 40,
            used: 0,
            blocks: 0,
        };
        match call(&c, req).await {
            MetaResponse::Registered { node } => nodes.push(node),
            other => panic!("expected Registered, got {other:?}"),
        }
    }
    for n in &nodes {
        assert!(heartbeat(&c, *n, vec![]).await.is_empty());
    }

    // Phase 2: namespace.
    const ROOT: InodeId = InodeId::ROOT;
    let a = attr(&c, MetaRequest::Mkdir { parent: ROOT, name: "a".into(), perm: 0o755, uid: 1, gid: 1 }).await;
    let create = |name: &str| MetaRequest::Create {
        parent: a.ino,
        name: name.into(),
        perm: 0o644,
        uid: 1,
        gid: 1,
        exclusive: true,
        open_session: None,
    };
    let f = attr(&c, create("f")).await;
    assert_eq!(f.kind, FileKind::File);
    // Each namespace change answers with the directories it touched, as they are after
    // it: `a` gained an entry (a newer version than when it was made).
    let dirs = changed_dirs(&c, create("g0")).await;
    assert_eq!(dirs.iter().map(|d| d.ino).collect::<Vec<_>>(), vec![a.ino]);
    assert!(dirs[0].version > a.version, "{:?} after {:?}", dirs[0], a);
    let dirs = changed_dirs(&c, MetaRequest::Unlink { parent: a.ino, name: "g0".into() }).await;
    assert_eq!(dirs.iter().map(|d| d.ino).collect::<Vec<_>>(), vec![a.ino]);

    // Phase 3: allocate, commit a write, read the layout.
    let targets = match call(&c, MetaRequest::AllocateBlocks { ino: f.ino, count: 2 }).await {
        MetaResponse::Allocated { blocks } => blocks,
        other => panic!("expected Allocated, got {other:?}"),
    };
    assert_eq!(targets.len(), 2);
    for t in &targets {
        assert_eq!(t.targets.len(), 3, "three up nodes, R=3");
    }
    let blocks: Vec<WrittenBlock> = targets
        .iter()
        .map(|t| WrittenBlock {
            block: BlockRef { id: t.id, len: 1000 },
            replicas: t.targets.iter().map(|n| n.id).collect(),
        })
        .collect();
    let commit = MetaRequest::CommitWrite {
        ino: f.ino,
        slices: vec![SliceWrite { chunk: 0, offset: 0, len: 2000, blocks, inline: None }],
        min_size: 2000,
        mtime: Timestamp::now(),
        bad: vec![],
    };
    let after = attr(&c, commit).await;
    assert_eq!(after.size, 2000);
    let layout = match call(&c, MetaRequest::GetLayout { ino: f.ino, first_chunk: 0, last_chunk: 0 }).await {
        MetaResponse::Layout(l) => l,
        other => panic!("expected Layout, got {other:?}"),
    };
    assert_eq!(layout.chunks.len(), 1);
    assert_eq!(layout.chunks[0].slices.len(), 1);
    assert_eq!(layout.blocks.len(), 2);
    assert_eq!(layout.nodes.len(), 3);
    assert!(layout.nodes.iter().all(|n| n.healthy));

    // Phase 4: rename, then unlink: the blocks go to the GC queue of their replicas.
    let rename = MetaRequest::Rename {
        parent: a.ino,
        name: "f".into(),
        new_parent: ROOT,
        new_name: "g".into(),
        mode: RenameMode::Replace,
    };
    let dirs = changed_dirs(&c, rename).await;
    assert_eq!(dirs.iter().map(|d| d.ino).collect::<Vec<_>>(), vec![a.ino, ROOT], "both directories of a rename");
    let g = attr(&c, MetaRequest::Lookup { parent: ROOT, name: "g".into() }).await;
    assert_eq!(g.ino, f.ino);
    call(&c, MetaRequest::Unlink { parent: ROOT, name: "g".into() }).await;
    // The unlinked file is an orphan until the leader's sweeper frees it (nobody holds
    // it open): its blocks reach the GC queue shortly after.
    let written: BTreeSet<BlockId> = targets.iter().map(|t| t.id).collect();
    for n in &nodes {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let del: BTreeSet<BlockId> = loop {
            let del: BTreeSet<BlockId> = heartbeat(&c, *n, vec![]).await.into_iter().collect();
            if !del.is_empty() || tokio::time::Instant::now() > deadline {
                break del;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(del, written, "node {n} must delete both blocks");
        let again = heartbeat(&c, *n, del.into_iter().collect()).await;
        assert!(again.is_empty(), "acknowledged deletions are not handed out again");
    }
    match call(&c, MetaRequest::ClusterStatus).await {
        MetaResponse::Status(s) => {
            assert_eq!(s.gc_pending, 0);
            assert_eq!(s.blocks, 0);
            assert_eq!(s.nodes.len(), 3);
        }
        other => panic!("expected Status, got {other:?}"),
    }

    // Phase 5: more namespace, then restart on the same directory.
    attr(&c, MetaRequest::Mkdir { parent: a.ino, name: "sub".into(), perm: 0o700, uid: 0, gid: 0 }).await;
    attr(&c, MetaRequest::Symlink { parent: ROOT, name: "link".into(), target: "/a/sub".into(), uid: 0, gid: 0 }).await;
    for i in 0..5 {
        attr(
            &c,
            MetaRequest::Create {
                parent: ROOT,
                name: format!("file{i}"),
                perm: 0o644,
                uid: 0,
                gid: 0,
                exclusive: true,
                open_session: None,
            },
        )
        .await;
    }
    let resolved = attr(&c, MetaRequest::ResolvePath { path: "/link/../sub".into() }).await;
    assert_eq!(resolved.kind, FileKind::Dir);
    let before = tree(&c).await;
    assert_eq!(before.len(), 8, "{before:?}");
    server.shutdown().await.expect("clean shutdown");

    let (server, c) = start(patient).await;
    assert_eq!(tree(&c).await, before, "namespace survives a restart");
    assert_eq!(server.metrics().current_leader, Some(1));
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_nodes_become_suspect_then_dead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, c) = start(config(dir.path())).await;
    let mut nodes = Vec::new();
    for i in 0..2 {
        let req = MetaRequest::RegisterNode {
            node: None,
            token: None,
            addr: format!("127.0.0.1:{}", 9100 + i),
            zone: String::new(),
            capacity: 1 << 40,
            used: 0,
            blocks: 0,
        };
        if let MetaResponse::Registered { node } = call(&c, req).await {
            nodes.push(node);
        }
    }
    let (alive, silent) = (nodes[0], nodes[1]);
    let state_of = |s: &distfs_proto::ClusterStatus, n: NodeId| s.nodes.iter().find(|i| i.id == n).map(|i| i.state);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen_suspect = false;
    loop {
        heartbeat(&c, alive, vec![]).await;
        let MetaResponse::Status(s) = call(&c, MetaRequest::ClusterStatus).await else { panic!("expected Status") };
        assert_eq!(state_of(&s, alive), Some(NodeState::Up));
        match state_of(&s, silent) {
            Some(NodeState::Suspect) => seen_suspect = true,
            Some(NodeState::Dead) => break,
            _ => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "silent node never became dead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_suspect, "a node is suspect before it is dead");
    // With R=3 and only one node up, writes cannot be placed.
    let f = attr(
        &c,
        MetaRequest::Create {
            parent: InodeId::ROOT,
            name: "f".into(),
            perm: 0o644,
            uid: 0,
            gid: 0,
            exclusive: true,
            open_session: None,
        },
    )
    .await;
    match c.call(&MetaRequest::AllocateBlocks { ino: f.ino, count: 1 }).await {
        Err(distfs_proto::RpcError::Remote(distfs_types::FsError::Unavailable { reason })) => {
            assert!(reason.contains("writes need 2"), "{reason}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // Unknown nodes are told to register again.
    match c
        .call(&MetaRequest::Heartbeat { node: NodeId(99), capacity: 0, used: 0, blocks: 0, load: 0, deleted: vec![] })
        .await
    {
        Err(distfs_proto::RpcError::Remote(distfs_types::FsError::NotFound { what })) => {
            assert!(what.contains("register"))
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    server.shutdown().await.expect("clean shutdown");
}

/// Group commit (`batch.rs`): writes that overlap share log entries, and each still gets
/// its own answer: of two clients racing for a name exactly one creates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries_and_each_gets_its_own_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, c) = start(config(dir.path())).await;
    let d = attr(&c, MetaRequest::Mkdir { parent: InodeId::ROOT, name: "d".into(), perm: 0o755, uid: 0, gid: 0 }).await;
    let before = server.metrics().last_log_index.expect("a log");
    // 48 names asked once, 16 asked twice (by two clients with their own request ids).
    let mut names: Vec<String> = (0..48).map(|i| format!("one{i}")).collect();
    for i in 0..16 {
        names.push(format!("race{i}"));
        names.push(format!("race{i}"));
    }
    let calls: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let c = MetaClient::new(RpcClient::default(), vec![server.local_addr().to_string()])
                .with_deadline(Duration::from_secs(20));
            let req = MetaRequest::Mkdir { parent: d.ino, name: name.clone(), perm: 0o755, uid: 0, gid: 0 };
            tokio::spawn(async move { (i, c.call(&req).await) })
        })
        .collect();
    let mut created = std::collections::BTreeMap::<String, usize>::new();
    for h in calls {
        let (i, r) = h.await.expect("task");
        match r {
            Ok(MetaResponse::Changed { attr: Some(a), dirs }) => {
                assert_eq!(a.kind, FileKind::Dir);
                assert_eq!(dirs.iter().map(|x| x.ino).collect::<Vec<_>>(), vec![d.ino]);
                *created.entry(names[i].clone()).or_default() += 1;
            }
            Err(e) if names[i].starts_with("race") && e.to_string().contains("already exists") => {}
            other => panic!("mkdir {} answered {other:?}", names[i]),
        }
    }
    assert_eq!(created.len(), 64, "every name created");
    assert!(created.values().all(|n| *n == 1), "each name created by exactly one caller: {created:?}");
    let listed: BTreeSet<String> = list(&c, d.ino).await.into_iter().map(|e| e.name).collect();
    assert_eq!(listed, created.keys().cloned().collect::<BTreeSet<_>>());
    let entries = server.metrics().last_log_index.expect("a log") - before;
    assert!(entries <= 40, "80 overlapping writes took {entries} log entries: they were not batched");
    server.shutdown().await.expect("shutdown");
}
