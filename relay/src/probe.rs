//! The relay probe: the round trip from this host to a running relay, through the relay's
//! own replication port and poller, so it includes what a replicated write's Ack waits
//! for apart from the journal commit (network both ways, the relay's accept/poll latency).
//!
//! Where it sits: off the data path; `baton plan` and `relay_plan` run it on the
//! management thread's helper before planning ([`crate::plan`]).
//!
//! How: each probe opens a TCP connection to the relay, sends a version-1 `Hello` with the
//! role `standby` for the volume [`PROBE_VOLUME`], and times the write of the Hello to the
//! arrival of the relay's `HelloReply`. A relay serves primaries only, so it refuses with
//! reason `Role` (`handshake::answer_hello` checks the role first) and closes: nothing is
//! created, no journal is touched and no primary's connection is replaced (a Hello with the
//! role `primary` would do both). The wire format is unchanged. The relay logs each probe
//! as a refused Hello. The TCP connect is outside the timed part (it is answered by the
//! relay's kernel, not by the relay), and so is a pause after it ([`PROBE_SETTLE`]) that
//! lets the relay accept the connection first: a replicated write travels on a connection
//! the relay holds already.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rdma_transport::wire::{self, Frame, Hello, Role, ENVELOPE_BYTES, FRAME_BYTES_MAX};

use crate::plan::{PlanInput, Probed, RttStats};

/// The volume name a probe's Hello carries (no relay serves it: probes never open one).
pub const PROBE_VOLUME: &str = "baton-plan-probe";
/// Most probes one call sends to one relay.
pub const PROBES_MAX: u32 = 10_000;
/// Probes per relay when not given.
pub const PROBES_DEFAULT: u32 = 20;
/// Longest a probe waits for a connect, a send or a reply.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between the connect and the Hello, beyond the connect's own duration: the relay
/// looks for new connections at most every 200 µs (`TcpAcceptor::poll_accept`) and a Hello
/// that arrives before the accept would time that wait, which no replicated write sees.
pub const PROBE_SETTLE: Duration = Duration::from_millis(1);
/// Largest reply a probe reads (a HelloReply is 48 bytes).
const REPLY_BYTES_MAX: usize = 256;

