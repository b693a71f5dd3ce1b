//! DNS names as the data path matches them: a hash of the name's labels, lowercased,
//! that both sides compute alike, and for which the hash of every suffix (a zone apex
//! the name may lie under) follows from the prefix hashes without reading the name again.
//!
//! A label's hash is FNV-1a over its length byte and then its lowercased bytes taken
//! 8 at a time (little-endian words, the last padded with zeros: the data path reads a
//! word a step), its bits then mixed; a name's hash folds its labels left to right, `h = h · P + label` (mod 2⁶⁴), starting at 0. The
//! hash of the suffix of a name's last `j` labels is then `H − H₍L−j₎ · Pʲ`, where
//! `H₍k₎` is the fold after the first `k` labels. A collision gives the querying network
//! an answer of its own network's records for another name, never another network's.

/// FNV-1a 64-bit.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// The fold's multiplier (odd, so suffix hashes stay distinct).
pub const P: u64 = 0x9e37_79b9_7f4a_7c15;

/// P's inverse modulo 2⁶⁴ (P is odd): to step from the power of one suffix to the next
/// shorter one.
pub const P_INVERSE: u64 = {
    // Newton's iteration doubles the bits that are right (3 at first, for any odd P).
    let mut x = P;
    let mut i = 0;
    while i < 5 {
        x = x.wrapping_mul(2u64.wrapping_sub(P.wrapping_mul(x)));
        i += 1;
    }
    x
};
const _: () = assert!(P.wrapping_mul(P_INVERSE) == 1);

/// The longest name in wire format (RFC 1035), the root's zero byte included.
pub const MAX_NAME: usize = 255;
/// Zone apexes have at most this many labels: the data path keeps the prefix hashes of
/// a query's last `MAX_APEX_LABELS + 1` labels.
pub const MAX_APEX_LABELS: usize = 15;

/// Record types and classes the data path answers.
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const SOA: u16 = 6;
    pub const AAAA: u16 = 28;
    pub const OPT: u16 = 41;
    pub const ANY: u16 = 255;
    pub const CLASS_IN: u16 = 1;
}

/// Response codes.
pub mod rcode {
    pub const NOERROR: u8 = 0;
    pub const FORMERR: u8 = 1;
    pub const NXDOMAIN: u8 = 3;
    pub const NOTIMP: u8 = 4;
    pub const REFUSED: u8 = 5;
}

/// The UDP payload size answers announce with EDNS(0) (the DNS flag day's 1232).
pub const EDNS_PAYLOAD: u16 = 1232;

/// The bytes of `word` in ASCII lowercase, as DNS compares names (RFC 4343): other
/// bytes are kept. Eight at once: a byte is an uppercase letter if, without its top
/// bit, it is at least `A` and not above `Z` (adding 0x3f, resp. 0x25, carries into
/// the top bit exactly then, and never into the next byte), and its top bit is clear.
#[inline(always)]
pub const fn lower(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let low = word & (0x7f * ONES);
    let at_least_a = low + (0x80 - b'A' as u64) * ONES;
    let above_z = low + (0x80 - b'Z' as u64 - 1) * ONES;
    let upper = at_least_a & !above_z & !word & (0x80 * ONES);
    word | upper >> 2
}

/// The start of a label's hash: its length byte.
#[inline(always)]
pub const fn label_start(len: u8) -> u64 {
    (FNV_OFFSET ^ len as u64).wrapping_mul(FNV_PRIME)
}

/// One step of a label's hash: the next (up to) 8 of its bytes, as a little-endian
/// word padded with zeros.
#[inline(always)]
pub const fn label_step(h: u64, word: u64) -> u64 {
    (h ^ lower(word)).wrapping_mul(FNV_PRIME)
}

/// The end of a label's hash: its bits mixed (MurmurHash3's fmix64), so that every
/// byte reaches every bit — a step's multiplication carries a word's bits only upward,
/// and the fold is linear: without this, names differing in the last byte of a word of
/// two labels would share a hash one time in 256.
#[inline(always)]
pub const fn label_end(h: u64) -> u64 {
    let h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// One step of the fold over labels.
#[inline(always)]
pub const fn fold(h: u64, label: u64) -> u64 {
    h.wrapping_mul(P).wrapping_add(label)
}

/// The hash of the suffix of `j` labels of a name whose hash is `full`, given the fold
/// after the labels before it (`prefix`) and `power` = Pʲ.
#[inline(always)]
pub const fn suffix(full: u64, prefix: u64, power: u64) -> u64 {
    full.wrapping_sub(prefix.wrapping_mul(power))
}

/// Which of a name's eight address zones (`zones`) are the client's `zone` (0: none
/// is): bit i for byte i, without a loop or a branch.
#[inline(always)]
pub const fn zone_mask(zones: [u8; 8], zone: u8) -> u8 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW: u64 = 0x7f * ONES;
    if zone == 0 {
        return 0;
    }
    // A byte of `x` is zero where the zone is the client's.
    let x = u64::from_le_bytes(zones) ^ (zone as u64).wrapping_mul(ONES);
    // Each byte's top bit set exactly if the byte is zero (no carry crosses bytes).
    let zero = !(((x & LOW) + LOW) | x | LOW);
    // The top bits gathered, byte i's to bit i, in the product's top byte.
    ((zero >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8
}

/// The hash of a dotted name (`Api.Example.com`, a trailing dot or not) and its label
/// count.
#[cfg(feature = "user")]
pub fn hash(name: &str) -> (u64, usize) {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut h = 0;
    let mut labels = 0;
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let mut lh = label_start(label.len() as u8);
        for chunk in label.as_bytes().chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            lh = label_step(lh, u64::from_le_bytes(word));
        }
        h = fold(h, label_end(lh));
        labels += 1;
    }
    (h, labels)
}

