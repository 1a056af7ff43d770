//! Self-healing and membership against real processes: a killed node's blocks are
//! re-replicated without any command and trimmed back when it returns; the scrubber
//! replaces a corrupt copy; a joining node gets its share; a drain survives a metadata
//! restart; a node restarted in maintenance causes no repair traffic.

mod common;

use common::*;
use distfs_client::Client;
use distfs_proto::{ClusterStatus, FsckReport};
use distfs_testkit::{wait_for, ClusterOpts, ProcessCluster};
use distfs_types::{AdminState, BlockId, InodeId, NodeId, NodeState};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn opts(nodes: usize) -> ClusterOpts {
    ClusterOpts { storage_nodes: nodes, ..ClusterOpts::default() }
}

/// Writes `n` files of `size` bytes (different contents) into the root directory.
async fn seed(c: &ProcessCluster, n: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    let client = c.client();
    let mut files = Vec::new();
    for i in 0..n {
        let name = format!("f{i:03}");
        let data = random_bytes(size, 1000 + i as u64);
        let f = client.create(InodeId::ROOT, &name, 0o644, true).await.expect("create");
        client.write_at(f.ino, 0, &data).await.expect("write");
        files.push((name, data));
    }
    files
}

async fn check_all(client: &Client, files: &[(String, Vec<u8>)]) {
    for (name, data) in files {
        let f = client.lookup(InodeId::ROOT, name).await.unwrap_or_else(|e| panic!("lookup {name}: {e}"));
        let got = client.read_at(f.ino, 0, u64::MAX).await.unwrap_or_else(|e| panic!("read {name}: {e}"));
        assert!(got[..] == data[..], "{name} reads back different bytes");
    }
}

/// Replica lists of every block of the files.
async fn replicas(client: &Client, files: &[(String, Vec<u8>)]) -> Option<HashMap<BlockId, Vec<NodeId>>> {
    let mut out = HashMap::new();
    for (name, _) in files {
        let f = client.lookup(InodeId::ROOT, name).await.ok()?;
        let l = client.layout(f.ino, 0, 15).await.ok()?;
        for b in l.blocks {
            out.insert(b.id, b.replicas);
        }
    }
    Some(out)
}

async fn status(c: &ProcessCluster) -> Option<ClusterStatus> {
    c.client().cluster_status().await.ok()
}

async fn fsck(c: &ProcessCluster) -> Option<FsckReport> {
    let out = distfs(c, &["fsck", "--json"]).await;
    serde_json::from_slice(&out.stdout).ok()
}

fn index_of(c: &ProcessCluster, id: NodeId) -> usize {
    (0..c.storage_count()).find(|&i| c.node_id(i) == Some(id)).expect("a node of ours")
}

