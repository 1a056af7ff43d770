//! Conversions between DistFS attributes and the kernel's: `Attr` to `FileAttr`, kinds,
//! and the times a `setattr` carries.

use distfs_types::{Attr, FileKind, Timestamp};
use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};
use std::time::{SystemTime, UNIX_EPOCH};

/// `st_blksize`: programs such as `cp` size their buffers by it, and large buffers mean
/// fewer, larger FUSE writes.
const BLKSIZE: u32 = 1 << 20;

pub(crate) fn kind_of(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
    }
}

pub(crate) fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime.to_system_time(),
        mtime: a.mtime.to_system_time(),
        ctime: a.ctime.to_system_time(),
        crtime: a.ctime.to_system_time(),
        kind: kind_of(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

pub(crate) fn timestamp_of(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
        Err(before) => {
            // Before the epoch: floor to whole seconds below, nanos counted upwards.
            let d = before.duration();
            let (mut secs, mut nanos) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            Timestamp { secs, nanos }
        }
    }
}

pub(crate) fn time_or_now(t: TimeOrNow) -> Timestamp {
    match t {
        TimeOrNow::SpecificTime(t) => timestamp_of(t),
        TimeOrNow::Now => Timestamp::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_round_trip_including_before_the_epoch() {
        for t in [Timestamp { secs: 1_700_000_000, nanos: 123 }, Timestamp { secs: -5, nanos: 250_000_000 }] {
            assert_eq!(timestamp_of(t.to_system_time()), t);
        }
        assert_eq!(timestamp_of(UNIX_EPOCH - Duration::from_secs(3)), Timestamp { secs: -3, nanos: 0 });
    }
}
