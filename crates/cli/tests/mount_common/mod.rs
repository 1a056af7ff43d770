//! Helpers of the FUSE mount tests: a `distfs mount` child process that is unmounted and
//! killed on drop, shell commands with a deadline, a generator of mixed file trees, and a
//! tree comparison (bytes, kinds, modes, mtimes, symlink targets).
#![allow(dead_code)]

use distfs_testkit::{wait_for, ProcessCluster};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// True when `p` is the root of a FUSE mount (asks the mount itself).
pub fn is_fuse(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: `c` is NUL-terminated and `st` is a zeroed out-parameter of the right type.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) }) == 0 && st.f_type as i64 == FUSE_SUPER_MAGIC
}

/// `distfs mount DIR` in the foreground as a child process.
pub struct MountProc {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl MountProc {
    /// Mounts `c` at a fresh directory and waits until the mount answers.
    pub async fn start(c: &ProcessCluster, name: &str) -> MountProc {
        let tmp = tempfile::Builder::new().prefix("distfs-mnt-").tempdir().expect("mount dir");
        let mut m = MountProc::start_at(c, tmp.path(), name).await;
        m._tmp = Some(tmp);
        m
    }

    pub async fn start_at(c: &ProcessCluster, dir: &Path, name: &str) -> MountProc {
        let log = c.dir().join(format!("mount-{name}.log"));
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("mount log");
        let mut cmd = c.cli();
        cmd.env("RUST_LOG", "warn,distfs_fuse=info")
            .arg("mount")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log handle"))
            .stderr(f);
        let child = cmd.spawn().expect("spawn distfs mount");
        let mut m = MountProc { child: Some(child), dir: dir.to_path_buf(), log, _tmp: None };
        let d = m.dir.clone();
        let what = format!("the mount at {} to answer", d.display());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_fuse(&d) {
            if let Some(st) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("distfs mount exited early ({st}): {}", m.log_text());
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {}", m.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        m
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("mount process").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the mount process to exit by itself; returns its exit status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("mount process");
        let st = wait_for("the mount process to exit", timeout, || {
            let r = child.try_wait().expect("try_wait");
            async move { r }
        })
        .await;
        st
    }

    /// Unmounts from outside (`fusermount3 -u`) and expects the process to exit 0.
    pub async fn unmount(mut self) {
        let out = run_ok(&format!("fusermount3 -u '{}'", self.dir.display()), Duration::from_secs(20)).await;
        drop(out);
        let st = self.wait_exit(Duration::from_secs(20)).await;
        assert!(st.success(), "distfs mount exited with {st} after fusermount3 -u: {}", self.log_text());
        assert!(!is_fuse(&self.dir), "still mounted after unmount");
    }
}

impl Drop for MountProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.dir).status();
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!("--- mount log {} ---\n{}", self.log.display(), self.log_text());
            }
        }
    }
}

/// Unmounts a `--background` mount and ends its daemon if a test stops before doing so.
pub struct DaemonGuard {
    pub dir: PathBuf,
    pub pid: i32,
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if is_fuse(&self.dir) {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.dir).status();
        }
        // SAFETY: kill(2) of the daemon this test started; harmless if it already exited.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }
}

/// Runs `bash -c script` with a deadline (killed after it); returns its output.
pub async fn run_sh(script: &str, timeout: Duration) -> Output {
    let child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bash");
    let pid = child.id();
    let h = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(timeout, h).await {
        Ok(r) => r.expect("join").expect("wait for bash"),
        Err(_) => {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("`{script}` did not finish within {timeout:?}");
        }
    }
}