/// Reads every file in a loop until stopped; counts full passes, panics on a wrong byte.
fn background_reader(
    c: &ProcessCluster,
    files: Vec<(String, Vec<u8>)>,
) -> (Arc<AtomicBool>, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let passes = Arc::new(AtomicU64::new(0));
    let client = c.client();
    let (s, p) = (stop.clone(), passes.clone());
    let h = tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            check_all(&client, &files).await;
            p.fetch_add(1, Ordering::Relaxed);
        }
    });
    (stop, passes, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_node_is_re_replicated_without_a_command_and_trimmed_when_it_returns() {
    let t0 = Instant::now();
    let mut c = ProcessCluster::start(bins(), opts(4)).await;
    eprintln!("phase: write 512 MiB (64 files of 8 MiB)");
    let files = seed(&c, 64, 8 * MIB).await;
    let before = replicas(&c.client(), &files).await.expect("layouts");
    assert!(before.values().all(|r| r.len() == 3));
    let victim = c.node_id(1).expect("node 1 registered");
    let held = before.values().filter(|r| r.contains(&victim)).count();
    assert!(held > 0);

    eprintln!("phase: SIGKILL node {victim} (holds {held} blocks), reading throughout");
    let (stop, passes, reader) = background_reader(&c, files.clone());
    let killed = Instant::now();
    c.kill_storage(1);
    let s = wait_for("every block back at 3 live copies", Duration::from_secs(40), || async {
        let s = status(&c).await?;
        let dead = s.nodes.iter().any(|n| n.id == victim && n.state == NodeState::Dead);
        (dead && s.under_replicated == 0 && s.missing == 0 && s.repair.done_blocks as usize >= held).then_some(s)
    })
    .await;
    eprintln!("  full redundancy {:?} after the kill; repair: {:?}", killed.elapsed(), s.repair);
    let after = replicas(&c.client(), &files).await.expect("layouts");
    for (b, r) in &after {
        let live = r.iter().filter(|n| **n != victim).count();
        assert!(live >= 3, "block {b} has {live} live copies: {r:?}");
    }
    let f = fsck(&c).await.expect("fsck answers");
    assert!(f.is_clean(), "fsck clean after repair: {f:?}");
    wait_for("a full read pass during repair", Duration::from_secs(20), || async {
        (passes.load(Ordering::Relaxed) >= 1).then_some(())
    })
    .await;

    eprintln!("phase: node {victim} returns; copies above R are trimmed");
    c.start_storage(1);
    wait_for("every block at exactly 3 copies", Duration::from_secs(30), || async {
        let r = replicas(&c.client(), &files).await?;
        let s = status(&c).await?;
        let up = s.nodes.iter().filter(|n| n.state == NodeState::Up).count() == 4;
        (up && r.values().all(|x| x.len() == 3)).then_some(())
    })
    .await;
    let s = status(&c).await.expect("status");
    assert!(s.repair.trimmed > 0, "trims happened: {:?}", s.repair);
    wait_for("trimmed copies deleted from disk", Duration::from_secs(20), || async {
        let s = status(&c).await?;
        (s.gc_pending == 0).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    reader.await.expect("reader saw correct bytes throughout");
    check_all(&c.client(), &files).await;
    eprintln!("done in {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrubber_finds_a_corrupt_copy_and_it_is_replaced() {
    let mut o = opts(4);
    o.storage_extra = "scrub_interval = \"300ms\"\nscrub_bandwidth = \"256MiB\"\n".into();
    let c = ProcessCluster::start(bins(), o).await;
    let files = seed(&c, 2, 3 * MIB).await;
    let reps = replicas(&c.client(), &files).await.expect("layouts");
    let (block, holders) = reps.iter().next().map(|(b, r)| (*b, r.clone())).expect("a block");
    let idx = index_of(&c, holders[0]);
    let hex = block.to_string();
    let path = c.block_files(idx).into_iter().find(|p| p.to_string_lossy().contains(&hex)).expect("block file");
    eprintln!("phase: flip a byte of block {hex} on node {}", holders[0]);
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("open block file");
        let pos = file.metadata().expect("stat").len() - 100_000;
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, pos).expect("read");
        file.write_all_at(&[b[0] ^ 0xff], pos).expect("write");
    }
    wait_for("the scrubber reports the bad copy", Duration::from_secs(20), || async {
        let s = status(&c).await?;
        s.bad_replicas.iter().any(|b| b.block == block && b.reason.contains("scrubber")).then_some(())
    })
    .await;
    wait_for("the block back at 3 good copies and fsck clean", Duration::from_secs(20), || async {
        let r = replicas(&c.client(), &files).await?;
        let f = fsck(&c).await?;
        (r.get(&block)?.len() == 3 && f.is_clean()).then_some(())
    })
    .await;
    let quarantined = std::fs::read_dir(c.storage_dir(idx).join("quarantine")).expect("quarantine dir").count();
    assert!(quarantined >= 1, "the corrupt file was quarantined");
    check_all(&c.client(), &files).await;
    let out = distfs_ok(&c, &["fsck"]).await;
    assert!(out.contains("status: clean"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_node_gets_about_one_over_n_plus_one_and_usage_evens_out() {
    let mut c = ProcessCluster::start(bins(), opts(4)).await;
    let files = seed(&c, 24, 8 * MIB).await;
    let blocks = replicas(&c.client(), &files).await.expect("layouts").len();
    eprintln!("phase: a 5th node joins ({blocks} blocks, {} copies)", blocks * 3);
    let i = c.add_storage();
    c.wait_nodes_up(5).await;
    let new = wait_for("the new node's id", Duration::from_secs(10), || async { c.node_id(i) }).await;
    let s = wait_for("the rebalancer to finish", Duration::from_secs(50), || async {
        let s = status(&c).await?;
        let r = replicas(&c.client(), &files).await?;
        let on_new = r.values().filter(|x| x.contains(&new)).count();
        let idle = s.repair.queued_blocks == 0 && s.repair.in_flight == 0;
        (idle && on_new > 0 && s.repair.rebalanced as usize == on_new && r.values().all(|x| x.len() == 3)).then_some(s)
    })
    .await;
    let moved = s.repair.rebalanced as f64 / (blocks * 3) as f64;
    let ideal = 1.0 / 5.0;
    eprintln!("  moved {:.3} of copies (ideal {ideal:.3}); repair {:?}", moved, s.repair);
    assert!(moved <= ideal * 1.5 && moved >= ideal / 1.5, "moved {moved:.3}, want within 1.5x of {ideal:.3}");
    let s = wait_for("usage reported after the moves", Duration::from_secs(20), || async {
        let s = status(&c).await?;
        (s.gc_pending == 0).then_some(s)
    })
    .await;
    let r = replicas(&c.client(), &files).await.expect("layouts");
    let mut per: HashMap<NodeId, usize> = HashMap::new();
    for x in r.values().flatten() {
        *per.entry(*x).or_default() += 1;
    }
    let mean = (blocks * 3) as f64 / 5.0;
    eprintln!(
        "  copies per node: {per:?} (mean {mean:.1}); nodes {:?}",
        s.nodes.iter().map(|n| (n.id, n.used)).collect::<Vec<_>>()
    );
    for (n, k) in &per {
        assert!((*k as f64 - mean).abs() <= mean * 0.5, "node {n} holds {k} copies, mean {mean:.1}");
    }
    check_all(&c.client(), &files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_survives_a_metadata_restart_never_drops_below_r_and_gates_removal() {
    let mut o = opts(4);
    o.meta_extra = "[repair]\nbandwidth = \"12MiB\"\n".into();
    let mut c = ProcessCluster::start(bins(), o).await;
    let files = seed(&c, 8, 8 * MIB).await;
    let victim = c.node_id(0).expect("node 0 registered");
    let id = victim.0.to_string();

    let dry = distfs_ok(&c, &["node", "drain", &id, "--dry-run", "--json"]).await;
    let dry: serde_json::Value = serde_json::from_str(&dry).expect("json");
    assert!(dry["bytes"].as_u64().unwrap_or(0) > 0, "dry run reports bytes to move: {dry}");
    eprintln!("phase: drain node {victim} ({dry})");
    distfs_ok(&c, &["node", "drain", &id]).await;
    let out = distfs(&c, &["node", "remove", &id]).await;
    assert!(!out.status.success(), "removal refused while draining");
    assert!(stderr(&out).contains("draining"), "{}", stderr(&out));

    let never_below_r = |r: &HashMap<BlockId, Vec<NodeId>>| {
        for (b, x) in r {
            assert!(x.len() >= 3, "block {b} below R during the drain: {x:?}");
        }
    };
    wait_for("the drain to make progress", Duration::from_secs(20), || async {
        let r = replicas(&c.client(), &files).await?;
        never_below_r(&r);
        let s = status(&c).await?;
        (s.repair.done_blocks >= 2).then_some(())
    })
    .await;
    eprintln!("phase: kill and restart the metadata server mid-drain");
    c.kill_meta_server(0);
    c.start_meta_server(0);
    let polls = AtomicU64::new(0);
    wait_for("node drained", Duration::from_secs(50), || async {
        if let Some(r) = replicas(&c.client(), &files).await {
            never_below_r(&r);
        }
        polls.fetch_add(1, Ordering::Relaxed);
        let s = status(&c).await?;
        s.nodes.iter().any(|n| n.id == victim && n.admin == AdminState::Drained).then_some(())
    })
    .await;
    let r = replicas(&c.client(), &files).await.expect("layouts");
    for (b, x) in &r {
        assert!(x.iter().filter(|n| **n != victim).count() >= 3, "block {b} not at R elsewhere: {x:?}");
    }
    eprintln!("phase: remove node {victim} ({} polls while draining)", polls.load(Ordering::Relaxed));
    distfs_ok(&c, &["node", "remove", &id]).await;
    // The removed node is still running: its next heartbeat is refused, and so is the
    // registration it tries then. It stays out of the cluster.
    wait_for("the removed node's registration refused", Duration::from_secs(20), || async {
        c.log("storage-0").contains("was removed from the cluster").then_some(())
    })
    .await;
    let list = distfs_ok(&c, &["node", "list", "--json"]).await;
    let list: Vec<serde_json::Value> = serde_json::from_str(&list).expect("json");
    assert_eq!(list.len(), 3, "the removed node is gone: {list:?}");
    assert!(list.iter().all(|n| n["id"].as_u64() != Some(victim.0)), "{list:?}");
    c.kill_storage(0);
    check_all(&c.client(), &files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restarted_inside_its_maintenance_window_causes_no_repair() {
    let mut c = ProcessCluster::start(bins(), opts(4)).await;
    let files = seed(&c, 6, 8 * MIB).await;
    let victim = c.node_id(2).expect("node 2 registered");
    let id = victim.0.to_string();
    distfs_ok(&c, &["node", "maintenance", &id, "on", "--window", "2m"]).await;
    eprintln!("phase: restart node {victim} in maintenance");
    c.kill_storage(2);
    c.wait_nodes_in_state(NodeState::Dead, 1, Duration::from_secs(15)).await;
    // Dead by liveness, yet nothing is planned, for longer than a repair would take.
    let since = Instant::now();
    wait_for("3s with the node down and no repair", Duration::from_secs(20), || async {
        let s = status(&c).await?;
        assert_eq!(s.repair.done_blocks + s.repair.queued_blocks, 0, "repair traffic in maintenance: {:?}", s.repair);
        (since.elapsed() > Duration::from_secs(3)).then_some(())
    })
    .await;
    check_all(&c.client(), &files).await;
    c.start_storage(2);
    c.wait_nodes_up(4).await;
    distfs_ok(&c, &["node", "maintenance", &id, "off"]).await;
    let s = status(&c).await.expect("status");
    assert_eq!(s.repair.done_blocks, 0, "{:?}", s.repair);
    assert_eq!(s.under_replicated, 0);
    let f = fsck(&c).await.expect("fsck");
    assert!(f.is_clean(), "{f:?}");
}
