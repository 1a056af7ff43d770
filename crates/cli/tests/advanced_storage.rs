//! Deduplication and compression at rest (issue 10) against real processes on loopback:
//! the same file stored N times costs one file's worth of disk per replica and deleting
//! all but one keeps it intact; a zstd directory stores compressible data in less disk
//! and random data in no more; a corrupt compressed copy is caught on read, the read
//! falls back, and repair copies the compressed bytes as they are.
//!
//! `DISTFS_DEDUP_MIB` (default 32) and `DISTFS_DEDUP_COPIES` (default 10) size the dedup
//! test; the figure is 256 MiB x 10 (see docs/BENCHMARKS.md).

mod common;

use common::*;
use distfs_client::plan::order_replicas;
use distfs_client::Client;
use distfs_testkit::{wait_for, ClusterOpts, ProcessCluster};
use distfs_types::{BlockId, NodeId};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Block files and their bytes on every storage node.
fn disk(c: &ProcessCluster) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for i in 0..c.storage_count() {
        for p in c.block_files(i) {
            files += 1;
            bytes += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
    }
    (files, bytes)
}

/// Text-like bytes: words of a small vocabulary in a pseudo-random order (compresses
/// about like English prose or logs, not like a run of one byte).
fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "block",
        "replica",
        "metadata",
        "server",
        "node",
        "chunk",
        "slice",
        "write",
        "read",
        "commit",
        "raft",
        "leader",
        "heartbeat",
        "garbage",
        "collection",
        "checksum",
        "error:",
        "INFO",
        "WARN",
        "2026-12-02",
        "request",
        "took",
        "ms",
        "bytes",
        "client",
        "session",
        "lease",
        "rename",
        "directory",
        "\n",
    ];
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 32);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
        v.push(if x & 0xf00 == 0 { b',' } else { b' ' });
    }
    v.truncate(len);
    v
}

fn write_local(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write local file");
    p
}

async fn get_bytes(c: &ProcessCluster, remote: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join("out.bin");
    let _ = std::fs::remove_file(&out);
    distfs_ok(c, &["get", "--no-progress", remote, out.to_str().unwrap()]).await;
    std::fs::read(&out).expect("read got file")
}

