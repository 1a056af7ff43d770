//! `MetaClient` finds a new leader after the old one dies, even while followers still
//! name the dead one in their hints.

use distfs_proto::*;
use distfs_types::FsError;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Answers `NotLeader` naming `dead` until `leads_at`, then serves as leader.
struct Follower {
    dead: String,
    leads_at: Option<Instant>,
}

impl Handler for Follower {
    async fn handle(&self, _req: Incoming) -> Result<Reply, FsError> {
        match self.leads_at {
            Some(t) if Instant::now() >= t => Ok(Reply::new(&MetaResponse::Done)),
            _ => Err(FsError::NotLeader { leader: Some(self.dead.clone()) }),
        }
    }
}

async fn start(h: Follower) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(serve(l, Arc::new(h), Limits::default(), CancellationToken::new()));
    addr
}

#[tokio::test]
async fn stale_hints_to_a_dead_leader_do_not_trap_the_client() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let soon = Instant::now() + Duration::from_millis(400);
    let next_leader = start(Follower { dead: dead.clone(), leads_at: Some(soon) }).await;
    let follower = start(Follower { dead: dead.clone(), leads_at: None }).await;
    let client =
        MetaClient::new(RpcClient::default(), vec![dead, next_leader, follower]).with_deadline(Duration::from_secs(5));
    let t0 = Instant::now();
    let r = client.call(&MetaRequest::StatFs).await.expect("the new leader is found");
    assert_eq!(r, MetaResponse::Done);
    assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
}

/// A leader that answers every call with one error, counting the calls.
struct Answers {
    error: FsError,
    calls: std::sync::atomic::AtomicUsize,
}

impl Handler for Answers {
    async fn handle(&self, _req: Incoming) -> Result<Reply, FsError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(self.error.clone())
    }
}

/// The leader's definitive answers come back at once, however a storage node's reply of
/// the same kind would be retried: a `BlockNotFound` of a deduplicated commit (the writer
/// then writes the block itself) was retried for the whole 15 s deadline.
#[tokio::test]
async fn a_definitive_answer_of_the_leader_is_not_retried() {
    use distfs_types::{BlockId, NodeId};
    for error in [
        FsError::BlockNotFound { block: BlockId(7), node: NodeId(0) },
        FsError::Corrupt { block: BlockId(7), node: NodeId(1), detail: "crc mismatch".into() },
        FsError::not_found("inode 9"),
    ] {
        let h = Arc::new(Answers { error: error.clone(), calls: Default::default() });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(serve(l, h.clone(), Limits::default(), CancellationToken::new()));
        let client = MetaClient::new(RpcClient::default(), vec![addr]).with_deadline(Duration::from_secs(5));
        let t0 = Instant::now();
        match client.call(&MetaRequest::StatFs).await {
            Err(RpcError::Remote(e)) => assert_eq!(e, error),
            other => panic!("expected {error:?}, got {other:?}"),
        }
        assert_eq!(h.calls.load(std::sync::atomic::Ordering::SeqCst), 1, "{error:?} was retried");
        assert!(t0.elapsed() < Duration::from_secs(1), "{error:?} took {:?}", t0.elapsed());
    }
}
