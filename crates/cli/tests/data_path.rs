//! End to end through real processes: large files through the CLI, many concurrent
//! clients, conflicting overwrites, and overwrite/truncate/append semantics.

mod common;

use common::*;
use distfs_testkit::wait_for;
use distfs_types::InodeId;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_256_mib_file_round_trips_byte_identical_through_the_cli() {
    let c = cluster().await;
    let local = c.dir().join("big.bin");
    std::fs::write(&local, random_bytes(256 << 20, 1)).unwrap();

    // put, then ls -l and stat show the size.
    distfs_ok(&c, &["put", local.to_str().unwrap(), "/big.bin"]).await;
    let ls = distfs_ok(&c, &["ls", "-l", "/"]).await;
    assert!(ls.contains("big.bin") && ls.contains("256.00 MiB"), "ls -l shows the file and its size: {ls}");
    let stat = distfs_ok(&c, &["stat", "/big.bin"]).await;
    assert!(stat.contains("268435456 bytes"), "stat shows the exact size: {stat}");
    let json = distfs_ok(&c, &["stat", "--json", "/big.bin"]).await;
    assert!(json.contains("\"size\": 268435456"), "{json}");

    // get back into a file and compare every byte.
    let back = c.dir().join("back.bin");
    distfs_ok(&c, &["get", "/big.bin", back.to_str().unwrap()]).await;
    assert!(same_file(&local, &back), "the file read back differs from the one written");

    // Every block has three replicas.
    let st = c.client().cluster_status().await.unwrap();
    assert_eq!(st.under_replicated, 0);
    assert_eq!(st.logical_bytes, 256 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_clients_write_and_read_their_own_files() {
    let c = cluster().await;
    let root = c.client();
    let dir = root.mkdir(InodeId::ROOT, "many", 0o755).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let client = c.client();
        tasks.push(tokio::spawn(async move {
            // Sizes straddle block boundaries differently for each client.
            let data = random_bytes(100_000 + (i as usize) * 181_111, i + 100);
            let f = client.create(dir.ino, &format!("f{i}"), 0o644, true).await.unwrap();
            client.write_at(f.ino, 0, &data).await.unwrap();
            let got = client.read_at(f.ino, 0, data.len() as u64 + 10).await.unwrap();
            assert!(got[..] == data[..], "client {i} read different bytes");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(root.readdir(dir.ino).await.unwrap().len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_overwrites_of_one_range_leave_one_whole_version() {
    let c = cluster().await;
    let setup = c.client();
    let f = setup.create(InodeId::ROOT, "contended", 0o644, true).await.unwrap();
    setup.write_at(f.ino, 0, &vec![0u8; 12 << 20]).await.unwrap();
    for round in 0..4u8 {
        // Two writers, each covering 3 blocks of the same range with its own byte.
        let (a, b) = (c.client(), c.client());
        let (va, vb) = (2 * round + 1, 2 * round + 2);
        let wa = tokio::spawn(async move { a.write_at(f.ino, 1 << 20, &vec![va; 9 << 20]).await.map(|_| ()) });
        let wb = tokio::spawn(async move { b.write_at(f.ino, 1 << 20, &vec![vb; 9 << 20]).await.map(|_| ()) });
        wa.await.unwrap().unwrap();
        wb.await.unwrap().unwrap();
        let got = setup.read_at(f.ino, 0, 12 << 20).await.unwrap();
        let range = &got[1 << 20..10 << 20];
        let first = range[0];
        assert!(first == va || first == vb, "round {round}: range holds neither version");
        assert!(range.iter().all(|&x| x == first), "round {round}: the two writes are mixed inside one range");
        assert!(got[..1 << 20].iter().all(|&x| x == 0) && got[10 << 20..].iter().all(|&x| x == 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overwrite_truncate_and_append_are_seen_by_readers() {
    let c = cluster().await;
    let client = c.client();
    let f = client.create(InodeId::ROOT, "edit", 0o644, true).await.unwrap();
    let mut model = random_bytes(10 << 20, 7);
    client.write_at(f.ino, 0, &model).await.unwrap();

    // Overwrite in the middle, across a block boundary.
    let patch = random_bytes(3 << 20, 8);
    let at = (4 << 20) - 12345;
    client.write_at(f.ino, at as u64, &patch).await.unwrap();
    model[at..at + patch.len()].copy_from_slice(&patch);
    assert!(client.read_at(f.ino, 0, 1 << 30).await.unwrap()[..] == model[..], "after overwrite");

    // Truncate down, then extend: the cut bytes must come back as zeros.
    client.truncate(f.ino, 5_000_000).await.unwrap();
    model.truncate(5_000_000);
    assert!(client.read_at(f.ino, 0, 1 << 30).await.unwrap()[..] == model[..], "after truncate");
    client.truncate(f.ino, 6_000_000).await.unwrap();
    model.resize(6_000_000, 0);
    assert!(client.read_at(f.ino, 0, 1 << 30).await.unwrap()[..] == model[..], "after extend");

    // Append twice.
    for seed in [9, 10] {
        let tail = random_bytes(1_500_000, seed);
        client.append(f.ino, &tail).await.unwrap();
        model.extend_from_slice(&tail);
    }
    let attr = client.getattr(f.ino).await.unwrap();
    assert_eq!(attr.size, model.len() as u64);
    assert!(client.read_at(f.ino, 0, 1 << 30).await.unwrap()[..] == model[..], "after append");

    // A writer kept open across a truncate does not grow the file back on its next commit.
    let mut w = client.writer(f.ino, 0).await.unwrap();
    w.write(&model[..10]).await.unwrap();
    w.commit().await.unwrap();
    client.truncate(f.ino, 3).await.unwrap();
    model.truncate(3);
    let attr = w.close().await.unwrap();
    assert_eq!(attr.size, model.len() as u64, "a commit with nothing new keeps the truncated size");

    // A write past the end leaves a hole of zeros.
    client.write_at(f.ino, model.len() as u64 + 100_000, b"tail").await.unwrap();
    model.resize(model.len() + 100_000, 0);
    model.extend_from_slice(b"tail");
    assert!(client.read_at(f.ino, 0, 1 << 30).await.unwrap()[..] == model[..], "after sparse write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removed_and_overwritten_data_is_deleted_from_storage_nodes() {
    let c = cluster().await;
    let client = c.client();
    let count = |c: &distfs_testkit::ProcessCluster| (0..3).map(|i| c.block_files(i).len()).sum::<usize>();
    let f = client.create(InodeId::ROOT, "gc", 0o644, true).await.unwrap();
    client.write_at(f.ino, 0, &random_bytes(8 << 20, 3)).await.unwrap();
    assert_eq!(count(&c), 6, "two blocks, three copies each");

    // Overwriting the whole file makes the old blocks unreferenced.
    client.write_at(f.ino, 0, &random_bytes(8 << 20, 4)).await.unwrap();
    distfs_testkit::wait_for("old blocks deleted", Duration::from_secs(20), || async {
        (count(&c) == 6).then_some(())
    })
    .await;

    // Removing the file frees everything.
    distfs_ok(&c, &["rm", "/gc"]).await;
    distfs_testkit::wait_for("all blocks deleted", Duration::from_secs(20), || async {
        (count(&c) == 0).then_some(())
    })
    .await;
    // The deletions are acknowledged with the next heartbeats: the metadata forgets them.
    distfs_testkit::wait_for("GC acknowledged", Duration::from_secs(10), || async {
        let st = client.cluster_status().await.ok()?;
        (st.blocks == 0 && st.gc_pending == 0).then_some(())
    })
    .await;
}

/// Files whose bytes all lie below 64 KiB live in the metadata: no block, readable with
/// every storage node down, kept across a metadata restart; growing past the limit
/// moves on to blocks and the two read back as one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_files_are_inline_in_the_metadata_and_survive_a_restart() {
    let mut c = cluster().await;
    let client = c.client();
    let count = |c: &distfs_testkit::ProcessCluster| (0..3).map(|i| c.block_files(i).len()).sum::<usize>();
    let small = random_bytes(4096, 11);
    let f = client.create(InodeId::ROOT, "small", 0o644, true).await.unwrap();
    client.write_at(f.ino, 0, &small).await.unwrap();
    let g = client.create(InodeId::ROOT, "grows", 0o644, true).await.unwrap();
    let head = random_bytes(1000, 12);
    client.write_at(g.ino, 0, &head).await.unwrap();
    assert_eq!(count(&c), 0, "small files wrote no block");
    assert_eq!(client.cluster_status().await.unwrap().blocks, 0);

    // Every storage node down: inline files still read back exactly.
    for i in 0..3 {
        c.kill_storage(i);
    }
    assert!(client.read_at(f.ino, 0, 1 << 20).await.unwrap()[..] == small[..]);

    // A metadata restart keeps them (the Raft log and the state database hold them).
    c.kill_meta_server(0);
    c.restart_all().await;
    let client = c.client();
    assert!(client.read_at(f.ino, 0, 1 << 20).await.unwrap()[..] == small[..], "after restart");

    // Growing past the limit writes blocks; the inline head and the block tail are one file.
    let tail = random_bytes(200 << 10, 13);
    client.write_at(g.ino, head.len() as u64, &tail).await.unwrap();
    assert!(count(&c) > 0, "bytes past the inline limit go to blocks");
    let whole: Vec<u8> = head.iter().chain(tail.iter()).copied().collect();
    assert!(client.read_at(g.ino, 0, 1 << 20).await.unwrap()[..] == whole[..], "inline head + block tail");
    // Overwriting the head with a block-sized write leaves no trace of the old bytes.
    let over = random_bytes(300 << 10, 14);
    client.write_at(g.ino, 0, &over).await.unwrap();
    assert!(client.read_at(g.ino, 0, 1 << 20).await.unwrap()[..] == over[..], "after overwrite");
}

/// A reader opened with `OpenRead` (what the mount does at a first open for reading:
/// register the open and fetch attributes and layout in one round trip) holds the file:
/// unlinked, it keeps its bytes while an unheld file unlinked with it is freed, until the
/// open is released. A directory answers EISDIR, a freed inode ESTALE.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_opened_in_one_round_trip_holds_the_file_until_released() {
    use distfs_client::ClientError;
    use distfs_types::FsError;
    let c = cluster().await;
    let client = c.client();
    let session = distfs_client::session::new_session_id();
    assert!(client.hold_files(session, &[]).await.unwrap().is_empty());
    let bytes = random_bytes((3 << 20) + 12_345, 21);
    let held = client.create(InodeId::ROOT, "held", 0o644, true).await.unwrap();
    client.write_at(held.ino, 0, &bytes).await.unwrap();
    let loose = client.create(InodeId::ROOT, "loose", 0o644, true).await.unwrap();
    client.write_at(loose.ino, 0, &random_bytes(1 << 20, 22)).await.unwrap();

    let reader = client.open_read(held.ino, session).await.unwrap();
    assert_eq!(reader.attr().ino, held.ino);
    assert_eq!(reader.size(), bytes.len() as u64, "the layout's attributes are the file's");
    client.unlink(InodeId::ROOT, "held").await.unwrap();
    client.unlink(InodeId::ROOT, "loose").await.unwrap();
    let gone = |ino: InodeId| freed(&client, ino);
    wait_for("the unheld file is freed", Duration::from_secs(30), || gone(loose.ino)).await;
    let got = reader.read_at(0, u64::MAX).await.expect("the held file reads");
    assert!(got[..] == bytes[..], "the held file kept its bytes");
    let again = client.read_at(held.ino, 1 << 20, 4096).await.expect("a new reader of the held inode");
    assert!(again[..] == bytes[1 << 20..(1 << 20) + 4096]);

    match client.open_read(InodeId::ROOT, session).await {
        Err(ClientError::Fs(FsError::IsADirectory { .. })) => {}
        other => panic!("opening a directory as a file: {:?}", other.map(|r| r.attr().clone())),
    }
    client.release_file(held.ino, session).await.unwrap();
    wait_for("the released file is freed", Duration::from_secs(30), || gone(held.ino)).await;
    match client.open_read(held.ino, session).await {
        Err(ClientError::Fs(FsError::StaleInode { ino })) => assert_eq!(ino, held.ino),
        other => panic!("opening a freed inode: {:?}", other.map(|r| r.attr().clone())),
    }
    client.close_session(session).await.unwrap();
}
