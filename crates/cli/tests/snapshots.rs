//! Snapshots through real processes: a snapshot reads back the old bytes after the live
//! tree is overwritten and deleted, and deleting it frees exactly the unshared blocks
//! (seen in `distfs df` and on the storage nodes' disks); garbage collection never frees
//! a block a file or a snapshot still references, also across a SIGKILL of the metadata
//! server in the middle of a GC round; snapshots are read-only and the CLI's errors say
//! what went wrong.
//!
//! `DISTFS_SNAPSHOT_TEST_BYTES` sizes the first test's tree (default 128 MiB; the issue's
//! figure is 1 GiB, run by hand for docs/BENCHMARKS.md).

mod common;
mod mount_common;

use common::*;
use distfs_client::Client;
use distfs_proto::{SnapshotInfo, StatFs};
use distfs_testkit::{wait_for, ProcessCluster};
use distfs_types::{BlockId, InodeId, NodeState};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

async fn df(c: &ProcessCluster) -> StatFs {
    serde_json::from_str(&distfs_ok(c, &["df", "--json"]).await).expect("df --json parses")
}

async fn snapshots(c: &ProcessCluster) -> Vec<SnapshotInfo> {
    serde_json::from_str(&distfs_ok(c, &["snapshot", "list", "--json"]).await).expect("snapshot list --json parses")
}

async fn write_file(client: &Client, dir: InodeId, name: &str, data: &[u8]) {
    let f = client.create(dir, name, 0o644, false).await.unwrap_or_else(|e| panic!("create {name}: {e}"));
    client.truncate(f.ino, 0).await.expect("truncate");
    client.write_at(f.ino, 0, data).await.unwrap_or_else(|e| panic!("write {name}: {e}"));
}

async fn read_path(client: &Client, path: &str) -> Vec<u8> {
    let a = client.resolve(path).await.unwrap_or_else(|e| panic!("resolve {path}: {e}"));
    client.read_at(a.ino, 0, a.size + 1).await.unwrap_or_else(|e| panic!("read {path}: {e}")).to_vec()
}

/// Blocks of the file at `path`.
async fn blocks_of(client: &Client, path: &str) -> Vec<BlockId> {
    let a = client.resolve(path).await.unwrap_or_else(|e| panic!("resolve {path}: {e}"));
    let last = a.size / (64 * MIB) + 1;
    client.layout(a.ino, 0, last).await.expect("layout").blocks.into_iter().map(|b| b.id).collect()
}

/// Storage nodes (of 3) holding a file for `id`.
fn copies_on_disk(c: &ProcessCluster, id: BlockId) -> usize {
    let hex = id.to_string();
    (0..3).filter(|&i| c.storage_dir(i).join("blocks").join(&hex[0..2]).join(&hex[2..4]).join(&hex).exists()).count()
}

/// Bytes of every block file on the storage nodes' disks.
fn disk_bytes(c: &ProcessCluster) -> u64 {
    (0..3).flat_map(|i| c.block_files(i)).map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).sum()
}

fn block_files(c: &ProcessCluster) -> usize {
    (0..3).map(|i| c.block_files(i).len()).sum()
}

/// `df`'s Used while every storage node is up (a node silent for a moment on a loaded
/// machine is left out of the sum), else `None`.
async fn used_all_up(c: &ProcessCluster) -> Option<u64> {
    async fn up(c: &ProcessCluster) -> bool {
        c.nodes().await.is_some_and(|n| n.iter().filter(|x| x.state == NodeState::Up).count() >= 3)
    }
    if !up(c).await {
        return None;
    }
    let used = df(c).await.used;
    up(c).await.then_some(used)
}

/// Waits until the storage nodes' usage is steady (no GC pending, the same figure over
/// more than two heartbeats) and returns it.
async fn settled_used(c: &ProcessCluster) -> u64 {
    let seen = std::cell::Cell::new((0u64, 0u32));
    wait_for("df used to settle", Duration::from_secs(30), || {
        let seen = &seen;
        async move {
            let st = c.client().cluster_status().await.ok()?;
            let used = used_all_up(c).await?;
            let (prev, same) = seen.get();
            let same = if prev == used && st.gc_pending == 0 { same + 1 } else { 0 };
            seen.set((used, same));
            (same >= 8).then_some(used)
        }
    })
    .await
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / MIB as f64)
}

