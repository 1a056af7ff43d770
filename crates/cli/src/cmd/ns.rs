//! Namespace commands: `ls`, `mkdir`, `rm`, `mv`, `stat`.

use crate::output::{human_bytes, kind_str, mode_string, print_json, print_table, time_string, JsonAttr};
use anyhow::bail;
use distfs_client::{ns::split, Client, ClientError};
use distfs_proto::RenameMode;
use distfs_types::{Attr, FileKind, FsError, InodeId};
use futures::stream::{self, StreamExt};

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

pub async fn ls(client: &Client, path: &str, long: bool, json: bool) -> anyhow::Result<()> {
    let attr = client.resolve(path).await?;
    let is_dir = attr.kind == FileKind::Dir;
    let mut items: Vec<(String, Attr)> = Vec::new();
    if attr.kind == FileKind::Dir {
        let entries = client.readdir(attr.ino).await?;
        if long || json {
            let attrs: Vec<_> = stream::iter(entries)
                .map(|e| async move { client.getattr(e.ino).await.map(|a| (e.name, a)) })
                .buffered(32)
                .collect()
                .await;
            for a in attrs {
                match a {
                    Ok(x) => items.push(x),
                    // Removed between the listing and the stat: not an error.
                    Err(ClientError::Fs(FsError::NotFound { .. } | FsError::StaleInode { .. })) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        } else {
            for e in entries {
                println!("{}", e.name);
            }
            return Ok(());
        }
    } else {
        items.push((path.to_string(), attr));
    }
    if json {
        let v: Vec<JsonAttr> =
            items.iter().map(|(n, a)| JsonAttr::new(&if is_dir { join(path, n) } else { n.clone() }, a)).collect();
        return print_json(&v);
    }
    if !long {
        for (n, _) in &items {
            println!("{n}");
        }
        return Ok(());
    }
    let mut rows = Vec::new();
    for (name, a) in &items {
        let shown = if a.kind == FileKind::Symlink {
            format!("{name} -> {}", client.readlink(a.ino).await.unwrap_or_else(|_| "?".into()))
        } else {
            name.clone()
        };
        rows.push(vec![
            mode_string(a),
            a.nlink.to_string(),
            a.uid.to_string(),
            a.gid.to_string(),
            human_bytes(a.size),
            time_string(a.mtime),
            shown,
        ]);
    }
    print_table(None, &rows);
    Ok(())
}

pub async fn mkdir(client: &Client, paths: &[String], parents: bool) -> anyhow::Result<()> {
    for p in paths {
        if parents {
            client.mkdir_p(p, 0o755).await?;
            continue;
        }
        let Some((parent, name)) = split(p)? else { bail!("`/` already exists") };
        let dir = client.resolve(&parent).await?;
        client.mkdir(dir.ino, &name, 0o755).await?;
    }
    Ok(())
}

pub async fn rm(client: &Client, paths: &[String], recursive: bool, force: bool) -> anyhow::Result<()> {
    for p in paths {
        let Some((parent, name)) = split(p)? else { bail!("refusing to remove `/`") };
        let attr = match client.resolve(p).await {
            Ok(a) => a,
            Err(ClientError::Fs(FsError::NotFound { .. })) if force => continue,
            Err(e) => return Err(e.into()),
        };
        let dir = client.resolve(&parent).await?;
        if attr.kind == FileKind::Dir {
            if !recursive {
                return Err(anyhow::Error::new(ClientError::Fs(FsError::IsADirectory { what: p.clone() }))
                    .context("use -r to remove a directory and its contents"));
            }
            remove_tree(client, attr.ino).await?;
            client.rmdir(dir.ino, &name).await?;
        } else {
            client.unlink(dir.ino, &name).await?;
        }
    }
    Ok(())
}

/// Removes everything below directory `ino`, depth first.
async fn remove_tree(client: &Client, ino: InodeId) -> anyhow::Result<()> {
    let mut stack = vec![(ino, false)];
    while let Some((dir, children_done)) = stack.pop() {
        let entries = client.readdir(dir).await?;
        if children_done || entries.iter().all(|e| e.kind != FileKind::Dir) {
            for e in entries {
                if e.kind == FileKind::Dir {
                    client.rmdir(dir, &e.name).await?;
                } else {
                    client.unlink(dir, &e.name).await?;
                }
            }
            continue;
        }
        stack.push((dir, true));
        for e in entries.iter().filter(|e| e.kind == FileKind::Dir) {
            stack.push((e.ino, false));
        }
    }
    Ok(())
}

pub async fn mv(client: &Client, src: &str, dst: &str) -> anyhow::Result<()> {
    let Some((sparent, sname)) = split(src)? else { bail!("cannot move `/`") };
    client.resolve(src).await?;
    let dst_path = match client.try_resolve(dst).await? {
        Some(a) if a.kind == FileKind::Dir => join(dst, &sname),
        _ => dst.to_string(),
    };
    let Some((dparent, dname)) = split(&dst_path)? else { bail!("cannot replace `/`") };
    let s = client.resolve(&sparent).await?;
    let d = client.resolve(&dparent).await?;
    client.rename(s.ino, &sname, d.ino, &dname, RenameMode::Replace).await?;
    Ok(())
}

pub async fn stat(client: &Client, path: &str, json: bool) -> anyhow::Result<()> {
    let a = client.resolve(path).await?;
    if json {
        return print_json(&JsonAttr::new(path, &a));
    }
    let mut rows = vec![
        vec!["path:".into(), path.to_string()],
        vec!["type:".into(), kind_str(a.kind).into()],
        vec!["size:".into(), format!("{} ({} bytes)", human_bytes(a.size), a.size)],
        vec!["inode:".into(), a.ino.to_string()],
        vec!["mode:".into(), format!("{} ({:04o})", mode_string(&a), a.perm)],
        vec!["links:".into(), a.nlink.to_string()],
        vec!["owner:".into(), format!("uid {} gid {}", a.uid, a.gid)],
        vec!["modified:".into(), time_string(a.mtime)],
        vec!["changed:".into(), time_string(a.ctime)],
        vec!["accessed:".into(), time_string(a.atime)],
    ];
    if a.kind == FileKind::Symlink {
        rows.push(vec!["target:".into(), client.readlink(a.ino).await?]);
    }
    print_table(None, &rows);
    Ok(())
}