/// Why a probe failed. Every variant names the relay's address.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `probes` outside 1..=[`PROBES_MAX`].
    #[error("probes: {probes} must be between 1 and {PROBES_MAX}")]
    Count {
        /// Received.
        probes: u32,
    },
    /// TLS could not be set up for the probe (this process's credentials).
    #[error("{addr}: TLS: {msg}")]
    Tls {
        /// The relay.
        addr: SocketAddr,
        /// Why.
        msg: String,
    },
    /// Could not connect.
    #[error("{addr}: connect: {source}")]
    Connect {
        /// The relay.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed or timed out during the exchange.
    #[error("{addr}: {what}: {source}")]
    Io {
        /// The relay.
        addr: SocketAddr,
        /// Which step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The peer answered bytes that are not a frame.
    #[error("{addr}: bad reply: {source}")]
    Wire {
        /// The relay.
        addr: SocketAddr,
        /// The rejection.
        source: wire::WireError,
    },
    /// The peer answered another frame than a HelloReply (not a baton relay?).
    #[error("{addr}: answered a {kind:?} frame instead of a HelloReply")]
    Unexpected {
        /// The relay.
        addr: SocketAddr,
        /// What came back.
        kind: wire::FrameKind,
    },
    /// The reply is longer than a HelloReply could be.
    #[error("{addr}: reply of {len} bytes is too long for a HelloReply")]
    TooLong {
        /// The relay.
        addr: SocketAddr,
        /// Declared length.
        len: usize,
    },
}

/// A plain or TLS stream.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// One probe: µs from the Hello's send to the HelloReply's arrival.
fn probe_once(addr: SocketAddr, hello: &[u8], timeout: Duration) -> Result<f64, ProbeError> {
    let t_connect = Instant::now();
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(|source| ProbeError::Connect { addr, source })?;
    // The relay's end of the handshake arrives half a round trip after connect returns:
    // wait that long again, plus the accept period, so the relay holds the connection.
    std::thread::sleep(t_connect.elapsed() + PROBE_SETTLE);
    let io = |what| move |source| ProbeError::Io { addr, what, source };
    s.set_nodelay(true).map_err(io("set TCP_NODELAY"))?;
    s.set_read_timeout(Some(timeout)).map_err(io("set read timeout"))?;
    s.set_write_timeout(Some(timeout)).map_err(io("set write timeout"))?;
    // A process with TLS credentials probes over TLS (the relay requires it), the handshake
    // done before the timed exchange, like a replicated write's connection.
    let mut s: Box<dyn ReadWrite> = match rdma_transport::tls::process() {
        Some(ctx) => {
            let mut t = rdma_transport::tls::blocking::BlockingTls::client(s, ctx, rdma_transport::tls::Role::Relay)
                .map_err(|e| ProbeError::Tls {
                    addr,
                    msg: e.to_string(),
                })?;
            t.handshake().map_err(io("TLS handshake"))?;
            Box::new(t)
        }
        None => Box::new(s),
    };
    let mut buf = [0u8; REPLY_BYTES_MAX];
    let t0 = Instant::now();
    s.write_all(hello).map_err(io("send Hello"))?;
    s.flush().map_err(io("send Hello"))?;
    s.read_exact(&mut buf[..ENVELOPE_BYTES])
        .map_err(io("read HelloReply"))?;
    let env = wire::peek_envelope(&buf[..ENVELOPE_BYTES])
        .map_err(|source| ProbeError::Wire { addr, source })?
        .ok_or(ProbeError::TooLong { addr, len: 0 })?;
    if env.frame_len > REPLY_BYTES_MAX {
        return Err(ProbeError::TooLong {
            addr,
            len: env.frame_len,
        });
    }
    s.read_exact(&mut buf[ENVELOPE_BYTES..env.frame_len])
        .map_err(io("read HelloReply"))?;
    let rtt_us = t0.elapsed().as_secs_f64() * 1e6;
    let frame = wire::parse(&buf[..env.frame_len]).map_err(|source| ProbeError::Wire { addr, source })?;
    match frame {
        Frame::HelloReply(_) => Ok(rtt_us),
        other => Err(ProbeError::Unexpected {
            addr,
            kind: other.kind(),
        }),
    }
}

/// Sends `probes` probes to the relay at `addr`, one after the other (each waits at most
/// `timeout` per step), and returns min / p50 / p99 of their round trips. The first
/// failure ends the run.
pub fn probe_relay(addr: SocketAddr, probes: u32, timeout: Duration) -> Result<RttStats, ProbeError> {
    if probes == 0 || probes > PROBES_MAX {
        return Err(ProbeError::Count { probes });
    }
    let hello = wire::encode_hello(&Hello {
        role: Role::Standby,
        block_size: 4096,
        volume_id: [0; 16],
        volume_name: PROBE_VOLUME,
        generation: 0,
        resume_lsn: 0,
        frame_bytes_max: FRAME_BYTES_MAX as u32,
        recv_credits: 0,
    })
    .expect("the probe's Hello is valid by construction");
    let mut rtts: Vec<f64> = Vec::with_capacity(probes as usize);
    for _ in 0..probes {
        rtts.push(probe_once(addr, hello.as_bytes(), timeout)?);
    }
    Ok(stats(&mut rtts))
}

/// Probes every candidate of `input` that has an address (one thread per candidate, so
/// sites are probed at the same time; a site's own probes run one after the other) and
/// records the results in `input.probed`. A candidate that fails is kept with its error:
/// the plan then excludes it and says why.
pub fn probe_candidates(input: &mut PlanInput, probes: u32, timeout: Duration) {
    let results: Vec<Option<Probed>> = std::thread::scope(|s| {
        let handles: Vec<_> = input
            .candidates
            .iter()
            .map(|c| {
                let addr: Option<SocketAddr> = c.addr.as_deref().and_then(|a| a.parse().ok());
                s.spawn(move || {
                    addr.map(|a| match probe_relay(a, probes, timeout) {
                        Ok(st) => Probed::Rtt(st),
                        Err(e) => Probed::Failed(e.to_string()),
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Some(Probed::Failed("probe thread panicked".into())))
            })
            .collect()
    });
    for (i, r) in results.into_iter().enumerate() {
        if let Some(p) = r {
            input.probed[i] = p;
        }
    }
}

/// min / p50 / p99 of `rtts` (nearest rank), which must not be empty.
pub fn stats(rtts: &mut [f64]) -> RttStats {
    assert!(!rtts.is_empty(), "stats of no probe");
    rtts.sort_by(f64::total_cmp);
    let rank = |p: f64| rtts[((rtts.len() as f64 * p).ceil() as usize).clamp(1, rtts.len()) - 1];
    RttStats {
        probes: rtts.len() as u32,
        min_us: rtts[0],
        p50_us: rank(0.5),
        p99_us: rank(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn stats_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = stats(&mut v);
        assert_eq!((s.probes, s.min_us, s.p50_us, s.p99_us), (100, 1.0, 50.0, 99.0));
        let s = stats(&mut [7.0]);
        assert_eq!((s.min_us, s.p50_us, s.p99_us), (7.0, 7.0, 7.0));
    }

    #[test]
    fn a_closed_port_and_a_bad_count_are_errors() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = probe_relay(addr, 3, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ProbeError::Connect { .. }), "{e}");
        assert!(e.to_string().contains(&addr.to_string()));
        assert!(matches!(
            probe_relay(addr, 0, Duration::from_secs(1)),
            Err(ProbeError::Count { probes: 0 })
        ));
    }

    #[test]
    fn a_peer_that_is_not_a_relay_is_named() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 512];
            let _ = s.read(&mut b);
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        });
        let e = probe_relay(addr, 1, Duration::from_secs(2)).unwrap_err();
        assert!(matches!(e, ProbeError::Wire { .. }), "{e}");
        t.join().unwrap();
    }
}
