//! A userspace stand-in for `tc netem delay` (this kernel cannot load it): a TCP proxy that
//! forwards bytes between a client (a primary, a probe) and an upstream (a relay) after a
//! fixed delay in each direction.
//!
//! Every connection it accepts gets its own upstream connection and two pipes, one per
//! direction. A pipe is two threads: a reader that stamps each chunk with `arrival + delay`
//! and queues it, and a writer that sleeps until the stamp and writes the chunk. Chunks
//! travel in a pipeline (a second chunk does not wait for the first one's delay), as on a
//! long link. `TCP_NODELAY` on both sides, so the delay is the only one added. Test only:
//! threads and unbounded queues are fine for the few connections and megabytes a test moves.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// A running proxy: connect to `addr` to reach the upstream with `one_way` added each way.
pub struct DelayProxy {
    pub addr: SocketAddr,
    pub one_way: Duration,
    stop: Arc<AtomicBool>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub fn start(upstream: SocketAddr, one_way: Duration) -> DelayProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let join = std::thread::Builder::new()
            .name(format!("delay-proxy-{}", addr.port()))
            .spawn(move || {
                // A blocking accept: a polled one would add its period to every new
                // connection (a probe is one). Drop wakes it with a connection of its own.
                while let Ok((client, _)) = l.accept() {
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    // The client's bytes wait in its socket until the pipes run.
                    if let Ok(up) = TcpStream::connect(upstream) {
                        connect_pipes(client, up, one_way);
                    }
                }
            })
            .unwrap();
        DelayProxy {
            addr,
            one_way,
            stop,
            join: Some(join),
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn connect_pipes(client: TcpStream, up: TcpStream, one_way: Duration) {
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (c2, u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
    pipe(client, up, one_way);
    pipe(u2, c2, one_way);
}

/// Forwards `from` → `to`, each chunk `delay` after it was read. At the end of `from` the
/// write side of `to` is shut (the peer sees the close after the delay too); on any error
/// both are shut.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Read);
    });
    std::thread::spawn(move || {
        while let Ok((due, chunk)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
