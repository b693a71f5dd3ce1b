//! Real TCP: target servers that say who they are and whom they saw, and clients that
//! ask them something through an endpoint. All bounded in time.

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Socket, Type};

use crate::Namespace;

/// A target: answers each line with `<name> <peer ip:port> <line>`, and records every
/// peer that sent one (health checks that only connect are not peers). An HTTP request
/// line (`GET /…`) gets the server's health status instead, for HTTP health checks.
/// `A` is the type of its address: IPv4 ([`Server::start`]) or either family
/// ([`Server::start_any`]).
pub struct Server<A = SocketAddrV4> {
    pub name: String,
    pub addr: A,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    health: Arc<Mutex<u16>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &Namespace, name: &str, addr: SocketAddrV4) -> Result<Self> {
        Self::listen(ns, name, addr)
    }
}

impl Server<SocketAddr> {
    /// A target on an address of either family (`[fd00:16::10]:8080`).
    pub fn start_any(ns: &Namespace, name: &str, addr: SocketAddr) -> Result<Self> {
        Self::listen(ns, name, addr)
    }
}

impl<A: Into<SocketAddr> + Copy + std::fmt::Display + Send> Server<A> {
    fn listen(ns: &Namespace, name: &str, addr: A) -> Result<Self> {
        let at: SocketAddr = addr.into();
        let listener = ns
            .enter(move || TcpListener::bind(at))?
            .with_context(|| format!("binding {addr} in {}", ns.name()))?;
        listener.set_nonblocking(true)?;
        let peers = Arc::new(Mutex::new(Vec::new()));
        let health = Arc::new(Mutex::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let shared = Shared {
                name: name.to_string(),
                peers: peers.clone(),
                health: health.clone(),
            };
            let stop = stop.clone();
            std::thread::spawn(move || serve(&listener, &shared, &stop))
        };
        Ok(Self {
            name: name.to_string(),
            addr,
            peers,
            health,
            stop,
            thread: Some(thread),
        })
    }
}

impl<A> Server<A> {
    /// Every peer address that sent a line so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }

    /// The status HTTP health checks get from now on.
    pub fn set_health(&self, status: u16) {
        *self.health.lock().unwrap() = status;
    }

    /// Stops listening: new connections are refused (established ones carry on).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<A> Drop for Server<A> {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone)]
struct Shared {
    name: String,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    health: Arc<Mutex<u16>>,
}

fn serve(listener: &TcpListener, shared: &Shared, stop: &AtomicBool) {
    accept_until(listener, stop, |stream, peer| {
        let shared = shared.clone();
        std::thread::spawn(move || {
            let _ = answer(stream, &shared, peer);
        });
    });
}

/// Accepts connections on a non-blocking `listener` and hands each to `handle`, until
/// `stop` is set (looked at every 50 ms; a connection is taken the moment it arrives).
pub fn accept_until(
    listener: &TcpListener,
    stop: &AtomicBool,
    mut handle: impl FnMut(TcpStream, SocketAddr),
) {
    use std::os::fd::AsRawFd;
    let mut poll = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: one valid pollfd, bounded wait.
        if unsafe { libc::poll(&mut poll, 1, 50) } <= 0 {
            continue;
        }
        while let Ok((stream, peer)) = listener.accept() {
            let _ = stream.set_nonblocking(false);
            handle(stream, peer);
        }
    }
}

fn answer(stream: TcpStream, shared: &Shared, peer: SocketAddr) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut counted = false;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if line.starts_with("GET /") {
            let status = *shared.health.lock().unwrap();
            let response = format!("HTTP/1.0 {status} {}\r\n\r\n", shared.name);
            writer.write_all(response.as_bytes())?;
            return Ok(());
        }
        if !counted {
            shared.peers.lock().unwrap().push(peer);
            counted = true;
        }
        // One write per answer: a formatted write may be several, and Nagle would hold
        // the rest back for the client's delayed ACK.
        let answer = format!("{} {peer} {line}\n", shared.name);
        writer.write_all(answer.as_bytes())?;
    }
    Ok(())
}

/// What a target answered. `A` is the type of the address it saw: IPv4 ([`exchange`]) or
/// either family ([`exchange_any`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<A = SocketAddrV4> {
    /// The server's name.
    pub target: String,
    /// The address the server saw the connection come from.
    pub seen_from: A,
    pub echo: String,
}

/// Opens a connection from inside `ns` (bounded by `timeout`).
pub fn connect(ns: &Namespace, to: SocketAddrV4, timeout: Duration) -> Result<TcpStream> {
    connect_from(ns, 0, to, timeout)
}

