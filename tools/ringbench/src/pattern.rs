//! The verification pattern: every aligned 8-byte word of a file is a hash of (seed, file index,
//! absolute offset of the word), little-endian. Files are prepared with it, `--verify` writes write
//! it, and every `--verify` read checks it, so a byte read from the wrong file or offset is caught.

use crate::workload::mix64;

/// The pattern of one file under one seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pattern(u64);

/// The first difference found by [`Pattern::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Absolute file offset of the first wrong byte.
    pub offset: u64,
    pub expected: u8,
    pub got: u8,
}

impl Pattern {
    pub fn new(seed: u64, file_index: usize) -> Self {
        Pattern(mix64(
            seed ^ mix64(0x7061_7474_0000_0000 ^ file_index as u64),
        ))
    }

    /// The word at 8-aligned absolute offset `off`.
    #[inline]
    pub fn word(self, off: u64) -> u64 {
        mix64(self.0 ^ off)
    }

    #[inline]
    fn byte(self, pos: u64) -> u8 {
        self.word(pos & !7).to_le_bytes()[(pos & 7) as usize]
    }

    /// Fills `buf` with the bytes that belong at file offset `offset`.
    pub fn fill(self, buf: &mut [u8], offset: u64) {
        if offset % 8 == 0 {
            let mut chunks = buf.chunks_exact_mut(8);
            let mut off = offset;
            for c in &mut chunks {
                c.copy_from_slice(&self.word(off).to_le_bytes());
                off += 8;
            }
            for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
                *b = self.byte(off + i as u64);
            }
        } else {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = self.byte(offset + i as u64);
            }
        }
    }

    /// Checks that `buf` holds the bytes that belong at `offset`; the first difference if not.
    pub fn check(self, buf: &[u8], offset: u64) -> Option<Mismatch> {
        if offset % 8 == 0 {
            let mut chunks = buf.chunks_exact(8);
            let mut off = offset;
            for c in &mut chunks {
                let want = self.word(off).to_le_bytes();
                if c != want {
                    let i = c.iter().zip(want.iter()).position(|(a, b)| a != b)?;
                    return Some(Mismatch {
                        offset: off + i as u64,
                        expected: want[i],
                        got: c[i],
                    });
                }
                off += 8;
            }
            let rest = chunks.remainder();
            return self.check_bytes(rest, off);
        }
        self.check_bytes(buf, offset)
    }

    fn check_bytes(self, buf: &[u8], offset: u64) -> Option<Mismatch> {
        buf.iter().enumerate().find_map(|(i, &got)| {
            let pos = offset + i as u64;
            let expected = self.byte(pos);
            (got != expected).then_some(Mismatch {
                offset: pos,
                expected,
                got,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_then_check_any_alignment() {
        let p = Pattern::new(42, 3);
        let mut whole = vec![0u8; 8192];
        p.fill(&mut whole, 0);
        for (off, len) in [(0u64, 4096usize), (13, 100), (4096, 4096), (8, 3), (7, 9)] {
            let mut b = vec![0u8; len];
            p.fill(&mut b, off);
            assert_eq!(b, whole[off as usize..off as usize + len]);
            assert_eq!(p.check(&b, off), None);
        }
    }

    #[test]
    fn detects_wrong_offset_file_and_seed() {
        let p = Pattern::new(1, 0);
        let mut b = vec![0u8; 4096];
        p.fill(&mut b, 4096);
        assert!(p.check(&b, 8192).is_some());
        assert!(Pattern::new(1, 1).check(&b, 4096).is_some());
        assert!(Pattern::new(2, 0).check(&b, 4096).is_some());
        b[100] ^= 1;
        let m = p.check(&b, 4096).unwrap();
        assert_eq!(m.offset, 4196);
        assert_eq!(m.got, m.expected ^ 1);
    }
}
