//! A directory with 100,000 entries on the FUSE mount: created by parallel `mknod` calls
//! (one metadata write each, no open/close), listed by `ls | wc -l` and by `readdir`
//! (pagination: every name exactly once), and the last name looked up from a second
//! mount. Prints how long each phase took.
//!
//! The 100,000 creates are bound by one replicated metadata write each (the kernel
//! serializes creates in one directory), about 110 s on this 2-core machine.

mod common;
mod mount_common;

use common::*;
use mount_common::*;
use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

const THREADS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_directory_with_100000_entries() {
    big_dir(100_000).await;
}

async fn big_dir(n: usize) {
    let c = cluster().await;
    let m = MountProc::start(&c, "bigdir").await;
    let dir = m.path("big");
    std::fs::create_dir(&dir).expect("mkdir big");

    eprintln!("phase: create {n} empty files with {THREADS} threads");
    let t0 = Instant::now();
    let d = dir.clone();
    tokio::task::spawn_blocking(move || {
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let d = &d;
                s.spawn(move || {
                    for i in (t..n).step_by(THREADS) {
                        let p = std::ffi::CString::new(d.join(format!("f{i:06}")).as_os_str().as_bytes())
                            .expect("path without NUL");
                        // SAFETY: a NUL-terminated path; creates a regular file.
                        let rc = unsafe { libc::mknod(p.as_ptr(), libc::S_IFREG | 0o644, 0) };
                        assert_eq!(rc, 0, "mknod f{i:06}: {}", std::io::Error::last_os_error());
                    }
                });
            }
        })
    })
    .await
    .expect("create threads");
    let create = t0.elapsed();
    eprintln!("created {n} files in {:.1} s ({:.0}/s)", create.as_secs_f64(), n as f64 / create.as_secs_f64());

    eprintln!("phase: ls | wc -l and readdir see every entry once");
    let t1 = Instant::now();
    let count = run_ok(&format!("ls -f '{}' | wc -l", dir.display()), Duration::from_secs(120)).await;
    assert_eq!(count.trim(), (n + 2).to_string(), "ls -f lists . and .. too");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), n);
    let unique: HashSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), n, "readdir returned a name twice");
    assert!((0..n).all(|i| unique.contains(&format!("f{i:06}"))), "a name is missing");
    eprintln!("listed twice in {:.1} s", t1.elapsed().as_secs_f64());

    eprintln!("phase: the last one is found from another mount");
    let other = MountProc::start(&c, "bigdir-2").await;
    let last = other.path(&format!("big/f{:06}", n - 1));
    assert_eq!(std::fs::metadata(&last).expect("stat the last entry").len(), 0);
    assert!(std::fs::metadata(other.path(&format!("big/f{n:06}"))).is_err());
    other.unmount().await;
    m.unmount().await;
}