/// Done-when 1 of issue 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_keeps_the_old_bytes_and_deleting_it_frees_the_unshared_blocks() {
    let total: u64 = std::env::var("DISTFS_SNAPSHOT_TEST_BYTES")
        .ok()
        .map(|v| v.parse::<distfs_types::ByteSize>().map(|b| b.0).unwrap_or_else(|e| panic!("bad size {v}: {e}")))
        .unwrap_or(128 * MIB);
    let c = cluster().await;
    let client = c.client();
    // 16 files in 4 directories; file i has seed i (old) or 1000 + i (new).
    const FILES: u64 = 16;
    let size = (total / FILES) as usize;
    let path = |i: u64| format!("/data/d{}/f{i:02}", i % 4);
    let data = client.mkdir(InodeId::ROOT, "data", 0o755).await.unwrap();
    let mut dirs = Vec::new();
    for d in 0..4 {
        dirs.push(client.mkdir(data.ino, &format!("d{d}"), 0o755).await.unwrap().ino);
    }
    let t = Instant::now();
    for i in 0..FILES {
        write_file(&client, dirs[(i % 4) as usize], &format!("f{i:02}"), &random_bytes(size, i)).await;
    }
    let write_s = t.elapsed().as_secs_f64();
    let used_tree = settled_used(&c).await;
    assert!(used_tree >= 3 * total, "three copies of {total} bytes are stored: used {used_tree}");

    let t = Instant::now();
    distfs_ok(&c, &["snapshot", "create", "/data", "snap1"]).await;
    let create_ms = t.elapsed().as_millis();
    let used_snap = settled_used(&c).await;
    assert_eq!(used_snap, used_tree, "a snapshot stores no data");
    let list = snapshots(&c).await;
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].name.as_str(), list[0].source.as_str()), ("snap1", "/data"));
    assert_eq!((list[0].files, list[0].bytes, list[0].exclusive_bytes), (FILES, size as u64 * FILES, 0));
    let ls = distfs_ok(&c, &["ls", "/.snapshots/snap1"]).await;
    assert!(ls.contains("d0") && ls.contains("d3"), "{ls}");

    // Overwrite a quarter of the files with new bytes, delete another quarter.
    let (overwritten, deleted) = (0..FILES / 4, FILES / 4..FILES / 2);
    for i in overwritten.clone() {
        write_file(&client, dirs[(i % 4) as usize], &format!("f{i:02}"), &random_bytes(size, 1000 + i)).await;
    }
    for i in deleted.clone() {
        distfs_ok(&c, &["rm", &path(i)]).await;
    }

    // The snapshot reads back the old bytes, the live tree the new ones.
    let t = Instant::now();
    for i in 0..FILES {
        let got = read_path(&client, &format!("/.snapshots/snap1{}", &path(i)[5..])).await;
        assert!(got == random_bytes(size, i), "snapshot file {i} reads back different bytes");
    }
    let snap_read_s = t.elapsed().as_secs_f64();
    for i in overwritten.clone() {
        assert!(read_path(&client, &path(i)).await == random_bytes(size, 1000 + i), "live file {i} has the new bytes");
    }
    for i in deleted.clone() {
        assert!(client.try_resolve(&path(i)).await.unwrap().is_none(), "live file {i} is deleted");
    }
    let t = Instant::now();
    for i in FILES / 2..FILES {
        assert!(read_path(&client, &path(i)).await == random_bytes(size, i), "untouched live file {i}");
    }
    let live_read_s = t.elapsed().as_secs_f64();

    // Deleting the snapshot frees the old bytes of the overwritten and deleted files.
    let used_before = settled_used(&c).await;
    let unshared = 3 * size as u64 * (FILES / 2);
    assert!(used_before >= used_tree + 3 * size as u64 * (FILES / 4), "the overwrites took new space");
    let list = snapshots(&c).await;
    // (At least: the metadata counts replica-list entries, which on a loaded machine can
    // name one process twice; see the report on duplicate registrations.)
    assert!(
        list[0].exclusive_bytes >= unshared,
        "the snapshot alone holds the old bytes of half the files: {} (expected {unshared})",
        list[0].exclusive_bytes
    );
    let old_blocks: BTreeSet<BlockId> = {
        let mut s = BTreeSet::new();
        for i in 0..FILES / 2 {
            s.extend(blocks_of(&client, &format!("/.snapshots/snap1{}", &path(i)[5..])).await);
        }
        s
    };
    let live_blocks: BTreeSet<BlockId> = {
        let mut s = BTreeSet::new();
        for i in (0..FILES / 4).chain(FILES / 2..FILES) {
            s.extend(blocks_of(&client, &path(i)).await);
        }
        s
    };
    // Copies on disk now (3 each, unless a node registered twice at start-up: see the
    // report on duplicate registrations); the delete must take exactly the old ones.
    let old_copies: usize = old_blocks.iter().map(|b| copies_on_disk(&c, *b)).sum();
    assert!(old_blocks.iter().all(|b| copies_on_disk(&c, *b) > 0), "old blocks are on disk before the delete");
    let live_copies: Vec<usize> = live_blocks.iter().map(|b| copies_on_disk(&c, *b)).collect();
    assert!(live_copies.iter().all(|&n| n > 0));
    let files_before = block_files(&c);
    let disk_before = disk_bytes(&c);
    let t = Instant::now();
    distfs_ok(&c, &["snapshot", "delete", "snap1"]).await;
    let delete_ms = t.elapsed().as_millis();
    let used_after = wait_for("the unshared blocks freed", Duration::from_secs(60), || async {
        let used = used_all_up(&c).await?;
        (used_before - used.min(used_before) >= unshared).then_some(used)
    })
    .await;
    let freed = used_before - used_after;
    wait_for("old block files deleted", Duration::from_secs(30), || async {
        old_blocks.iter().all(|b| copies_on_disk(&c, *b) == 0).then_some(())
    })
    .await;
    let disk_freed = disk_before - disk_bytes(&c);
    assert!(
        disk_freed >= unshared && disk_freed < unshared + unshared / 50,
        "only the unshared blocks leave the disks: {disk_freed} bytes, expected about {unshared}"
    );
    assert_eq!(block_files(&c), files_before - old_copies, "only the snapshot's own blocks left the disks");
    let live_after: Vec<usize> = live_blocks.iter().map(|b| copies_on_disk(&c, *b)).collect();
    assert_eq!(live_after, live_copies, "every live block keeps its copies");
    assert!(snapshots(&c).await.is_empty());
    assert!(client.try_resolve("/.snapshots/snap1").await.unwrap().is_none());
    for i in overwritten {
        assert!(read_path(&client, &path(i)).await == random_bytes(size, 1000 + i), "live file {i} after the delete");
    }
    for i in FILES / 2..FILES {
        assert!(read_path(&client, &path(i)).await == random_bytes(size, i), "live file {i} after the delete");
    }
    let half = (size as u64 * FILES / 2) as f64 / MIB as f64;
    eprintln!(
        "snapshot figures: tree {}; write {write_s:.1} s; used {} -> {} with the snapshot -> {} after the \
         changes -> {} after the delete (freed {}); snapshot create {create_ms} ms, delete {delete_ms} ms; \
         read of {} files: snapshot {:.1} MiB/s, live {:.1} MiB/s",
        mib(total),
        mib(used_tree),
        mib(used_snap),
        mib(used_before),
        mib(used_after),
        mib(freed),
        FILES / 2,
        half * 2.0 / snap_read_s,
        half / live_read_s,
    );
}