/// A dotted name in wire format (labels with their lengths, then the root's zero).
#[cfg(feature = "user")]
pub fn wire(name: &str) -> alloc::vec::Vec<u8> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut out = alloc::vec::Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;

    #[test]
    fn case_and_the_trailing_dot_do_not_change_the_hash() {
        assert_eq!(hash("Api.EXAMPLE.com."), hash("api.example.com"));
        assert_ne!(hash("api.example.com").0, hash("api.example.org").0);
        // Labels are hashed with their lengths: "ab.c" is not "a.bc".
        assert_ne!(hash("ab.c").0, hash("a.bc").0);
    }

    #[test]
    fn a_suffix_hash_follows_from_the_prefix_hashes() {
        let (full, labels) = hash("x.y.vpce-1.orders.endpoints.internal");
        assert_eq!(labels, 6);
        let (prefix, _) = hash("x.y.vpce-1.orders");
        let (apex, _) = hash("endpoints.internal");
        assert_eq!(suffix(full, prefix, P.wrapping_mul(P)), apex);
        let (prefix, _) = hash("x");
        let (rest, _) = hash("y.vpce-1.orders.endpoints.internal");
        assert_eq!(suffix(full, prefix, P.wrapping_pow(5)), rest);
    }

    #[test]
    fn eight_bytes_are_lowered_as_each_would_be() {
        for byte in 0..=255u8 {
            for at in 0..8 {
                // The byte among neighbours that change nothing, and among letters.
                for fill in [0u8, b'a', b'Z', 0xff] {
                    let mut word = [fill; 8];
                    word[at] = byte;
                    let lowered = lower(u64::from_le_bytes(word)).to_le_bytes();
                    assert_eq!(lowered, word.map(|b| b.to_ascii_lowercase()), "{word:02x?}");
                }
            }
        }
    }

    #[test]
    fn the_zone_mask_has_a_bit_for_each_address_in_the_zone() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Zones 0..4 only, so that matches are common.
            let zones = (seed >> 8).to_le_bytes().map(|b| b % 4);
            for zone in 0..4 {
                let expected = (0..8)
                    .filter(|&i| zone != 0 && zones[i] == zone)
                    .fold(0u8, |m, i| m | 1 << i);
                assert_eq!(zone_mask(zones, zone), expected, "{zones:?} {zone}");
            }
        }
        assert_eq!(zone_mask([0xff; 8], 0xff), 0xff);
        assert_eq!(
            zone_mask([0x7f, 0x80, 0xff, 1, 0, 0xfe, 0x81, 0xff], 0xff),
            0b1000_0100
        );
    }

    #[test]
    fn labels_longer_than_a_word_hash_every_byte() {
        assert_eq!(hash("ABCDEFGHIJ.x"), hash("abcdefghij.x"));
        assert_ne!(hash("abcdefghij.x").0, hash("abcdefghik.x").0);
        // The zeros that pad a label's last word are not bytes of it: "abcdefg" and
        // "abcdefg\0" share their word, not their length.
        assert_ne!(hash("abcdefg").0, hash("abcdefg\0").0);
    }

    #[test]
    fn names_differing_in_the_last_byte_of_words_of_two_labels_hash_apart() {
        let mut seen = alloc::collections::BTreeMap::new();
        for x in b'a'..=b'z' {
            for y in b'a'..=b'z' {
                let name = alloc::format!("orders-{}.billing{}.x", x as char, y as char);
                let (h, _) = hash(&name);
                if let Some(other) = seen.insert(h, name.clone()) {
                    panic!("{name} and {other} share a hash");
                }
            }
        }
    }

    #[test]
    fn wire_format() {
        assert_eq!(wire("ab.c."), b"\x02ab\x01c\x00");
    }
}
