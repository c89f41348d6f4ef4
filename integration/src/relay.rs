//! A TCP relay the test owns, for breaking a transfer at a known point: it
//! listens in a node's network namespace and forwards every connection to
//! a target there, bytes untouched (TLS passes through: the client checks
//! the target's certificate, whose address SAN is the node's, whatever the
//! port). Once armed ([`Relay::cut_after`]), the first connection that has
//! relayed more than a given number of bytes from the server to the client
//! since then is cut: an action runs first (a test stops the server behind
//! the relay), then both sides of that connection are closed, and the cut
//! is recorded ([`Relay::cut`]).
//!
//! The relay's threads live in the node's namespace: the accepting thread
//! enters it with `setns(CLONE_NEWNET)` before it binds (a network namespace
//! is per thread; the threads it spawns inherit it, and sockets stay in the
//! namespace they were made in). Everything is stopped and joined on drop.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

/// What runs when the relay cuts, before it closes the connection.
type OnCut = Box<dyn FnOnce() -> Result<()> + Send>;

/// A relay from `listen` to `target` inside one network namespace.
pub struct Relay {
    listen: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// A cut the relay made.
#[derive(Clone, Debug)]
pub struct Cut {
    /// Bytes the cut connection relayed from the server to the client
    /// since the relay was armed.
    pub relayed: u64,
    /// What the action run at the cut returned (its error's chain).
    pub action: Result<(), String>,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Bytes are counted towards the threshold only while armed.
    armed: AtomicBool,
    threshold: AtomicU64,
    /// Taken by the one connection that cuts.
    on_cut: Mutex<Option<OnCut>>,
    cut: Mutex<Option<Cut>>,
    /// Every socket of every connection, to be shut down on drop.
    sockets: Mutex<Vec<TcpStream>>,
    /// The pumping threads, joined on drop.
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

impl Relay {
    /// Starts relaying connections to `listen` (an address of the network
    /// namespace `netns`, a `/run/netns/NAME` file) to `target`; returns
    /// once it listens.
    pub fn start(netns: &Path, listen: SocketAddr, target: SocketAddr) -> Result<Relay> {
        let ns = std::fs::File::open(netns)
            .with_context(|| format!("opening the network namespace {}", netns.display()))?;
        let shared = Arc::new(Shared::default());
        let (ready, bound) = mpsc::channel();
        let state = shared.clone();
        let accept = std::thread::Builder::new()
            .name("relay-accept".into())
            .spawn(move || {
                // SAFETY: setns(2) on a descriptor this thread owns; it
                // changes this thread's network namespace only.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let err = std::io::Error::last_os_error();
                    let _ = ready.send(Err(anyhow!("setns into the network namespace: {err}")));
                    return;
                }
                drop(ns);
                let listener = match TcpListener::bind(listen)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                {
                    Ok(l) => l,
                    Err(err) => {
                        let _ = ready.send(Err(anyhow!("binding {listen}: {err}")));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                accept_loop(&listener, target, &state);
            })
            .context("spawning the relay's thread")?;
        let mut relay = Relay {
            listen,
            shared,
            accept: Some(accept),
        };
        match bound.recv() {
            Ok(Ok(())) => Ok(relay),
            Ok(Err(err)) => Err(err.context(format!("relay {listen} -> {target}"))),
            Err(_) => {
                relay.stop();
                Err(anyhow!("the relay's thread ended before it listened"))
            }
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// Arms the relay: the first connection that relays more than `bytes`
    /// from the server to the client from now on is cut, after `action`
    /// ran (on the relay's thread).
    pub fn cut_after(&self, bytes: u64, action: impl FnOnce() -> Result<()> + Send + 'static) {
        self.shared.threshold.store(bytes, Ordering::SeqCst);
        *self.shared.on_cut.lock().unwrap() = Some(Box::new(action));
        self.shared.armed.store(true, Ordering::SeqCst);
    }

    /// The cut it made, if it did.
    pub fn cut(&self) -> Option<Cut> {
        self.shared.cut.lock().unwrap().clone()
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for socket in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        let pumps: Vec<_> = self.shared.pumps.lock().unwrap().drain(..).collect();
        for pump in pumps {
            let _ = pump.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(err) => {
                eprintln!("warning: relay: accept: {err}");
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        // A target that is gone (stopped after a cut): the client sees its
        // connection closed at once.
        let server = match client
            .set_nonblocking(false)
            .and_then(|()| TcpStream::connect_timeout(&target, Duration::from_secs(5)))
        {
            Ok(server) => server,
            Err(_) => continue,
        };
        if let Err(err) = spawn_pumps(client, server, shared) {
            eprintln!("warning: relay: {err:#}");
        }
    }
}

/// One thread per direction; the server-to-client one counts and cuts.
fn spawn_pumps(client: TcpStream, server: TcpStream, shared: &Arc<Shared>) -> Result<()> {
    let mut sockets = shared.sockets.lock().unwrap();
    sockets.push(client.try_clone()?);
    sockets.push(server.try_clone()?);
    drop(sockets);
    let (c_read, s_write) = (client.try_clone()?, server.try_clone()?);
    let up = std::thread::Builder::new()
        .name("relay-up".into())
        .spawn(move || pump(c_read, s_write, None))?;
    shared.pumps.lock().unwrap().push(up);
    let state = shared.clone();
    let down = std::thread::Builder::new()
        .name("relay-down".into())
        .spawn(move || pump(server, client, Some(&state)))?;
    shared.pumps.lock().unwrap().push(down);
    Ok(())
}

/// Copies `from` to `to` until either side ends, then half-closes `to`.
/// With `cutting`, counts what it copies while the relay is armed and cuts
/// past the threshold.
fn pump(mut from: TcpStream, mut to: TcpStream, cutting: Option<&Shared>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut counted = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(shared) = cutting {
            if shared.armed.load(Ordering::SeqCst) {
                counted += n as u64;
                if counted > shared.threshold.load(Ordering::SeqCst) {
                    let action = shared.on_cut.lock().unwrap().take();
                    if let Some(action) = action {
                        let action = action().map_err(|e| format!("{e:#}"));
                        *shared.cut.lock().unwrap() = Some(Cut {
                            relayed: counted,
                            action,
                        });
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
