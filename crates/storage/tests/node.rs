//! A real `StorageNode` on loopback with a fake metadata service: registration and its
//! persistence across restarts, heartbeats, garbage-collection deletes and their
//! acknowledgement, PutBlock/GetBlock end to end with CRC verification, and garbage
//! frames that must not disturb other clients.

use bytes::Bytes;
use distfs_proto::{
    Handler, Incoming, Kind, Limits, MetaRequest, MetaResponse, Reply, RpcClient, RpcError, StorageRequest,
    StorageResponse,
};
use distfs_storage::{StorageConfig, StorageNode, SyncPolicy};
use distfs_types::{BlockId, ByteSize, FsError, HumanDuration, NodeId, CRC_CHUNK};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct FakeState {
    next_id: u64,
    registrations: Vec<(Option<NodeId>, String)>,
    /// (node, used, blocks, deleted) of every heartbeat.
    heartbeats: Vec<(NodeId, u64, u64, Vec<BlockId>)>,
    /// Handed out in the next heartbeat answer, once.
    delete_once: Vec<BlockId>,
    /// Answer the next heartbeat with "unknown node" (a metadata service that lost it).
    forget_once: bool,
}

#[derive(Clone, Default)]
struct FakeMeta(Arc<Mutex<FakeState>>);

impl FakeMeta {
    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.0.lock().expect("fake meta lock"))
    }
}

impl Handler for FakeMeta {
    async fn handle(&self, req: Incoming) -> Result<Reply, FsError> {
        if req.kind != Kind::Meta {
            return Err(FsError::Protocol { reason: "fake meta".into() });
        }
        let r: MetaRequest =
            distfs_proto::decode(&req.header).map_err(|e| FsError::Protocol { reason: e.to_string() })?;
        let r = match r {
            MetaRequest::Once { req, .. } => *req,
            r => r,
        };
        let resp = self.with(|s| match r {
            MetaRequest::RegisterNode { node, addr, .. } => {
                s.registrations.push((node, addr));
                let node = node.unwrap_or_else(|| {
                    s.next_id += 1;
                    NodeId(s.next_id)
                });
                Ok(MetaResponse::Registered { node })
            }
            MetaRequest::Heartbeat { node, .. } if std::mem::take(&mut s.forget_once) => {
                Err(FsError::not_found(format!("node {node}")))
            }
            MetaRequest::Heartbeat { node, used, blocks, deleted, .. } => {
                s.heartbeats.push((node, used, blocks, deleted));
                Ok(MetaResponse::HeartbeatAck { delete: std::mem::take(&mut s.delete_once) })
            }
            other => Err(FsError::invalid(format!("fake meta does not serve {other:?}"))),
        })?;
        Ok(Reply::new(&resp))
    }
}

async fn start_fake_meta(cancel: &CancellationToken) -> (FakeMeta, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake meta");
    let addr = listener.local_addr().expect("addr").to_string();
    let fake = FakeMeta::default();
    tokio::spawn(distfs_proto::serve(listener, Arc::new(fake.clone()), Limits::default(), cancel.clone()));
    (fake, addr)
}

fn config(dir: &Path, meta: &str) -> StorageConfig {
    StorageConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        meta: vec![meta.into()],
        reserve: ByteSize(0),
        sync: SyncPolicy::Always,
        heartbeat_interval: HumanDuration::from_millis(100),
        tls: distfs_proto::TlsSettings::off(),
        ..StorageConfig::default()
    }
}

/// Polls `cond` until it holds or `WAIT` passes.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn body(len: usize, seed: u8) -> Bytes {
    Bytes::from((0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect::<Vec<_>>())
}

fn crcs(b: &[u8]) -> Vec<u32> {
    b.chunks(CRC_CHUNK as usize).map(crc32c::crc32c).collect()
}

async fn put(rpc: &RpcClient, addr: &str, id: BlockId, data: &Bytes) -> Result<StorageResponse, RpcError> {
    let req = StorageRequest::PutBlock { block: id, crcs: crcs(data) };
    rpc.storage(addr, &req, data.clone(), None).await.map(|(r, _)| r)
}

