//! The FUSE mount, mounted for real (as root, on loopback) against a real-process cluster:
//! `cp -a`, `tar`, `rsync`, `git` and `sqlite3` on the mount; close-to-open between two
//! mounts; rename over a file under readers; a storage node SIGKILLed during a large
//! copy; errno of bad input; `--background`, SIGTERM and `fusermount3 -u`.

mod common;
mod mount_common;

use common::*;
use mount_common::*;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cp_tar_rsync_copy_trees_byte_identical_with_modes_and_mtimes() {
    let c = cluster().await;
    let m = MountProc::start(&c, "tools").await;
    let local = tempfile::tempdir().expect("local dir");
    let src = local.path().join("src");
    make_tree(&src, 2000, 1);
    let small = local.path().join("small");
    make_tree(&small, 300, 9);

    eprintln!("phase: cp -a of 2,000 files into the mount and back out");
    let into = m.path("cp");
    run_ok(&format!("cp -a '{}' '{}'", src.display(), into.display()), T).await;
    assert_same_tree(&src, &into, true);
    // Read back through a second mount: this kernel's page cache still holds what cp wrote.
    let fresh = MountProc::start(&c, "tools-fresh").await;
    let out = local.path().join("out");
    run_ok(&format!("cp -a '{}' '{}'", fresh.path("cp").display(), out.display()), T).await;
    assert_same_tree(&src, &out, true);

    eprintln!("phase: tar c | tar x into the mount and back out");
    let tarred = m.path("tar");
    std::fs::create_dir(&tarred).expect("mkdir tar");
    run_ok(&format!("tar -C '{}' -cf - . | tar -C '{}' -xpf -", small.display(), tarred.display()), T).await;
    assert_same_tree(&small, &tarred, false);
    let untarred = local.path().join("untar");
    std::fs::create_dir(&untarred).expect("mkdir untar");
    let tarred_fresh = fresh.path("tar");
    run_ok(&format!("tar -C '{}' -cf - . | tar -C '{}' -xpf -", tarred_fresh.display(), untarred.display()), T).await;
    assert_same_tree(&small, &untarred, false);

    eprintln!("phase: rsync -a twice; the second transfers nothing");
    let synced = m.path("rsync");
    run_ok(&format!("rsync -a '{}/' '{}/'", small.display(), synced.display()), T).await;
    assert_same_tree(&small, &synced, false);
    let second = run_ok(&format!("rsync -ai '{}/' '{}/'", small.display(), synced.display()), T).await;
    assert!(second.trim().is_empty(), "the second rsync changed things:\n{second}");
    let back = local.path().join("rsync-back");
    run_ok(&format!("rsync -a '{}/' '{}/'", fresh.path("rsync").display(), back.display()), T).await;
    assert_same_tree(&small, &back, false);
    fresh.unmount().await;
    m.unmount().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn git_and_sqlite_work_on_the_mount_and_after_remount() {
    let c = cluster().await;
    let dir = tempfile::tempdir().expect("mount dir");
    let m = MountProc::start_at(&c, dir.path(), "git").await;
    let repo = m.path("repo");
    let git = format!("cd '{}' && git -c user.name=t -c user.email=t@e -c init.defaultBranch=main", repo.display());

    eprintln!("phase: git init/add/commit/log/status/branch/checkout");
    std::fs::create_dir(&repo).expect("mkdir repo");
    for i in 0..20 {
        std::fs::write(repo.join(format!("file{i}.txt")), format!("line {i}\n").repeat(i + 1)).expect("write");
    }
    run_ok(&format!("{git} init -q . && {git} add -A && {git} commit -q -m first"), T).await;
    run_ok(&format!("{git} branch feature && {git} checkout -q feature"), T).await;
    std::fs::write(repo.join("file3.txt"), "changed on feature\n").expect("write");
    run_ok(&format!("{git} commit -q -am second"), T).await;
    let log = run_ok(&format!("{git} log --oneline"), T).await;
    assert_eq!(log.lines().count(), 2, "git log: {log}");
    run_ok(&format!("{git} checkout -q main"), T).await;
    assert_eq!(std::fs::read_to_string(repo.join("file3.txt")).expect("read"), "line 3\n".repeat(4));
    let status = run_ok(&format!("{git} status --porcelain"), T).await;
    assert!(status.is_empty(), "git status not clean: {status}");
    run_ok(&format!("{git} fsck --no-progress"), T).await;

    eprintln!("phase: sqlite3 with 10,000 rows in 10 transactions");
    let db = m.path("db.sqlite");
    let mut sql = String::from("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);\n");
    for k in 0..10 {
        sql.push_str(&format!(
            "BEGIN; WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<1000) \
             INSERT INTO t SELECT x+{}, randomblob(200) FROM c; COMMIT;\n",
            k * 1000
        ));
    }
    let script = local_file(&c, "load.sql", &sql);
    run_ok(&format!("sqlite3 '{}' < '{}'", db.display(), script.display()), T).await;
    let check = format!("sqlite3 '{}' 'PRAGMA integrity_check; SELECT count(*) FROM t;'", db.display());
    assert_eq!(run_ok(&check, T).await.trim(), "ok\n10000");

    eprintln!("phase: remount, then the repository and the database are intact");
    m.unmount().await;
    let m2 = MountProc::start_at(&c, dir.path(), "git-2").await;
    assert_eq!(run_ok(&check, T).await.trim(), "ok\n10000");
    let status = run_ok(&format!("{git} status --porcelain && {git} log --oneline --all"), T).await;
    assert_eq!(status.lines().count(), 2, "after remount: {status}");
    m2.unmount().await;
}

fn local_file(c: &distfs_testkit::ProcessCluster, name: &str, text: &str) -> std::path::PathBuf {
    let p = c.dir().join(name);
    std::fs::write(&p, text).expect("write local file");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_mounts_close_to_open_and_rename_over_a_file_under_readers() {
    let c = cluster().await;
    let a = MountProc::start(&c, "a").await;
    let b = MountProc::start(&c, "b").await;

    eprintln!("phase: a file closed on one mount is read whole from the other");
    for round in 0..4u64 {
        let data = random_bytes(200_000 + round as usize * 50_000, round + 100);
        std::fs::write(a.path("shared"), &data).expect("write on a");
        let got = std::fs::read(b.path("shared")).expect("read on b");
        assert!(got == data, "round {round}: b read {} bytes, not the {} just closed on a", got.len(), data.len());
        // Same size, new bytes: the page cache of b must not serve the old ones.
        let data2 = random_bytes(data.len(), round + 200);
        std::fs::write(b.path("shared"), &data2).expect("write on b");
        assert!(std::fs::read(a.path("shared")).expect("read on a") == data2, "round {round}: a read stale bytes");
    }

    eprintln!("phase: a directory's attributes follow each change made in it on this mount");
    let d = a.path("dirattrs");
    std::fs::create_dir(&d).expect("mkdir dirattrs");
    let mut last = std::fs::metadata(&d).expect("stat dirattrs");
    for i in 0..4u64 {
        std::fs::create_dir(d.join(format!("sub{i}"))).expect("mkdir sub");
        std::fs::write(d.join(format!("f{i}")), b"x").expect("create file");
        let now = std::fs::metadata(&d).expect("stat dirattrs");
        assert_eq!(now.nlink(), 3 + i, "nlink after {} subdirectories", i + 1);
        assert!((now.mtime(), now.mtime_nsec()) > (last.mtime(), last.mtime_nsec()), "mtime moves on");
        last = now;
    }
    std::fs::remove_dir(d.join("sub0")).expect("rmdir sub0");
    std::fs::rename(d.join("sub1"), a.path("sub1-moved")).expect("move sub1 out");
    assert_eq!(std::fs::metadata(&d).expect("stat dirattrs").nlink(), 4, "two subdirectories left");
    std::fs::remove_file(d.join("f0")).expect("unlink f0");
    let names = std::fs::read_dir(&d).expect("list").count();
    assert_eq!(names, 5, "sub2, sub3, f1, f2, f3");

    eprintln!("phase: a listing with attributes (READDIRPLUS) shows each entry as it is");
    let l = a.path("listed");
    std::fs::create_dir(&l).expect("mkdir listed");
    for i in 0..40u64 {
        std::fs::write(l.join(format!("f{i:02}")), vec![7u8; (i * 1000) as usize]).expect("write listed file");
        std::fs::set_permissions(
            l.join(format!("f{i:02}")),
            std::os::unix::fs::PermissionsExt::from_mode(0o600 | (i as u32 % 2) << 2),
        )
        .expect("chmod");
    }
    for round in 0..2 {
        let mut seen: Vec<(String, u64, u32)> = std::fs::read_dir(b.path("listed"))
            .expect("list on b")
            .map(|e| {
                let e = e.expect("entry");
                let m = e.metadata().expect("stat of a listed entry");
                (e.file_name().into_string().unwrap(), m.len(), m.mode() & 0o777)
            })
            .collect();
        seen.sort();
        let want: Vec<(String, u64, u32)> =
            (0..40u64).map(|i| (format!("f{i:02}"), i * 1000, 0o600 | (i as u32 % 2) << 2)).collect();
        assert_eq!(seen, want, "round {round}: sizes and modes as listed on b");
    }
    // b's kernel got f05's size from the listing; a grows it: b's open sees the growth.
    let grown = random_bytes(123_456, 9);
    std::fs::write(a.path("listed/f05"), &grown).expect("grow f05 on a");
    assert!(std::fs::read(b.path("listed/f05")).expect("read f05 on b") == grown, "b read f05 short");

    eprintln!("phase: a size the kernel cached from a stat does not cut a later open short");
    for round in 0..3u64 {
        let short = random_bytes(10_000 + round as usize, round + 300);
        std::fs::write(a.path("statted"), &short).expect("write short on a");
        // b's kernel caches a size (the short one, or an older one: a stat may lag
        // another mount by the attribute TTL); only the open can tell it the new size.
        std::fs::metadata(b.path("statted")).expect("stat on b");
        let long = random_bytes(300_000 + round as usize, round + 400);
        std::fs::write(a.path("statted"), &long).expect("write long on a");
        let got = std::fs::read(b.path("statted")).expect("read on b");
        assert!(got == long, "round {round}: b read {} bytes after a's rewrite to {}", got.len(), long.len());
        assert_eq!(std::fs::metadata(b.path("statted")).expect("stat on b").len(), long.len() as u64);
    }

    eprintln!("phase: rename over a file while readers on both mounts read it whole");
    let old = vec![1u8; 3 << 20];
    let new = vec![2u8; 2 << 20];
    std::fs::write(a.path("target"), &old).expect("write target");
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for (i, dir) in [a.dir.clone(), b.dir.clone(), a.dir.clone(), b.dir.clone()].into_iter().enumerate() {
        let (stop, reads) = (stop.clone(), reads.clone());
        readers.push(std::thread::spawn(move || -> Result<(), String> {
            while !stop.load(Ordering::Relaxed) {
                let got = std::fs::read(dir.join("target")).map_err(|e| format!("reader {i}: {e}"))?;
                let whole_old = got.len() == 3 << 20 && got.iter().all(|&x| x == 1);
                let whole_new = got.len() == 2 << 20 && got.iter().all(|&x| x == 2);
                if !whole_old && !whole_new {
                    return Err(format!("reader {i} saw a mix: {} bytes", got.len()));
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for k in 0..6 {
        let (content, tmp) = if k % 2 == 0 { (&new, "tmp-new") } else { (&old, "tmp-old") };
        std::fs::write(a.path(tmp), content).expect("write replacement");
        std::fs::rename(a.path(tmp), a.path("target")).expect("rename over target");
        let before = reads.load(Ordering::Relaxed);
        wait_for_reads(&reads, before + 4, &readers).await;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader thread").unwrap_or_else(|e| panic!("{e}"));
    }
    b.unmount().await;
    a.unmount().await;
}

async fn wait_for_reads<T>(reads: &AtomicUsize, at_least: usize, readers: &[std::thread::JoinHandle<T>]) {
    let start = Instant::now();
    while reads.load(Ordering::Relaxed) < at_least {
        if readers.iter().any(|r| r.is_finished()) {
            // A reader stopped early: the join below reports why.
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "readers made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_node_killed_during_a_large_cp_the_copy_is_correct() {
    let mut c = cluster().await;
    let m = MountProc::start(&c, "kill").await;
    let local = tempfile::tempdir().expect("local dir");
    let big = local.path().join("big");
    std::fs::write(&big, random_bytes(160 << 20, 42)).expect("write big");
    let dst = m.path("big");
    let script = format!("cp '{}' '{}'", big.display(), dst.display());
    let cp = tokio::spawn(async move { run_sh(&script, T).await });

    eprintln!("phase: kill a storage node once the copy is under way");
    let probe = dst.clone();
    distfs_testkit::wait_for("the copy to pass 8 MiB", T, || {
        let len = std::fs::metadata(&probe).map(|m| m.len()).unwrap_or(0);
        async move { (len > 8 << 20).then_some(()) }
    })
    .await;
    c.kill_storage(1);
    assert!(!cp.is_finished(), "the copy ended before the node was killed: make the file larger");
    let out = cp.await.expect("cp task");
    assert!(out.status.success(), "cp failed: {}", String::from_utf8_lossy(&out.stderr));

    eprintln!("phase: the copy reads back right from the cluster, not from this kernel's cache");
    let back = local.path().join("back");
    distfs_ok(&c, &["get", "/big", back.to_str().expect("utf-8"), "--no-progress"]).await;
    assert!(same_file(&big, &back), "the copy in the cluster differs from the source");
    m.unmount().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_errnos_background_mode_and_clean_unmounts() {
    let c = cluster().await;

    eprintln!("phase: --background returns once the mount answers");
    let dir = tempfile::tempdir().expect("mount dir");
    let mp = dir.path().to_path_buf();
    let out = distfs(&c, &["mount", "--background", mp.to_str().expect("utf-8 path")]).await;
    assert!(out.status.success(), "mount --background failed: {}", stderr(&out));
    assert!(is_fuse(&mp), "--background returned before the mount was ready");
    let daemon: i32 = stderr(&out)
        .split("(pid ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pid in: {}", stderr(&out)));
    let _guard = DaemonGuard { dir: mp.clone(), pid: daemon };
    // As root the mount widens the kernel's readahead window to 8 MiB (`--readahead`), so
    // sequential reads arrive as large READs, several at a time.
    let dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(&mp).expect("stat the mount"));
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let ra = std::fs::read_to_string(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb")).expect("bdi");
    assert_eq!(ra.trim(), "8192", "readahead window of the mount's device");

    eprintln!("phase: errno of bad input");
    let p = |s: &str| mp.join(s);
    assert_eq!(errno_of(std::fs::write(p(&"n".repeat(256)), b"x")), Some(libc::ENAMETOOLONG));
    std::fs::write(p(&"n".repeat(255)), b"x").expect("a 255-byte name is fine");
    std::fs::write(p("file"), b"x").expect("write file");
    assert_eq!(errno_of(std::fs::write(p("file/child"), b"x")), Some(libc::ENOTDIR));
    assert_eq!(errno_of(std::fs::metadata(p("file/child"))), Some(libc::ENOTDIR));
    std::fs::create_dir(p("dir")).expect("mkdir");
    std::fs::write(p("dir/inside"), b"x").expect("write inside");
    assert_eq!(errno_of(std::fs::remove_dir(p("dir"))), Some(libc::ENOTEMPTY));
    assert_eq!(errno_of(std::fs::create_dir(p("dir"))), Some(libc::EEXIST));
    assert_eq!(errno_of(std::fs::remove_dir(p("file"))), Some(libc::ENOTDIR));
    assert_eq!(errno_of(std::fs::remove_file(p("dir"))), Some(libc::EISDIR));
    assert_eq!(errno_of(std::fs::read(p("missing"))), Some(libc::ENOENT));
    let f = std::fs::OpenOptions::new().write(true).create_new(true).open(p("huge")).expect("open huge");
    let max = distfs_fuse::MAX_FILE_SIZE;
    // Up to the limit the write is short; at the limit it fails.
    assert_eq!(f.write_at(b"past the end", max - 4).expect("short write up to the limit"), 4);
    assert_eq!(errno_of(f.write_at(b"x", max)), Some(libc::EFBIG));
    assert_eq!(errno_of(f.set_len(max + 1)), Some(libc::EFBIG));
    drop(f);
    assert_eq!(std::fs::metadata(p("huge")).expect("stat huge").len(), max);
    std::fs::remove_file(p("huge")).expect("remove huge");
    assert_eq!(errno_of(std::fs::OpenOptions::new().write(true).create_new(true).open(p("file"))), Some(libc::EEXIST));
    assert_eq!(renameat2(&p("dir/inside"), &p("file"), libc::RENAME_NOREPLACE), Some(libc::EEXIST));
    assert_eq!(renameat2(&p("dir/inside"), &p("file"), libc::RENAME_EXCHANGE), None);
    assert_eq!(std::fs::read(p("dir/inside")).expect("exchanged"), b"x");
    xattr_set(&p("file")).expect("extended attributes are supported (more in mount_posix.rs)");

    eprintln!("phase: O_APPEND, truncate and read-your-writes on one handle");
    {
        use std::io::{Read, Seek, Write};
        let mut f = std::fs::OpenOptions::new().read(true).append(true).open(p("file")).expect("open append");
        f.write_all(b"yz").expect("append");
        f.rewind().expect("rewind");
        let mut s = String::new();
        f.read_to_string(&mut s).expect("read back");
        assert_eq!(s, "xyz");
        f.set_len(1).expect("ftruncate");
        f.write_all(b"q").expect("append after truncate");
        assert_eq!(std::fs::metadata(p("file")).expect("stat").len(), 2);
    }
    assert_eq!(std::fs::read(p("file")).expect("read"), b"xq");

    eprintln!("phase: a mount point that is missing or a file is refused clearly");
    let out = distfs(&c, &["mount", mp.join("nope").to_str().expect("utf-8")]).await;
    assert!(!out.status.success() && stderr(&out).contains("does not exist"), "{}", stderr(&out));
    let out = distfs(&c, &["mount", p("file").to_str().expect("utf-8")]).await;
    assert!(!out.status.success() && stderr(&out).contains("not a directory"), "{}", stderr(&out));

    eprintln!("phase: fusermount3 -u ends the background mount");
    run_ok(&format!("fusermount3 -u '{}'", mp.display()), T).await;
    distfs_testkit::wait_for("the background mount to exit", Duration::from_secs(20), || async move {
        // SAFETY: signal 0 only checks that the process exists.
        (unsafe { libc::kill(daemon, 0) } != 0).then_some(())
    })
    .await;
    assert!(!is_fuse(&mp));

    eprintln!("phase: SIGTERM unmounts a foreground mount and exits 0");
    let mut m = MountProc::start_at(&c, &mp, "term").await;
    assert_eq!(std::fs::read(p("file")).expect("read after remount"), b"xq");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(m.pid() as i32, libc::SIGTERM) };
    let st = m.wait_exit(Duration::from_secs(20)).await;
    assert!(st.success(), "SIGTERM exit: {st}: {}", m.log_text());
    assert!(!is_fuse(&mp), "still mounted after SIGTERM");
}

fn cstr(p: &std::path::Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn renameat2(from: &std::path::Path, to: &std::path::Path, flags: u32) -> Option<i32> {
    let (a, b) = (cstr(from), cstr(to));
    // SAFETY: both paths are NUL-terminated and outlive the call.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) };
    (rc != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

fn xattr_set(p: &std::path::Path) -> std::io::Result<()> {
    let (c, name) = (cstr(p), std::ffi::CString::new("user.test").expect("name"));
    // SAFETY: valid NUL-terminated strings and a 1-byte value buffer.
    let rc = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
