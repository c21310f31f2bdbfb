//! The replication wire limit (`baton limits`): what the primary's link and the relays
//! could carry if replicating cost nothing but the transport.
//!
//! One sender thread (the primary's link reactor: one core) keeps W writes outstanding, each
//! a 4 KiB write in its own Ops frame sealed with its CRC as the volume seals it, sent to N
//! receivers over baton's own TCP connections (the same queue, `writev` batching and
//! TCP_NODELAY); one receiver thread (the relays sharing one core) polls the N connections,
//! copies each payload into a RAM ring (a journal in memory, no file system) and, as a relay
//! does, answers each poll that stored something with one cumulative Ack (the highest LSN
//! stored). A write completes when all N acked it (ack policy all).
//! What a replicated volume reaches, divided by this, is how close it is to its transport.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_transport::tcp::{TcpAcceptor, TcpConfig, TcpConnection};
use rdma_transport::wire::{self, Frame, Op};
use rdma_transport::{ConnState, Connection, OutFrame};

use crate::AnyErr;

/// Bytes of each write.
pub const WRITE_BYTES: usize = 4096;
/// The receivers' RAM ring.
const RING_BYTES: usize = 64 << 20;

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct WireLimitOpts {
    /// Receivers (relays), each sent every write.
    pub receivers: usize,
    /// Writes outstanding (the volume's queue depth).
    pub outstanding: usize,
    /// Measured time, after a warm-up of a fifth of it.
    pub time: Duration,
    /// And at least this many writes (tests count events, not seconds).
    pub min_writes: u64,
    /// Core of the sender (the primary's link reactor), if pinned.
    pub sender_core: Option<usize>,
    /// Core of the receivers, if pinned.
    pub receiver_core: Option<usize>,
}

/// What was measured.
#[derive(Debug, Clone, Copy)]
pub struct WireLimit {
    /// Writes acknowledged by every receiver per second.
    pub writes_per_s: f64,
    /// Median time from a write's send to its last ack, µs.
    pub p50_us: f64,
}

fn pin(core: Option<usize>) {
    if let Some(id) = core {
        core_affinity::set_for_current(core_affinity::CoreId { id });
    }
}

/// Runs one measurement (blocking; two threads).
pub fn measure(o: WireLimitOpts) -> Result<WireLimit, AnyErr> {
    if o.receivers == 0 || o.outstanding == 0 {
        return Err("the wire limit needs at least one receiver and one outstanding write".into());
    }
    if o.outstanding > rdma_transport::tcp::SEND_QUEUE_FRAMES_DEFAULT {
        return Err(format!(
            "at most {} outstanding writes (a connection's send queue)",
            rdma_transport::tcp::SEND_QUEUE_FRAMES_DEFAULT
        )
        .into());
    }
    let acc = TcpAcceptor::bind("127.0.0.1:0".parse()?, TcpConfig::default())?;
    let addr = acc.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let rx = {
        let stop = stop.clone();
        let n = o.receivers;
        let core = o.receiver_core;
        std::thread::Builder::new()
            .name("wire-limit-rx".into())
            .spawn(move || receive(acc, n, core, &stop))?
    };
    let r = send(addr, o);
    stop.store(true, Ordering::Relaxed);
    let rx = rx.join().map_err(|_| "receiver thread panicked")?;
    rx?;
    r
}

/// The relays: accept N connections, store every payload, ack every frame.
fn receive(acc: TcpAcceptor, n: usize, core: Option<usize>, stop: &AtomicBool) -> Result<(), String> {
    pin(core);
    let mut conns: Vec<TcpConnection<Vec<u8>>> = Vec::with_capacity(n);
    let mut acked = vec![0u64; n];
    let mut ring = vec![0u8; RING_BYTES];
    let mut at = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if conns.len() < n {
            if let Some((c, _)) = acc.poll_accept().map_err(|e| e.to_string())? {
                conns.push(c);
            }
        }
        for (c, acked) in conns.iter_mut().zip(acked.iter_mut()) {
            let mut stored = *acked;
            let r = c.poll_recv(&mut |f| {
                if let Frame::Ops(b) = f {
                    for op in &b.ops {
                        if let Op::Write { data, .. } = *op {
                            if at + data.len() > ring.len() {
                                at = 0;
                            }
                            ring[at..at + data.len()].copy_from_slice(data);
                            at += data.len();
                        }
                    }
                    stored = stored.max(b.lsn_last().unwrap_or(0));
                }
            });
            if r.is_err() {
                continue;
            }
            if stored > *acked {
                let ack = wire::encode_ack(&wire::Ack {
                    durable_lsn: stored,
                    frame_lsn_first: 0,
                    frame_lsn_last: 0,
                    generation: 1,
                });
                if c.send(OutFrame::control(ack, stored)).is_ok() {
                    *acked = stored;
                }
            }
            let _ = c.poll_send(&mut |_| {});
        }
    }
    std::hint::black_box(&ring);
    Ok(())
}

