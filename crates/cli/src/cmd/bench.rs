//! `distfs bench`: load from the native client (no FUSE) against a running cluster.
//! Sequential write and read of large files, random 4 KiB reads, small-file create,
//! stat, read and delete, each by N concurrent clients, and a many-connections run
//! (stat and small reads from thousands of clients, each with its own connections).
//! Every operation's latency goes into an HDR histogram; the result is a table or JSON.
//! Every byte read back is compared with what was written: a benchmark that reads wrong
//! data fails instead of reporting a figure.

use anyhow::{bail, Context};
use distfs_client::{Client, ClientConfig};
use distfs_types::{Attr, InodeId};
use futures::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::{Duration, Instant};

/// What `distfs bench` runs and how big.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Directory in DistFS the benchmark works under (created, emptied at the end).
    pub dir: String,
    /// Workloads to run: seq, rand, small, conns.
    pub only: Vec<String>,
    pub clients: usize,
    /// Bytes each client writes sequentially.
    pub file_size: u64,
    /// Bytes per write/read call of the sequential phases.
    pub io_size: usize,
    pub random_reads: usize,
    pub small_files: usize,
    pub small_size: usize,
    pub connections: usize,
    /// Operations per second of each `conns` client (open loop, at random phases); 0:
    /// each client goes as fast as it can (closed loop).
    pub conn_rate: f64,
    /// Operations of each `conns` client.
    pub conn_rounds: usize,
    /// Leave every file in place.
    pub keep: bool,
    pub json: bool,
}

/// One row of the result.
#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub ops: u64,
    pub secs: f64,
    pub ops_per_sec: f64,
    /// MB/s (10^6 bytes) where the workload moves bytes.
    pub mb_per_sec: Option<f64>,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub errors: u64,
}

/// Latencies and bytes of one phase, merged over its clients.
struct Phase {
    name: String,
    hist: Histogram<u64>,
    bytes: u64,
    errors: u64,
    started: Instant,
}

impl Phase {
    fn new(name: &str) -> Phase {
        Phase { name: name.to_string(), hist: latency_histogram(), bytes: 0, errors: 0, started: Instant::now() }
    }

    fn add(&mut self, other: Tally) {
        self.hist.add(&other.hist).expect("same histogram bounds");
        self.bytes += other.bytes;
        self.errors += other.errors;
    }

    fn row(self, moves_bytes: bool) -> Row {
        let secs = self.started.elapsed().as_secs_f64();
        let ops = self.hist.len();
        Row {
            name: self.name,
            ops,
            secs,
            ops_per_sec: ops as f64 / secs,
            mb_per_sec: moves_bytes.then(|| self.bytes as f64 / 1e6 / secs),
            p50_us: self.hist.value_at_quantile(0.50),
            p99_us: self.hist.value_at_quantile(0.99),
            p999_us: self.hist.value_at_quantile(0.999),
            max_us: self.hist.max(),
            errors: self.errors,
        }
    }
}

/// Microseconds from 1 µs to 10 min, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds")
}

const MAX_LATENCY_US: u64 = 600_000_000;

/// What one client task measured.
struct Tally {
    hist: Histogram<u64>,
    bytes: u64,
    errors: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally { hist: latency_histogram(), bytes: 0, errors: 0 }
    }

    fn record(&mut self, since: Instant) {
        let us = since.elapsed().as_micros().clamp(1, MAX_LATENCY_US as u128) as u64;
        self.hist.record(us).expect("clamped into the bounds");
    }
}

/// The bytes at `offset` of benchmark file `file`: a pattern no two files or offsets
/// share, so a misplaced or stale block is noticed.
fn pattern(file: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut word = offset / 8;
    let skip = (offset % 8) as usize;
    while out.len() < len + skip {
        let v = (word.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ file.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)).to_le_bytes();
        out.extend_from_slice(&v);
        word += 1;
    }
    out.drain(..skip);
    out.truncate(len);
    out
}