/// Reads a range and verifies it end to end the way a client does.
async fn get_verified(rpc: &RpcClient, addr: &str, id: BlockId, offset: u32, len: u32, want: &Bytes) {
    let (resp, data) =
        rpc.storage(addr, &StorageRequest::GetBlock { block: id, offset, len }, Bytes::new(), None).await.expect("get");
    let StorageResponse::Block { offset: start, crcs: got } = resp else { panic!("unexpected answer {resp:?}") };
    assert_eq!(start % CRC_CHUNK, 0);
    assert!(start <= offset);
    assert_eq!(got, crcs(&data), "CRCs must cover the body piece by piece");
    assert_eq!(&want[start as usize..start as usize + data.len()], &data[..]);
    assert!(start as usize + data.len() >= ((offset + len) as usize).min(want.len()));
}

#[tokio::test]
async fn node_registers_serves_heartbeats_and_collects_garbage() {
    let cancel = CancellationToken::new();
    let (fake, meta_addr) = start_fake_meta(&cancel).await;
    let dir = tempfile::tempdir().expect("tempdir");

    // Phase 1: start, register, heartbeat.
    let node = StorageNode::start(config(dir.path(), &meta_addr), cancel.clone()).await.expect("start node");
    let addr = node.local_addr().to_string();
    let id = tokio::time::timeout(WAIT, node.registered()).await.expect("registers");
    assert_eq!(id, NodeId(1));
    assert_eq!(node.node_id(), Some(id));
    assert_eq!(fake.with(|s| s.registrations.clone()), vec![(None, addr.clone())]);
    wait_until("a heartbeat", || fake.with(|s| s.heartbeats.iter().any(|h| h.0 == id))).await;

    // Phase 2: blocks over real TCP, verified end to end.
    let rpc = RpcClient::default();
    let (a, b) = (BlockId(0xa0a0), BlockId(0xb0b0));
    let (da, db) = (body(3 * CRC_CHUNK as usize + 999, 1), body(70_000, 2));
    assert_eq!(put(&rpc, &addr, a, &da).await.expect("put a"), StorageResponse::Stored);
    assert_eq!(put(&rpc, &addr, b, &db).await.expect("put b"), StorageResponse::Stored);
    assert_eq!(put(&rpc, &addr, b, &db).await.expect("idempotent put"), StorageResponse::Stored);
    get_verified(&rpc, &addr, a, 0, da.len() as u32, &da).await;
    get_verified(&rpc, &addr, a, 65_537, 3, &da).await;
    get_verified(&rpc, &addr, a, 3 * CRC_CHUNK + 5, 10_000, &da).await;
    get_verified(&rpc, &addr, b, 1, 69_000, &db).await;

    let mut bad = crcs(&da);
    bad[0] ^= 1;
    // Sent as another client might (`RpcClient::storage` would derive the frame's checksum
    // from these CRCs, and the frame itself would be refused as corrupt).
    let req = StorageRequest::PutBlock { block: BlockId(3), crcs: bad };
    let e = rpc.call::<_, StorageResponse>(&addr, Kind::Storage, &req, da.clone(), None).await;
    assert!(matches!(e, Err(RpcError::Remote(FsError::InvalidArgument { .. }))), "{e:?}");
    // Through `storage`, the same mismatch makes the frame itself fail its checksum: the
    // node refuses it (and drops that connection), and stores nothing either way.
    let e = rpc.storage(&addr, &req, da.clone(), None).await;
    assert!(matches!(e, Err(RpcError::ConnectionLost { .. } | RpcError::Remote(_))), "{e:?}");
    let e = rpc
        .storage(&addr, &StorageRequest::GetBlock { block: BlockId(3), offset: 0, len: 1 }, Bytes::new(), None)
        .await;
    assert!(matches!(e, Err(RpcError::Remote(FsError::BlockNotFound { node, .. })) if node == id), "{e:?}");
    let e = rpc.meta(&addr, &MetaRequest::StatFs, None).await;
    assert!(
        matches!(&e, Err(RpcError::Remote(FsError::Protocol { reason })) if reason.contains("storage node")),
        "{e:?}"
    );
    let (pong, _) = rpc.storage(&addr, &StorageRequest::Ping, Bytes::new(), None).await.expect("ping");
    assert_eq!(pong, StorageResponse::Pong { node: Some(id) });
    wait_until("usage in a heartbeat", || fake.with(|s| s.heartbeats.last().is_some_and(|h| h.2 == 2))).await;

    // Phase 3: garbage frames on one connection do not disturb another client.
    let mut raw = tokio::net::TcpStream::connect(&addr).await.expect("raw connect");
    raw.write_all(&[0xde; 64]).await.expect("write garbage");
    let mut sink = Vec::new();
    let closed =
        tokio::time::timeout(WAIT, raw.read_to_end(&mut sink)).await.expect("server closes the bad connection");
    if let Ok(n) = closed {
        assert!(n >= 32, "an error frame comes back before the close");
    }
    get_verified(&rpc, &addr, b, 0, 10, &db).await;

    // Phase 4: the metadata service asks for a delete; it happens and is acknowledged.
    fake.with(|s| s.delete_once = vec![a, BlockId(0x404)]);
    wait_until("the delete acknowledgement", || {
        fake.with(|s| s.heartbeats.iter().any(|h| h.3.contains(&a) && h.3.contains(&BlockId(0x404))))
    })
    .await;
    let e = rpc.storage(&addr, &StorageRequest::GetBlock { block: a, offset: 0, len: 1 }, Bytes::new(), None).await;
    assert!(matches!(e, Err(RpcError::Remote(FsError::BlockNotFound { .. }))), "{e:?}");
    assert_eq!(node.store().block_count(), 1);
    let acks = fake.with(|s| s.heartbeats.iter().filter(|h| h.3.contains(&a)).count());
    assert_eq!(acks, 1, "a delete is acknowledged once");

    // Phase 5: a metadata service that forgot the node gets a new registration, same id.
    let before = fake.with(|s| {
        s.forget_once = true;
        s.registrations.len()
    });
    wait_until("a re-registration", || fake.with(|s| s.registrations.len() > before)).await;
    assert_eq!(fake.with(|s| s.registrations.last().map(|r| r.0)), Some(Some(id)));
    assert_eq!(node.node_id(), Some(id));

    // Phase 6: restart on the same directory: same id, blocks still there.
    tokio::time::timeout(WAIT, node.shutdown()).await.expect("clean shutdown");
    let node = StorageNode::start(config(dir.path(), &meta_addr), cancel.clone()).await.expect("restart node");
    assert_eq!(node.node_id(), None, "not registered in this run yet");
    let id2 = tokio::time::timeout(WAIT, node.registered()).await.expect("registers again");
    assert_eq!(id2, id);
    assert_eq!(fake.with(|s| s.registrations.last().map(|r| r.0)), Some(Some(id)));
    let addr = node.local_addr().to_string();
    get_verified(&rpc, &addr, b, 0, db.len() as u32, &db).await;
    assert_eq!(node.store().block_count(), 1);

    cancel.cancel();
    tokio::time::timeout(WAIT, node.stopped()).await.expect("stops on the parent token");
}

