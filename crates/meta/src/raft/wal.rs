//! The on-disk format of the segmented Raft log, as plain functions.
//!
//! A segment is named after the index of its first entry (`00000000000000000001.seg`) and
//! holds records back to back: `len: u32 LE`, `crc: u32 LE` = CRC32C of the length bytes
//! and the payload, then `len` bytes of payload (the postcard encoding of the `Entry`).
//! Zero bytes after the last record (a preallocated or zero tail) end the segment.

use openraft::LogId;

/// Bytes of a record header.
pub const HEADER: u64 = 8;
/// The largest payload a record may claim; checked before anything is allocated.
pub const MAX_RECORD: u32 = 64 << 20;

/// Appends one record with `payload` to `out`.
pub fn encode_record(out: &mut Vec<u8>, payload: &[u8]) -> Result<(), String> {
    let len = u32::try_from(payload.len()).ok().filter(|l| *l <= MAX_RECORD).ok_or_else(|| {
        format!("a log entry of {} bytes exceeds the record limit of {MAX_RECORD} bytes", payload.len())
    })?;
    let lb = len.to_le_bytes();
    out.extend_from_slice(&lb);
    out.extend_from_slice(&crc32c::crc32c_append(crc32c::crc32c(&lb), payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// What a record header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// All zero: the end of the data in this segment.
    End,
    /// A length the format cannot hold.
    BadLength(u32),
    Record {
        len: u32,
        crc: u32,
    },
}

pub fn parse_header(h: [u8; HEADER as usize]) -> Header {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    match (len, crc) {
        (0, 0) => Header::End,
        (0, _) => Header::BadLength(0),
        (l, _) if l > MAX_RECORD => Header::BadLength(l),
        (len, crc) => Header::Record { len, crc },
    }
}

/// Whether `payload` is the one the header's CRC was computed over.
pub fn crc_matches(len: u32, crc: u32, payload: &[u8]) -> bool {
    crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), payload) == crc
}

/// The log id at the front of an encoded `Entry` (postcard encodes `log_id` first), without
/// decoding the payload.
pub fn peek_log_id(payload: &[u8]) -> Result<LogId<u64>, postcard::Error> {
    postcard::take_from_bytes::<LogId<u64>>(payload).map(|(id, _)| id)
}

pub fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// The first index of a segment file name, `None` for any other file.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Whether an entry at `index` may follow the previous record `prev` on disk, given the
/// last purged index: the next index, or a jump forward that skips only purged indexes (a
/// follower that installed a snapshot past its log appends after the snapshot, and later
/// purges may move the purged point further).
pub fn continues(prev: Option<u64>, purged: Option<u64>, index: u64) -> bool {
    let after_purged = purged.map(|p| p.saturating_add(1));
    match (prev, after_purged) {
        (Some(p), _) if p.checked_add(1) == Some(index) => true,
        (Some(p), Some(f)) => p < index && index <= f,
        (None, Some(f)) => index <= f,
        (None, None) => true,
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_flipped_bit_fails_the_crc() {
        let mut out = Vec::new();
        encode_record(&mut out, b"payload").expect("encode");
        let h: [u8; 8] = out[..8].try_into().expect("header");
        let Header::Record { len, crc } = parse_header(h) else { panic!("not a record: {:?}", parse_header(h)) };
        assert_eq!(len, 7);
        assert!(crc_matches(len, crc, &out[8..]));
        let mut bad = out[8..].to_vec();
        bad[3] ^= 1;
        assert!(!crc_matches(len, crc, &bad));
        assert_eq!(parse_header([0; 8]), Header::End);
        assert_eq!(parse_header([0xff; 8]), Header::BadLength(u32::MAX));
    }

    #[test]
    fn segment_names_sort_by_first_index() {
        assert_eq!(segment_name(1), "00000000000000000001.seg");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("state"), None);
        assert_eq!(parse_segment_name("1.seg"), None);
    }

    #[test]
    fn continuity_allows_only_the_next_index_or_a_jump_past_the_purged_point() {
        assert!(continues(None, None, 7));
        assert!(continues(Some(3), None, 4));
        assert!(!continues(Some(3), None, 5));
        assert!(!continues(Some(3), None, 3));
        assert!(continues(None, Some(5), 2), "a purged prefix inside the first segment");
        assert!(!continues(None, Some(5), 7), "a gap after the purged point");
        assert!(continues(Some(3), Some(9), 10), "all purged, then appends after the snapshot");
        assert!(!continues(Some(3), Some(9), 11));
        assert!(continues(Some(3), Some(60), 40), "a later purge covers the jump");
        assert!(!continues(Some(30), Some(60), 20), "never backwards");
    }
}
