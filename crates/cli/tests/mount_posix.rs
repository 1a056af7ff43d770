//! POSIX corners of the FUSE mount, mounted for real against a real-process cluster:
//! a file unlinked or renamed over while open keeps its data until the last close (and
//! its blocks are then deleted), extended attributes (`setfattr`/`getfattr`, `cp -a`,
//! `rsync -aX`), flock and OFD locks within one mount, sparse files, a 5 GiB sparse file
//! across the 4 GiB boundary, and shared writable mmap read back from another mount.

mod common;
mod mount_common;

use common::*;
use mount_common::*;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn block_count(c: &distfs_testkit::ProcessCluster) -> usize {
    (0..3).map(|i| c.block_files(i).len()).sum()
}

/// Drops this kernel's cached pages of `f`, so reads go to the cluster.
fn drop_pages(f: &std::fs::File) {
    // SAFETY: a valid open descriptor; the advice has no memory effects.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

fn read_all_at(f: &std::fs::File, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, 0).expect("read the whole file");
    buf
}

/// Writes and deletes a file of `len` bytes through `dir`, then waits until the storage
/// nodes hold `expect` block files again: the metadata's GC has run a whole cycle (queue,
/// heartbeat, delete, ack) after everything that happened before this call.
async fn gc_cycle(c: &distfs_testkit::ProcessCluster, dir: &Path, expect: usize) {
    std::fs::write(dir.join("gc-control"), random_bytes(6 << 20, 77)).expect("write control");
    assert!(block_count(c) > expect, "the control file wrote no blocks");
    std::fs::remove_file(dir.join("gc-control")).expect("remove control");
    distfs_testkit::wait_for("the control file's blocks to be deleted by GC", T, || {
        let n = block_count(c);
        async move { (n == expect).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_deleted_or_renamed_over_while_open_keep_their_data_until_closed() {
    let c = cluster().await;
    let a = MountProc::start(&c, "a").await;
    let b = MountProc::start(&c, "b").await;
    let empty = block_count(&c);

    eprintln!("phase: files written on b, held open for reading on a");
    let held = random_bytes(9 << 20, 1);
    let replaced = random_bytes(5 << 20, 2);
    std::fs::write(b.path("held"), &held).expect("write held");
    std::fs::write(b.path("replaced"), &replaced).expect("write replaced");
    let fh = std::fs::File::open(a.path("held")).expect("open held on a");
    let fr = std::fs::File::open(a.path("replaced")).expect("open replaced on a");
    let with_both = block_count(&c);

    eprintln!("phase: unlink on b (another mount), rename over on a (this mount)");
    std::fs::remove_file(b.path("held")).expect("unlink held on b");
    // Larger than the inline limit, so the new file has blocks of its own to count.
    let new = random_bytes(100 << 10, 3);
    std::fs::write(a.path("new"), &new).expect("write new");
    std::fs::rename(a.path("new"), a.path("replaced")).expect("rename over replaced");
    let with_new = block_count(&c);
    assert!(with_new > with_both, "the new file wrote no blocks");
    assert_eq!(errno_of(std::fs::metadata(b.path("held"))), Some(libc::ENOENT));
    // Another mount's unlink reaches this mount's fstat within the attribute TTL (1 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while fh.metadata().expect("fstat held").nlink() != 0 {
        assert!(std::time::Instant::now() < deadline, "fstat of the held file still shows a link");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    eprintln!("phase: a whole GC cycle later, the blocks are still there and read back whole");
    gc_cycle(&c, b.dir.as_path(), with_new).await;
    drop_pages(&fh);
    drop_pages(&fr);
    assert!(read_all_at(&fh, held.len()) == held, "the unlinked file read back wrong");
    assert!(read_all_at(&fr, replaced.len()) == replaced, "the renamed-over file read back wrong");
    // b may still have the old name cached: opening an unlinked inode by name is ESTALE,
    // and the kernel looks the name up again.
    let now = std::fs::read(b.path("replaced")).expect("read new");
    assert!(now == new, "b read {} bytes, not the new file", now.len());

    eprintln!("phase: closing frees the inodes and GC deletes their blocks");
    drop(fh);
    drop(fr);
    let new_only = distfs_testkit::wait_for("the held files' blocks to be deleted", T, || {
        let n = block_count(&c);
        async move { (n < with_new && n > empty).then_some(n) }
    })
    .await;
    distfs_testkit::wait_for("GC to finish", T, || {
        let n = block_count(&c);
        async move { (n == with_new - (with_both - empty)).then_some(()) }
    })
    .await;
    eprintln!("block files: {empty} empty, {with_new} with all three, {new_only} after close");
    b.unmount().await;
    a.unmount().await;
}

fn xattr_get(p: &Path, name: &str, size: usize) -> std::io::Result<Vec<u8>> {
    let (c, n) = (cstr(p), std::ffi::CString::new(name).expect("name"));
    let mut buf = vec![0u8; size];
    // SAFETY: valid NUL-terminated strings and a buffer of `size` bytes.
    let rc = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

fn xattr_set(p: &Path, name: &str, value: &[u8], flags: i32) -> std::io::Result<()> {
    let (c, n) = (cstr(p), std::ffi::CString::new(name).expect("name"));
    // SAFETY: valid NUL-terminated strings and a value buffer of its length.
    let rc = unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn cstr(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn xattrs_and_locks_work_on_the_mount() {
    let c = cluster().await;
    let m = MountProc::start(&c, "xattr").await;
    let other = MountProc::start(&c, "xattr-2").await;
    let f = m.path("f");
    std::fs::write(&f, b"data").expect("write f");

    eprintln!("phase: setfattr/getfattr and the errno of each corner");
    run_ok(&format!("setfattr -n user.color -v blue '{}'", f.display()), T).await;
    let got = run_ok(&format!("getfattr --only-values -n user.color '{}'", other.path("f").display()), T).await;
    assert_eq!(got, "blue", "seen from the other mount");
    assert_eq!(xattr_get(&f, "user.color", 64).expect("getxattr"), b"blue");
    assert_eq!(xattr_get(&f, "user.color", 0).expect("size query").len(), 0);
    assert_eq!(errno_of(xattr_get(&f, "user.color", 2)), Some(libc::ERANGE));
    assert_eq!(errno_of(xattr_get(&f, "user.none", 64)), Some(libc::ENODATA));
    assert_eq!(errno_of(xattr_set(&f, "user.color", b"red", libc::XATTR_CREATE)), Some(libc::EEXIST));
    assert_eq!(errno_of(xattr_set(&f, "user.new", b"x", libc::XATTR_REPLACE)), Some(libc::ENODATA));
    xattr_set(&f, "user.color", b"red", libc::XATTR_REPLACE).expect("replace");
    let big = vec![b'v'; 65536];
    xattr_set(&f, "user.big", &big, 0).expect("a 64 KiB value");
    assert_eq!(xattr_get(&f, "user.big", 65536).expect("get 64 KiB"), big);
    assert_eq!(errno_of(xattr_set(&f, "user.huge", &vec![0; 65537], 0)), Some(libc::E2BIG));
    assert_eq!(errno_of(xattr_set(&f, &format!("user.{}", "n".repeat(251)), b"x", 0)), Some(libc::ERANGE));
    let list = run_ok(&format!("getfattr -d -m - '{}'", f.display()), T).await;
    assert!(list.contains("user.color=\"red\"") && list.contains("user.big="), "getfattr -d: {list}");
    // security.capability of a file made with O_EXCL (the mount starts out knowing it
    // has none): writes work, and a capability set later is read back on both mounts.
    let capped = m.path("capped");
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&capped).expect("create_new");
    std::io::Write::write_all(&mut file, b"#!/bin/true\n").expect("write a new file");
    drop(file);
    assert_eq!(errno_of(xattr_get(&capped, "security.capability", 64)), Some(libc::ENODATA));
    // VFS_CAP_REVISION_2: magic, then permitted and inheritable (low, high) words.
    let mut cap = 0x0200_0000u32.to_le_bytes().to_vec();
    for w in [1u32 << 10, 0, 0, 0] {
        cap.extend(w.to_le_bytes());
    }
    xattr_set(&capped, "security.capability", &cap, 0).expect("set a file capability");
    assert_eq!(xattr_get(&capped, "security.capability", 64).expect("capability on this mount"), cap);
    assert_eq!(xattr_get(&other.path("capped"), "security.capability", 64).expect("capability on the other"), cap);
    run_ok(&format!("setfattr -x user.big '{}'", f.display()), T).await;
    assert_eq!(errno_of(xattr_get(&f, "user.big", 64)), Some(libc::ENODATA));
    // A minimal POSIX ACL (version 2; user::rw-, group::r--, other::r--) is refused: ACLs
    // are not stored, so tools fall back to the mode bits.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 6u16), (0x04, 4), (0x20, 4)] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(u32::MAX.to_le_bytes());
    }
    assert_eq!(errno_of(xattr_set(&f, "system.posix_acl_access", &acl, 0)), Some(libc::EOPNOTSUPP));
    // Reading one finds none (`ls -l` asks), for a file and a directory's default ACL.
    assert_eq!(errno_of(xattr_get(&f, "system.posix_acl_access", 64)), Some(libc::ENODATA));
    assert_eq!(errno_of(xattr_get(&m.path(""), "system.posix_acl_default", 64)), Some(libc::ENODATA));
    std::fs::create_dir(m.path("dir")).expect("mkdir");
    xattr_set(&m.path("dir"), "user.d", b"on a directory", 0).expect("xattr on a directory");

    eprintln!("phase: a listing tells the mount which entries have no xattrs");
    std::fs::create_dir(m.path("ls")).expect("mkdir ls");
    std::fs::write(m.path("ls/plain"), b"p").expect("write plain");
    std::fs::write(m.path("ls/tagged"), b"t").expect("write tagged");
    xattr_set(&m.path("ls/tagged"), "user.t", b"tag", 0).expect("tag a file");
    // READDIRPLUS on the other mount, then what `ls -l` and `getfattr` ask there.
    run_ok(&format!("ls -l '{}'", other.path("ls").display()), T).await;
    assert_eq!(xattr_get(&other.path("ls/tagged"), "user.t", 64).expect("the tagged entry's xattr"), b"tag");
    let listed = run_ok(&format!("getfattr -d '{}'", other.path("ls/tagged").display()), T).await;
    assert!(listed.contains("user.t=\"tag\""), "getfattr -d after a listing: {listed}");
    assert_eq!(errno_of(xattr_get(&other.path("ls/plain"), "user.t", 64)), Some(libc::ENODATA));
    assert_eq!(errno_of(xattr_get(&other.path("ls/plain"), "security.selinux", 255)), Some(libc::ENODATA));
    // A set on the mount that listed is seen at once there.
    run_ok(&format!("ls -l '{}'", m.path("ls").display()), T).await;
    xattr_set(&m.path("ls/plain"), "user.late", b"late", 0).expect("set after a listing");
    assert_eq!(xattr_get(&m.path("ls/plain"), "user.late", 64).expect("read back after a listing"), b"late");
    let listed = run_ok(&format!("getfattr -d '{}'", m.path("ls/plain").display()), T).await;
    assert!(listed.contains("user.late=\"late\""), "getfattr -d: {listed}");

    eprintln!("phase: cp -a --preserve=xattr and rsync -aX keep them, in and out");
    let local = tempfile::tempdir().expect("local dir");
    let src = local.path().join("src");
    std::fs::create_dir(&src).expect("mkdir src");
    for i in 0..5 {
        let p = src.join(format!("x{i}"));
        std::fs::write(&p, format!("file {i}")).expect("write");
        xattr_set(&p, "user.k", format!("value {i}").as_bytes(), 0)
            .expect("local xattr (needs a file system with user xattrs)");
    }
    run_ok(&format!("cp -a --preserve=xattr '{}' '{}'", src.display(), m.path("cp").display()), T).await;
    run_ok(&format!("rsync -aX '{}/' '{}/'", src.display(), m.path("rs").display()), T).await;
    let back = local.path().join("back");
    run_ok(&format!("rsync -aX '{}/' '{}/'", other.path("rs").display(), back.display()), T).await;
    for i in 0..5 {
        let want = format!("value {i}").into_bytes();
        for dir in [m.path("cp"), other.path("rs"), back.clone()] {
            let got = xattr_get(&dir.join(format!("x{i}")), "user.k", 64).expect("xattr kept");
            assert_eq!(got, want, "{}", dir.display());
        }
    }

    eprintln!("phase: flock and OFD locks conflict between open files of one mount");
    let l1 = std::fs::OpenOptions::new().read(true).write(true).open(&f).expect("open 1");
    let l2 = std::fs::OpenOptions::new().read(true).write(true).open(&f).expect("open 2");
    // SAFETY: flock on valid descriptors.
    unsafe {
        assert_eq!(libc::flock(l1.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
        assert_eq!(libc::flock(l2.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), -1);
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EWOULDBLOCK));
        assert_eq!(libc::flock(l1.as_raw_fd(), libc::LOCK_UN), 0);
        assert_eq!(libc::flock(l2.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
    }
    let ofd = |fd: &std::fs::File, ty: i32| {
        // SAFETY: a zeroed flock struct filled in below, on a valid descriptor.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = ty as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_len = 10;
        // SAFETY: as above.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        if rc == 0 {
            None
        } else {
            std::io::Error::last_os_error().raw_os_error()
        }
    };
    assert_eq!(ofd(&l1, libc::F_WRLCK), None);
    assert_eq!(ofd(&l2, libc::F_WRLCK), Some(libc::EAGAIN));
    assert_eq!(ofd(&l1, libc::F_UNLCK), None);
    assert_eq!(ofd(&l2, libc::F_WRLCK), None);
    drop((l1, l2));
    other.unmount().await;
    m.unmount().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sparse_files_a_5_gib_file_and_shared_mmap() {
    let c = cluster().await;
    let a = MountProc::start(&c, "sparse").await;
    let b = MountProc::start(&c, "sparse-2").await;

    eprintln!("phase: seek past the end and write: the hole reads as zeros");
    {
        let f = std::fs::File::create(a.path("sparse")).expect("create sparse");
        f.write_all_at(b"head", 0).expect("write head");
        f.write_all_at(b"tail", (10 << 20) + 123).expect("write past the end");
    }
    let got = std::fs::read(b.path("sparse")).expect("read sparse");
    assert_eq!(got.len(), (10 << 20) + 127);
    assert_eq!(&got[..4], b"head");
    assert_eq!(&got[got.len() - 4..], b"tail");
    assert!(got[4..got.len() - 4].iter().all(|&x| x == 0), "the hole is not zeros");
    let du = run_ok(&format!("du -k --apparent-size '{}'", b.path("sparse").display()), T).await;
    assert!(du.starts_with("10241\t"), "apparent size: {du}");
    // Truncate down, then extend: the cut bytes come back as zeros.
    {
        let f = std::fs::OpenOptions::new().write(true).open(a.path("sparse")).expect("open");
        f.set_len(2).expect("truncate");
        f.set_len(6).expect("extend");
    }
    assert_eq!(std::fs::read(b.path("sparse")).expect("read"), b"he\0\0\0\0");

    eprintln!("phase: a 5 GiB sparse file with data at both ends and across 4 GiB");
    const GIB: u64 = 1 << 30;
    let pieces = [(0u64, 1), (4 * GIB - (512 << 10), 2), (5 * GIB - (1 << 20), 3)];
    {
        let f = std::fs::File::create(a.path("big")).expect("create big");
        for (off, seed) in pieces {
            f.write_all_at(&random_bytes(1 << 20, seed), off).expect("write piece");
        }
    }
    let f = std::fs::File::open(b.path("big")).expect("open big on b");
    assert_eq!(f.metadata().expect("stat big").len(), 5 * GIB);
    for (off, seed) in pieces {
        let mut buf = vec![0u8; 1 << 20];
        f.read_exact_at(&mut buf, off).expect("read piece");
        assert!(buf == random_bytes(1 << 20, seed), "piece at {off} differs");
    }
    for off in [1 << 20, 3 * GIB, 4 * GIB + (512 << 10), 5 * GIB - (2 << 20)] {
        let mut buf = vec![1u8; 64 << 10];
        f.read_exact_at(&mut buf, off).expect("read hole");
        assert!(buf.iter().all(|&x| x == 0), "hole at {off} is not zeros");
    }
    drop(f);

    eprintln!("phase: write through a shared mmap, msync, munmap; the other mount reads it");
    let len = 3 << 20;
    std::fs::write(a.path("mapped"), vec![0u8; len]).expect("write mapped");
    let pattern = random_bytes(len, 9);
    {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(a.path("mapped")).expect("open");
        // SAFETY: a fresh shared mapping of `len` bytes of a file that is `len` long; it
        // is written only through `p` and unmapped before `f` closes.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
            std::ptr::copy_nonoverlapping(pattern.as_ptr(), p.cast::<u8>(), len);
            assert_eq!(libc::msync(p, len, libc::MS_SYNC), 0, "msync: {}", std::io::Error::last_os_error());
            assert_eq!(libc::munmap(p, len), 0);
        }
    }
    let got = std::fs::read(b.path("mapped")).expect("read mapped on b");
    assert!(got == pattern, "the other mount read different bytes than written through mmap");
    b.unmount().await;
    a.unmount().await;
}

/// Opens and closes of shared files from many threads on one mount run side by side
/// (a first open or a last release waits only for those of its own inode), and none
/// leaks a hold: once every handle is closed and the files are deleted, their blocks go.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_opens_and_closes_of_shared_files_leak_no_hold() {
    let c = cluster().await;
    let m = MountProc::start(&c, "a").await;
    let empty = block_count(&c);
    let dir = m.path("shared");
    std::fs::create_dir(&dir).expect("mkdir");
    let files: Vec<(std::path::PathBuf, Vec<u8>)> = (0..6u64)
        .map(|i| {
            let p = dir.join(format!("f{i}"));
            let b = random_bytes(100_000 + i as usize * 4_000, 300 + i);
            std::fs::write(&p, &b).expect("write");
            (p, b)
        })
        .collect();
    let files = std::sync::Arc::new(files);
    let readers: Vec<_> = (0..8usize)
        .map(|t| {
            let files = files.clone();
            std::thread::spawn(move || {
                for k in 0..40usize {
                    let (p, want) = &files[(t * 5 + k * 3) % files.len()];
                    let f = std::fs::File::open(p).expect("open");
                    drop_pages(&f);
                    assert!(read_all_at(&f, want.len()) == *want, "reader {t} read wrong bytes of {p:?}");
                }
            })
        })
        .collect();
    for r in readers {
        r.join().expect("reader thread");
    }
    for (p, _) in files.iter() {
        std::fs::remove_file(p).expect("unlink");
    }
    // A hold left behind keeps its file's blocks: this waits for every one to go.
    gc_cycle(&c, &dir, empty).await;
    m.unmount().await;
}

/// Which 4 KiB pages of `f`'s first `len` bytes this kernel caches (`mincore` of a
/// read-only mapping, which itself reads nothing).
fn resident_pages(f: &std::fs::File, len: usize) -> Vec<bool> {
    // SAFETY: a fresh read-only shared mapping of an open file, unmapped before return;
    // `v` holds one byte per page of it, as mincore(2) requires.
    unsafe {
        let p = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0);
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        let mut v = vec![0u8; len.div_ceil(4096)];
        let rc = libc::mincore(p, len, v.as_mut_ptr());
        libc::munmap(p, len);
        assert_eq!(rc, 0, "mincore");
        v.into_iter().map(|b| b & 1 == 1).collect()
    }
}

/// Whether 4 KiB page `page` read through `r` holds what `model` says.
fn page_reads_as(r: &std::fs::File, model: &[u8], page: usize) -> bool {
    let mut buf = vec![0u8; 4096];
    r.read_exact_at(&mut buf, (page * 4096) as u64).expect("read a page back");
    buf == model[page * 4096..][..4096]
}

/// Writes new bytes (from `seed`) over page `page` through `w`, notes them in `model`, and
/// says whether `r` reads them back.
fn write_and_read_back(w: &std::fs::File, r: &std::fs::File, model: &mut [u8], page: usize, seed: u64) -> bool {
    let bytes = random_bytes(4096, seed);
    w.write_all_at(&bytes, (page * 4096) as u64).expect("write a page");
    model[page * 4096..][..4096].copy_from_slice(&bytes);
    page_reads_as(r, model, page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_reads_fill_their_checksum_piece_into_the_page_cache_and_never_a_stale_byte() {
    const PIECE: usize = 64 << 10;
    const LEN: usize = 1 << 20;
    let c = cluster().await;
    let a = MountProc::start(&c, "around").await;
    let path = a.path("data");
    let mut model = random_bytes(LEN, 5);
    std::fs::write(&path, &model).expect("write the file");

    eprintln!("phase: a 4 KiB read brings the rest of its 64 KiB piece into the page cache, no more");
    let r = std::fs::File::open(&path).expect("open for reading");
    drop_pages(&r);
    // SAFETY: advice on a valid descriptor: the kernel then reads only what is asked.
    assert_eq!(unsafe { libc::posix_fadvise(r.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) }, 0);
    assert!(resident_pages(&r, LEN).iter().all(|&p| !p), "pages cached after POSIX_FADV_DONTNEED");
    let mut buf = vec![0u8; 4096];
    r.read_exact_at(&mut buf, 100_000).expect("small read");
    assert_eq!(buf, model[100_000..104_096]);
    let piece = PIECE / 4096..2 * PIECE / 4096;
    let resident = distfs_testkit::wait_for("the rest of the piece to reach the page cache", T, || {
        let v = resident_pages(&r, LEN);
        let all = v[piece.clone()].iter().all(|&p| p);
        async move { all.then_some(v) }
    })
    .await;
    let outside: Vec<usize> = (0..resident.len()).filter(|&i| resident[i] && !piece.contains(&i)).collect();
    assert!(outside.is_empty(), "pages outside the piece cached: {outside:?}");
    r.read_exact_at(&mut buf, PIECE as u64 + 8192).expect("read a stored page");
    assert_eq!(buf, model[PIECE + 8192..PIECE + 12_288], "a stored page holds other bytes");

    eprintln!("phase: writes on even pages race read-arounds of their piece; no write is undone");
    // The reader reads the odd pages of the first two pieces, each time dropping just that
    // page so the read goes to the mount and brings its whole piece; the writer writes the
    // even pages and reads each back through the reader's handle, which the kernel serves
    // from the page the write filled, unless a read-around stored older bytes over it.
    // Each write waits for the reader to finish a read, so the next one (and its
    // read-around) is under way when the writer opens.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let (model, done, seen) = (model.clone(), done.clone(), seen.clone());
        let r = r.try_clone().expect("dup");
        std::thread::spawn(move || {
            let (mut n, mut buf) = (0usize, vec![0u8; 4096]);
            while !done.load(std::sync::atomic::Ordering::Acquire) || n < 100 {
                let page = (n % 16) * 2 + 1;
                // SAFETY: advice on a valid descriptor.
                unsafe { libc::posix_fadvise(r.as_raw_fd(), (page * 4096) as i64, 4096, libc::POSIX_FADV_DONTNEED) };
                r.read_exact_at(&mut buf, (page * 4096) as u64).expect("read an odd page");
                assert_eq!(buf, model[page * 4096..][..4096], "odd page {page} changed");
                n += 1;
                seen.store(n, std::sync::atomic::Ordering::Release);
            }
            n
        })
    };
    let wait_for_a_read = || {
        let (n, deadline) = (seen.load(std::sync::atomic::Ordering::Acquire), std::time::Instant::now() + T);
        while seen.load(std::sync::atomic::Ordering::Acquire) == n {
            assert!(std::time::Instant::now() < deadline, "the reader stopped reading");
            std::thread::yield_now();
        }
    };
    let mut stale = Vec::new();
    // First with one writable handle held open (no read-around may run meanwhile)...
    let w = std::fs::OpenOptions::new().write(true).open(&path).expect("open for writing");
    for i in 0..300usize {
        wait_for_a_read();
        if !write_and_read_back(&w, &r, &mut model, (i % 16) * 2, 5000 + i as u64) {
            stale.push((i, "held open"));
        }
    }
    drop(w);
    // ... then a handle opened for each write (it waits for read-arounds under way).
    for i in 0..150usize {
        let page = (i % 16) * 2;
        wait_for_a_read();
        let w = std::fs::OpenOptions::new().write(true).open(&path).expect("open for writing");
        if !write_and_read_back(&w, &r, &mut model, page, 1000 + i as u64) {
            stale.push((i, "open"));
        }
        drop(w);
        if !page_reads_as(&r, &model, page) {
            stale.push((i, "closed"));
        }
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let reads = reader.join().expect("reader");
    assert!(stale.is_empty(), "writes read back undone (round, handle state): {stale:?}");
    assert!(reads >= 100, "{reads} reads");
    // Every page through the old handle (cached pages as they are), then a fresh open.
    for p in 0..LEN / 4096 {
        r.read_exact_at(&mut buf, (p * 4096) as u64).expect("read back");
        assert!(buf == model[p * 4096..][..4096], "page {p} differs from what was written");
    }
    assert!(std::fs::read(&path).expect("read the file") == model, "the file differs after the race");

    eprintln!("phase: a truncate and an extension after read-arounds read as zeros past the cut");
    // A fresh handle: a handle opened before the last open of the file reads without
    // read-around (that open may have found another mount's newer version).
    let r2 = std::fs::File::open(&path).expect("open again");
    drop_pages(&r2);
    // SAFETY: advice on a valid descriptor.
    assert_eq!(unsafe { libc::posix_fadvise(r2.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) }, 0);
    r2.read_exact_at(&mut buf, 3 * PIECE as u64 + 4096).expect("small read before the cut");
    distfs_testkit::wait_for("the piece before the cut to be cached", T, || {
        let v = resident_pages(&r2, LEN);
        async move { v[3 * PIECE / 4096 + 8].then_some(()) }
    })
    .await;
    {
        let w = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
        w.set_len(3 * PIECE as u64 + 10).expect("truncate");
        w.set_len(LEN as u64).expect("extend");
    }
    model.truncate(3 * PIECE + 10);
    model.resize(LEN, 0);
    r2.read_exact_at(&mut buf, 3 * PIECE as u64 + 8 * 4096).expect("read past the cut");
    assert!(buf.iter().all(|&b| b == 0), "bytes from before the truncate");
    assert!(std::fs::read(&path).expect("read the file") == model, "the file differs after the truncate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_file_is_in_the_page_cache_when_opened_and_every_version_reads_back() {
    const T: Duration = Duration::from_secs(10);
    let c = cluster().await;
    let a = MountProc::start(&c, "store-open-a").await;
    let b = MountProc::start(&c, "store-open-b").await;
    let path = a.path("small");
    let pages = |len: usize| len.div_ceil(4096);
    let read_all = |f: &std::fs::File| {
        let mut got = Vec::new();
        let mut r: &std::fs::File = f;
        std::io::Read::read_to_end(&mut r, &mut got).expect("read");
        got
    };
    // Rewritten through b: the same size, shorter, longer, each with a partial last page.
    for (seed, len) in [(1, 6000), (2, 6000), (3, 100), (4, 9000)] {
        let v = random_bytes(len, seed);
        std::fs::write(b.path("small"), &v).expect("write through b");
        if seed != 2 {
            // An open right after b's close reads b's bytes (close-to-open); a's kernel
            // may still hold the old size and pages.
            assert!(std::fs::read(&path).expect("read through a") == v, "version {seed} read at once");
        }
        // Once a's kernel has learnt the new version (a lookup or getattr answered it),
        // an open puts the whole file into the page cache before any read. For version
        // 2 the kernel still holds version 1's pages (same size: learning the new mtime
        // drops nothing), which the store must cover.
        let want = std::fs::metadata(b.path("small")).expect("stat through b").modified().expect("mtime");
        distfs_testkit::wait_for("a's kernel to learn the new version", T, || {
            let m = std::fs::metadata(&path).ok();
            async move { m.filter(|m| m.modified().ok() == Some(want) && m.len() == len as u64).map(|_| ()) }
        })
        .await;
        assert!(read_all(&std::fs::File::open(&path).expect("open")) == v, "version {seed} over older pages");
        // Without any cached page, the open alone caches the file.
        std::fs::write("/proc/sys/vm/drop_caches", "1").expect("drop the page cache");
        let f = std::fs::File::open(&path).expect("open");
        assert_eq!(resident_pages(&f, pages(len) * 4096), vec![true; pages(len)], "version {seed} cached at open");
        assert!(read_all(&f) == v, "version {seed} read from the cache");
    }
    // This mount's own rewrite (shorter) reads back, cached or not.
    let mine = random_bytes(5000, 9);
    std::fs::write(&path, &mine).expect("rewrite through a");
    let f = std::fs::File::open(&path).expect("open");
    assert!(read_all(&f) == mine, "a's own rewrite");
    assert!(std::fs::read(b.path("small")).expect("read through b") == mine, "b reads a's rewrite");
}

/// `distfs_meta_requests_total{op}` of the first metadata server.
async fn meta_requests(c: &distfs_testkit::ProcessCluster, op: &str) -> f64 {
    let addr = c.meta_http(0).to_string();
    let a = tokio::task::spawn_blocking(move || distfs_ops::client::get(&addr, "/metrics"))
        .await
        .expect("join")
        .expect("metrics answer");
    let key = format!("distfs_meta_requests_total{{op=\"{op}\"}}");
    distfs_ops::metrics::parse_text(&a.body).get(&key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stat_or_rm_of_every_file_fetches_pages_of_the_directory_and_every_change_still_shows() {
    const N: usize = 600;
    let c = cluster().await;
    let a = MountProc::start(&c, "statahead-a").await;
    let b = MountProc::start(&c, "statahead-b").await;
    std::fs::create_dir(b.path("many")).expect("mkdir");
    let name = |i: usize| format!("many/f{i:05}");
    for i in 0..N {
        std::fs::write(b.path(&name(i)), vec![b'x'; i % 7]).expect("create through b");
    }

    eprintln!("phase: stat of every file through a: pages of the directory, not one lookup each");
    let before = meta_requests(&c, "lookup").await;
    for i in 0..N {
        let m = std::fs::metadata(a.path(&name(i))).expect("stat");
        assert_eq!(m.len(), (i % 7) as u64, "{}", name(i));
    }
    let lookups = meta_requests(&c, "lookup").await - before;
    assert!(lookups < (N / 4) as f64, "{lookups} lookups for {N} stats");

    eprintln!("phase: this mount's own changes show at once");
    std::fs::remove_file(a.path(&name(100))).expect("unlink");
    assert_eq!(errno_of(std::fs::metadata(a.path(&name(100)))), Some(libc::ENOENT), "unlinked name still found");
    std::fs::rename(a.path(&name(101)), a.path("many/renamed")).expect("rename");
    assert_eq!(errno_of(std::fs::metadata(a.path(&name(101)))), Some(libc::ENOENT), "renamed name still found");
    assert_eq!(std::fs::metadata(a.path("many/renamed")).expect("new name").len(), (101 % 7) as u64);
    std::fs::write(a.path(&name(102)), b"0123456789").expect("rewrite");
    assert_eq!(std::fs::metadata(a.path(&name(102))).expect("stat").len(), 10);

    eprintln!("phase: another mount's changes show within the attribute time");
    std::fs::remove_file(b.path(&name(400))).expect("unlink through b");
    std::fs::write(b.path(&name(401)), b"grown through b").expect("rewrite through b");
    distfs_testkit::wait_for("a to see b's unlink and rewrite", Duration::from_secs(10), || {
        let gone = errno_of(std::fs::metadata(a.path(&name(400)))) == Some(libc::ENOENT);
        let grown = std::fs::metadata(a.path(&name(401))).is_ok_and(|m| m.len() == 15);
        async move { (gone && grown).then_some(()) }
    })
    .await;

    eprintln!("phase: an rm of every file uses the pages, and what this mount changes meanwhile never comes from them");
    const M: usize = 400;
    std::fs::create_dir(b.path("storm")).expect("mkdir");
    let storm = |i: usize| format!("storm/f{i:05}");
    for i in 0..M {
        std::fs::write(b.path(&storm(i)), b"abc").expect("create through b");
    }
    let before = meta_requests(&c, "lookup").await;
    let changed = [300, 301, 302];
    for i in (0..M).filter(|i| !changed.contains(i)) {
        std::fs::remove_file(a.path(&storm(i))).expect("rm");
        if i % 50 == 0 {
            assert_eq!(errno_of(std::fs::metadata(a.path(&storm(i)))), Some(libc::ENOENT), "{}", storm(i));
        }
        if i == 200 {
            // Names and inodes the fetched pages hold: renamed, linked, rewritten.
            std::fs::rename(a.path(&storm(300)), a.path("storm/moved")).expect("rename");
            std::fs::hard_link(a.path(&storm(301)), a.path("storm/linked")).expect("link");
            std::fs::write(a.path(&storm(302)), b"0123456789").expect("rewrite");
            // The kernel forgets its own entries, so the lookups below reach the mount.
            std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop dentries");
            assert_eq!(errno_of(std::fs::metadata(a.path(&storm(300)))), Some(libc::ENOENT), "renamed away");
            assert_eq!(std::fs::metadata(a.path(&storm(301))).expect("linked").nlink(), 2);
            assert_eq!(std::fs::metadata(a.path(&storm(302))).expect("rewritten").len(), 10);
        }
    }
    let lookups = meta_requests(&c, "lookup").await - before;
    assert!(lookups < (M / 4) as f64, "{lookups} lookups for an rm of {M} files");
    let mut left: Vec<String> = std::fs::read_dir(a.path("storm"))
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    left.sort();
    assert_eq!(left, ["f00301", "f00302", "linked", "moved"]);
}