/// The primary's link: W writes outstanding to every receiver.
fn send(addr: SocketAddr, o: WireLimitOpts) -> Result<WireLimit, AnyErr> {
    pin(o.sender_core);
    let data: &'static [u8] = Box::leak(vec![0x5au8; WRITE_BYTES].into_boxed_slice());
    let mut conns = Vec::with_capacity(o.receivers);
    for _ in 0..o.receivers {
        conns.push(TcpConnection::<&'static [u8]>::connect(addr, TcpConfig::default())?);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while conns.iter().any(|c| c.state() != ConnState::Open) {
        for c in &mut conns {
            c.poll_send(&mut |_| {})?;
        }
        if Instant::now() > deadline {
            return Err("wire limit: receivers did not connect".into());
        }
    }
    // Per outstanding slot: when it was sent. Per receiver: the highest LSN it acked.
    let cap = o.outstanding.next_power_of_two();
    let mut acked = vec![0u64; o.receivers];
    let mut sent_at = vec![Instant::now(); cap];
    let mut lat_ns: Vec<u64> = Vec::with_capacity(1 << 20);
    let (mut next, mut oldest) = (1u64, 1u64);
    let warm = o.time / 5;
    let start = Instant::now();
    let (mut measuring, mut done_in_window, mut window_start) = (false, 0u64, start);
    loop {
        let now = Instant::now();
        if !measuring && now - start >= warm {
            (measuring, window_start, done_in_window) = (true, now, 0);
            lat_ns.clear();
        }
        if measuring && now - window_start >= o.time && done_in_window >= o.min_writes {
            break;
        }
        while next - oldest < o.outstanding as u64 {
            let mut e = wire::BatchEncoder::ops(1, WRITE_BYTES as u32);
            e.write(next, next % 1024, 1, WRITE_BYTES)?;
            let header = e.finish(&[data])?;
            for c in &mut conns {
                let mut f = OutFrame::control(header.clone(), next);
                f.data.push(data);
                if c.send(f).is_err() {
                    return Err("wire limit: a send queue is full".into());
                }
            }
            sent_at[(next as usize) & (cap - 1)] = Instant::now();
            next += 1;
        }
        for (c, acked) in conns.iter_mut().zip(acked.iter_mut()) {
            c.poll_send(&mut |_| {})?;
            c.poll_recv(&mut |f| {
                if let Frame::Ack(a) = f {
                    *acked = (*acked).max(a.durable_lsn);
                }
            })?;
        }
        let all = acked.iter().copied().min().unwrap_or(0);
        while oldest < next && oldest <= all {
            if measuring {
                done_in_window += 1;
                if lat_ns.len() < lat_ns.capacity() {
                    lat_ns.push(sent_at[(oldest as usize) & (cap - 1)].elapsed().as_nanos() as u64);
                }
            }
            oldest += 1;
        }
    }
    let secs = window_start.elapsed().as_secs_f64();
    lat_ns.sort_unstable();
    let p50 = lat_ns.get(lat_ns.len() / 2).copied().unwrap_or(0) as f64 / 1e3;
    Ok(WireLimit {
        writes_per_s: done_in_window as f64 / secs,
        p50_us: p50,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_is_acked_by_every_receiver() {
        for (n, w) in [(1, 1), (3, 8)] {
            let r = measure(WireLimitOpts {
                receivers: n,
                outstanding: w,
                time: Duration::ZERO,
                min_writes: 200,
                sender_core: None,
                receiver_core: None,
            })
            .unwrap();
            assert!(
                r.writes_per_s > 0.0 && r.p50_us > 0.0,
                "{n} receivers, {w} outstanding: {r:?}"
            );
        }
    }

    #[test]
    fn no_receiver_is_refused() {
        let o = WireLimitOpts {
            receivers: 0,
            outstanding: 1,
            time: Duration::ZERO,
            min_writes: 1,
            sender_core: None,
            receiver_core: None,
        };
        assert!(measure(o).is_err());
    }
}