/// Done-when 4 of issue 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_never_frees_a_block_a_file_or_a_snapshot_references_across_a_metadata_crash() {
    let mut c = cluster().await;
    let client = c.client();
    // /keep: four files; /live: two files that stay; a snapshot of /keep; then the live
    // /keep files go, so their blocks are referenced by the snapshot alone.
    let keep = client.mkdir(InodeId::ROOT, "keep", 0o755).await.unwrap();
    let live = client.mkdir(InodeId::ROOT, "live", 0o755).await.unwrap();
    for i in 0..4u64 {
        write_file(&client, keep.ino, &format!("k{i}"), &random_bytes(6 * MIB as usize, 50 + i)).await;
    }
    for i in 0..2u64 {
        write_file(&client, live.ino, &format!("l{i}"), &random_bytes(5 * MIB as usize, 60 + i)).await;
    }
    distfs_ok(&c, &["snapshot", "create", "/keep", "s"]).await;
    distfs_ok(&c, &["rm", "-r", "/keep"]).await;
    let mut protected = BTreeSet::new();
    for i in 0..4 {
        protected.extend(blocks_of(&client, &format!("/.snapshots/s/k{i}")).await);
    }
    for i in 0..2 {
        protected.extend(blocks_of(&client, &format!("/live/l{i}")).await);
    }
    assert_eq!(protected.len(), 4 * 2 + 2 * 2);
    let copies: Vec<usize> = protected.iter().map(|b| copies_on_disk(&c, *b)).collect();
    assert!(copies.iter().all(|&n| n > 0), "every referenced block is on disk: {copies:?}");

    // Garbage: 12 files written and removed. Nodes 1 and 2 are frozen (SIGSTOP), so only
    // node 0 collects; once it has deleted its copies, the metadata server is killed
    // with the deletions of nodes 1 and 2 still queued: GC is half done at the crash.
    let junk = client.mkdir(InodeId::ROOT, "junk", 0o755).await.unwrap();
    let mut garbage = BTreeSet::new();
    for i in 0..12u64 {
        let name = format!("j{i}");
        write_file(&client, junk.ino, &name, &random_bytes(4 * MIB as usize, 70 + i)).await;
        garbage.extend(blocks_of(&client, &format!("/junk/{name}")).await);
    }
    let on = |c: &ProcessCluster, i: usize| {
        garbage
            .iter()
            .filter(|b| {
                let hex = b.to_string();
                c.storage_dir(i).join("blocks").join(&hex[0..2]).join(&hex[2..4]).join(&hex).exists()
            })
            .count()
    };
    c.stop_storage(1);
    c.stop_storage(2);
    distfs_ok(&c, &["rm", "-r", "/junk"]).await;
    wait_for("node 0 collected its garbage", Duration::from_secs(20), || async { (on(&c, 0) == 0).then_some(()) })
        .await;
    let pending = client.cluster_status().await.expect("status").gc_pending;
    assert!(pending >= 2 * garbage.len() as u64, "the copies of nodes 1 and 2 are still queued: {pending}");
    c.kill_meta_server(0);
    c.cont_storage(1);
    c.cont_storage(2);
    let held = on(&c, 1) + on(&c, 2);
    assert!(held > 0, "nodes 1 and 2 still hold their garbage copies at the crash");
    c.start_meta_server(0);
    c.wait_nodes_up(3).await;
    wait_for("GC finished after the restart", Duration::from_secs(40), || async {
        let st = c.client().cluster_status().await.ok()?;
        (st.gc_pending == 0 && on(&c, 1) + on(&c, 2) == 0).then_some(())
    })
    .await;
    eprintln!("garbage copies on the frozen nodes at the crash: {held}; GC entries pending: {pending}");

    let client = c.client();
    let after: Vec<usize> = protected.iter().map(|b| copies_on_disk(&c, *b)).collect();
    assert_eq!(after, copies, "every block still referenced keeps every copy it had");
    for i in 0..4u64 {
        let got = read_path(&client, &format!("/.snapshots/s/k{i}")).await;
        assert!(got == random_bytes(6 * MIB as usize, 50 + i), "snapshot file k{i} after the crash");
    }
    for i in 0..2u64 {
        assert!(read_path(&client, &format!("/live/l{i}")).await == random_bytes(5 * MIB as usize, 60 + i));
    }
    let fsck = distfs(&c, &["fsck"]).await;
    assert!(fsck.status.success(), "fsck is clean: {}", String::from_utf8_lossy(&fsck.stdout));

    // Deleting the snapshot frees its blocks and only those.
    distfs_ok(&c, &["snapshot", "delete", "s"]).await;
    let snap_only: Vec<BlockId> = {
        let mut live_blocks = BTreeSet::new();
        for i in 0..2 {
            live_blocks.extend(blocks_of(&client, &format!("/live/l{i}")).await);
        }
        protected.iter().filter(|b| !live_blocks.contains(b)).copied().collect()
    };
    assert_eq!(snap_only.len(), 8);
    wait_for("the snapshot's blocks deleted", Duration::from_secs(30), || async {
        snap_only.iter().all(|b| copies_on_disk(&c, *b) == 0).then_some(())
    })
    .await;
    for i in 0..2u64 {
        let f = format!("/live/l{i}");
        for b in blocks_of(&client, &f).await {
            assert!(copies_on_disk(&c, b) > 0, "live block {b} of {f}");
        }
        assert!(read_path(&client, &f).await == random_bytes(5 * MIB as usize, 60 + i));
    }
}

