//! Real faults against real processes: storage nodes killed with SIGKILL, and a block
//! copy corrupted on disk.

mod common;

use common::*;
use distfs_client::plan::order_replicas;
use distfs_types::{InodeId, NodeState};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Writes `n` files of different sizes and returns their contents.
async fn seed_files(c: &distfs_testkit::ProcessCluster, n: usize) -> Vec<(String, Vec<u8>)> {
    let client = c.client();
    let mut files = Vec::new();
    for i in 0..n {
        let name = format!("f{i}");
        let data = random_bytes(1_000 + i * 1_700_000, i as u64 + 1);
        let f = client.create(InodeId::ROOT, &name, 0o644, true).await.unwrap();
        client.write_at(f.ino, 0, &data).await.unwrap();
        files.push((name, data));
    }
    files
}

async fn assert_all_readable(c: &distfs_testkit::ProcessCluster, files: &[(String, Vec<u8>)]) {
    let client = c.client();
    for (name, data) in files {
        let f = client.lookup(InodeId::ROOT, name).await.unwrap();
        let got = client.read_at(f.ino, 0, u64::MAX).await.unwrap_or_else(|e| panic!("read {name}: {e}"));
        assert!(got[..] == data[..], "{name} reads back different bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_storage_node_killed_everything_readable_and_writes_succeed() {
    let mut c = cluster().await;
    let files = seed_files(&c, 6).await;

    c.kill_storage(1);
    // Immediately (before the metadata notices) and after it marks the node suspect.
    assert_all_readable(&c, &files).await;
    let client = c.client();
    let f = client.create(InodeId::ROOT, "after-kill", 0o644, true).await.unwrap();
    let data = random_bytes(9 << 20, 99);
    client.write_at(f.ino, 0, &data).await.expect("a write with one of three nodes dead succeeds (W=2)");
    assert!(client.read_at(f.ino, 0, u64::MAX).await.unwrap()[..] == data[..]);

    c.wait_nodes_in_state(NodeState::Up, 2, Duration::from_secs(10)).await;
    let f2 = client.create(InodeId::ROOT, "after-suspect", 0o644, true).await.unwrap();
    client.write_at(f2.ino, 0, &data).await.expect("writes go to the two live nodes");
    assert_all_readable(&c, &files).await;
    // The CLI agrees.
    let out = distfs(&c, &["cat", "/after-suspect"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == data, "cat prints the file's exact bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_storage_nodes_killed_writes_fail_clearly_and_reads_still_work() {
    let mut c = cluster().await;
    let files = seed_files(&c, 4).await;
    let local = c.dir().join("new.bin");
    std::fs::write(&local, random_bytes(5 << 20, 5)).unwrap();

    c.kill_storage(0);
    c.kill_storage(2);

    // A write through the CLI fails within a bounded time with a clear message, and
    // leaves nothing visible.
    let t0 = Instant::now();
    let out = distfs(&c, &["put", local.to_str().unwrap(), "/new.bin"]).await;
    let took = t0.elapsed();
    assert!(!out.status.success(), "put must fail with one of three nodes alive");
    // 7 (data error) when the write runs into the dead nodes; 6 (unavailable) when the
    // metadata already saw their connections drop and refuses the allocation.
    assert!(matches!(out.status.code(), Some(6) | Some(7)), "exit code 6 or 7; stderr: {}", stderr(&out));
    let msg = stderr(&out);
    assert!(msg.contains("required replicas") || msg.contains("storage nodes"), "clear message: {msg}");
    assert!(took < Duration::from_secs(40), "failed only after {took:?}");
    let ls = distfs_ok(&c, &["ls", "/"]).await;
    assert!(!ls.contains("new.bin") && !ls.contains(".distfs-put"), "nothing half-written is visible: {ls}");

    // Once the metadata sees them down, the refusal is immediate and still clear.
    c.wait_nodes_in_state(NodeState::Up, 1, Duration::from_secs(10)).await;
    let out = distfs(&c, &["put", local.to_str().unwrap(), "/new.bin"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("storage nodes"), "{}", stderr(&out));

    // Reads still succeed from the survivor.
    assert_all_readable(&c, &files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flipped_byte_on_disk_is_detected_reported_and_read_around() {
    let c = cluster().await;
    let client = c.client();
    let data = random_bytes(3 << 20, 42);
    let f = client.create(InodeId::ROOT, "victim", 0o644, true).await.unwrap();
    client.write_at(f.ino, 0, &data).await.unwrap();

    // The file is one block; find the replica a fresh reader tries first, and its file.
    let layout = client.layout(f.ino, 0, 0).await.unwrap();
    assert_eq!(layout.blocks.len(), 1);
    let block = layout.blocks[0].clone();
    let first = order_replicas(&block.replicas, |_| true, |_| None, block.id.0 as u64)[0];
    let idx = (0..3).find(|&i| c.node_id(i) == Some(first)).expect("the first replica is one of our nodes");
    let hex = block.id.to_string();
    let path = c.block_files(idx).into_iter().find(|p| p.to_string_lossy().contains(&hex)).expect("block file");

    // Flip one byte in the middle of the block's data.
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let pos = file.metadata().unwrap().len() - 1_000_000;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, pos).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5a], pos).unwrap();
    file.sync_all().unwrap();
    drop(file);

    // Every byte still comes back right through the CLI.
    let out = c.dir().join("victim.out");
    distfs_ok(&c, &["get", "/victim", out.to_str().unwrap()]).await;
    assert!(std::fs::read(&out).unwrap() == data, "get returned wrong bytes");

    // The corrupt copy shows in cluster status and in the storage node's log.
    distfs_testkit::wait_for("bad replica in cluster status", Duration::from_secs(10), || async {
        let s = c.client().cluster_status().await.ok()?;
        s.bad_replicas.iter().any(|b| b.block == block.id && b.node == first).then_some(())
    })
    .await;
    let st = distfs_ok(&c, &["cluster", "status"]).await;
    assert!(st.contains(&hex) && st.contains("DEGRADED"), "cluster status names the bad block: {st}");
    let log = std::fs::read_to_string(c.dir().join(format!("storage-{idx}.log"))).unwrap();
    assert!(log.to_lowercase().contains("corrupt") && log.contains(&hex), "storage log reports the corrupt block");

    // Later readers skip the bad copy: still right bytes, from the others.
    let got = c.client().read_at(f.ino, 0, u64::MAX).await.unwrap();
    assert!(got[..] == data[..]);
}

/// A new storage node's registration answers are lost, for longer than one registration
/// call retries (its answer-less attempts were committed), so it registers again with a
/// new call: it still ends with one id, the one it stored, and no ghost id is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_registration_answers_are_lost_ends_with_one_id() {
    let mut c = cluster().await;
    c.wait_nodes_up(3).await;
    let proxy = distfs_testkit::proxy::LossyProxy::start(c.meta_addr().to_string()).await;
    proxy.lose_answers(usize::MAX);
    let i = c.add_storage_via(&[proxy.addr().to_string()]);
    // The node's registration call gives up after its deadline (1 s at a 300 ms heartbeat
    // interval) and the node registers again: wait until it says so.
    distfs_testkit::wait_for("a failed registration call", Duration::from_secs(20), || async {
        c.log(&format!("storage-{i}")).contains("cannot register with the metadata service").then_some(())
    })
    .await;
    distfs_testkit::wait_for("another lost answer", Duration::from_secs(20), || async {
        let n = proxy.lost();
        (n >= 3).then_some(n)
    })
    .await;
    proxy.lose_answers(0);
    eprintln!("{} registration answers lost", proxy.lost());
    c.wait_nodes_up(4).await;
    let id = distfs_testkit::wait_for("the node's stored id", Duration::from_secs(10), || async { c.node_id(i) }).await;
    let nodes = c.client().cluster_status().await.unwrap().nodes;
    let listed: Vec<_> = nodes.iter().map(|n| (n.id, n.addr.clone(), n.state)).collect();
    assert_eq!(nodes.len(), 4, "one id per node, got {listed:?}");
    assert!(nodes.iter().any(|n| n.id == id && n.state == NodeState::Up), "{id} up in {listed:?}");
}

/// Every storage node is full (a 12 MiB capacity each, R=3): a write that cannot reach
/// its quorum for lack of space fails with `NoSpace` (ENOSPC on a mount, not EIO), and
/// what was written before stays readable, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_cluster_refuses_a_write_with_no_space_and_keeps_what_it_holds() {
    let opts = distfs_testkit::ClusterOpts { storage_extra: "capacity = \"12MiB\"\n".into(), ..Default::default() };
    let c = distfs_testkit::ProcessCluster::start(bins(), opts).await;
    let client = c.client();
    let kept = random_bytes(6 << 20, 7);
    let f = client.create(InodeId::ROOT, "kept", 0o644, true).await.unwrap();
    client.write_at(f.ino, 0, &kept).await.unwrap();

    let big = client.create(InodeId::ROOT, "big", 0o644, true).await.unwrap();
    match client.write_at(big.ino, 0, &random_bytes(32 << 20, 8)).await {
        Err(distfs_client::ClientError::Fs(distfs_types::FsError::NoSpace { reason })) => {
            eprintln!("refused as expected: {reason}")
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    let got = client.read_at(f.ino, 0, u64::MAX).await.unwrap();
    assert!(got[..] == kept[..], "the file written before the cluster filled up changed");
}
