//! `MemDisk`: a redb storage backend in memory that knows what a crash keeps. Bytes
//! written reach the *current* image at once (what the running process reads back); they
//! reach the *durable* image only at the next `sync_data` (fsync). A crash forks a fresh
//! disk from the durable image: the old backend keeps serving the dying process (whose
//! writes then go nowhere), the restarted process opens what was synced.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

#[derive(Debug, Default)]
struct Image {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Byte ranges written since the last sync.
    dirty: Vec<(usize, usize)>,
    syncs: u64,
}

/// One disk of a simulated node; clones share it.
#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    image: Arc<Mutex<Image>>,
}

fn oob() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the simulated disk")
}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, Image> {
        self.image.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The disk the node finds after a crash: what was synced, nothing else.
    pub fn after_crash(&self) -> MemDisk {
        let g = self.lock();
        let image = Image { current: g.durable.clone(), durable: g.durable.clone(), dirty: Vec::new(), syncs: 0 };
        MemDisk { image: Arc::new(Mutex::new(image)) }
    }

    /// fsyncs so far (on this incarnation of the disk).
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }
}

impl redb::StorageBackend for MemDisk {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.lock().current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let g = self.lock();
        let start = usize::try_from(offset).map_err(|_| oob())?;
        let end = start.checked_add(out.len()).ok_or_else(oob)?;
        let src = g.current.get(start..end).ok_or_else(oob)?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("simulated disk too large"))?;
        let mut g = self.lock();
        let old = g.current.len();
        g.current.resize(len, 0);
        if len > old {
            g.dirty.push((old, len));
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut g = self.lock();
        let g = &mut *g;
        let len = g.current.len();
        g.durable.resize(len, 0);
        for (s, e) in g.dirty.drain(..) {
            let e = e.min(len);
            if s < e {
                g.durable[s..e].copy_from_slice(&g.current[s..e]);
            }
        }
        g.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut g = self.lock();
        let start = usize::try_from(offset).map_err(|_| oob())?;
        let end = start.checked_add(data.len()).ok_or_else(oob)?;
        if end > g.current.len() {
            g.current.resize(end, 0);
        }
        g.current[start..end].copy_from_slice(data);
        g.dirty.push((start, end));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;

    #[test]
    fn a_crash_keeps_synced_bytes_only() {
        let d = MemDisk::new();
        d.write(0, b"durable").expect("write");
        d.sync_data().expect("sync");
        d.write(0, b"DU").expect("write");
        d.write(7, b"-tail").expect("write");
        let mut buf = [0u8; 12];
        d.read(0, &mut buf).expect("read");
        assert_eq!(&buf, b"DUrable-tail");
        let after = d.after_crash();
        assert_eq!(after.len().expect("len"), 7);
        let mut buf = [0u8; 7];
        after.read(0, &mut buf).expect("read");
        assert_eq!(&buf, b"durable");
        assert!(after.read(5, &mut [0u8; 4]).is_err());
    }
}
