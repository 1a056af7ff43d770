//! fcntl locks hold across mounts: two mounts of one cluster (as two machines would
//! have) exclude each other's POSIX byte-range locks, F_GETLK names the holder, a
//! blocking F_SETLKW waits until the holder unlocks, a holder that dies (SIGKILL: the
//! kernel closes its descriptors) frees its locks, and so does a mount that dies (its
//! session lease runs out).

mod common;
mod mount_common;

use common::*;
use mount_common::*;
use std::os::fd::AsRawFd;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// `fcntl(cmd)` with a write/read/unlock lock over `[start, start+len)`; the errno on failure.
fn lock(f: &std::fs::File, cmd: i32, ty: i32, start: i64, len: i64) -> Result<libc::flock, i32> {
    // SAFETY: a zeroed flock struct filled in below, on a valid descriptor.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: as above; fcntl writes only into `fl`.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) };
    if rc == 0 {
        Ok(fl)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// A python3 process that takes a whole-file write lock on `path` and sleeps.
fn python_holder(path: &std::path::Path) -> std::process::Child {
    let script = format!(
        "import fcntl, time\nf = open({path:?}, 'r+')\nfcntl.lockf(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(120)\n"
    );
    let mut holder = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.take().expect("stdout")), &mut line)
        .expect("read the holder's line");
    assert_eq!(line.trim(), "locked", "the holder did not get its lock");
    holder
}

/// Waits until `f` gets a write lock over `[start, start+len)` (then holds it).
async fn wait_lockable(f: &std::fs::File, start: i64, len: i64, what: &str) {
    distfs_testkit::wait_for(what, T, || {
        let r = lock(f, libc::F_SETLK, libc::F_WRLCK, start, len);
        async move { r.ok().map(|_| ()) }
    })
    .await;
}

fn open_rw(p: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new().read(true).write(true).open(p).expect("open read-write")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fcntl_locks_exclude_each_other_across_mounts() {
    let c = cluster().await;
    let a = MountProc::start(&c, "lock-a").await;
    let b = MountProc::start(&c, "lock-b").await;
    std::fs::write(a.path("db"), vec![0u8; 4096]).expect("create the file");
    let fa = open_rw(&a.path("db"));
    let fb = open_rw(&b.path("db"));

    eprintln!("phase: a write lock on one mount blocks the other mount's conflicting locks");
    lock(&fa, libc::F_SETLK, libc::F_WRLCK, 0, 100).expect("lock bytes 0..100 on mount a");
    assert_eq!(lock(&fb, libc::F_SETLK, libc::F_WRLCK, 50, 10).unwrap_err(), libc::EAGAIN);
    assert_eq!(lock(&fb, libc::F_SETLK, libc::F_RDLCK, 99, 1).unwrap_err(), libc::EAGAIN);
    let who = lock(&fb, libc::F_GETLK, libc::F_WRLCK, 0, 0).expect("F_GETLK");
    assert_eq!(who.l_type, libc::F_WRLCK as i16, "F_GETLK names the holder's lock");
    assert_eq!((who.l_start, who.l_len), (0, 100));
    assert_eq!(who.l_pid as u32, std::process::id());
    // Bytes nobody holds are free.
    lock(&fb, libc::F_SETLK, libc::F_WRLCK, 100, 100).expect("lock bytes 100..200 on mount b");
    let free = lock(&fb, libc::F_GETLK, libc::F_WRLCK, 300, 10).expect("F_GETLK of a free range");
    assert_eq!(free.l_type, libc::F_UNLCK as i16);

    eprintln!("phase: read locks are shared across mounts");
    lock(&fa, libc::F_SETLK, libc::F_UNLCK, 0, 100).expect("unlock on a");
    lock(&fa, libc::F_SETLK, libc::F_RDLCK, 0, 50).expect("read lock on a");
    lock(&fb, libc::F_SETLK, libc::F_RDLCK, 0, 50).expect("read lock on b alongside");
    assert_eq!(lock(&fa, libc::F_SETLK, libc::F_WRLCK, 0, 10).unwrap_err(), libc::EAGAIN, "b's read lock");
    lock(&fb, libc::F_SETLK, libc::F_UNLCK, 0, 0).expect("unlock everything on b");

    eprintln!("phase: a blocking F_SETLKW on one mount waits until the other unlocks");
    lock(&fa, libc::F_SETLK, libc::F_WRLCK, 0, 0).expect("whole-file write lock on a");
    let waiter_path = b.path("db");
    let waiter = std::thread::spawn(move || {
        let f = open_rw(&waiter_path);
        let r = lock(&f, libc::F_SETLKW, libc::F_WRLCK, 0, 0);
        (r.map(|_| ()), std::time::Instant::now(), f)
    });
    std::thread::sleep(Duration::from_millis(500)); // give the waiter time to block; checked below
    assert!(!waiter.is_finished(), "F_SETLKW returned while the other mount held the lock");
    let unlocked_at = std::time::Instant::now();
    lock(&fa, libc::F_SETLK, libc::F_UNLCK, 0, 0).expect("unlock on a");
    let (r, got_at, wf) = waiter.join().expect("waiter thread");
    r.expect("F_SETLKW gets the lock once it is free");
    assert!(got_at >= unlocked_at);
    assert_eq!(lock(&fa, libc::F_SETLK, libc::F_WRLCK, 0, 1).unwrap_err(), libc::EAGAIN, "b holds it now");
    drop(wf); // closing the descriptor drops the process's locks on that mount
    wait_lockable(&fa, 0, 1, "b's lock to go with its close").await;
    lock(&fa, libc::F_SETLK, libc::F_UNLCK, 0, 0).expect("unlock on a");

    eprintln!("phase: a holder killed with SIGKILL frees its lock");
    let mut holder = python_holder(&b.path("db"));
    assert_eq!(lock(&fa, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap_err(), libc::EAGAIN, "the holder's lock");
    holder.kill().expect("SIGKILL the holder");
    holder.wait().expect("reap the holder");
    wait_lockable(&fa, 0, 0, "the killed holder's lock to be released").await;
    lock(&fa, libc::F_SETLK, libc::F_UNLCK, 0, 0).expect("unlock on a");

    eprintln!("phase: a mount that dies (SIGKILL) frees its locks when its session lease runs out");
    drop(fb);
    let mut holder = python_holder(&b.path("db"));
    assert_eq!(lock(&fa, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap_err(), libc::EAGAIN);
    // SAFETY: kill(2) on the mount daemon's pid.
    assert_eq!(unsafe { libc::kill(b.pid() as i32, libc::SIGKILL) }, 0);
    wait_lockable(&fa, 0, 0, "the dead mount's lock to be released by lease expiry").await;
    let _ = holder.kill();
    let _ = holder.wait();
    drop(b);
    drop(fa);
    a.unmount().await;
}
