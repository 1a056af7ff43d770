//! Human and JSON output: sizes, modes, times, tables.

use distfs_types::{Attr, FileKind};
use serde::Serialize;

pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// `drwxr-xr-x` style mode string.
pub fn mode_string(attr: &Attr) -> String {
    let kind = match attr.kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::File => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    for shift in [6u32, 3, 0] {
        let bits = (attr.perm >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

pub fn time_string(t: distfs_types::Timestamp) -> String {
    humantime::format_rfc3339_seconds(t.to_system_time()).to_string()
}

pub fn kind_str(k: FileKind) -> &'static str {
    match k {
        FileKind::File => "file",
        FileKind::Dir => "directory",
        FileKind::Symlink => "symlink",
    }
}

/// An attribute set as scripts see it with `--json`.
#[derive(Serialize)]
pub struct JsonAttr {
    pub path: String,
    pub ino: u64,
    pub kind: &'static str,
    pub mode: String,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub mtime: String,
    pub ctime: String,
    pub atime: String,
}

impl JsonAttr {
    pub fn new(path: &str, a: &Attr) -> JsonAttr {
        JsonAttr {
            path: path.to_string(),
            ino: a.ino.0,
            kind: kind_str(a.kind),
            mode: mode_string(a),
            perm: a.perm,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            nlink: a.nlink,
            mtime: time_string(a.mtime),
            ctime: time_string(a.ctime),
            atime: time_string(a.atime),
        }
    }
}

pub fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints rows as left-aligned columns (the last column unpadded).
pub fn print_table(header: Option<&[&str]>, rows: &[Vec<String>]) {
    let ncol = rows.iter().map(|r| r.len()).chain(header.map(|h| h.len())).max().unwrap_or(0);
    let mut width = vec![0usize; ncol];
    for r in header.map(|h| h.iter().map(|s| s.to_string()).collect::<Vec<_>>()).iter().chain(rows.iter()) {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |r: &[String]| {
        let mut s = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    if let Some(h) = header {
        line(&h.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    }
    for r in rows {
        line(r);
    }
}
