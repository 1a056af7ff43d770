//! `df` and `cluster status`.

use crate::output::{human_bytes, print_json, print_table};
use distfs_client::Client;

pub async fn df(client: &Client, json: bool) -> anyhow::Result<()> {
    let s = client.statfs().await?;
    if json {
        return print_json(&s);
    }
    let pct = if s.capacity == 0 { 0.0 } else { s.used as f64 * 100.0 / s.capacity as f64 };
    print_table(
        Some(&["Size", "Used", "Avail", "Use%", "Files"]),
        &[vec![
            human_bytes(s.capacity),
            human_bytes(s.used),
            human_bytes(s.available),
            format!("{pct:.0}%"),
            s.files.to_string(),
        ]],
    );
    crate::cmd::snapshot::df_line(client).await;
    Ok(())
}

pub async fn status(client: &Client, json: bool) -> anyhow::Result<()> {
    let s = client.cluster_status().await?;
    if json {
        return print_json(&s);
    }
    print_status(&s);
    Ok(())
}

/// `cluster status` every `interval`, on a cleared screen, with the write throughput
/// (logical bytes committed per second) since the previous refresh.
pub async fn top(client: &Client, interval: std::time::Duration) -> anyhow::Result<()> {
    anyhow::ensure!(interval >= std::time::Duration::from_millis(100), "--interval must be at least 100ms");
    let mut prev: Option<(std::time::Instant, u64)> = None;
    loop {
        let answer = client.cluster_status().await;
        let now = std::time::Instant::now();
        print!("\x1b[2J\x1b[H");
        match answer {
            Ok(s) => {
                let rate = prev.map(|(t, b)| s.logical_bytes.saturating_sub(b) as f64 / (now - t).as_secs_f64());
                println!(
                    "distfs top: every {}, write throughput {}",
                    humantime::format_duration(interval),
                    rate.map(|r| format!("{}/s", human_bytes(r as u64))).unwrap_or_else(|| "-".into())
                );
                prev = Some((now, s.logical_bytes));
                print_status(&s);
            }
            Err(e) => println!("distfs top: cannot get the cluster status: {e}"),
        }
        tokio::time::sleep(interval).await;
    }
}

fn print_status(s: &distfs_proto::ClusterStatus) {
    println!(
        "metadata: leader {}, term {}, applied index {}",
        s.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into()),
        s.term,
        s.last_applied
    );
    println!(
        "namespace: {} files, {} directories, {} blocks, {} stored (x{} replicas)",
        s.files,
        s.directories,
        s.blocks,
        human_bytes(s.logical_bytes),
        s.replication
    );
    let healthy = if s.under_replicated == 0 && s.bad_replicas.is_empty() { "healthy" } else { "DEGRADED" };
    println!(
        "replication: {healthy}: {} blocks under-replicated, {} bad replicas reported, {} blocks awaiting deletion",
        s.under_replicated,
        s.bad_replicas.len(),
        s.gc_pending
    );
    let p = &s.repair;
    if s.missing > 0 {
        println!("missing: {} blocks have no live copy", s.missing);
    }
    println!(
        "repair: {} blocks ({}) queued, {} in flight; done {} blocks ({}), {} failed, {} trimmed, {} rebalanced; rate {}/s",
        p.queued_blocks,
        human_bytes(p.queued_bytes),
        p.in_flight,
        p.done_blocks,
        human_bytes(p.done_bytes),
        p.failed,
        p.trimmed,
        p.rebalanced,
        human_bytes(p.rate_bytes_per_sec)
    );
    println!();
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            let pct = if n.capacity == 0 { 0.0 } else { n.used as f64 * 100.0 / n.capacity as f64 };
            vec![
                n.id.to_string(),
                n.addr.clone(),
                n.zone.clone(),
                if n.admin == distfs_types::AdminState::Normal {
                    n.state.to_string()
                } else {
                    format!("{} ({})", n.state, n.admin)
                },
                format!("{} / {} ({pct:.1}%)", human_bytes(n.used), human_bytes(n.capacity)),
                n.blocks.to_string(),
                format!("{:.1}s ago", n.last_heartbeat_ms as f64 / 1000.0),
            ]
        })
        .collect();
    print_table(Some(&["NODE", "ADDRESS", "ZONE", "STATE", "USED", "BLOCKS", "HEARTBEAT"]), &rows);
    if !s.bad_replicas.is_empty() {
        println!();
        println!("bad replicas (newest last):");
        let rows: Vec<Vec<String>> =
            s.bad_replicas.iter().map(|b| vec![b.block.to_string(), b.node.to_string(), b.reason.clone()]).collect();
        print_table(Some(&["BLOCK", "NODE", "REASON"]), &rows);
    }
}
