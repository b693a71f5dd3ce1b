//! Real UDP: an echo target that says who it is and whom it saw, and a client that
//! asks it through an endpoint. All bounded in time.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{Answer, Namespace};

/// A UDP target: answers each datagram with `<name> <peer ip:port> <datagram>`. `A` is
/// the type of its address: IPv4 ([`UdpServer::start`]) or either family
/// ([`UdpServer::start_any`]).
pub struct UdpServer<A = SocketAddrV4> {
    pub name: String,
    pub addr: A,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    pub fn start(ns: &Namespace, name: &str, addr: SocketAddrV4) -> Result<Self> {
        Self::bind(ns, name, addr)
    }
}

impl UdpServer<SocketAddr> {
    /// A UDP target on an address of either family.
    pub fn start_any(ns: &Namespace, name: &str, addr: SocketAddr) -> Result<Self> {
        Self::bind(ns, name, addr)
    }
}

impl<A: Into<SocketAddr> + Copy + std::fmt::Display> UdpServer<A> {
    fn bind(ns: &Namespace, name: &str, addr: A) -> Result<Self> {
        let at: SocketAddr = addr.into();
        let socket = ns
            .enter(move || UdpSocket::bind(at))?
            .with_context(|| format!("binding UDP {addr} in {}", ns.name()))?;
        // Looked at the stop flag this often.
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, name) = (stop.clone(), name.to_string());
            std::thread::spawn(move || {
                let mut buffer = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, peer)) = socket.recv_from(&mut buffer) else {
                        continue;
                    };
                    let line = String::from_utf8_lossy(&buffer[..n]);
                    let _ = socket.send_to(format!("{name} {peer} {line}").as_bytes(), peer);
                }
            })
        };
        Ok(Self {
            name: name.to_string(),
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl<A> Drop for UdpServer<A> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A UDP socket in `ns` connected to `to`: it takes datagrams from `to` only, and
/// learns of ICMP errors about what it sent.
pub fn udp_socket(ns: &Namespace, to: SocketAddrV4, timeout: Duration) -> Result<UdpSocket> {
    udp_socket_any(ns, to.into(), timeout)
}

/// As [`udp_socket`], to an address of either family.
pub fn udp_socket_any(ns: &Namespace, to: SocketAddr, timeout: Duration) -> Result<UdpSocket> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = ns
        .enter(move || -> std::io::Result<UdpSocket> {
            let socket = UdpSocket::bind(any)?;
            socket.connect(to)?;
            Ok(socket)
        })?
        .with_context(|| format!("UDP socket to {to} in {}", ns.name()))?;
    socket.set_read_timeout(Some(timeout))?;
    Ok(socket)
}

/// Sends `line` from `ns` to `to` and reads the answer, which must come from `to`.
pub fn udp_ask(ns: &Namespace, to: SocketAddrV4, line: &str, timeout: Duration) -> Result<Answer> {
    udp_ask_as(ns, to.into(), line, timeout)
}

/// As [`udp_ask`], to an address of either family.
pub fn udp_ask_any(
    ns: &Namespace,
    to: SocketAddr,
    line: &str,
    timeout: Duration,
) -> Result<Answer<SocketAddr>> {
    udp_ask_as(ns, to, line, timeout)
}

fn udp_ask_as<A>(ns: &Namespace, to: SocketAddr, line: &str, timeout: Duration) -> Result<Answer<A>>
where
    A: std::str::FromStr,
    A::Err: std::error::Error + Send + Sync + 'static,
{
    let socket = udp_socket_any(ns, to, timeout)?;
    socket.send(line.as_bytes())?;
    let mut buffer = vec![0u8; 65536];
    let n = socket
        .recv(&mut buffer)
        .with_context(|| format!("no answer from {to}"))?;
    let reply = String::from_utf8_lossy(&buffer[..n]).to_string();
    let mut words = reply.splitn(3, ' ');
    let (Some(target), Some(seen_from), echo) = (words.next(), words.next(), words.next()) else {
        bail!("unexpected answer {reply:?}");
    };
    Ok(Answer {
        target: target.to_string(),
        seen_from: seen_from
            .parse()
            .with_context(|| format!("answer {reply:?}"))?,
        echo: echo.unwrap_or_default().to_string(),
    })
}
