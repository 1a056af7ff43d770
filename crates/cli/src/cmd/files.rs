//! `put`, `get`, `cat`: moving bytes in and out. Both directions are all-or-nothing: `put`
//! writes to a hidden temporary name and renames it over the target only once every block
//! is acknowledged and committed; `get` writes a local temporary file and renames it.

use anyhow::{bail, Context};
use distfs_client::{ns::split, Client, ClientError};
use distfs_proto::RenameMode;
use distfs_types::{Attr, FileKind, FsError};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes moved per read or write call.
const IO_UNIT: usize = 8 << 20;

fn progress(enabled: bool, len: Option<u64>, what: &str) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = match len {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("static template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{msg} {spinner} {bytes} {bytes_per_sec}").expect("static template"),
        ),
    };
    pb.set_message(what.to_string());
    pb
}

fn base_name(local: &str) -> anyhow::Result<String> {
    Path::new(local)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("cannot tell a file name from `{local}`; give the full remote path"))
}

/// Where `put` stores: `remote` itself, or `remote/<name of local>` when `remote` is a
/// directory or ends with `/`.
async fn put_target(client: &Client, local: &str, remote: &str) -> anyhow::Result<(Attr, String)> {
    let into_dir = remote.ends_with('/') || client.try_resolve(remote).await?.is_some_and(|a| a.kind == FileKind::Dir);
    let path = if into_dir {
        if local == "-" {
            bail!("`{remote}` is a directory: give a file name to store stdin under");
        }
        format!("{}/{}", remote.trim_end_matches('/'), base_name(local)?)
    } else {
        remote.to_string()
    };
    let Some((parent, name)) = split(&path)? else { bail!("cannot replace the root directory") };
    let parent_attr = client.resolve(&parent).await.map_err(|e| match e {
        ClientError::Fs(FsError::NotFound { .. }) => anyhow::Error::new(e)
            .context(format!("parent directory `{parent}` does not exist (create it with mkdir -p)")),
        e => e.into(),
    })?;
    if parent_attr.kind != FileKind::Dir {
        return Err(anyhow::Error::new(ClientError::Fs(FsError::NotADirectory { what: parent.clone() })));
    }
    Ok((parent_attr, name))
}

pub async fn put(client: &Client, local: &str, remote: &str, show_progress: bool) -> anyhow::Result<()> {
    // Open the source first: a missing local file must not create anything remotely.
    let (mut src, len, perm): (Box<dyn AsyncRead + Unpin + Send>, Option<u64>, u32) = if local == "-" {
        (Box::new(tokio::io::stdin()), None, 0o644)
    } else {
        let f = tokio::fs::File::open(local).await.with_context(|| format!("cannot open local file `{local}`"))?;
        let m = f.metadata().await.with_context(|| format!("cannot stat local file `{local}`"))?;
        if m.is_dir() {
            bail!("`{local}` is a directory; put copies single files");
        }
        use std::os::unix::fs::PermissionsExt;
        (Box::new(f), Some(m.len()), m.permissions().mode() & 0o777)
    };
    let (parent, name) = put_target(client, local, remote).await?;
    let tmp = format!(".distfs-put.{:016x}", rand::random::<u64>());
    let file = client.create(parent.ino, &tmp, perm, true).await?;
    let result = async {
        let pb = progress(show_progress, len, &name);
        let mut w = client.writer(file.ino, 0).await?;
        let mut buf = vec![0u8; IO_UNIT];
        loop {
            let n = read_full(&mut src, &mut buf).await.with_context(|| format!("reading `{local}`"))?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n]).await?;
            pb.inc(n as u64);
        }
        w.close().await?;
        client.rename(parent.ino, &tmp, parent.ino, &name, RenameMode::Replace).await?;
        pb.finish_and_clear();
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        // Nothing half-written stays visible: drop the temporary file.
        let _ = client.unlink(parent.ino, &tmp).await;
    }
    result
}

/// Fills `buf` unless the source ends first; returns the bytes read.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// The regular file at `remote`, or a clear error.
async fn remote_file(client: &Client, remote: &str) -> anyhow::Result<Attr> {
    let a = client.resolve(remote).await?;
    match a.kind {
        FileKind::File => Ok(a),
        FileKind::Dir => Err(anyhow::Error::new(ClientError::Fs(FsError::IsADirectory { what: remote.to_string() }))),
        FileKind::Symlink => {
            let target = client.readlink(a.ino).await?;
            bail!("`{remote}` is a symlink to `{target}`; get the target instead")
        }
    }
}

/// Streams a remote file into `out`.
async fn copy_out<W: AsyncWrite + Unpin>(
    client: &Client,
    attr: &Attr,
    out: &mut W,
    pb: &ProgressBar,
) -> anyhow::Result<()> {
    let reader = client.reader(attr.ino).await?;
    let mut off = 0;
    while off < reader.size() {
        let bytes = reader.read_at(off, IO_UNIT as u64 * 4).await?;
        if bytes.is_empty() {
            break;
        }
        out.write_all(&bytes).await?;
        off += bytes.len() as u64;
        pb.inc(bytes.len() as u64);
    }
    out.flush().await?;
    Ok(())
}

pub async fn get(client: &Client, remote: &str, local: &str, show_progress: bool) -> anyhow::Result<()> {
    let attr = remote_file(client, remote).await?;
    if local == "-" {
        return ignore_broken_pipe(copy_out(client, &attr, &mut tokio::io::stdout(), &ProgressBar::hidden()).await);
    }
    let mut dest = PathBuf::from(local);
    if dest.is_dir() {
        dest.push(base_name(remote)?);
    }
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("local directory `{}` does not exist", dir.display());
    }
    let tmp = dir.join(format!(".distfs-get.{:016x}", rand::random::<u64>()));
    let result = async {
        let mut f =
            tokio::fs::File::create(&tmp).await.with_context(|| format!("cannot create `{}`", tmp.display()))?;
        let pb = progress(show_progress, Some(attr.size), remote);
        copy_out(client, &attr, &mut f, &pb).await?;
        f.sync_all().await?;
        tokio::fs::rename(&tmp, &dest).await.with_context(|| format!("cannot rename into `{}`", dest.display()))?;
        pb.finish_and_clear();
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

pub async fn cat(client: &Client, paths: &[String]) -> anyhow::Result<()> {
    let mut out = tokio::io::stdout();
    for p in paths {
        let attr = remote_file(client, p).await?;
        ignore_broken_pipe(copy_out(client, &attr, &mut out, &ProgressBar::hidden()).await)?;
    }
    Ok(())
}

/// `distfs cat big | head` is not an error.
fn ignore_broken_pipe(r: anyhow::Result<()>) -> anyhow::Result<()> {
    match r {
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => {
            Ok(())
        }
        r => r,
    }
}
