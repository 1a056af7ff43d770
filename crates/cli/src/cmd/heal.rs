//! `node list|drain|remove|maintenance` and `fsck`: membership and replication health.

use crate::cmd::NodeCommand;
use crate::output::{human_bytes, print_json, print_table};
use distfs_client::Client;
use distfs_proto::{FsckBlock, MetaRequest, MetaResponse};
use distfs_types::NodeId;

fn unexpected(what: &str, r: MetaResponse) -> anyhow::Error {
    anyhow::anyhow!("unexpected answer to {what}: {r:?}")
}

pub async fn node(client: &Client, cmd: &NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::List { json } => {
            let s = client.cluster_status().await?;
            if *json {
                return print_json(&s.nodes);
            }
            let rows: Vec<Vec<String>> = s
                .nodes
                .iter()
                .map(|n| {
                    vec![
                        n.id.to_string(),
                        n.addr.clone(),
                        n.zone.clone(),
                        n.state.to_string(),
                        n.admin.to_string(),
                        human_bytes(n.used),
                        human_bytes(n.capacity),
                        n.blocks.to_string(),
                    ]
                })
                .collect();
            print_table(Some(&["NODE", "ADDRESS", "ZONE", "STATE", "ADMIN", "USED", "CAPACITY", "BLOCKS"]), &rows);
            Ok(())
        }
        NodeCommand::Drain { id, dry_run, json } => {
            let r = client.admin(MetaRequest::NodeDrain { node: NodeId(*id), dry_run: *dry_run }).await?;
            let MetaResponse::Drain { blocks, bytes } = r else { return Err(unexpected("NodeDrain", r)) };
            if *json {
                return print_json(
                    &serde_json::json!({ "node": id, "dry_run": dry_run, "blocks": blocks, "bytes": bytes }),
                );
            }
            if *dry_run {
                println!("draining node {id} would copy {blocks} blocks ({}) to other nodes", human_bytes(bytes));
            } else {
                println!(
                    "node {id} is draining: {blocks} blocks ({}) to copy; `distfs node list` shows `drained` when done",
                    human_bytes(bytes)
                );
            }
            Ok(())
        }
        NodeCommand::Remove { id } => {
            client.admin(MetaRequest::NodeRemove { node: NodeId(*id) }).await?;
            println!("node {id} removed");
            Ok(())
        }
        NodeCommand::Maintenance { id, mode, window } => {
            let on = mode == "on";
            let window_ms = window.as_millis() as u64;
            client.admin(MetaRequest::NodeMaintenance { node: NodeId(*id), on, window_ms }).await?;
            if on {
                println!("node {id} in maintenance for {}", humantime::format_duration(*window));
            } else {
                println!("node {id} out of maintenance");
            }
            Ok(())
        }
    }
}

fn rows(blocks: &[FsckBlock]) -> Vec<Vec<String>> {
    blocks
        .iter()
        .map(|b| {
            vec![
                b.block.to_string(),
                human_bytes(b.len as u64),
                b.live.to_string(),
                b.replicas.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
                b.files.join(" "),
            ]
        })
        .collect()
}

pub async fn fsck(client: &Client, repair: bool, json: bool) -> anyhow::Result<()> {
    let r = client.admin(MetaRequest::Fsck { repair }).await?;
    let MetaResponse::Fsck(f) = r else { return Err(unexpected("Fsck", r)) };
    if json {
        print_json(&f)?;
    } else {
        println!(
            "{} blocks at R={}: {} under-replicated, {} missing, {} corrupt copies, {} orphaned copies",
            f.blocks,
            f.replication,
            f.under_replicated.len(),
            f.missing.len(),
            f.corrupt.len(),
            f.orphaned.len()
        );
        let head = ["BLOCK", "SIZE", "LIVE", "REPLICAS", "FILES"];
        if !f.missing.is_empty() {
            println!("\nmissing (no live copy):");
            print_table(Some(&head), &rows(&f.missing));
        }
        if !f.under_replicated.is_empty() {
            println!("\nunder-replicated:");
            print_table(Some(&head), &rows(&f.under_replicated));
        }
        if !f.corrupt.is_empty() {
            println!("\ncorrupt copies:");
            let r: Vec<Vec<String>> =
                f.corrupt.iter().map(|b| vec![b.block.to_string(), b.node.to_string(), b.reason.clone()]).collect();
            print_table(Some(&["BLOCK", "NODE", "REASON"]), &r);
        }
        if !f.orphaned.is_empty() {
            println!("\norphaned copies:");
            let r: Vec<Vec<String>> =
                f.orphaned.iter().map(|o| vec![o.node.to_string(), o.block.to_string()]).collect();
            print_table(Some(&["NODE", "BLOCK"]), &r);
        }
        if repair {
            println!(
                "\nrepair: {} copies queued, {} orphaned copies queued for deletion",
                f.repairs_queued, f.orphans_deleted
            );
        }
        println!("\n{}", if f.is_clean() { "status: clean" } else { "status: DEGRADED" });
    }
    if f.is_clean() || repair {
        Ok(())
    } else {
        // Scripts: a non-zero exit when something is wrong.
        Err(anyhow::anyhow!(
            "fsck found problems: {} under-replicated, {} missing, {} corrupt, {} orphaned",
            f.under_replicated.len(),
            f.missing.len(),
            f.corrupt.len(),
            f.orphaned.len()
        ))
    }
}