pub async fn run(config: ClientConfig, opts: BenchOptions) -> anyhow::Result<()> {
    if opts.clients == 0 || opts.io_size == 0 {
        bail!("--clients and --io-size must be at least 1");
    }
    if !(opts.conn_rate == 0.0 || (0.001..=1e6).contains(&opts.conn_rate)) {
        bail!("--conn-rate must be 0 (closed loop) or between 0.001 and 1000000 operations per second");
    }
    let client = Client::new(config.clone());
    let top = client.mkdir_p(&opts.dir, 0o755).await.with_context(|| format!("cannot create {}", opts.dir))?;
    // A directory of this run's own, so an interrupted earlier run is no obstacle.
    let run_name = format!("run-{:08x}", rand::random::<u32>());
    let root = client.mkdir(top.ino, &run_name, 0o755).await?;
    let want = |w: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == w);
    let mut rows = Vec::new();
    let mut files: Vec<Attr> = Vec::new();
    if want("seq") || want("rand") {
        let (row, made) = seq_write(&client, &root, &opts).await?;
        files = made;
        rows.push(row);
        if want("seq") {
            rows.push(seq_read(&client, &files, &opts).await?);
        }
        if want("rand") {
            rows.push(rand_read(&client, &files, &opts).await?);
        }
    }
    let mut small = Vec::new();
    if want("small") || want("conns") || want("create") {
        let (row, made) = small_create(&client, &root, &opts).await?;
        small = made;
        rows.push(row);
        if want("small") {
            rows.push(small_stat(&client, &small, &opts).await?);
            rows.push(small_read(&client, &small, &opts).await?);
        }
    }
    if want("conns") && opts.connections > 0 {
        rows.push(many_connections(&config, root.ino, &small, &opts).await?);
    }
    if opts.keep {
        eprintln!("files kept under {}/{run_name}", opts.dir.trim_end_matches('/'));
    } else {
        if !small.is_empty() {
            rows.push(small_delete(&client, root.ino, &small, &opts).await?);
        }
        for i in 0..files.len() {
            let _ = client.unlink(root.ino, &format!("seq-{i}")).await;
        }
        let _ = client.rmdir(top.ino, &run_name).await;
    }
    print(&rows, opts.json)?;
    if rows.iter().any(|r| r.errors > 0) {
        bail!("some operations failed (see the errors column)");
    }
    Ok(())
}

fn print(rows: &[Row], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    println!(
        "{:<16} {:>9} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "workload", "ops", "secs", "ops/s", "MB/s", "p50 us", "p99 us", "p99.9 us", "max us", "errors"
    );
    for r in rows {
        let mb = r.mb_per_sec.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<16} {:>9} {:>8.2} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
            r.name, r.ops, r.secs, r.ops_per_sec, mb, r.p50_us, r.p99_us, r.p999_us, r.max_us, r.errors
        );
    }
    Ok(())
}

async fn join_all<F>(tasks: Vec<F>, phase: &mut Phase) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<Tally>> + Send + 'static,
{
    let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
    for h in handles {
        phase.add(h.await.context("benchmark task panicked")??);
    }
    Ok(())
}

async fn seq_write(client: &Client, root: &Attr, opts: &BenchOptions) -> anyhow::Result<(Row, Vec<Attr>)> {
    let mut made = Vec::new();
    for i in 0..opts.clients {
        made.push(client.create(root.ino, &format!("seq-{i}"), 0o644, false).await?);
    }
    let mut phase = Phase::new("seq_write");
    let tasks = made
        .iter()
        .map(|a| {
            let (client, ino, size, io) = (client.clone(), a.ino, opts.file_size, opts.io_size);
            async move {
                let mut t = Tally::new();
                let mut w = client.writer(ino, 0).await?;
                let mut off = 0;
                while off < size {
                    let n = io.min((size - off) as usize);
                    let buf = pattern(ino.0, off, n);
                    let t0 = Instant::now();
                    w.write(&buf).await?;
                    t.record(t0);
                    t.bytes += n as u64;
                    off += n as u64;
                }
                w.close().await?;
                Ok(t)
            }
        })
        .collect();
    join_all(tasks, &mut phase).await?;
    Ok((phase.row(true), made))
}

async fn seq_read(client: &Client, files: &[Attr], opts: &BenchOptions) -> anyhow::Result<Row> {
    let mut phase = Phase::new("seq_read");
    let tasks = files
        .iter()
        .map(|a| {
            let (client, ino, io) = (client.clone(), a.ino, opts.io_size as u64);
            async move {
                let mut t = Tally::new();
                let r = client.reader(ino).await?;
                let size = r.size();
                let mut off = 0;
                while off < size {
                    let t0 = Instant::now();
                    let got = r.read_at(off, io).await?;
                    t.record(t0);
                    if got.is_empty() || got[..] != pattern(ino.0, off, got.len())[..] {
                        bail!("file {ino} read back wrong bytes at offset {off}");
                    }
                    t.bytes += got.len() as u64;
                    off += got.len() as u64;
                }
                Ok(t)
            }
        })
        .collect();
    join_all(tasks, &mut phase).await?;
    Ok(phase.row(true))
}

