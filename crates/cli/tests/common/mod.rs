//! Shared helpers of the end-to-end tests: the program paths, data generation and CLI
//! invocation.
#![allow(dead_code)]

use distfs_testkit::{Bins, ClusterOpts, ProcessCluster};
use std::path::Path;
use std::process::Output;

pub fn bins() -> Bins {
    Bins {
        meta: env!("CARGO_BIN_EXE_distfs-meta").into(),
        storage: env!("CARGO_BIN_EXE_distfs-storage").into(),
        cli: env!("CARGO_BIN_EXE_distfs").into(),
    }
}

pub async fn cluster() -> ProcessCluster {
    ProcessCluster::start(bins(), ClusterOpts::default()).await
}

/// `Some` once inode `ino` is freed: a read of it answers that it is gone.
pub async fn freed(client: &distfs_client::Client, ino: distfs_types::InodeId) -> Option<()> {
    use distfs_client::ClientError;
    use distfs_types::FsError;
    match client.read_at(ino, 0, 1).await {
        Err(ClientError::Fs(FsError::StaleInode { .. } | FsError::NotFound { .. })) => Some(()),
        _ => None,
    }
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for hundreds of MiB.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Runs the CLI to completion (in a blocking thread, so the test's runtime keeps going).
pub async fn run(mut cmd: std::process::Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run distfs")).await.expect("join")
}

pub async fn distfs(c: &ProcessCluster, args: &[&str]) -> Output {
    let mut cmd = c.cli();
    cmd.args(args);
    run(cmd).await
}

/// Runs the CLI and insists it succeeds; returns stdout.
pub async fn distfs_ok(c: &ProcessCluster, args: &[&str]) -> String {
    let out = distfs(c, args).await;
    assert!(out.status.success(), "distfs {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn same_file(a: &Path, b: &Path) -> bool {
    let (x, y) = (std::fs::read(a).expect("read a"), std::fs::read(b).expect("read b"));
    x.len() == y.len() && x == y
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
