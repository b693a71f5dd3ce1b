//! The flow hash: MurmurHash3 (x86, 32-bit) over the words of a connection's tuple.
//!
//! Fixed arity and no slices, so the verifier sees straight-line code; the agent computes
//! the same function to predict which target the kernel picks.

use crate::maps::FlowKey;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
const fn round(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32, len_bytes: u32) -> u32 {
    h ^= len_bytes;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3 of `N` words.
#[inline(always)]
pub const fn words<const N: usize>(w: &[u32; N], seed: u32) -> u32 {
    let mut h = seed;
    let mut i = 0;
    while i < N {
        h = round(h, w[i]);
        i += 1;
    }
    finish(h, 4 * N as u32)
}

/// The hash of a connection's addresses, ports and protocol — not its consumer network,
/// whose id is local to a node — so every node with the same seed picks the same target
/// for the same connection.
#[inline(always)]
pub const fn flow(key: &FlowKey, seed: u32) -> u32 {
    let ports = (key.src_port_be as u32) | ((key.dst_port_be as u32) << 16);
    let (s, d) = (key.src.words_be, key.dst.words_be);
    let kind = (key.family() as u32) << 8 | key.proto() as u32;
    words(
        &[s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3], ports, kind],
        seed,
    )
}

/// A second, independent hash of the same connection that also covers its consumer
/// network: spreads NAT ports so identical tuples from two networks start apart.
#[inline(always)]
pub const fn nat(flow_hash: u32, network: u32) -> u32 {
    finish(round(round(0x5bd1_e995, flow_hash), network), 8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::FAMILY_IPV4;

    /// A straightforward byte-wise MurmurHash3_x86_32 (whole 4-byte blocks only).
    fn reference(bytes: &[u8], seed: u32) -> u32 {
        let mut h = seed;
        for block in bytes.chunks(4) {
            let k = u32::from_le_bytes(block.try_into().unwrap());
            h = round(h, k);
        }
        finish(h, bytes.len() as u32)
    }

    /// Published test vectors of MurmurHash3_x86_32 pin the reference down...
    #[test]
    fn reference_matches_published_vectors() {
        assert_eq!(reference(b"", 0), 0);
        assert_eq!(reference(b"", 1), 0x514e_28b7);
        assert_eq!(reference(&[0, 0, 0, 0], 0), 0x2362_f9de);
        assert_eq!(reference(b"aaaa", 0x9747_b28c), 0x5a97_808a);
        assert_eq!(reference(b"abcd", 0x9747_b28c), 0xf047_8627);
    }

    /// ...and the word-wise hash the kernel runs equals it on the words' bytes.
    #[test]
    fn words_match_reference() {
        let counting: [u32; 10] = core::array::from_fn(|i| (i as u32 + 1) * 0x0101_0101);
        let mut bytes = [0u8; 40];
        for (i, word) in counting.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
        }
        assert_eq!(words(&counting, 42), reference(&bytes, 42));
    }

    /// Flows differing in any one field hash differently, and buckets fill evenly.
    #[test]
    fn spreads_flows_evenly() {
        let mut buckets = [0u32; 16];
        for port in 0..16_000u32 {
            let key = FlowKey {
                src_port_be: port as u16,
                ..FlowKey::default()
            };
            buckets[(flow(&key, 7) % 16) as usize] += 1;
        }
        for (i, n) in buckets.iter().enumerate() {
            assert!((900..1100).contains(n), "bucket {i} holds {n} of 16000");
        }
    }

    /// The consumer network does not change the target choice but does change the NAT hash.
    #[test]
    fn network_only_affects_nat_hash() {
        let a = FlowKey {
            scope: FlowKey::scope(1, FAMILY_IPV4, 6),
            src_port_be: 5,
            ..FlowKey::default()
        };
        let b = FlowKey {
            scope: FlowKey::scope(2, FAMILY_IPV4, 6),
            ..a
        };
        assert_eq!(flow(&a, 3), flow(&b, 3));
        assert_ne!(nat(flow(&a, 3), a.network()), nat(flow(&b, 3), b.network()));
    }
}