async fn rand_read(client: &Client, files: &[Attr], opts: &BenchOptions) -> anyhow::Result<Row> {
    const LEN: u64 = 4096;
    let mut phase = Phase::new("rand_read_4k");
    let per_client = opts.random_reads.div_ceil(opts.clients);
    let tasks = (0..opts.clients)
        .map(|c| {
            let (client, files) = (client.clone(), files.to_vec());
            async move {
                let mut t = Tally::new();
                let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
                let mut readers = Vec::new();
                for f in &files {
                    readers.push(client.reader(f.ino).await?);
                }
                for _ in 0..per_client {
                    let i = rng.random_range(0..readers.len());
                    let r = &mut readers[i];
                    if r.size() < LEN {
                        continue;
                    }
                    let off = rng.random_range(0..r.size() / LEN) * LEN;
                    let t0 = Instant::now();
                    let got = r.read_at(off, LEN).await?;
                    t.record(t0);
                    if got[..] != pattern(r.attr().ino.0, off, LEN as usize)[..] {
                        bail!("random read of {} at {off} returned wrong bytes", r.attr().ino);
                    }
                    t.bytes += LEN;
                }
                Ok(t)
            }
        })
        .collect();
    join_all(tasks, &mut phase).await?;
    Ok(phase.row(true))
}

/// Small files of one client live in their own directory, as most workloads do.
fn small_name(i: usize) -> String {
    format!("f{i:07}")
}

/// The bytes of small file `i` of directory `dir`.
fn small_content(dir: InodeId, i: usize, size: usize) -> Vec<u8> {
    pattern(dir.0 << 24 | i as u64, 0, size)
}

/// Looks small file `i` of `dir` up by name and reads it whole (one byte more than it
/// should hold, so a file too long is noticed); fails unless the bytes are exact.
async fn read_small(client: &Client, dir: InodeId, i: usize, size: usize) -> anyhow::Result<u64> {
    let a = client.lookup(dir, &small_name(i)).await?;
    let got = client.read_at(a.ino, 0, size as u64 + 1).await?;
    if got[..] != small_content(dir, i, size)[..] {
        bail!("{} read back wrong bytes ({} bytes)", small_name(i), got.len());
    }
    Ok(got.len() as u64)
}

async fn small_create(
    client: &Client,
    root: &Attr,
    opts: &BenchOptions,
) -> anyhow::Result<(Row, Vec<(InodeId, usize)>)> {
    let mut dirs = Vec::new();
    for c in 0..opts.clients {
        dirs.push(client.mkdir(root.ino, &format!("small-{c}"), 0o755).await?.ino);
    }
    let per_client = opts.small_files.div_ceil(opts.clients);
    let mut phase = Phase::new("small_create");
    let tasks = dirs
        .iter()
        .map(|&dir| {
            let (client, size) = (client.clone(), opts.small_size);
            async move {
                let mut t = Tally::new();
                for i in 0..per_client {
                    let t0 = Instant::now();
                    let a = client.create(dir, &small_name(i), 0o644, true).await?;
                    if size > 0 {
                        client.write_at(a.ino, 0, &small_content(dir, i, size)).await?;
                    }
                    t.record(t0);
                    t.bytes += size as u64;
                }
                Ok(t)
            }
        })
        .collect();
    join_all(tasks, &mut phase).await?;
    let files = dirs.iter().flat_map(|&d| (0..per_client).map(move |i| (d, i))).collect();
    Ok((phase.row(true), files))
}

