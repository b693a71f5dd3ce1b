//! Whether frames the program passes on arrive. A veth hands an XDP frame (XDP_TX or
//! a redirect) to its peer only if the peer runs an XDP program or has GRO on (it needs
//! the peer's NAPI); otherwise the kernel drops it, after the program counted it as
//! forwarded. A failed redirect is counted among the receiving veth's queue drops
//! (`rx_queue_N_drops` in `ethtool -S`), a failed XDP_TX among its transmit drops: the
//! agent reads both, warns when they grow and shows them in `status`.

use std::{collections::BTreeMap, process::Command};

/// Frames the veth `name` passed on that the kernel then dropped, since it was
/// created; none: not a veth, or its statistics cannot be read.
pub fn undelivered(name: &str) -> Option<u64> {
    let output = Command::new("ethtool").args(["-S", name]).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // Only veth lists its peer.
    if !output.status.success() || !text.contains("peer_ifindex:") {
        return None;
    }
    // `rx_queue_<n>_<field>`, summed over the queues.
    let counted = |field: &str| -> u64 {
        text.lines()
            .filter_map(|line| line.trim().split_once(": "))
            .filter(|(name, _)| {
                name.strip_prefix("rx_queue_")
                    .and_then(|rest| rest.split_once('_'))
                    .is_some_and(|(_, f)| f == field)
            })
            .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
            .sum()
    };
    Some(counted("drops") + counted("xdp_tx_errors"))
}

/// What was seen at the last look, per interface.
#[derive(Debug, Default)]
pub struct Delivery {
    seen: BTreeMap<String, u64>,
}

impl Delivery {
    /// Looks at `names` again and warns for each whose undelivered count grew.
    pub fn check<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let mut seen = BTreeMap::new();
        for name in names {
            let Some(now) = undelivered(name) else {
                continue;
            };
            let before = self.seen.get(name).copied().unwrap_or(0);
            if now > before {
                log::warn!(
                    "{name}: the kernel dropped {} frames the program passed on: a veth they \
                     went to has a peer with neither an XDP program nor GRO (`ethtool -K \
                     <peer> gro on`)",
                    now - before
                );
            }
            seen.insert(name.to_string(), now);
        }
        self.seen = seen;
    }
}
