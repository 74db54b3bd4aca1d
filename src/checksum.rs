//! The file checksum, CRC-32/ISO-HDLC ([`crate::format::CRC32`]), computed four bytes at a
//! time for start-up validation.
//!
//! The `crc` crate's one-table form spends about 6.5 instructions per byte on a Cortex-M4F
//! (a byte load, the index, the lookup and two XORs per byte); its 16-table form compiles
//! to more instructions, not fewer. Here each aligned 32-bit word is XORed into the CRC and
//! its four bytes are looked up in four tables at once ("slicing by four"): a word load and
//! about three instructions per byte (extract, lookup, XOR), 4 KiB of tables in flash
//! (`cargo bench-m4`: BENCHMARKS.md's validation table has the figures). The result is the
//! same CRC as [`crate::format::CRC32`]'s `checksum` for every input (tested against it).

/// The reflected CRC-32/ISO-HDLC polynomial.
const POLY: u32 = 0xEDB8_8320;

/// `TABLES[k][b]`: the CRC register after feeding byte `b` followed by `k` zero bytes into
/// a zero register (table 0 is the classic one-byte table).
static TABLES: [[u32; 256]; 4] = tables();

/// Builds the four tables at compile time.
const fn tables() -> [[u32; 256]; 4] {
    let mut t = [[0u32; 256]; 4];
    let mut b = 0;
    while b < 256 {
        let mut crc = b as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        t[0][b] = crc;
        b += 1;
    }
    let mut k = 1;
    while k < 4 {
        let mut b = 0;
        while b < 256 {
            let prev = t[k - 1][b];
            t[k][b] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            b += 1;
        }
        k += 1;
    }
    t
}

/// Feeds bytes one at a time (the unaligned head and the tail).
fn bytewise(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = (crc >> 8) ^ TABLES[0][((crc ^ u32::from(b)) & 0xFF) as usize];
    }
    crc
}

/// Feeds one little-endian word: its four bytes looked up in the four tables at once.
#[inline(always)]
fn word(crc: u32, w: u32) -> u32 {
    let x = crc ^ u32::from_le(w);
    TABLES[3][(x & 0xFF) as usize]
        ^ TABLES[2][((x >> 8) & 0xFF) as usize]
        ^ TABLES[1][((x >> 16) & 0xFF) as usize]
        ^ TABLES[0][(x >> 24) as usize]
}

/// CRC-32/ISO-HDLC of `bytes` (the zlib / PNG / Ethernet CRC; the check value of
/// `b"123456789"` is `0xCBF4_3926`).
pub fn crc32(bytes: &[u8]) -> u32 {
    // The aligned middle is read as words (in place: a model is 4-byte aligned in flash).
    let (head, words, tail) = bytemuck::pod_align_to::<u8, u32>(bytes);
    let mut crc = bytewise(!0, head);
    let mut pairs = words.chunks_exact(2);
    for pair in &mut pairs {
        crc = word(word(crc, pair[0]), pair[1]);
    }
    for &w in pairs.remainder() {
        crc = word(crc, w);
    }
    !bytewise(crc, tail)
}

#[cfg(test)]
mod tests {
    use super::crc32;
    use crate::format::CRC32;

    #[test]
    fn check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn equals_the_crc_crate_for_every_length_and_alignment() {
        let mut data = [0u8; 300];
        let mut x = 0x1234_5678u32;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        for start in 0..8 {
            for end in start..data.len() {
                let s = &data[start..end];
                assert_eq!(crc32(s), CRC32.checksum(s), "bytes {start}..{end}");
            }
        }
    }
}