/// Runs `op` on every small file, `clients` at a time.
async fn per_small_file<F, Fut>(
    name: &str,
    moves_bytes: bool,
    files: &[(InodeId, usize)],
    clients: usize,
    op: F,
) -> anyhow::Result<Row>
where
    F: Fn(InodeId, usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let mut phase = Phase::new(name);
    let mut t = Tally::new();
    let mut results = stream::iter(files.iter().map(|&(d, i)| {
        let fut = op(d, i);
        async move {
            let t0 = Instant::now();
            let r = fut.await;
            (t0, r)
        }
    }))
    .buffer_unordered(clients);
    while let Some((t0, r)) = results.next().await {
        t.record(t0);
        match r {
            Ok(n) => t.bytes += n,
            Err(e) => {
                t.errors += 1;
                if t.errors == 1 {
                    eprintln!("{name}: {e:#}");
                }
            }
        }
    }
    phase.add(t);
    Ok(phase.row(moves_bytes))
}

async fn small_stat(client: &Client, files: &[(InodeId, usize)], o: &BenchOptions) -> anyhow::Result<Row> {
    per_small_file("small_stat", false, files, o.clients, |d, i| async move {
        let a = client.lookup(d, &small_name(i)).await?;
        if a.size != o.small_size as u64 {
            bail!("{} has size {}, wrote {}", small_name(i), a.size, o.small_size);
        }
        Ok(0)
    })
    .await
}

async fn small_read(client: &Client, files: &[(InodeId, usize)], o: &BenchOptions) -> anyhow::Result<Row> {
    per_small_file("small_read", true, files, o.clients, |d, i| read_small(client, d, i, o.small_size)).await
}

async fn small_delete(
    client: &Client,
    root: InodeId,
    files: &[(InodeId, usize)],
    o: &BenchOptions,
) -> anyhow::Result<Row> {
    let row = per_small_file("small_delete", false, files, o.clients, |d, i| async move {
        client.unlink(d, &small_name(i)).await?;
        Ok(0)
    })
    .await?;
    for c in 0..o.clients {
        let _ = client.rmdir(root, &format!("small-{c}")).await;
    }
    Ok(row)
}

/// `connections` clients, each with its own connections, all connected at once, each
/// doing a stat and a read of one small file in a loop for a few rounds.
async fn many_connections(
    config: &ClientConfig,
    root: InodeId,
    files: &[(InodeId, usize)],
    o: &BenchOptions,
) -> anyhow::Result<Row> {
    if files.is_empty() {
        bail!("the connections run reads the small files: give --small-files");
    }
    let mut phase = Phase::new(&format!("conns_{}", o.connections));
    let (rounds, period) = (o.conn_rounds, (o.conn_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / o.conn_rate)));
    let mut handles = Vec::new();
    // Every client connects before any starts its rounds, so all are open at once.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(o.connections));
    for c in 0..o.connections {
        let config = ClientConfig { meta_attempt_timeout: Duration::from_secs(30), ..config.clone() };
        let (start, (dir, i), size) = (start.clone(), files[c % files.len()], o.small_size);
        handles.push(tokio::spawn(async move {
            let mut t = Tally::new();
            let client = Client::new(config);
            let first = client.getattr(root).await;
            start.wait().await;
            if let Err(e) = first {
                t.errors += 1;
                return (t, Some(format!("{e}")));
            }
            let mut err = None;
            // Open loop: each client at its own phase of the period, so the load is even.
            let phase0 = period.map(|p| p.mul_f64(rand::random::<f64>()));
            let begin = tokio::time::Instant::now();
            for round in 0..rounds {
                if let (Some(p), Some(p0)) = (period, phase0) {
                    tokio::time::sleep_until(begin + p0 + p * round as u32).await;
                }
                let t0 = Instant::now();
                let r = read_small(&client, dir, i, size).await;
                t.record(t0);
                match r {
                    Ok(n) => t.bytes += n,
                    Err(e) => {
                        t.errors += 1;
                        err.get_or_insert(format!("{e:#}"));
                    }
                }
            }
            (t, err)
        }));
    }
    let mut first_err = None;
    for h in handles {
        let (t, e) = h.await.context("connection task panicked")?;
        phase.add(t);
        if first_err.is_none() {
            first_err = e;
        }
    }
    if let Some(e) = first_err {
        eprintln!("{}: {e}", phase.name);
    }
    Ok(phase.row(true))
}

#[cfg(test)]
mod tests {
    use super::pattern;

    #[test]
    fn pattern_is_position_addressed() {
        let whole = pattern(7, 0, 100);
        assert_eq!(pattern(7, 13, 50), whole[13..63].to_vec());
        assert_ne!(pattern(8, 0, 100), whole);
    }
}
