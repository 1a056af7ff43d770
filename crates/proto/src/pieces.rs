//! CRC32C by 64 KiB pieces (`CRC_CHUNK`), the unit in which block data is checksummed
//! end to end, and the CRC32C of a whole buffer derived from its pieces' without reading
//! the bytes again. A frame whose body is block data uses this both ways: its sender
//! already has the pieces' CRCs (the client computed them; a storage node keeps them),
//! and its receiver computes the pieces' CRCs once, checks the frame with them and hands
//! them to the handler that verifies the block, instead of a pass for each.

use distfs_types::CRC_CHUNK;
use std::sync::OnceLock;

const PIECE: usize = CRC_CHUNK as usize;

/// CRC32C of each 64 KiB piece of `data` (the last one may be shorter).
pub fn piece_crcs(data: &[u8]) -> Vec<u32> {
    data.chunks(PIECE).map(crc32c::crc32c).collect()
}

/// Number of 64 KiB pieces in `len` bytes.
pub fn pieces_in(len: usize) -> usize {
    len.div_ceil(PIECE)
}

/// The CRC32C of `len` bytes whose 64 KiB pieces have the CRCs `crcs` (`None` when the
/// count does not fit `len`).
pub fn crc_of_pieces(crcs: &[u32], len: usize) -> Option<u32> {
    append_pieces(0, crcs, len)
}

/// `crc32c_append(crc, bytes)` for `len` bytes whose 64 KiB pieces have the CRCs `crcs`,
/// without the bytes (`None` when the count does not fit `len`). Whole pieces cost four
/// table lookups each; a shorter last piece one `crc32c_combine`.
pub fn append_pieces(mut crc: u32, crcs: &[u32], len: usize) -> Option<u32> {
    if crcs.len() != pieces_in(len) {
        return None;
    }
    for (i, &c) in crcs.iter().enumerate() {
        let n = (len - i * PIECE).min(PIECE);
        crc = if n == PIECE { shift_piece(crc) ^ c } else { crc32c::crc32c_combine(crc, c, n) };
    }
    Some(crc)
}

/// `crc32c_combine(crc, 0, 64 KiB)`: `crc` carried over 64 KiB more bytes (whose own CRC
/// is then xored in). The map is linear over GF(2), so four tables of 256 entries give it.
fn shift_piece(crc: u32) -> u32 {
    static TABLES: OnceLock<[[u32; 256]; 4]> = OnceLock::new();
    let t = TABLES.get_or_init(|| {
        let mut t = [[0u32; 256]; 4];
        for (k, row) in t.iter_mut().enumerate() {
            for (b, v) in row.iter_mut().enumerate() {
                *v = crc32c::crc32c_combine((b as u32) << (8 * k), 0, PIECE);
            }
        }
        t
    });
    t[0][(crc & 0xff) as usize]
        ^ t[1][((crc >> 8) & 0xff) as usize]
        ^ t[2][((crc >> 16) & 0xff) as usize]
        ^ t[3][(crc >> 24) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_of_the_pieces_is_the_crc_of_the_bytes() {
        let data: Vec<u8> = (0..(3 * PIECE + 4097)).map(|i| (i * 131 % 251) as u8).collect();
        for len in [0, 1, 4096, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE, 3 * PIECE + 4097] {
            let d = &data[..len];
            assert_eq!(crc_of_pieces(&piece_crcs(d), len), Some(crc32c::crc32c(d)), "{len} bytes");
        }
        assert_eq!(crc_of_pieces(&[1, 2], PIECE), None, "two CRCs for one piece");
        let (head, body) = data.split_at(100);
        let crc = append_pieces(crc32c::crc32c(head), &piece_crcs(body), body.len());
        assert_eq!(crc, Some(crc32c::crc32c(&data)), "after a prefix");
        assert_eq!(crc_of_pieces(&[], 1), None);
    }
}
