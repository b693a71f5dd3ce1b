//! Incremental Internet checksum updates (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
//!
//! All words are the raw packet bytes read in native order (`u16::from_ne_bytes`). The
//! one's complement sum does not depend on byte order (RFC 1071 §2(B)), so no swapping is
//! needed as long as the checksum and the words are read the same way.

/// The sum of the changes `~old + new` of some 16-bit words, not yet folded.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Delta(u32);

impl Delta {
    /// A 16-bit word changed from `old` to `new`.
    #[inline(always)]
    #[must_use]
    pub const fn word(self, old: u16, new: u16) -> Self {
        Self(self.0 + (!old) as u32 + new as u32)
    }

    /// A 32-bit field (two checksum words) changed from `old` to `new`.
    #[inline(always)]
    #[must_use]
    pub const fn dword(self, old: u32, new: u32) -> Self {
        self.word(old as u16, new as u16)
            .word((old >> 16) as u16, (new >> 16) as u16)
    }

    /// Changes the kernel summed: `bpf_csum_diff` of the old bytes and the new.
    #[inline(always)]
    #[must_use]
    pub const fn summed(self, partial: u32) -> Self {
        Self(fold(self.0) as u32 + fold(partial) as u32)
    }

    /// The checksum `check` updated by this delta.
    #[inline(always)]
    #[must_use]
    pub const fn apply(self, check: u16) -> u16 {
        !fold((!check) as u32 + fold(self.0) as u32)
    }
}

/// A checksum computed from scratch over a few fixed words (for packets the program
/// builds itself, like a TCP reset).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Sum(u32);

impl Sum {
    #[inline(always)]
    #[must_use]
    pub const fn word(self, word: u16) -> Self {
        Self(self.0 + word as u32)
    }

    #[inline(always)]
    #[must_use]
    pub const fn dword(self, dword: u32) -> Self {
        self.word(dword as u16).word((dword >> 16) as u16)
    }

    /// The checksum field value: the complement of the folded sum.
    #[inline(always)]
    pub const fn finish(self) -> u16 {
        !fold(self.0)
    }

    /// The sum so far, unfolded (what the kernel's checksum helpers take and give).
    #[inline(always)]
    pub const fn partial(self) -> u32 {
        self.0
    }

    /// A sum the kernel computed (`bpf_csum_diff`), folded first: it may be any 32-bit
    /// value, and words added to it unfolded would carry out of 32 bits.
    #[inline(always)]
    pub const fn of(partial: u32) -> Self {
        Self(fold(partial) as u32)
    }
}

/// A sum of 8-byte words (raw bytes, native order), for data summed in place rather
/// than by the kernel: each word is added as its two 32-bit halves, whose carries the
/// 64 bits keep (for 2^31 words), and folded at the end.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct WideSum(u64);

impl WideSum {
    #[inline(always)]
    #[must_use]
    pub const fn word(self, word: u64) -> Self {
        Self(self.0 + (word & 0xffff_ffff) + (word >> 32))
    }

    /// The sum, folded (2^32 is 1 in one's complement arithmetic of 16 bits).
    #[inline(always)]
    pub const fn sum(self) -> Sum {
        let sum = (self.0 & 0xffff_ffff) + (self.0 >> 32);
        Sum::of(((sum & 0xffff_ffff) + (sum >> 32)) as u32)
    }
}