/// Every block of `path` with its replicas.
async fn blocks_of(client: &Client, path: &str) -> Vec<(BlockId, Vec<NodeId>)> {
    let a = client.resolve(path).await.expect("resolve");
    let l = client.layout(a.ino, 0, 1023).await.expect("layout");
    l.blocks.into_iter().map(|b| (b.id, b.replicas)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_file_n_times_costs_one_copy_and_the_last_survives_deletes() {
    let size = env_usize("DISTFS_DEDUP_MIB", 32) * MIB;
    let copies = env_usize("DISTFS_DEDUP_COPIES", 10).max(2);
    let c = cluster().await;
    let r = c.opts.replication as u64;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = random_bytes(size, 42);
    let local = write_local(tmp.path(), "big.bin", &data);
    distfs_ok(&c, &["mkdir", "/dup"]).await;

    let t0 = Instant::now();
    distfs_ok(&c, &["put", "--no-progress", local.to_str().unwrap(), "/dup/f0"]).await;
    let first = t0.elapsed();
    let (files_one, bytes_one) = disk(&c);
    for i in 1..copies {
        distfs_ok(&c, &["put", "--no-progress", local.to_str().unwrap(), &format!("/dup/f{i}")]).await;
    }
    let all = t0.elapsed();
    let (files_all, bytes_all) = disk(&c);
    eprintln!(
        "dedup: {copies} x {} MiB: first put {first:?}, all puts {all:?}; disk after one {bytes_one} B in \
         {files_one} files, after all {bytes_all} B in {files_all} files (plain would be {} B)",
        size / MIB,
        copies as u64 * r * size as u64
    );
    // One file's worth per replica: R copies of the data (plus headers), not N x R.
    assert!(bytes_one >= r * size as u64, "all replicas stored: {bytes_one}");
    assert_eq!((files_all, bytes_all), (files_one, bytes_one), "the copies stored no new block");
    assert!(bytes_all <= r * size as u64 + r * size as u64 / 100, "{bytes_all} bytes for {copies} copies");
    // `distfs df` agrees once the nodes reported their usage.
    wait_for("df shows about one copy per replica", Duration::from_secs(10), || async {
        let out = distfs(&c, &["df", "--json"]).await;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let used = v["used"].as_u64()?;
        (used >= r * size as u64 && used <= bytes_all).then_some(())
    })
    .await;

    // A file of its own, deleted with the first N-1 copies: once its blocks are gone
    // from disk, garbage collection has run, and it must have left the shared blocks.
    let marker = random_bytes(4 * MIB + 1, 7);
    let marker_local = write_local(tmp.path(), "marker.bin", &marker);
    distfs_ok(&c, &["put", "--no-progress", marker_local.to_str().unwrap(), "/dup/marker"]).await;
    let (files_marker, _) = disk(&c);
    assert!(files_marker > files_all);
    let mut rm = vec!["rm".to_string(), "/dup/marker".to_string()];
    rm.extend((0..copies - 1).map(|i| format!("/dup/f{i}")));
    distfs_ok(&c, &rm.iter().map(String::as_str).collect::<Vec<_>>()).await;
    wait_for("the marker's blocks garbage-collected", Duration::from_secs(30), || async {
        (disk(&c).0 == files_all).then_some(())
    })
    .await;
    assert_eq!(disk(&c), (files_all, bytes_all), "the shared blocks are all still stored");
    let last = format!("/dup/f{}", copies - 1);
    assert!(get_bytes(&c, &last, tmp.path()).await == data, "the last copy reads back byte-identical");

    // The last reference goes: every block is collected.
    distfs_ok(&c, &["rm", &last]).await;
    wait_for("every block garbage-collected", Duration::from_secs(30), || async { (disk(&c).0 == 0).then_some(()) })
        .await;
    // The fingerprints went with them: the same bytes are stored again for real.
    distfs_ok(&c, &["put", "--no-progress", local.to_str().unwrap(), "/dup/again"]).await;
    assert_eq!(disk(&c).0, files_one);
    assert!(get_bytes(&c, "/dup/again", tmp.path()).await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zstd_directory_stores_text_smaller_and_random_bytes_no_larger() {
    let c = cluster().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    distfs_ok(&c, &["mkdir", "/z", "/plain"]).await;
    distfs_ok(&c, &["compression", "/z", "zstd"]).await;
    assert_eq!(distfs_ok(&c, &["compression", "/z"]).await.trim(), "zstd");
    assert_eq!(distfs_ok(&c, &["compression", "/plain"]).await.trim(), "none");
    let bad = distfs(&c, &["compression", "/z", "gzip"]).await;
    assert!(!bad.status.success(), "an unknown codec is refused");

    // Each put's cost on disk, as the difference it makes. --no-dedup: the same bytes in
    // two directories must be stored twice here, to compare the two.
    let cost = |local: PathBuf, remote: String| {
        let c = &c;
        async move {
            let before = disk(c).1;
            let t0 = Instant::now();
            distfs_ok(c, &["--no-dedup", "put", "--no-progress", local.to_str().unwrap(), &remote]).await;
            let took = t0.elapsed();
            (disk(c).1 - before, took)
        }
    };
    let text = text_bytes(24 * MIB + 12345, 3);
    let text_local = write_local(tmp.path(), "text.log", &text);
    let (plain_text, t_plain) = cost(text_local.clone(), "/plain/text.log".into()).await;
    let (zstd_text, t_zstd) = cost(text_local, "/z/text.log".into()).await;
    let noise = random_bytes(16 * MIB + 999, 9);
    let noise_local = write_local(tmp.path(), "noise.bin", &noise);
    let (plain_noise, _) = cost(noise_local.clone(), "/plain/noise.bin".into()).await;
    let (zstd_noise, _) = cost(noise_local, "/z/noise.bin".into()).await;
    eprintln!(
        "compression: text {} B -> plain {plain_text} B ({t_plain:?}), zstd {zstd_text} B ({t_zstd:?}); \
         random {} B -> plain {plain_noise} B, zstd {zstd_noise} B",
        text.len(),
        noise.len()
    );
    assert!(plain_text >= 3 * text.len() as u64, "plain text stored at full size on 3 replicas");
    assert!(zstd_text * 2 < plain_text, "zstd text takes measurably less disk: {zstd_text} vs {plain_text}");
    assert!(zstd_noise <= plain_noise, "incompressible data costs no extra space: {zstd_noise} vs {plain_noise}");
    // The file took the directory's codec when it was created.
    assert_eq!(distfs_ok(&c, &["compression", "/z/text.log"]).await.trim(), "zstd");
    for (remote, want) in
        [("/z/text.log", &text), ("/plain/text.log", &text), ("/z/noise.bin", &noise), ("/plain/noise.bin", &noise)]
    {
        assert!(get_bytes(&c, remote, tmp.path()).await == *want, "{remote} reads back byte-identical");
    }
    // A range read inside a compressed block (through the native client).
    let client = c.client();
    let f = client.resolve("/z/text.log").await.expect("resolve");
    let got = client.read_at(f.ino, 5 * MIB as u64 + 777, 300_000).await.expect("range read");
    assert!(got[..] == text[5 * MIB + 777..5 * MIB + 777 + 300_000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_compressed_copy_is_caught_the_read_falls_back_and_repair_copies_it_compressed() {
    // Four nodes: the repaired copy goes to the node that had none.
    let c = ProcessCluster::start(bins(), ClusterOpts { storage_nodes: 4, ..ClusterOpts::default() }).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    distfs_ok(&c, &["mkdir", "/z"]).await;
    distfs_ok(&c, &["compression", "/z", "zstd"]).await;
    let text = text_bytes(6 * MIB, 11);
    let local = write_local(tmp.path(), "t.log", &text);
    distfs_ok(&c, &["put", "--no-progress", local.to_str().unwrap(), "/z/t.log"]).await;
    let blocks = blocks_of(&c.client(), "/z/t.log").await;
    let (block, holders) = blocks[0].clone();
    assert_eq!(holders.len(), 3);
    // The copy a fresh client reads first (no latency known yet): corrupt that one, so
    // the read must detect it and fall back.
    let first = order_replicas(&holders, |_| true, |_| None, block.0 as u64)[0];
    let idx = (0..c.storage_count()).find(|&i| c.node_id(i) == Some(first)).expect("a node of ours");
    let hex = block.to_string();
    let path = c.block_files(idx).into_iter().find(|p| p.to_string_lossy().contains(&hex)).expect("block file");
    let mut b = std::fs::read(&path).expect("read block file");
    assert_eq!(u16::from_le_bytes([b[4], b[5]]), 2, "stored in the compressed format (version 2)");
    assert!(b.len() < 4 * MIB / 2, "a compressed 4 MiB block: {} bytes", b.len());
    // Flip one byte in the middle of the compressed payload.
    let at = b.len() - (b.len() - 200) / 2;
    b[at] ^= 0x5a;
    std::fs::write(&path, &b).expect("corrupt block file");

    assert!(get_bytes(&c, "/z/t.log", tmp.path()).await == text, "reads back byte-identical");
    let quarantined = std::fs::read_dir(c.storage_dir(idx).join("quarantine")).expect("quarantine dir").count();
    assert_eq!(quarantined, 1, "the node found the bad copy and moved it aside");
    let status = c.client().cluster_status().await.expect("status");
    assert!(status.bad_replicas.iter().any(|r| r.block == block && r.node == first), "the reader reported it");
    // Repair brings the block back to 3 good copies, copied as stored: compressed.
    let reps = wait_for("the block back at 3 copies", Duration::from_secs(30), || async {
        let l = blocks_of(&c.client(), "/z/t.log").await;
        let reps = l.iter().find(|(id, _)| *id == block)?.1.clone();
        (reps.len() == 3).then_some(reps)
    })
    .await;
    // The new copy went to the ring's choice: back to the node whose copy was bad (a
    // fresh file there, the bad one is in quarantine) or to the fourth node.
    let new = reps.iter().find(|n| !holders.contains(n)).copied().unwrap_or(first);
    let ni = (0..c.storage_count()).find(|&i| c.node_id(i) == Some(new)).expect("a node of ours");
    let copy = c.block_files(ni).into_iter().find(|p| p.to_string_lossy().contains(&hex)).expect("the new copy");
    let cb = std::fs::read(&copy).expect("read copy");
    assert_eq!(u16::from_le_bytes([cb[4], cb[5]]), 2, "the repaired copy is stored compressed, as it came");
    assert!(cb.len() < 4 * MIB / 2);
    assert_eq!(cb.len(), b.len(), "the same stored bytes as the original copy");
    assert!(get_bytes(&c, "/z/t.log", tmp.path()).await == text);
}
