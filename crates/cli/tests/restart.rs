//! Durability across restarts: the process cluster stopped and started on the same
//! directories, and `distfs local up` stopped with Ctrl-C and started again.

mod common;

use common::*;
use distfs_types::InodeId;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_file_survives_a_full_cluster_restart() {
    let mut c = cluster().await;
    let client = c.client();
    distfs_ok(&c, &["mkdir", "-p", "/a/b"]).await;
    let mut files = Vec::new();
    for i in 0..5 {
        let data = random_bytes(i * 3_000_000 + 17, i as u64);
        let f = client.create(InodeId::ROOT, &format!("r{i}"), 0o600, true).await.unwrap();
        client.write_at(f.ino, 0, &data).await.unwrap();
        files.push((format!("/r{i}"), data));
    }
    let before = distfs_ok(&c, &["ls", "-l", "/"]).await;

    c.stop_all();
    c.restart_all().await;

    assert_eq!(distfs_ok(&c, &["ls", "-l", "/"]).await, before, "the namespace is unchanged");
    let client = c.client();
    for (path, data) in &files {
        let a = client.resolve(path).await.unwrap();
        assert_eq!(a.perm, 0o600);
        assert!(client.read_at(a.ino, 0, u64::MAX).await.unwrap()[..] == data[..], "{path} changed");
    }
    assert!(client.resolve("/a/b").await.is_ok());
}

/// `distfs local up` in a child process, stopped with SIGINT on drop.
struct LocalUp(Child);

impl LocalUp {
    fn start(dir: &std::path::Path, listen: &str) -> LocalUp {
        let log = std::fs::File::create(dir.join("local-up.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_distfs"))
            .args(["local", "up", "--dir", dir.join("data").to_str().unwrap(), "--listen", listen, "--sync", "none"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        LocalUp(child)
    }

    /// Ctrl-C, then the exit status.
    fn interrupt(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let start = std::time::Instant::now();
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "local up did not stop on Ctrl-C");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LocalUp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn cli(listen: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distfs"));
    cmd.env("DISTFS_META", listen).args(args);
    run(cmd).await
}

async fn wait_ready(listen: &str) {
    distfs_testkit::wait_for("local up ready", Duration::from_secs(30), || async {
        let out = cli(listen, &["cluster", "status", "--json"]).await;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.success() && text.matches("\"Up\"").count() == 3).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_up_serves_stops_on_ctrl_c_and_keeps_data() {
    let tmp = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", distfs_testkit::free_port());
    let src = tmp.path().join("src.bin");
    std::fs::write(&src, random_bytes(6 << 20, 77)).unwrap();

    let up = LocalUp::start(tmp.path(), &listen);
    wait_ready(&listen).await;
    let out = cli(&listen, &["put", src.to_str().unwrap(), "/kept.bin"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let status = up.interrupt();
    assert!(status.success(), "local up exits cleanly on Ctrl-C: {status}");

    let _up = LocalUp::start(tmp.path(), &listen);
    wait_ready(&listen).await;
    let back = tmp.path().join("back.bin");
    let out = cli(&listen, &["get", "/kept.bin", back.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(same_file(&src, &back));
}