/// Like `run_sh`, and insists on success; returns stdout.
pub async fn run_ok(script: &str, timeout: Duration) -> String {
    let t0 = Instant::now();
    let out = run_sh(script, timeout).await;
    assert!(
        out.status.success(),
        "`{script}` failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("[{:>6.2}s] {script}", t0.elapsed().as_secs_f64());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds a tree of `files` regular files of mixed sizes (empty, small, ~100 KiB, a few
/// MiB), modes and mtimes (with nanoseconds), in nested directories, plus symlinks.
pub fn make_tree(root: &Path, files: usize, seed: u64) {
    std::fs::create_dir_all(root).expect("tree root");
    let dirs = (files / 50).max(1);
    for i in 0..files {
        let d = root.join(format!("d{:02}", i % dirs)).join(if i % 3 == 0 { "sub" } else { "" });
        std::fs::create_dir_all(&d).expect("tree dir");
        let len = match i % 100 {
            0 if i % 500 == 0 => 3 * 1024 * 1024 + 17,
            0 => 0,
            n if n % 10 == 1 => 100_000 + i,
            _ => (i * 131) % 6000,
        };
        let p = d.join(format!("f{i:05}.bin"));
        std::fs::write(&p, crate::common::random_bytes(len, seed + i as u64)).expect("tree file");
        let mode = [0o644, 0o600, 0o755, 0o444][i % 4];
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let mtime = UNIX_EPOCH + Duration::new(1_600_000_000 + i as u64 * 7, (i as u32 * 7919) % 1_000_000_000);
        let f = std::fs::File::options().write(true).open(&p).expect("open for times");
        f.set_modified(mtime).expect("set mtime");
        if i % 97 == 5 {
            std::os::unix::fs::symlink(format!("f{i:05}.bin"), d.join(format!("l{i:05}"))).expect("symlink");
        }
    }
    // Directory modes and mtimes last (creating entries changes a directory's mtime).
    for i in 0..dirs {
        let d = root.join(format!("d{i:02}"));
        if i % 5 == 4 {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod dir");
        }
    }
}

/// Every path under `root` (relative, sorted), without following symlinks.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(&rel))
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", root.join(&rel).display()))
            .map(|e| rel.join(e.expect("dir entry").file_name()))
            .collect();
        entries.sort();
        for e in entries {
            if std::fs::symlink_metadata(root.join(&e)).expect("lstat").is_dir() {
                stack.push(e.clone());
            }
            out.push(e);
        }
    }
    out.sort();
    out
}

fn mtime_of(m: &std::fs::Metadata) -> (i64, i64) {
    (m.mtime(), m.mtime_nsec())
}

/// Differences between two trees: names, kinds, bytes, permission bits, file mtimes
/// (`nanos`: to the nanosecond, else to the second) and symlink targets.
pub fn tree_diff(a: &Path, b: &Path, nanos: bool) -> Vec<String> {
    let (wa, wb) = (walk(a), walk(b));
    let mut diffs = Vec::new();
    if wa != wb {
        let only_a: Vec<_> = wa.iter().filter(|p| !wb.contains(p)).take(5).collect();
        let only_b: Vec<_> = wb.iter().filter(|p| !wa.contains(p)).take(5).collect();
        diffs.push(format!("different names: only in source {only_a:?}, only in copy {only_b:?}"));
        return diffs;
    }
    for rel in &wa {
        let (pa, pb) = (a.join(rel), b.join(rel));
        let (ma, mb) =
            (std::fs::symlink_metadata(&pa).expect("lstat a"), std::fs::symlink_metadata(&pb).expect("lstat b"));
        if ma.file_type() != mb.file_type() {
            diffs.push(format!("{}: kind differs", rel.display()));
            continue;
        }
        if ma.file_type().is_symlink() {
            if std::fs::read_link(&pa).ok() != std::fs::read_link(&pb).ok() {
                diffs.push(format!("{}: symlink target differs", rel.display()));
            }
            continue;
        }
        if ma.mode() & 0o7777 != mb.mode() & 0o7777 {
            diffs.push(format!("{}: mode {:o} vs {:o}", rel.display(), ma.mode() & 0o7777, mb.mode() & 0o7777));
        }
        if ma.is_file() {
            let (ta, tb) = (mtime_of(&ma), mtime_of(&mb));
            if (nanos && ta != tb) || (!nanos && ta.0 != tb.0) {
                diffs.push(format!("{}: mtime {ta:?} vs {tb:?}", rel.display()));
            }
            let (da, db) = (std::fs::read(&pa).expect("read a"), std::fs::read(&pb).expect("read b"));
            if da != db {
                diffs.push(format!("{}: content differs ({} vs {} bytes)", rel.display(), da.len(), db.len()));
            }
        }
    }
    diffs
}

pub fn assert_same_tree(a: &Path, b: &Path, nanos: bool) {
    let d = tree_diff(a, b, nanos);
    assert!(
        d.is_empty(),
        "{} differences between {} and {}, first: {:#?}",
        d.len(),
        a.display(),
        b.display(),
        &d[..d.len().min(10)]
    );
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