/// Opens a connection from inside `ns`, from source port `port` (0: any).
pub fn connect_from(
    ns: &Namespace,
    port: u16,
    to: SocketAddrV4,
    timeout: Duration,
) -> Result<TcpStream> {
    connect_any(ns, port, to.into(), timeout)
}

/// Opens a connection from inside `ns` to an address of either family, from source port
/// `port` (0: any).
pub fn connect_any(
    ns: &Namespace,
    port: u16,
    to: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream> {
    let open = move || -> std::io::Result<TcpStream> {
        let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        let any: SocketAddr = match to {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, port).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, port).into(),
        };
        socket.bind(&any.into())?;
        socket.connect_timeout(&to.into(), timeout)?;
        Ok(socket.into())
    };
    let stream = ns
        .enter(open)?
        .with_context(|| format!("connecting to {to} from {}", ns.name()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Sends one line on an open connection and reads the answer.
pub fn exchange(stream: &mut TcpStream, line: &str) -> Result<Answer> {
    exchange_as(stream, line)
}

/// As [`exchange`], the address the target saw of either family.
pub fn exchange_any(stream: &mut TcpStream, line: &str) -> Result<Answer<SocketAddr>> {
    exchange_as(stream, line)
}

fn exchange_as<A>(stream: &mut TcpStream, line: &str) -> Result<Answer<A>>
where
    A: std::str::FromStr,
    A::Err: std::error::Error + Send + Sync + 'static,
{
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut reply = String::new();
    if reader.read_line(&mut reply)? == 0 {
        bail!("connection closed before an answer");
    }
    let mut words = reply.trim_end().splitn(3, ' ');
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

/// Connects from `ns` to `to`, asks `line`, and closes.
pub fn ask(ns: &Namespace, to: SocketAddrV4, line: &str, timeout: Duration) -> Result<Answer> {
    let mut stream = connect(ns, to, timeout)?;
    let answer = exchange(&mut stream, line)?;
    let _ = stream.shutdown(Shutdown::Both);
    Ok(answer)
}

/// As [`ask`], to an address of either family.
pub fn ask_any(
    ns: &Namespace,
    to: SocketAddr,
    line: &str,
    timeout: Duration,
) -> Result<Answer<SocketAddr>> {
    let mut stream = connect_any(ns, 0, to, timeout)?;
    let answer = exchange_any(&mut stream, line)?;
    let _ = stream.shutdown(Shutdown::Both);
    Ok(answer)
}

/// Opens a connection from inside `ns` to any address: IPv4 or IPv6 (a link-local one
/// with its link's index as scope, see [`link_index`]).
pub fn connect_to(ns: &Namespace, to: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let stream = ns
        .enter(move || TcpStream::connect_timeout(&to, timeout))?
        .with_context(|| format!("connecting to {to} from {}", ns.name()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// The index of link `dev` in `ns` (the scope of its IPv6 link-local addresses).
pub fn link_index(ns: &Namespace, dev: &str) -> Result<u32> {
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: a C string that outlives the call.
    let index = ns.enter(|| unsafe { libc::if_nametoindex(name.as_ptr()) })?;
    if index == 0 {
        bail!("no link {dev} in {}", ns.name());
    }
    Ok(index)
}

/// Listeners on every address of a namespace — `[::]` (IPv6 only) and `0.0.0.0` — on
/// some ports, that only note whom they accepted: for what must not be reachable.
pub struct Knock {
    accepted: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Knock {
    pub fn start(ns: &Namespace, ports: &[u16]) -> Result<Self> {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in ports {
            let v6: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, port).into();
            let v4: SocketAddr = (Ipv4Addr::UNSPECIFIED, port).into();
            for addr in [v6, v4] {
                let listener = ns
                    .enter(move || -> std::io::Result<TcpListener> {
                        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
                        if addr.is_ipv6() {
                            socket.set_only_v6(true)?;
                        }
                        socket.set_reuse_address(true)?;
                        socket.bind(&addr.into())?;
                        socket.listen(128)?;
                        socket.set_nonblocking(true)?;
                        Ok(socket.into())
                    })?
                    .with_context(|| format!("listening on {addr} in {}", ns.name()))?;
                let (accepted, stop) = (accepted.clone(), stop.clone());
                threads.push(std::thread::spawn(move || {
                    accept_until(&listener, &stop, |_, peer| {
                        accepted.lock().unwrap().push(peer);
                    });
                }));
            }
        }
        Ok(Self {
            accepted,
            stop,
            threads,
        })
    }

    /// Every peer accepted so far.
    pub fn accepted(&self) -> Vec<SocketAddr> {
        self.accepted.lock().unwrap().clone()
    }
}

impl Drop for Knock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// An IPv4 socket address.
pub fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}
