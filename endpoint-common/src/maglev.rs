//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016), as Katran and Cilium
//! use it: the agent fills a ring of a prime number of slots with target indices; the
//! kernel picks `ring[flow_hash % size]`. Each target's preference order depends only
//! on its identity and the seed, so every node builds the same ring from the same
//! config, and adding or removing one of N targets moves about 1/N of the slots.

use alloc::{vec, vec::Vec};

use crate::maps::NO_TARGET;

/// A target as the ring builder sees it.
#[derive(Clone, Copy, Debug)]
pub struct Member {
    /// A stable identity (e.g. a hash of "ip:port"); decides the target's slot preferences.
    pub identity: u64,
    /// Relative share of the slots; 0 = none (draining).
    pub weight: u32,
}

/// Fills a ring of `size` slots (`size` must be prime) with indices into `members`.
/// Every slot holds [`NO_TARGET`] when no member has a weight.
pub fn ring(members: &[Member], size: u32, seed: u32) -> Vec<u32> {
    let m = size as u64;
    let mut ring = vec![NO_TARGET; size as usize];
    let max_weight = members.iter().map(|t| t.weight).max().unwrap_or(0);
    if max_weight == 0 || size == 0 {
        return ring;
    }
    let prefs: Vec<(u64, u64)> = members
        .iter()
        .map(|t| {
            let h = mix(t.identity ^ ((seed as u64) << 32 | seed as u64));
            let offset = h % m;
            let skip = mix(h) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; members.len()];
    let mut credit = vec![0u64; members.len()];
    let mut filled = 0;
    while filled < size {
        for (i, member) in members.iter().enumerate() {
            credit[i] += member.weight as u64;
            if credit[i] < max_weight as u64 {
                continue;
            }
            credit[i] -= max_weight as u64;
            let (offset, skip) = prefs[i];
            let slot = loop {
                let slot = ((offset + next[i] * skip) % m) as usize;
                next[i] += 1;
                if ring[slot] == NO_TARGET {
                    break slot;
                }
            };
            ring[slot] = i as u32;
            filled += 1;
            if filled == size {
                break;
            }
        }
    }
    ring
}

/// SplitMix64's finaliser: a cheap, well-spread 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u32 = 65_537;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Member {
                identity: 1000 + i as u64,
                weight,
            })
            .collect()
    }

    fn shares(ring: &[u32], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for &slot in ring {
            counts[slot as usize] += 1;
        }
        counts
            .iter()
            .map(|&c| c as f64 / ring.len() as f64)
            .collect()
    }

    #[test]
    fn slots_follow_weights() {
        let weights = [1, 2, 3, 4];
        let ring = ring(&members(&weights), SIZE, 7);
        let total: u32 = weights.iter().sum();
        for (i, share) in shares(&ring, weights.len()).iter().enumerate() {
            let want = weights[i] as f64 / total as f64;
            assert!(
                (share - want).abs() < 0.02 * want,
                "target {i}: {share} vs {want}"
            );
        }
    }

    /// A million flows hashed through a weighted ring land on targets within 2 % of
    /// their weights.
    #[test]
    fn a_million_flows_follow_the_weights() {
        use crate::{
            hash,
            maps::{Addr, FlowKey},
        };
        let weights = [1, 2, 3, 4];
        let ring = ring(&members(&weights), SIZE, 9);
        let mut landed = [0u32; 4];
        for i in 0..1_000_000u32 {
            let key = FlowKey {
                src: Addr::ipv4((0x0a00_0000 | (i >> 16)).to_be_bytes()),
                src_port_be: (i & 0xffff) as u16,
                dst_port_be: 80u16.to_be(),
                ..FlowKey::default()
            };
            landed[ring[(hash::flow(&key, 9) % SIZE) as usize] as usize] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, &n) in landed.iter().enumerate() {
            let want = 1e6 * weights[i] as f64 / total as f64;
            assert!(
                (n as f64 - want).abs() < 0.02 * want,
                "target {i}: {n} flows, want {want}"
            );
        }
    }

    /// Adding a target to N moves about 1/(N+1) of the slots, all to the new target.
    #[test]
    fn adding_a_target_moves_about_one_nth_to_it() {
        let n = 10;
        let before = ring(&members(&vec![1; n]), SIZE, 3);
        let after = ring(&members(&vec![1; n + 1]), SIZE, 3);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let to_new = after.iter().filter(|&&a| a == n as u32).count();
        let ideal = SIZE as f64 / (n + 1) as f64;
        assert!(
            (moved as f64) < ideal * 1.25,
            "moved {moved}, ideal {ideal}"
        );
        assert!(
            moved - to_new < (ideal * 0.25) as usize,
            "{} moved between old targets",
            moved - to_new
        );
    }

    #[test]
    fn weight_zero_gets_nothing_and_empty_gives_no_target() {
        let ring_ = ring(&members(&[1, 0, 1]), 251, 1);
        assert!(ring_.iter().all(|&s| s == 0 || s == 2));
        assert!(
            ring(&members(&[0, 0]), 251, 1)
                .iter()
                .all(|&s| s == NO_TARGET)
        );
        assert!(ring(&[], 251, 1).iter().all(|&s| s == NO_TARGET));
    }

    #[test]
    fn same_inputs_same_ring_other_seed_other_ring() {
        let m = members(&[1, 1, 1]);
        assert_eq!(ring(&m, 1009, 5), ring(&m, 1009, 5));
        assert_ne!(ring(&m, 1009, 5), ring(&m, 1009, 6));
    }

    /// Removing one of N equal targets moves its own slots and only a little more.
    #[test]
    fn removing_a_target_moves_about_one_nth() {
        let n = 10;
        let all = members(&vec![1; n]);
        let before = ring(&all, SIZE, 3);
        let mut fewer = all.clone();
        let removed = fewer.remove(4);
        let after = ring(&fewer, SIZE, 3);
        // Map indices of `fewer` back to identities of `all` to compare.
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| all[**b as usize].identity != fewer[**a as usize].identity)
            .count();
        let ideal = SIZE as f64 / n as f64;
        assert!(removed.identity == all[4].identity);
        assert!(
            (moved as f64) < ideal * 1.25,
            "moved {moved} slots, ideal {ideal}"
        );
    }
}