/// Folds a 32-bit one's complement sum into 16 bits.
#[inline(always)]
const fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    ((sum & 0xffff) + (sum >> 16)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum over `bytes` from scratch, as a receiver verifies it.
    fn full(bytes: &[u8]) -> u16 {
        let mut sum = 0u32;
        for pair in bytes.chunks(2) {
            let word = u16::from_ne_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += word as u32;
        }
        !fold(sum)
    }

    fn word_at(bytes: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([bytes[at], bytes[at + 1]])
    }

    fn dword_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    /// A pseudo-random but reproducible byte stream (xorshift).
    fn bytes(seed: u64, len: usize) -> impl Iterator<Item = u8> {
        let mut x = seed | 1;
        (0..len).map(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
    }

    /// Rewriting random 16- and 32-bit fields of a buffer whose checksum sits at offset 10
    /// (as in IPv4) gives the same checksum as recomputing it over the new buffer.
    #[test]
    fn incremental_update_matches_full_recomputation() {
        for seed in 1..2000u64 {
            let mut buf: [u8; 40] = core::array::from_fn(|_| 0);
            for (b, v) in buf.iter_mut().zip(bytes(seed, 40)) {
                *b = v;
            }
            buf[10..12].copy_from_slice(&[0, 0]);
            let check = full(&buf);
            buf[10..12].copy_from_slice(&check.to_ne_bytes());
            assert_eq!(full(&buf), 0, "a valid buffer sums to zero");

            let new: [u8; 6] = {
                let mut it = bytes(seed * 7919, 6);
                core::array::from_fn(|_| it.next().unwrap())
            };
            let (old_dword, old_word) = (dword_at(&buf, 12), word_at(&buf, 20));
            buf[12..16].copy_from_slice(&new[..4]);
            buf[20..22].copy_from_slice(&new[4..]);
            let updated = Delta::default()
                .dword(old_dword, dword_at(&buf, 12))
                .word(old_word, word_at(&buf, 20))
                .apply(check);

            buf[10..12].copy_from_slice(&[0, 0]);
            assert_eq!(updated, full(&buf), "seed {seed}");
        }
    }

    /// A sum from scratch equals the reference over the same bytes.
    #[test]
    fn sum_matches_full_computation() {
        let buf: [u8; 20] = core::array::from_fn(|i| (i * 37 + 11) as u8);
        let sum = (0..10).fold(Sum::default(), |s, i| s.word(word_at(&buf, i * 2)));
        assert_eq!(sum.finish(), full(&buf));
        let by_dwords = (0..5).fold(Sum::default(), |s, i| s.dword(dword_at(&buf, i * 4)));
        assert_eq!(by_dwords.finish(), full(&buf));
    }

    /// Words added to a kernel's 32-bit partial sum near its top lose no carry.
    #[test]
    fn words_added_to_a_large_partial_sum_keep_their_carries() {
        let buf: [u8; 24] = core::array::from_fn(|i| (i * 53 + 200) as u8);
        for partial in [0xffff_ffffu32, 0xfffe_0001, 0x8000_0000, 0xffff_0000] {
            // The partial sum stands for bytes summing to it: one's complement sums of
            // a 32-bit value are its two halves added.
            let halves = [(partial & 0xffff) as u16, (partial >> 16) as u16];
            let with = (0..12).fold(Sum::of(partial), |s, i| s.word(word_at(&buf, i * 2)));
            let reference = (0..12)
                .map(|i| word_at(&buf, i * 2))
                .chain(halves)
                .fold(Sum::default(), Sum::word);
            assert_eq!(with.finish(), reference.finish(), "{partial:#x}");
        }
    }

    /// Sums of 8-byte words, zeros after the data to the next word, equal the reference
    /// over the data alone, for any length and for all-ones words (every carry).
    #[test]
    fn sums_of_wide_words_match_the_reference() {
        use alloc::vec::Vec;
        for (seed, len) in (1..400u64).map(|s| (s, s as usize % 300 + 1)) {
            let mut buf: Vec<u8> = bytes(seed, len).collect();
            if seed % 7 == 0 {
                buf.fill(0xff);
            }
            let padded: Vec<u8> = buf.iter().copied().chain([0; 8]).collect();
            let wide = padded[..len.div_ceil(8) * 8]
                .chunks(8)
                .map(|w| u64::from_ne_bytes(w.try_into().unwrap()))
                .fold(WideSum::default(), WideSum::word);
            assert_eq!(wide.sum().finish(), full(&buf), "seed {seed}, {len} bytes");
        }
    }

    /// Edge values: all-ones and all-zeros words, a checksum of 0xffff.
    #[test]
    fn extreme_words() {
        for (old, new) in [(0u16, 0xffffu16), (0xffff, 0), (0x1234, 0x1234), (0, 0)] {
            let mut buf = [0x12u8, 0x34, 0, 0, 0, 0];
            buf[4..6].copy_from_slice(&old.to_ne_bytes());
            let check = full(&buf);
            buf[2..4].copy_from_slice(&check.to_ne_bytes());
            buf[4..6].copy_from_slice(&new.to_ne_bytes());
            let updated = Delta::default().word(old, new).apply(check);
            buf[2..4].copy_from_slice(&updated.to_ne_bytes());
            assert_eq!(full(&buf), 0, "{old:#x} -> {new:#x}");
        }
    }
}
