//! TCP relays across network namespaces.
//!
//! - [`forward_into`]: from a namespace's loopback to an address in the root namespace. The
//!   embedded API server listens on the root namespace's 127.0.0.1, which a process inside a node
//!   namespace cannot reach. The listening socket is created by a thread that entered the
//!   namespace ([`Netns::run_in`]); a socket keeps the namespace it was created in, so accepting
//!   and the outbound connections then run on ordinary (root-namespace) threads.
//! - [`forward_out_of`]: the other way, from the root namespace's loopback to an address inside
//!   a namespace (the real-cluster lab's kube-apiserver listens on its bridge address, inside the
//!   lab's namespace): each outbound socket is created by a thread inside the namespace.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::{Netns, NetnsError, run_in_named};

/// Opens the outbound half of a relayed connection.
type Connect = Box<dyn Fn() -> io::Result<TcpStream> + Send>;

/// How often the accept loop checks whether it should stop.
const POLL: Duration = Duration::from_millis(20);

/// A running relay; stopped (listener closed, live connections cut) when dropped.
#[derive(Debug)]
pub struct Forwarder {
    port: u16,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// The port listened on (inside the namespace for [`forward_into`], on the root
    /// namespace's loopback for [`forward_out_of`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts every relayed connection (the listener stays): what an API server outage looks
    /// like from inside the namespace.
    pub fn cut_connections(&self) {
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut_connections();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Relays connections to `ns`'s `127.0.0.1:listen_port` (0 = any free port) to `target`.
pub fn forward_into(
    ns: &Netns,
    listen_port: u16,
    target: SocketAddr,
) -> Result<Forwarder, NetnsError> {
    let io_err = |context: &str| {
        let context = format!("{context} in {}", ns.name());
        move |source: io::Error| NetnsError::Io { context, source }
    };
    // The namespace's loopback is up already (Netns::new), but be explicit: it is what we need.
    ns.exec_ok("ip", &["link", "set", "lo", "up"])?;
    let listener = ns
        .run_in(move || TcpListener::bind(("127.0.0.1", listen_port)))?
        .map_err(io_err("binding the forwarder"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("reading the forwarder's address"))?
        .port();
    listener
        .set_nonblocking(true)
        .map_err(io_err("making the forwarder non-blocking"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let accept = {
        let stop = Arc::clone(&stop);
        let conns = Arc::clone(&conns);
        std::thread::Builder::new()
            .name(format!("forward-{port}"))
            // This thread is in the root namespace, so the outbound sockets are too.
            .spawn(move || {
                accept_loop(
                    listener,
                    Box::new(move || TcpStream::connect(target)),
                    &stop,
                    &conns,
                )
            })
            .map_err(io_err("spawning the forwarder thread"))?
    };
    Ok(Forwarder {
        port,
        stop,
        conns,
        accept: Some(accept),
    })
}

/// Relays connections to the root namespace's `127.0.0.1:<any free port>` to `target` as seen
/// from inside the namespace named `ns` (which must outlive the forwarder).
pub fn forward_out_of(ns: &str, target: SocketAddr) -> Result<Forwarder, NetnsError> {
    let io_err = |context: &str| {
        let context = format!("{context} (towards {target} in {ns})");
        move |source: io::Error| NetnsError::Io { context, source }
    };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("binding the forwarder"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("reading the forwarder's address"))?
        .port();
    listener
        .set_nonblocking(true)
        .map_err(io_err("making the forwarder non-blocking"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let name = ns.to_owned();
    let connect: Connect = Box::new(move || {
        run_in_named(&name, move || TcpStream::connect(target))
            .map_err(|e| io::Error::other(e.to_string()))?
    });
    let accept = {
        let stop = Arc::clone(&stop);
        let conns = Arc::clone(&conns);
        std::thread::Builder::new()
            .name(format!("forward-out-{port}"))
            .spawn(move || accept_loop(listener, connect, &stop, &conns))
            .map_err(io_err("spawning the forwarder thread"))?
    };
    Ok(Forwarder {
        port,
        stop,
        conns,
        accept: Some(accept),
    })
}

fn accept_loop(
    listener: TcpListener,
    connect: Connect,
    stop: &AtomicBool,
    conns: &Mutex<Vec<TcpStream>>,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((inner, _)) => {
                let _ = inner.set_nonblocking(false);
                let Ok(outer) = connect() else {
                    let _ = inner.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = inner.set_nodelay(true);
                let _ = outer.set_nodelay(true);
                let (Ok(a), Ok(b), Ok(c), Ok(d)) = (
                    inner.try_clone(),
                    outer.try_clone(),
                    inner.try_clone(),
                    outer.try_clone(),
                ) else {
                    continue;
                };
                {
                    let mut list = conns.lock().unwrap_or_else(|p| p.into_inner());
                    list.push(c);
                    list.push(d);
                }
                relay(inner, outer);
                relay(b, a);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Copies `from` → `to` on a thread until either side closes, then closes both directions.
fn relay(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
        let _ = from.shutdown(Shutdown::Read);
    });
}

/// The kubeconfig `yaml` with its `server:` pointed at `https://127.0.0.1:port` (the serving
/// certificate carries 127.0.0.1), for a process that reaches the API through a [`Forwarder`].
pub fn kubeconfig_via(yaml: &str, port: u16) -> String {
    let mut out = String::with_capacity(yaml.len());
    for line in yaml.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("server:")
            && !rest.trim().is_empty()
        {
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(&format!("{indent}server: https://127.0.0.1:{port}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn kubeconfig_server_is_rewritten() {
        let yaml = "clusters:\n- name: x\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: QQ==\n";
        let got = kubeconfig_via(yaml, 16443);
        assert!(
            got.contains("    server: https://127.0.0.1:16443\n"),
            "{got}"
        );
        assert!(!got.contains("6443\n    cert") || got.contains("16443"));
        assert!(got.contains("certificate-authority-data: QQ=="));
    }

    #[test]
    fn relays_from_inside_a_namespace_to_the_root_loopback() {
        // An echo server on the root namespace's loopback, unreachable from the namespace
        // without the forwarder.
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in server.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let ns = Netns::new("ldfw").unwrap();
        let direct = ns
            .run_in(move || TcpStream::connect(target).is_ok())
            .unwrap();
        assert!(
            !direct,
            "the root loopback must not be reachable from the namespace"
        );
        let fwd = forward_into(&ns, 0, target).unwrap();
        let port = fwd.port();
        let echoed = ns
            .run_in(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.write_all(b"hello").unwrap();
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).unwrap();
                buf
            })
            .unwrap();
        assert_eq!(&echoed, b"hello");
        drop(fwd);
        let after = ns
            .run_in(move || TcpStream::connect(("127.0.0.1", port)).is_ok())
            .unwrap();
        assert!(
            !after,
            "the listener is closed when the forwarder is dropped"
        );
    }

    #[test]
    fn relays_from_the_root_loopback_into_a_namespace() {
        let ns = Netns::new("ldfo").unwrap();
        // An echo server on the namespace's loopback, unreachable from the root namespace.
        let server = ns
            .run_in(|| TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        let target = server.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in server.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let fwd = forward_out_of(ns.name(), target).unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", fwd.port())).unwrap();
        s.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        drop(s);
        drop(fwd);
    }
}
