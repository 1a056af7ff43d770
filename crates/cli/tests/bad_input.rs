//! Bad input of every kind: garbage on every server port, and CLI misuse. Each gets a
//! clear error and a non-zero exit; nothing panics, nothing half-written stays visible.

mod common;

use bytes::Bytes;
use common::*;
use distfs_proto::frame::{read_frame, Frame, Limits, FLAG_ERROR};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bad_frames() -> Vec<(&'static str, Vec<u8>)> {
    let ping = distfs_proto::encode(&distfs_proto::StorageRequest::Ping);
    let good = |kind: u16| Frame::new(kind, 0, 7, ping.clone(), Bytes::new()).to_bytes();
    let mut wrong_version = good(2);
    wrong_version[4] = 99;
    let mut oversized = good(1);
    oversized[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut bad_crc = good(2);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    vec![
        ("http garbage", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("random bytes", random_bytes(4096, 3)),
        ("wrong version", wrong_version),
        ("oversized body length", oversized),
        ("bad checksum", bad_crc),
        ("truncated frame", good(2)[..20].to_vec()),
        ("undecodable meta header", good(1)),
        ("undecodable raft header", good(3)),
        ("unknown kind", good(77)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_on_every_port_is_refused_and_servers_keep_serving() {
    let c = cluster().await;
    let status = c.client().cluster_status().await.unwrap();
    let mut ports: Vec<String> = vec![c.meta_addr().to_string()];
    ports.extend(status.nodes.iter().map(|n| n.addr.clone()));
    assert_eq!(ports.len(), 4);

    for addr in &ports {
        for (what, bytes) in bad_frames() {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            // The server may close before reading everything; that is a valid answer.
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
            let mut answer = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
            assert!(read.is_ok(), "{addr} / {what}: the server neither answered nor closed");
            if !answer.is_empty() {
                let f = read_frame(&mut answer.as_slice(), &Limits::default())
                    .await
                    .unwrap_or_else(|e| panic!("{addr} / {what}: unreadable answer {e:?}"))
                    .expect("a frame");
                assert_ne!(f.flags & FLAG_ERROR, 0, "{addr} / {what}: expected an error frame");
                let e: distfs_types::FsError = distfs_proto::decode(&f.header).unwrap();
                assert!(!e.to_string().is_empty());
            }
        }
        // After all that, the cluster still works end to end.
        let out = distfs_ok(&c, &["cluster", "status"]).await;
        assert!(out.contains("up"), "{out}");
    }
    let data = random_bytes(5 << 20, 11);
    let client = c.client();
    let f = client.create(distfs_types::InodeId::ROOT, "still-works", 0o644, true).await.unwrap();
    client.write_at(f.ino, 0, &data).await.unwrap();
    assert!(client.read_at(f.ino, 0, u64::MAX).await.unwrap()[..] == data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_misuse_gets_clear_messages_and_exit_codes() {
    let c = cluster().await;
    let dir = c.dir().to_path_buf();
    let local = dir.join("small.txt");
    std::fs::write(&local, b"hello").unwrap();
    distfs_ok(&c, &["put", local.to_str().unwrap(), "/file"]).await;

    // Missing local file: nothing is created remotely.
    let out = distfs(&c, &["put", "/definitely/not/here.bin", "/x"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot open local file"), "{}", stderr(&out));
    // Missing remote path.
    let out = distfs(&c, &["get", "/nope", dir.join("o").to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("no such file"), "{}", stderr(&out));
    assert!(!dir.join("o").exists());
    let out = distfs(&c, &["cat", "/nope"]).await;
    assert_eq!(out.status.code(), Some(3));
    // A file where a directory is expected.
    let out = distfs(&c, &["put", local.to_str().unwrap(), "/file/inside"]).await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));
    let out = distfs(&c, &["mkdir", "/file/sub"]).await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let out = distfs(&c, &["ls", "/file/x"]).await;
    assert_ne!(out.status.code(), Some(0));
    // A directory where a file is expected.
    distfs_ok(&c, &["mkdir", "-p", "/d/e"]).await;
    let out = distfs(&c, &["cat", "/d"]).await;
    assert_eq!(out.status.code(), Some(5));
    assert!(stderr(&out).contains("is a directory"), "{}", stderr(&out));
    let out = distfs(&c, &["rm", "/d"]).await;
    assert_eq!(out.status.code(), Some(5));
    assert!(stderr(&out).contains("-r"), "{}", stderr(&out));
    // Parent missing.
    let out = distfs(&c, &["put", local.to_str().unwrap(), "/no/such/dir/f"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    // Relative remote path.
    let out = distfs(&c, &["ls", "relative"]).await;
    assert_eq!(out.status.code(), Some(2));

    // Nothing half-written or temporary is visible after all those failures.
    let ls = distfs_ok(&c, &["ls", "/"]).await;
    let names: Vec<&str> = ls.lines().collect();
    assert_eq!(names, vec!["d", "file"], "{ls}");

    // stdin and stdout with `-`.
    let mut cmd = c.cli();
    cmd.args(["put", "-", "/from-stdin"]).stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"piped bytes").unwrap();
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(distfs_ok(&c, &["get", "/from-stdin", "-"]).await, "piped bytes");

    // An unreachable cluster: a clear error within the deadline, exit code 6.
    let dead = format!("127.0.0.1:{}", distfs_testkit::free_port());
    let mut cmd = c.cli();
    cmd.env("DISTFS_META", &dead).args(["--timeout", "2s", "ls", "/"]);
    let t0 = Instant::now();
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains(&dead), "names the address it tried: {}", stderr(&out));
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
}
