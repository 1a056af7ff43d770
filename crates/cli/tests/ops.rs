//! Operations against real processes: metrics that move with traffic, `/ready` of a
//! storage node that loses its metadata server, configuration reload on SIGHUP (a changed
//! key applied, a broken file rejected), SIGTERM during writes losing nothing
//! acknowledged, and the dashboard as headless Chromium shows it.

mod common;

use common::*;
use distfs_ops::client::{get, HttpAnswer};
use distfs_ops::metrics::parse_text;
use distfs_testkit::{wait_for, ClusterOpts, ProcessCluster};
use distfs_types::{InodeId, NodeState};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `GET path` on a blocking thread; `None` when the server does not answer.
async fn http(addr: &str, path: &str) -> Option<HttpAnswer> {
    let (addr, path) = (addr.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || get(&addr, &path).ok()).await.expect("join")
}

async fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let a = http(addr, "/metrics").await.unwrap_or_else(|| panic!("{addr}/metrics answers"));
    assert_eq!(a.status, 200, "{}", a.body);
    parse_text(&a.body)
}

fn val(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

async fn storage_sum(c: &ProcessCluster, key: &str) -> f64 {
    let mut sum = 0.0;
    for i in 0..c.storage_count() {
        sum += val(&scrape(c.storage_http(i)).await, key);
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_change_with_traffic() {
    let c = cluster().await;
    for i in 0..3 {
        let h = http(c.storage_http(i), "/health").await.expect("storage /health");
        assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    }
    let before = scrape(c.meta_http(0)).await;
    let written_before = storage_sum(&c, "distfs_storage_bytes_written_total").await;
    let blocks_before = storage_sum(&c, "distfs_storage_blocks_stored").await;
    assert_eq!(val(&before, "distfs_meta_storage_nodes{state=\"up\"}"), 3.0, "three nodes up");
    assert_eq!(val(&before, "distfs_meta_raft_is_leader"), 1.0);

    const N: usize = 20;
    const SIZE: usize = 300 << 10;
    let client = c.client();
    for i in 0..N {
        let f = client.create(InodeId::ROOT, &format!("m{i}"), 0o644, true).await.expect("create");
        client.write_at(f.ino, 0, &random_bytes(SIZE, i as u64)).await.expect("write");
    }
    let after = scrape(c.meta_http(0)).await;
    let grew = |k: &str| val(&after, k) - val(&before, k);
    eprintln!(
        "meta: commit +{}, create +{}, allocate +{}, heartbeats +{}, applied +{}",
        grew("distfs_meta_requests_total{op=\"commit\"}"),
        grew("distfs_meta_requests_total{op=\"create\"}"),
        grew("distfs_meta_requests_total{op=\"allocate\"}"),
        grew("distfs_meta_heartbeats_received_total"),
        grew("distfs_meta_raft_last_applied_index")
    );
    assert!(grew("distfs_meta_requests_total{op=\"commit\"}") >= N as f64);
    assert!(grew("distfs_meta_requests_total{op=\"create\"}") >= N as f64);
    assert!(grew("distfs_meta_request_duration_seconds_count{op=\"commit\"}") >= N as f64);
    assert!(grew("distfs_meta_request_duration_seconds_bucket{op=\"commit\",le=\"+Inf\"}") >= N as f64);
    assert!(grew("distfs_meta_raft_last_applied_index") >= 2.0 * N as f64, "creates and commits are Raft entries");
    assert!(val(&after, "distfs_meta_heartbeats_received_total") > 0.0);
    assert_eq!(val(&after, "distfs_meta_files"), N as f64);
    assert_eq!(val(&after, "distfs_meta_logical_bytes"), (N * SIZE) as f64);
    assert!(val(&after, "distfs_meta_raft_term") >= 1.0);

    // Every replica of every block reaches its node (W acks the write, the third follows).
    let want = 3.0 * (N * SIZE) as f64;
    let written = wait_for("3 copies of every byte counted by the storage nodes", Duration::from_secs(20), || async {
        let w = storage_sum(&c, "distfs_storage_bytes_written_total").await - written_before;
        (w >= want).then_some(w)
    })
    .await;
    let blocks = storage_sum(&c, "distfs_storage_blocks_stored").await - blocks_before;
    eprintln!("storage: bytes_written +{written} (want >= {want}), blocks_stored +{blocks}");
    assert!(blocks >= 3.0 * N as f64);
    assert!(storage_sum(&c, "distfs_storage_requests_total{op=\"put\"}").await >= 3.0 * N as f64);
    assert!(storage_sum(&c, "distfs_storage_heartbeats_sent_total").await > 0.0);

    // Reads move bytes out.
    let out_before = storage_sum(&c, "distfs_storage_bytes_out_total").await;
    let f = client.lookup(InodeId::ROOT, "m0").await.expect("lookup");
    assert_eq!(client.read_at(f.ino, 0, u64::MAX).await.expect("read").len(), SIZE);
    assert!(storage_sum(&c, "distfs_storage_bytes_out_total").await - out_before >= SIZE as f64);

    // `cluster status` is a table with a row per node.
    let out = distfs_ok(&c, &["cluster", "status"]).await;
    assert!(out.contains("NODE") && out.contains("STATE") && out.contains("USED"), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains(" up ")).count(), 3, "{out}");

    // `cluster top` refreshes the same table with a throughput line.
    let top_out = c.dir().join("top.out");
    let mut top = c.cli();
    top.args(["cluster", "top", "--interval", "200ms"])
        .stdout(std::fs::File::create(&top_out).expect("create top.out"))
        .stderr(std::process::Stdio::null());
    let mut top = top.spawn().expect("spawn distfs cluster top");
    let text = wait_for("two refreshes of cluster top", Duration::from_secs(10), || async {
        let t = std::fs::read_to_string(&top_out).unwrap_or_default();
        (t.matches("distfs top: every 200ms").count() >= 2 && t.contains("B/s")).then_some(t)
    })
    .await;
    let _ = top.kill();
    let _ = top.wait();
    assert!(text.contains("NODE") && text.contains("\x1b[2J"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ready_flips_when_a_storage_node_loses_its_metadata_server() {
    let mut c = cluster().await;
    let ready = |addr: String| async move { http(&addr, "/ready").await.map(|a| a.status) };
    wait_for("storage /ready 200", Duration::from_secs(10), || async {
        (ready(c.storage_http(0).into()).await == Some(200)).then_some(())
    })
    .await;
    assert_eq!(ready(c.meta_http(0).into()).await, Some(200), "meta ready");

    c.kill_meta_server(0);
    let t = std::time::Instant::now();
    let body = wait_for("storage /ready 503 after the metadata server died", Duration::from_secs(15), || async {
        let a = http(c.storage_http(0), "/ready").await?;
        (a.status == 503).then_some(a.body)
    })
    .await;
    eprintln!("not ready {:?} after SIGKILL of the metadata server: {body}", t.elapsed());
    assert!(body.contains("metadata"), "{body}");
    // The node itself is alive.
    assert_eq!(http(c.storage_http(0), "/health").await.map(|a| a.status), Some(200));

    c.start_meta_server(0);
    let t = std::time::Instant::now();
    wait_for("storage /ready 200 again", Duration::from_secs(30), || async {
        (ready(c.storage_http(0).into()).await == Some(200)).then_some(())
    })
    .await;
    eprintln!("ready again {:?} after the metadata restart", t.elapsed());
    let m = scrape(c.storage_http(0)).await;
    assert_eq!(val(&m, "distfs_storage_meta_connected"), 1.0);
    assert!(val(&m, "distfs_storage_heartbeat_failures_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metadata_ready_follows_the_quorum() {
    let mut c = ProcessCluster::start(bins(), ClusterOpts { meta_servers: 3, ..ClusterOpts::default() }).await;
    let leader = c.meta_leader().await.expect("a leader");
    for i in 0..3 {
        let a = http(c.meta_http(i), "/ready").await.expect("meta /ready answers");
        assert_eq!(a.status, 200, "server {i}: {}", a.body);
    }
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for &i in &others {
        c.kill_meta_server(i);
    }
    let body = wait_for("the lone leader not ready", Duration::from_secs(20), || async {
        let a = http(c.meta_http(leader), "/ready").await?;
        (a.status == 503).then_some(a.body)
    })
    .await;
    eprintln!("lone former leader: {body}");
    assert_eq!(http(c.meta_http(leader), "/health").await.map(|a| a.status), Some(200));
    c.start_meta_server(others[0]);
    wait_for("ready again with a quorum", Duration::from_secs(30), || async {
        let (a, b) = (http(c.meta_http(leader), "/ready").await?, http(c.meta_http(others[0]), "/ready").await?);
        (a.status == 200 && b.status == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_applies_a_changed_key_and_rejects_a_broken_file() {
    let c = cluster().await;
    let meta_http = c.meta_http(0).to_string();
    let m = scrape(&meta_http).await;
    assert_eq!(val(&m, "distfs_meta_config_suspect_after_seconds"), 1.5);

    // A changed reloadable key (and a changed fixed one, which waits for a restart).
    let path = c.meta_config_path(0);
    let good = std::fs::read_to_string(&path).expect("read meta config");
    let changed = good.replace("suspect_after = \"1500ms\"", "suspect_after = \"1800ms\"")
        + "[repair]\nbandwidth = \"50MiB\"\nscan_interval = \"200ms\"\n";
    assert_ne!(changed, good);
    std::fs::write(&path, &changed).expect("write meta config");
    c.signal_meta(0, libc::SIGHUP);
    let m = wait_for("suspect_after 1.8s in force", Duration::from_secs(10), || async {
        let m = scrape(&meta_http).await;
        (val(&m, "distfs_meta_config_suspect_after_seconds") == 1.8).then_some(m)
    })
    .await;
    assert_eq!(val(&m, "distfs_meta_config_repair_bandwidth_bytes"), (50u64 << 20) as f64);
    assert_eq!(val(&m, "distfs_meta_config_reloads_total{result=\"applied\"}"), 1.0);
    assert_eq!(val(&m, "distfs_meta_config_reloads_total{result=\"rejected\"}"), 0.0);
    let log = c.log("meta-0");
    assert!(log.contains("configuration reloaded") && log.contains("suspect_after"), "{log}");
    assert!(log.contains("repair.scan_interval") && log.contains("only after a restart"), "{log}");

    // The storage node too.
    let spath = c.storage_config_path(0);
    let s = std::fs::read_to_string(&spath).expect("read storage config");
    std::fs::write(&spath, s.replace("heartbeat_interval = \"300ms\"", "heartbeat_interval = \"200ms\""))
        .expect("write storage config");
    c.signal_storage(0, libc::SIGHUP);
    wait_for("storage heartbeat_interval 0.2s in force", Duration::from_secs(10), || async {
        let m = scrape(c.storage_http(0)).await;
        (val(&m, "distfs_storage_config_heartbeat_interval_seconds") == 0.2).then_some(())
    })
    .await;
    wait_for("the heartbeat loop on the new interval", Duration::from_secs(10), || async {
        c.log("storage-0").contains("heartbeat interval changed").then_some(())
    })
    .await;

    // A file that does not parse: rejected, logged with its name, the old values stay.
    std::fs::write(&path, "suspect_after = [this is not toml\n").expect("write broken config");
    c.signal_meta(0, libc::SIGHUP);
    wait_for("the broken file rejected", Duration::from_secs(10), || async {
        let m = scrape(&meta_http).await;
        (val(&m, "distfs_meta_config_reloads_total{result=\"rejected\"}") == 1.0).then_some(())
    })
    .await;
    // A file that parses but does not validate: rejected too.
    std::fs::write(&path, changed.replace("dead_after = \"4s\"", "dead_after = \"1s\"")).expect("write invalid config");
    c.signal_meta(0, libc::SIGHUP);
    let m = wait_for("the invalid file rejected", Duration::from_secs(10), || async {
        let m = scrape(&meta_http).await;
        (val(&m, "distfs_meta_config_reloads_total{result=\"rejected\"}") == 2.0).then_some(m)
    })
    .await;
    assert_eq!(val(&m, "distfs_meta_config_suspect_after_seconds"), 1.8, "old config kept");
    assert_eq!(val(&m, "distfs_meta_config_dead_after_seconds"), 4.0, "old config kept");
    // The counter moves before the line is logged: wait for the second line.
    let log = wait_for("both rejections logged", Duration::from_secs(10), || async {
        let log = c.log("meta-0");
        (log.lines().filter(|l| l.contains("configuration reload rejected")).count() >= 2).then_some(log)
    })
    .await;
    let rejected: Vec<&str> = log.lines().filter(|l| l.contains("configuration reload rejected")).collect();
    assert_eq!(rejected.len(), 2, "{log}");
    for l in &rejected {
        eprintln!("{l}");
        assert!(l.contains("ERROR") && l.contains(&path.display().to_string()), "{l}");
    }
    assert!(rejected[0].contains("TOML") || rejected[0].contains("toml"), "{}", rejected[0]);
    assert!(rejected[1].contains("dead_after"), "{}", rejected[1]);

    // Still serving.
    let client = c.client();
    let f = client.create(InodeId::ROOT, "after-reload", 0o644, true).await.expect("create after reload");
    client.write_at(f.ino, 0, b"still here").await.expect("write after reload");
    assert_eq!(&client.read_at(f.ino, 0, u64::MAX).await.expect("read")[..], b"still here");
    assert_eq!(http(&meta_http, "/ready").await.map(|a| a.status), Some(200));
}

/// Files written and acknowledged: name and contents.
type Files = Vec<(String, Vec<u8>)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_writes_loses_nothing_acknowledged() {
    let mut c = cluster().await;
    let acked: Arc<Mutex<Files>> = Arc::default();
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (client, acked, errors, stop) = (c.client(), acked.clone(), errors.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w{w}-{i}");
                let data = random_bytes((256 << 10) + (i as usize * 4099) % (1 << 20), w * 1_000_000 + i);
                i += 1;
                let r = async {
                    let f = client.create(InodeId::ROOT, &name, 0o644, true).await?;
                    client.write_at(f.ino, 0, &data).await
                }
                .await;
                match r {
                    Ok(_) => acked.lock().unwrap().push((name, data)),
                    Err(e) => {
                        errors.lock().unwrap().push(format!("{name}: {e}"));
                        // Do not spin while the cluster is down.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    let count = || acked.lock().unwrap().len();
    wait_for("20 files acknowledged", Duration::from_secs(30), || async { (count() >= 20).then_some(()) }).await;

    // A storage node stops gracefully in the middle of the writes; W = 2 of 3 still holds.
    let at_term = count();
    let puts = val(&scrape(c.storage_http(1)).await, "distfs_storage_requests_total{op=\"put\"}");
    assert!(puts > 0.0, "storage node 1 takes writes before its SIGTERM");
    let status = c.terminate_storage(1, Duration::from_secs(20)).await;
    assert!(status.success(), "storage node exit status after SIGTERM: {status}");
    wait_for("20 more files acknowledged with one node stopped", Duration::from_secs(30), || async {
        (count() >= at_term + 20).then_some(())
    })
    .await;

    // Then the metadata server, still under writes.
    let status = c.terminate_meta(0, Duration::from_secs(20)).await;
    assert!(status.success(), "metadata server exit status after SIGTERM: {status}");
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let files = acked.lock().unwrap().clone();
    eprintln!("{} files acknowledged, {} writes failed (not acknowledged)", files.len(), errors.lock().unwrap().len());
    let (slog, mlog) = (c.log("storage-1"), c.log("meta-0"));
    assert!(slog.contains("deregistered from the metadata service") && slog.contains("storage node stopped"), "{slog}");
    assert!(!slog.contains("still in flight"), "every request finished within the drain limit: {slog}");
    assert!(mlog.contains("storage node deregistered") && mlog.contains("metadata server stopped"), "{mlog}");

    c.start_meta_server(0);
    c.start_storage(1);
    c.wait_nodes_up(3).await;
    let client = c.client();
    for (name, data) in &files {
        let f = client.lookup(InodeId::ROOT, name).await.unwrap_or_else(|e| panic!("acknowledged {name} lost: {e}"));
        let got = client.read_at(f.ino, 0, u64::MAX).await.unwrap_or_else(|e| panic!("read {name}: {e}"));
        assert!(got[..] == data[..], "acknowledged {name} reads back different bytes");
    }
}

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir.canonicalize().expect("canonical artifacts dir")
}

/// Runs headless Chromium on `url` with `extra` flags; its stdout.
async fn chromium(url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let mut cmd = std::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=5000",
        "--window-size=1280,900",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url);
    let out = run(cmd).await;
    assert!(out.status.success(), "chromium failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The dashboard's node rows as Chromium renders them: node id → state.
async fn dashboard_nodes(url: &str) -> BTreeMap<u64, String> {
    let dom = chromium(url, &["--dump-dom".to_string()]).await;
    let mut rows = BTreeMap::new();
    for part in dom.split("<tr class=\"node\" ").skip(1) {
        let attr = |name: &str| {
            let start = part.find(&format!("{name}=\""))? + name.len() + 2;
            Some(part[start..].split('"').next()?.to_string())
        };
        if let (Some(id), Some(state)) = (attr("data-node"), attr("data-state")) {
            rows.insert(id.parse().expect("numeric node id"), state);
        }
    }
    rows
}

async fn screenshot(url: &str, name: &str) -> PathBuf {
    let path = artifacts_dir().join(name);
    let _ = std::fs::remove_file(&path);
    chromium(url, &[format!("--screenshot={}", path.display())]).await;
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(len > 10_000, "screenshot {} has {len} bytes", path.display());
    eprintln!("dashboard screenshot: {}", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_shows_nodes_and_their_states_in_headless_chromium() {
    let which = std::process::Command::new("chromium").arg("--version").output();
    assert!(
        which.as_ref().is_ok_and(|o| o.status.success()),
        "chromium is missing: scripts/setup-test-deps installs it (apt-get install chromium)"
    );
    let mut c = cluster().await;
    let client = c.client();
    for i in 0..4 {
        let f = client.create(InodeId::ROOT, &format!("d{i}"), 0o644, true).await.expect("create");
        client.write_at(f.ino, 0, &random_bytes(1 << 20, i)).await.expect("write");
    }
    let url = format!("http://{}/", c.meta_http(0));
    let ids: Vec<u64> = (0..3).map(|i| c.node_id(i).expect("registered").0).collect();

    let rows = dashboard_nodes(&url).await;
    eprintln!("dashboard rows: {rows:?}");
    for id in &ids {
        assert_eq!(rows.get(id).map(String::as_str), Some("up"), "node {id} shown up: {rows:?}");
    }
    let dom = chromium(&url, &["--dump-dom".to_string()]).await;
    assert!(dom.contains("id=\"health\"") && dom.contains(">healthy<"), "replication health shown");
    screenshot(&url, "dashboard.png").await;

    // A killed node: suspect at once, dead soon after; the page follows.
    c.kill_storage(2);
    c.wait_nodes_in_state(NodeState::Dead, 1, Duration::from_secs(20)).await;
    let rows = dashboard_nodes(&url).await;
    eprintln!("dashboard rows after SIGKILL of node {}: {rows:?}", ids[2]);
    assert_eq!(rows.get(&ids[2]).map(String::as_str), Some("dead"), "{rows:?}");
    assert_eq!(rows.get(&ids[0]).map(String::as_str), Some("up"), "{rows:?}");
    screenshot(&url, "dashboard-node-dead.png").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_file_and_a_log_level_changed_by_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (listen, http_addr) =
        (format!("127.0.0.1:{}", distfs_testkit::free_port()), format!("127.0.0.1:{}", distfs_testkit::free_port()));
    let config = dir.path().join("meta.toml");
    let base = format!(
        "listen = \"{listen}\"\nhttp_addr = \"{http_addr}\"\ndata_dir = \"{}\"\n",
        dir.path().join("m").display()
    );
    let tls = "[tls]\nmode = \"off\"\n";
    std::fs::write(&config, format!("{base}log_level = \"warn\"\n{tls}")).expect("write config");
    let log = dir.path().join("logs").join("meta.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_distfs-meta"))
        .arg("--config")
        .arg(&config)
        .arg("--log-file")
        .arg(&log)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("spawn distfs-meta");
    wait_for("metadata /ready", Duration::from_secs(20), || async {
        (http(&http_addr, "/ready").await?.status == 200).then_some(())
    })
    .await;
    // Daily rotation: the file is meta.log.YYYY-MM-DD.
    let read_logs = || {
        let mut text = String::new();
        for e in std::fs::read_dir(log.parent().unwrap()).into_iter().flatten().flatten() {
            text += &std::fs::read_to_string(e.path()).unwrap_or_default();
        }
        text
    };
    assert!(!read_logs().contains("\"level\":\"INFO\""), "warn filter: no INFO lines yet");

    std::fs::write(&config, format!("{base}log_level = \"info,distfs_meta=debug\"\n{tls}")).expect("rewrite config");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let text = wait_for("the reload logged at INFO in the JSON file", Duration::from_secs(10), || async {
        let t = read_logs();
        t.contains("configuration reloaded").then_some(t)
    })
    .await;
    let line = text.lines().find(|l| l.contains("configuration reloaded")).expect("reload line");
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(v["level"], "INFO", "{line}");
    assert!(v["fields"]["changed"].as_str().unwrap_or_default().contains("log_level"), "{line}");

    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("wait");
    assert!(status.success(), "{status}");
    assert!(read_logs().contains("metadata server stopped"));
}
