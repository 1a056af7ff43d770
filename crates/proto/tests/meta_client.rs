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
