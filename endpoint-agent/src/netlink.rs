//! Follows the node through rtnetlink: a change of a link (created, deleted, renamed, a
//! new MAC), of an address, or of a forwarding setting wakes the agent at once, instead
//! of at its next periodic look (which stays, for what netlink does not announce).
//! Messages are not decoded: any of them means "look again", and a lost one (the socket
//! overflowed) means the same.

use anyhow::{Context as _, Result};
use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols::NETLINK_ROUTE};
use tokio::sync::mpsc;

/// `RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR` and the IPv4 and IPv6
/// netconf groups (numbers 24 and 25: bits 23 and 24).
const GROUPS: u32 = 0x1 | 0x10 | 0x100 | (1 << 23) | (1 << 24);

/// A channel that holds one wake-up whenever the node changed since it was last read
/// (changes coalesce while the agent is busy).
pub fn changes() -> Result<mpsc::Receiver<()>> {
    let mut socket = TokioSocket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
    socket
        .socket_mut()
        .bind(&SocketAddr::new(0, GROUPS))
        .context("subscribing to link and address changes")?;
    let (wake, woken) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            match socket.recv_from_full().await {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    log::debug!("netlink: messages lost ({e}): looking again");
                }
                Err(e) => {
                    log::warn!("netlink: {e}; following the node by polling only");
                    return;
                }
            }
            if wake.is_closed() {
                return;
            }
            let _ = wake.try_send(());
        }
    });
    Ok(woken)
}