fn code(o: &std::process::Output) -> i32 {
    o.status.code().expect("exited")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_are_read_only_restorable_and_the_cli_explains_errors() {
    let c = cluster().await;
    let local = c.dir().join("a.bin");
    let old = random_bytes(3 * MIB as usize + 17, 5);
    std::fs::write(&local, &old).unwrap();
    let l = local.to_str().unwrap();
    distfs_ok(&c, &["mkdir", "-p", "/p/sub"]).await;
    distfs_ok(&c, &["put", l, "/p/a"]).await;
    distfs_ok(&c, &["put", l, "/p/sub/b"]).await;

    // Errors: missing path, not a directory, duplicate name, unknown snapshot.
    let o = distfs(&c, &["snapshot", "create", "/nope", "s"]).await;
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    let o = distfs(&c, &["snapshot", "create", "/p/a", "s"]).await;
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    assert!(stderr(&o).contains("snapshot a directory"), "{}", stderr(&o));
    let out = distfs_ok(&c, &["snapshot", "create", "/p", "s"]).await;
    assert!(out.contains("2 files"), "{out}");
    let o = distfs(&c, &["snapshot", "create", "/p", "s"]).await;
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(stderr(&o).contains("snapshot `s`"), "{}", stderr(&o));
    for args in [&["snapshot", "delete", "nope"][..], &["snapshot", "restore", "nope"][..]] {
        let o = distfs(&c, args).await;
        assert_eq!(code(&o), 3, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("snapshot `nope`") && stderr(&o).contains("snapshot list"), "{}", stderr(&o));
    }
    let d = distfs_ok(&c, &["df"]).await;
    assert!(d.contains("1 snapshot(s) hold"), "df tells what snapshots hold: {d}");
    let list = distfs_ok(&c, &["snapshot", "list"]).await;
    assert!(list.contains("s") && list.contains("/p") && list.contains("Exclusive"), "{list}");

    // Read-only: every change under /.snapshots fails with exit 10 and says why.
    let ro = [
        &["put", l, "/.snapshots/s/new"][..],
        &["put", l, "/.snapshots/s/a"][..],
        &["rm", "/.snapshots/s/a"][..],
        &["rm", "-r", "/.snapshots/s"][..],
        &["rm", "-r", "/.snapshots"][..],
        &["mkdir", "/.snapshots/s/d"][..],
        &["mkdir", "/.snapshots/x"][..],
        &["mv", "/.snapshots/s/a", "/stolen"][..],
        &["mv", "/p/a", "/.snapshots/s/planted"][..],
        &["mv", "/.snapshots", "/renamed"][..],
    ];
    for args in ro {
        let o = distfs(&c, args).await;
        assert_eq!(code(&o), 10, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("read-only"), "{args:?}: {}", stderr(&o));
    }
    let back = c.dir().join("back.bin");
    distfs_ok(&c, &["get", "/.snapshots/s/a", back.to_str().unwrap()]).await;
    assert!(std::fs::read(&back).unwrap() == old, "the snapshot is unchanged");
    assert!(c.client().try_resolve("/stolen").await.unwrap().is_none());

    // Restore: the live tree gets the snapshot's content back, and stays writable.
    let new = random_bytes(MIB as usize, 6);
    std::fs::write(&local, &new).unwrap();
    distfs_ok(&c, &["put", l, "/p/a"]).await;
    distfs_ok(&c, &["rm", "-r", "/p/sub"]).await;
    distfs_ok(&c, &["put", l, "/p/extra"]).await;
    distfs_ok(&c, &["snapshot", "restore", "s"]).await;
    let client = c.client();
    assert!(read_path(&client, "/p/a").await == old);
    assert!(read_path(&client, "/p/sub/b").await == old);
    assert!(client.try_resolve("/p/extra").await.unwrap().is_none(), "what the tree gained since is gone");
    distfs_ok(&c, &["put", l, "/p/a"]).await;
    assert!(read_path(&client, "/p/a").await == new, "the restored tree is writable");
    assert!(read_path(&client, "/.snapshots/s/a").await == old);
    // Into another directory.
    distfs_ok(&c, &["mkdir", "/q"]).await;
    distfs_ok(&c, &["snapshot", "restore", "s", "--to", "/q"]).await;
    assert!(read_path(&client, "/q/sub/b").await == old);
    let o = distfs(&c, &["snapshot", "restore", "s", "--to", "/missing"]).await;
    assert_eq!(code(&o), 3, "{}", stderr(&o));
}

fn errno(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// Through the FUSE mount: `/.snapshots` shows up by itself, reads the old bytes, and
/// every change in it fails with EROFS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mount_shows_snapshots_read_only() {
    let c = cluster().await;
    let m = mount_common::MountProc::start(&c, "snap").await;
    let old = random_bytes(2 * MIB as usize + 5, 21);
    std::fs::create_dir(m.path("p")).unwrap();
    std::fs::write(m.path("p/a"), &old).unwrap();
    std::fs::write(m.path("p/small"), b"inline").unwrap();
    distfs_ok(&c, &["snapshot", "create", "/p", "s"]).await;
    std::fs::write(m.path("p/a"), b"new").unwrap();

    let snap = m.path(".snapshots/s");
    assert!(std::fs::read(snap.join("a")).unwrap() == old, "the snapshot reads the old bytes");
    assert_eq!(std::fs::read(snap.join("small")).unwrap(), b"inline");
    assert_eq!(std::fs::read(m.path("p/a")).unwrap(), b"new");
    let names: Vec<String> =
        std::fs::read_dir(&snap).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 2, "{names:?}");

    let erofs = Some(libc::EROFS);
    let open_w = |p: &std::path::Path| std::fs::OpenOptions::new().write(true).open(p);
    assert_eq!(errno(open_w(&snap.join("a"))), erofs, "open for writing");
    assert_eq!(errno(std::fs::write(snap.join("new"), b"x")), erofs, "create");
    assert_eq!(errno(std::fs::remove_file(snap.join("a"))), erofs, "unlink");
    assert_eq!(errno(std::fs::create_dir(snap.join("d"))), erofs, "mkdir");
    assert_eq!(errno(std::fs::rename(snap.join("a"), m.path("stolen"))), erofs, "rename out");
    assert_eq!(errno(std::fs::rename(m.path("p/small"), snap.join("planted"))), erofs, "rename in");
    use std::os::unix::fs::PermissionsExt;
    let chmod = std::fs::set_permissions(snap.join("a"), std::fs::Permissions::from_mode(0o777));
    assert_eq!(errno(chmod), erofs, "chmod");
    assert_eq!(errno(std::fs::remove_dir_all(m.path(".snapshots"))), erofs, "rm -r /.snapshots");
    assert!(std::fs::read(snap.join("a")).unwrap() == old, "still the old bytes");
    m.unmount().await;
}
