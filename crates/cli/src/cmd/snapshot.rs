//! `distfs snapshot create|list|delete|restore`.

use crate::output::{human_bytes, print_json, print_table, time_string};
use clap::Subcommand;
use distfs_client::Client;
use distfs_proto::SnapshotInfo;

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Snapshot the directory tree at PATH as /.snapshots/NAME (read-only; shares every
    /// block with the live tree, copies no data).
    Create {
        path: String,
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Every snapshot: source, creation time, files, bytes, and the bytes only it holds
    /// on the storage nodes (what deleting it frees).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot; blocks nothing else references are freed.
    Delete { name: String },
    /// Replace the content of the snapshot's source directory (or --to DIR) by the
    /// snapshot's. What the directory held before is removed.
    Restore {
        name: String,
        #[arg(long)]
        to: Option<String>,
    },
}

fn rows(list: &[SnapshotInfo]) -> Vec<Vec<String>> {
    list.iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.source.clone(),
                time_string(s.created),
                s.files.to_string(),
                human_bytes(s.bytes),
                human_bytes(s.exclusive_bytes),
            ]
        })
        .collect()
}

const HEADER: &[&str] = &["Name", "Source", "Created", "Files", "Bytes", "Exclusive"];

pub async fn run(client: &Client, command: &SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Create { path, name, json } => {
            let s = client.snapshot_create(path, name).await?;
            if *json {
                return print_json(&s);
            }
            println!(
                "snapshot `{}` of {}: {} files, {} (/.snapshots/{})",
                s.name,
                s.source,
                s.files,
                human_bytes(s.bytes),
                s.name
            );
        }
        SnapshotCommand::List { json } => {
            let list = client.snapshot_list().await?;
            if *json {
                return print_json(&list);
            }
            print_table(Some(HEADER), &rows(&list));
        }
        SnapshotCommand::Delete { name } => {
            let s = client.snapshot_delete(name).await?;
            println!(
                "deleted snapshot `{}`; {} are freed as garbage collection runs",
                s.name,
                human_bytes(s.exclusive_bytes)
            );
        }
        SnapshotCommand::Restore { name, to } => {
            let s = client.snapshot_restore(name, to.as_deref()).await?;
            println!("restored snapshot `{}` into {}", s.name, to.as_deref().unwrap_or(&s.source));
        }
    }
    Ok(())
}

/// `df`'s line on snapshots: how many, and the bytes only they hold (included in Used).
/// Nothing when there are none or the server cannot say.
pub async fn df_line(client: &Client) {
    if let Ok(list) = client.snapshot_list().await {
        if !list.is_empty() {
            let held: u64 = list.iter().map(|s| s.exclusive_bytes).sum();
            println!(
                "{} snapshot(s) hold {} of Used exclusively (freed by `distfs snapshot delete`)",
                list.len(),
                human_bytes(held)
            );
        }
    }
}
