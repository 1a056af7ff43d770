//! `distfs meta add|remove|status`: membership of the metadata Raft group.

use crate::output::{print_json, print_table};
use distfs_client::Client;
use distfs_proto::MetaStatus;

fn show(s: &MetaStatus) {
    println!(
        "leader: {} (term {}), answered by server {}",
        match (s.leader, &s.leader_addr) {
            (Some(l), Some(a)) => format!("{l} at {a}"),
            (Some(l), None) => l.to_string(),
            _ => "none".into(),
        },
        s.term,
        s.server
    );
    let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
    println!(
        "log: last index {}, applied {}, snapshot at {}",
        opt(s.last_log_index),
        opt(s.last_applied),
        opt(s.snapshot_index)
    );
    let rows: Vec<Vec<String>> = s
        .members
        .iter()
        .map(|m| {
            let role = if Some(m.id) == s.leader {
                "leader"
            } else if m.voter {
                "voter"
            } else {
                "learner"
            };
            vec![m.id.to_string(), m.addr.clone(), role.into(), opt(m.matched), opt(m.lag)]
        })
        .collect();
    print_table(Some(&["ID", "ADDRESS", "ROLE", "MATCHED", "LAG"]), &rows);
}

pub async fn status(client: &Client, json: bool) -> anyhow::Result<()> {
    let s = client.meta_status().await?;
    if json {
        return print_json(&s);
    }
    show(&s);
    Ok(())
}

pub async fn add(client: &Client, addr: &str) -> anyhow::Result<()> {
    let s = client.add_meta_server(addr).await?;
    println!("added {addr}");
    show(&s);
    Ok(())
}

pub async fn remove(client: &Client, id: u64) -> anyhow::Result<()> {
    let s = client.remove_meta_server(id).await?;
    println!("removed metadata server {id}");
    show(&s);
    Ok(())
}
