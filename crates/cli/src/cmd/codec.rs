//! `distfs compression DIR [CODEC]`: the per-directory codec of compression at rest.

use distfs_client::Client;
use distfs_proto::Compression;
use distfs_types::FileKind;

pub async fn run(client: &Client, dir: &str, codec: Option<Compression>) -> anyhow::Result<()> {
    let a = client.resolve(dir).await?;
    match codec {
        Some(c) => {
            if a.kind != FileKind::Dir {
                anyhow::bail!("{dir} is not a directory (a file keeps the codec it was created with)");
            }
            client.set_codec(a.ino, c).await?;
        }
        None => println!("{}", client.codec_of(a.ino).await?),
    }
    Ok(())
}