#[tokio::test]
async fn serves_while_metadata_is_unreachable_and_batches_syncs() {
    // A port nobody listens on.
    let meta_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cancel = CancellationToken::new();
    let mut cfg = config(dir.path(), &meta_addr);
    cfg.sync = SyncPolicy::Batch;
    let node = StorageNode::start(cfg, cancel.clone()).await.expect("start node");
    let addr = node.local_addr().to_string();
    let rpc = RpcClient::default();

    let mut puts = Vec::new();
    for i in 0..16u128 {
        let (rpc, addr) = (rpc.clone(), addr.clone());
        puts.push(tokio::spawn(async move {
            let d = body(100_000 + i as usize, i as u8);
            put(&rpc, &addr, BlockId(i + 1), &d).await.map(|r| (r, d))
        }));
    }
    for (i, p) in puts.into_iter().enumerate() {
        let (r, d) = p.await.expect("join").expect("batched put");
        assert_eq!(r, StorageResponse::Stored);
        get_verified(&rpc, &addr, BlockId(i as u128 + 1), 12_345, 50_000, &d).await;
    }
    assert_eq!(node.node_id(), None);
    let (pong, _) = rpc.storage(&addr, &StorageRequest::Ping, Bytes::new(), None).await.expect("ping");
    assert_eq!(pong, StorageResponse::Pong { node: None });

    tokio::time::timeout(WAIT, node.shutdown()).await.expect("shutdown while registration is retrying");
}
