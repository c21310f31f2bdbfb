//! Test helpers shared by the in-process tests (`relay/tests/`) and the process tests
//! (root `tests/replication.rs`): a test-only standby sink and a write driver.
//!
//! The sink is NOT the standby (that is the standby crate's); it is just enough of one to
//! check the relays' side: it accepts Forward frames from relays, de-duplicates by LSN,
//! delivers ops in LSN order (holding early ones), acknowledges with SafeUpTo, asks for
//! what it lacks with GapRequests (a gap, or no progress for a while: it then pulls from
//! every relay, which is how a backup takes over from a dead forwarder), and records what
//! it delivered.

#![allow(dead_code)]

pub mod delay_proxy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use engine::bdev::{Bdev, IoOp, IoRequest};
use engine::buf::DmaBuf;
use engine::reactor::{self, PollStatus};
use rdma_transport::tcp::{TcpAcceptor, TcpConfig, TcpConnection};
use rdma_transport::wire::{self, Frame, GapRequest, HelloReply, Op, Role, SafeUpTo};
use rdma_transport::{Connection, OutFrame};

/// One op the sink delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub lsn: u64,
    pub kind: u8,
    pub offset_blocks: u64,
    /// First 8 bytes of the data (the write's stamp), 0 for ops without data.
    pub stamp: u64,
    /// Restart point: its tag and the last LSN it covers (empty / 0 otherwise).
    /// Sync marker: `offset_blocks` and `last_lsn` are its two arguments.
    pub tag: Vec<u8>,
    pub last_lsn: u64,
    /// Writes: the first 8 bytes of every block (one stamp per block).
    pub stamps: Vec<u64>,
}

#[derive(Default)]
pub struct SinkState {
    pub delivered: Vec<Delivered>,
    pub duplicates: u64,
    pub gap_requests: u64,
    pub forward_frames: u64,
    pub gap_replies: u64,
    pub errors: Vec<String>,
    /// PrimaryLiveness reports received (from any relay) and the latest one.
    pub liveness_reports: u64,
    pub last_liveness: Option<wire::PrimaryLiveness>,
    /// Every op received, by LSN, in order or not (a hole does not hide what follows it).
    pub received: std::collections::BTreeMap<u64, Delivered>,
}

pub struct Sink {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<SinkState>>,
    stop: Arc<AtomicBool>,
    join: Option<std::thread::JoinHandle<()>>,
}

/// Ops waiting for earlier LSNs (the reorder window).
const SINK_WINDOW_OPS_MAX: usize = 1 << 20;
/// No progress for this long with relays connected: pull with GapRequests.
const SINK_PULL_AFTER: Duration = Duration::from_millis(100);

struct SinkConn {
    conn: TcpConnection<Vec<u8>>,
    accepted: bool,
}

impl Sink {
    pub fn start() -> Sink {
        let acc = TcpAcceptor::bind("127.0.0.1:0".parse().unwrap(), TcpConfig::default()).unwrap();
        let addr = acc.local_addr();
        let state = Arc::new(Mutex::new(SinkState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let join = std::thread::spawn(move || sink_loop(acc, st, sp));
        Sink {
            addr,
            state,
            stop,
            join: Some(join),
        }
    }

    /// Waits until the sink delivered every LSN up to at least `n` ops, or panics with `what`.
    pub fn wait_delivered(&self, pred: impl Fn(&SinkState) -> bool, within: Duration, what: &str) {
        let start = Instant::now();
        loop {
            {
                let s = self.state.lock().unwrap();
                if pred(&s) {
                    return;
                }
                if start.elapsed() > within {
                    panic!(
                        "sink: {what} not reached within {within:?}: delivered {} ops (last LSN {:?}), {} duplicates, {} gap requests, errors {:?}",
                        s.delivered.len(),
                        s.delivered.last().map(|d| d.lsn),
                        s.duplicates,
                        s.gap_requests,
                        s.errors
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn sink_loop(acc: TcpAcceptor, state: Arc<Mutex<SinkState>>, stop: Arc<AtomicBool>) {
    let mut conns: Vec<SinkConn> = Vec::new();
    let mut next: u64 = 1;
    let mut window: BTreeMap<u64, Delivered> = BTreeMap::new();
    let mut last_progress = Instant::now();
    let mut last_pull = Instant::now();
    let mut safe_sent = 0u64;
    let mut req_id = 0u64;
    while !stop.load(Ordering::Relaxed) {
        while let Ok(Some((c, _))) = acc.poll_accept::<Vec<u8>>() {
            conns.push(SinkConn {
                conn: c,
                accepted: false,
            });
        }
        let mut any = false;
        let mut i = 0;
        while i < conns.len() {
            let mut ops: Vec<Delivered> = Vec::new();
            let mut hello: Option<(u64, bool)> = None;
            let mut bad: Option<String> = None;
            let (mut fwd, mut gaprep) = (0, 0);
            let mut live: Option<wire::PrimaryLiveness> = None;
            let mut lives = 0u64;
            let r = conns[i].conn.poll_recv(&mut |f: Frame<'_>| match f {
                Frame::Hello(h) => hello = Some((h.generation, h.role == Role::Relay)),
                Frame::Forward(b) => {
                    fwd += 1;
                    ops.extend(b.ops.iter().map(delivered));
                }
                Frame::GapReply(g) => {
                    gaprep += 1;
                    ops.extend(g.batch.ops.iter().map(delivered));
                }
                Frame::Heartbeat(_) | Frame::Ack(_) => {}
                Frame::PrimaryLiveness(p) => {
                    lives += 1;
                    live = Some(p);
                }
                other => bad = Some(format!("unexpected {:?}", other.kind())),
            });
            if let Some((generation, role_ok)) = hello {
                let reply = if role_ok {
                    HelloReply::Accepted {
                        version_max: wire::WIRE_VERSION,
                        generation,
                        resume_lsn: next,
                        frame_bytes_max: wire::FRAME_BYTES_MAX as u32,
                        recv_credits: 0,
                    }
                } else {
                    HelloReply::Refused {
                        reason: wire::RefuseReason::Role,
                        generation: 0,
                        version_max: wire::WIRE_VERSION,
                    }
                };
                let _ = conns[i]
                    .conn
                    .send(OutFrame::control(wire::encode_hello_reply(&reply), 0));
                conns[i].accepted = role_ok;
            }
            {
                let mut s = state.lock().unwrap();
                s.forward_frames += fwd;
                s.gap_replies += gaprep;
                s.liveness_reports += lives;
                if live.is_some() {
                    s.last_liveness = live;
                }
                if let Some(b) = bad {
                    s.errors.push(b);
                }
                for d in ops {
                    any = true;
                    s.received.entry(d.lsn).or_insert_with(|| d.clone());
                    if d.lsn < next || window.contains_key(&d.lsn) {
                        s.duplicates += 1;
                    } else if window.len() < SINK_WINDOW_OPS_MAX {
                        window.insert(d.lsn, d);
                    }
                }
                while let Some(e) = window.first_entry() {
                    if *e.key() != next {
                        break;
                    }
                    s.delivered.push(e.remove());
                    next += 1;
                    last_progress = Instant::now();
                }
            }
            let _ = conns[i].conn.poll_send(&mut |_| {});
            if r.is_err() || conns[i].conn.state() == rdma_transport::ConnState::Failed {
                conns.swap_remove(i);
                continue;
            }
            i += 1;
        }
        // Tell every relay what is safe, so they release.
        if next - 1 > safe_sent {
            safe_sent = next - 1;
            for c in conns.iter_mut().filter(|c| c.accepted) {
                let _ = c.conn.send(OutFrame::control(
                    wire::encode_safe_up_to(&SafeUpTo {
                        lsn: safe_sent,
                        generation: 0,
                    }),
                    0,
                ));
            }
        }
        // A gap (ops held beyond `next`), or no progress: ask every relay.
        let gap = !window.is_empty();
        if (gap || last_progress.elapsed() > SINK_PULL_AFTER) && last_pull.elapsed() > Duration::from_millis(30) {
            last_pull = Instant::now();
            let last = window.keys().next().map_or(next + 4096, |k| k - 1);
            req_id += 1;
            let mut n = 0;
            for c in conns.iter_mut().filter(|c| c.accepted) {
                let _ = c.conn.send(OutFrame::control(
                    wire::encode_gap_request(&GapRequest {
                        request_id: req_id,
                        lsn_first: next,
                        lsn_last: last.max(next),
                    }),
                    0,
                ));
                n += 1;
            }
            state.lock().unwrap().gap_requests += n;
        }
        for c in &mut conns {
            let _ = c.conn.poll_send(&mut |_| {});
        }
        if !any {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn delivered(op: &Op<'_>) -> Delivered {
    let stamp = |d: &[u8]| {
        if d.len() >= 8 {
            u64::from_le_bytes(d[..8].try_into().unwrap())
        } else {
            0
        }
    };
    match *op {
        Op::Write {
            lsn,
            offset_blocks,
            num_blocks,
            data,
        } => Delivered {
            lsn,
            kind: 1,
            offset_blocks,
            stamp: stamp(data),
            tag: Vec::new(),
            last_lsn: 0,
            stamps: data
                .chunks(data.len() / num_blocks.max(1) as usize)
                .map(stamp)
                .collect(),
        },
        Op::WriteZeroes { lsn, offset_blocks, .. } => Delivered {
            lsn,
            kind: 2,
            offset_blocks,
            stamp: 0,
            tag: Vec::new(),
            last_lsn: 0,
            stamps: Vec::new(),
        },
        Op::Deallocate { lsn, offset_blocks, .. } => Delivered {
            lsn,
            kind: 3,
            offset_blocks,
            stamp: 0,
            tag: Vec::new(),
            last_lsn: 0,
            stamps: Vec::new(),
        },
        Op::RestartPoint {
            lsn,
            epoch,
            last_lsn,
            tag,
        } => Delivered {
            lsn,
            kind: 4,
            offset_blocks: epoch,
            stamp: 0,
            tag: tag.to_vec(),
            last_lsn,
            stamps: Vec::new(),
        },
        Op::Sync { lsn, mark } => {
            let (a0, a1) = mark.args();
            Delivered {
                lsn,
                kind: 5,
                offset_blocks: a0,
                stamp: 0,
                tag: Vec::new(),
                last_lsn: a1,
                stamps: Vec::new(),
            }
        }
    }
}

/// Outcome of one write the driver issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    Ok(u64),
    Failed(u64),
}

/// Starts a poller on `core` writing stamped 4 KiB blocks to `bdev` with `qd` writes in
/// flight: write number `seq` (from 1) goes to block `seq % blocks` and its first 8 bytes
/// are `seq` (then filler derived from it). Each completion is sent on the returned
/// channel. Stops after `count` writes or when `stop` is set.
pub fn drive_writes(
    core: u32,
    bdev: Arc<dyn Bdev>,
    qd: usize,
    count: u64,
    stop: Arc<AtomicBool>,
) -> mpsc::Receiver<WriteResult> {
    drive_writes_from(core, bdev, qd, 1, count, stop)
}

/// As [`drive_writes`], numbering the writes from `first` (write `seq` goes to block
/// `seq % blocks`, stamped `seq`): `first` past the volume's blocks overwrites earlier
/// writes' blocks with new contents. Writes `first..first + count`.
pub fn drive_writes_from(
    core: u32,
    bdev: Arc<dyn Bdev>,
    qd: usize,
    first: u64,
    count: u64,
    stop: Arc<AtomicBool>,
) -> mpsc::Receiver<WriteResult> {
    let count = first + count - 1;
    let (tx, rx) = mpsc::channel();
    reactor::send_msg(core, move || {
        let mut ch = bdev.open_channel().expect("open channel");
        let bs = bdev.block_size() as usize;
        let blocks = bdev.num_blocks();
        let mut free: Vec<DmaBuf> = (0..qd).map(|_| DmaBuf::alloc(bs)).collect();
        let mut next_seq = first;
        let mut in_flight = 0usize;
        let id = std::rc::Rc::new(std::cell::Cell::new(None));
        let id2 = id.clone();
        let pid = reactor::register_poller("test_writer", None, move || {
            let mut busy = false;
            let stopping = stop.load(Ordering::Relaxed);
            while !stopping && next_seq <= count {
                let Some(mut buf) = free.pop() else { break };
                fill(&mut buf, next_seq);
                let io = IoRequest {
                    op: IoOp::Write,
                    offset_blocks: next_seq % blocks,
                    num_blocks: 1,
                    buf: Some(buf),
                    user_data: next_seq,
                };
                match ch.submit(io) {
                    Ok(()) => {
                        next_seq += 1;
                        in_flight += 1;
                        busy = true;
                    }
                    Err(io) => {
                        free.push(io.buf.unwrap());
                        break;
                    }
                }
            }
            ch.poll(&mut |c| {
                in_flight -= 1;
                let _ = tx.send(match c.result {
                    Ok(()) => WriteResult::Ok(c.user_data),
                    Err(_) => WriteResult::Failed(c.user_data),
                });
                if let Some(b) = c.buf {
                    free.push(b);
                }
                busy = true;
            });
            if (stopping || next_seq > count) && in_flight == 0 {
                if let Some(id) = id2.take() {
                    reactor::unregister_poller(id);
                }
            }
            if busy {
                PollStatus::Busy
            } else {
                PollStatus::Idle
            }
        });
        id.set(Some(pid));
    })
    .expect("send to reactor");
    rx
}

/// The bytes of write `seq`.
pub fn fill(buf: &mut [u8], seq: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in buf[8..].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
}

/// Collects results until `n` arrived or `within` passed (then panics naming `what`).
pub fn collect(rx: &mpsc::Receiver<WriteResult>, n: u64, within: Duration, what: &str) -> Vec<WriteResult> {
    let start = Instant::now();
    let mut v = Vec::new();
    while (v.len() as u64) < n {
        let left = within.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(r) => v.push(r),
            Err(_) => panic!("{what}: only {} of {n} writes completed within {within:?}", v.len()),
        }
    }
    v
}

#[allow(unused_imports)]
pub use engine::testing::{wait_until, TempDir};

/// Closed-loop 4 KiB random-ish writes at `qd` on `core` for `dur` (after `warmup`):
/// (IOPS, p50 µs, p99 µs, errors). Latency per I/O from submit to completion.
pub fn bench_writes(
    core: u32,
    bdev: Arc<dyn Bdev>,
    qd: usize,
    warmup: Duration,
    dur: Duration,
) -> (f64, f64, f64, u64) {
    let (tx, rx) = mpsc::channel();
    reactor::send_msg(core, move || {
        let mut ch = bdev.open_channel().expect("open channel");
        let bs = bdev.block_size() as usize;
        let blocks = bdev.num_blocks();
        let mut free: Vec<DmaBuf> = (0..qd).map(|_| DmaBuf::alloc(bs)).collect();
        let mut lat: Vec<u64> = Vec::with_capacity(4_000_000);
        let mut start_ns = vec![0u64; qd];
        let mut slots: Vec<usize> = (0..qd).collect();
        let (mut seq, mut errors, mut in_flight) = (1u64, 0u64, 0usize);
        let t0 = engine::clock::now_ns();
        let (w_ns, end_ns) = (t0 + warmup.as_nanos() as u64, t0 + (warmup + dur).as_nanos() as u64);
        let mut done = false;
        let id = std::rc::Rc::new(std::cell::Cell::new(None));
        let id2 = id.clone();
        let pid = reactor::register_poller("bench_writer", None, move || {
            let now = engine::clock::now_ns();
            if !done && now < end_ns {
                while let (Some(mut buf), Some(slot)) = (free.pop(), slots.pop()) {
                    fill(&mut buf, seq);
                    start_ns[slot] = engine::clock::now_ns();
                    let io = IoRequest {
                        op: IoOp::Write,
                        offset_blocks: seq.wrapping_mul(2654435761) % blocks,
                        num_blocks: 1,
                        buf: Some(buf),
                        user_data: slot as u64,
                    };
                    match ch.submit(io) {
                        Ok(()) => {
                            seq += 1;
                            in_flight += 1;
                        }
                        Err(io) => {
                            free.push(io.buf.unwrap());
                            slots.push(slot);
                            break;
                        }
                    }
                }
            }
            ch.poll(&mut |c| {
                let t = engine::clock::now_ns();
                let slot = c.user_data as usize;
                if t >= w_ns && t < end_ns {
                    lat.push(t - start_ns[slot]);
                }
                if c.result.is_err() {
                    errors += 1;
                }
                in_flight -= 1;
                free.push(c.buf.unwrap());
                slots.push(slot);
            });
            if now >= end_ns && in_flight == 0 && !done {
                done = true;
                let mut l = std::mem::take(&mut lat);
                l.sort_unstable();
                let pct = |p: f64| {
                    l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
                        .copied()
                        .unwrap_or(0) as f64
                        / 1000.0
                };
                let iops = l.len() as f64 / dur.as_secs_f64();
                let _ = tx.send((iops, pct(0.5), pct(0.99), errors));
                if let Some(id) = id2.take() {
                    reactor::unregister_poller(id);
                }
            }
            PollStatus::Busy
        });
        id.set(Some(pid));
    })
    .expect("send to reactor");
    rx.recv_timeout(warmup + dur + Duration::from_secs(60))
        .expect("bench finished")
}

/// Writes exactly `n` blocks to `bdev` from reactor `core`, `qd` in flight (stamps from
/// `first`); returns (errors, elapsed). Counts writes, not time: for tests whose verdict
/// must not depend on how fast the machine is.
pub fn write_count(core: u32, bdev: Arc<dyn Bdev>, qd: usize, first: u64, n: u64) -> (u64, Duration) {
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    reactor::send_msg(core, move || {
        let mut ch = bdev.open_channel().expect("open channel");
        let bs = bdev.block_size() as usize;
        let blocks = bdev.num_blocks();
        let mut free: Vec<DmaBuf> = (0..qd).map(|_| DmaBuf::alloc(bs)).collect();
        let (mut seq, mut completed, mut errors) = (first, 0u64, 0u64);
        let id = std::rc::Rc::new(std::cell::Cell::new(None));
        let id2 = id.clone();
        let pid = reactor::register_poller("count_writer", None, move || {
            while seq < first + n {
                let Some(mut buf) = free.pop() else { break };
                fill(&mut buf, seq);
                let io = IoRequest {
                    op: IoOp::Write,
                    offset_blocks: seq.wrapping_mul(2654435761) % blocks,
                    num_blocks: 1,
                    buf: Some(buf),
                    user_data: seq,
                };
                match ch.submit(io) {
                    Ok(()) => seq += 1,
                    Err(io) => {
                        free.push(io.buf.unwrap());
                        break;
                    }
                }
            }
            ch.poll(&mut |c| {
                errors += u64::from(c.result.is_err());
                completed += 1;
                free.push(c.buf.unwrap());
            });
            if completed == n {
                let _ = tx.send(errors);
                if let Some(id) = id2.take() {
                    reactor::unregister_poller(id);
                }
            }
            PollStatus::Busy
        });
        id.set(Some(pid));
    })
    .expect("send to reactor");
    let errors = rx.recv_timeout(Duration::from_secs(300)).expect("writes finished");
    (errors, t0.elapsed())
}

/// Flips a payload byte of the last record of the newest segment holding records: the
/// relay's next recovery cuts it (a lost tail).
pub fn corrupt_last_record(dir: &std::path::Path) {
    use relay::journal::record;
    let mut segs: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bjl"))
        .collect();
    segs.sort();
    for p in segs.iter().rev() {
        let mut b = std::fs::read(p).unwrap();
        let (mut off, mut last) = (0usize, None);
        while off < b.len() {
            let Ok((h, _)) = record::check(&b[off..]) else { break };
            if h.kind == record::RecordKind::Frame {
                last = Some((off, h.payload_len as usize));
            }
            off += h.span();
        }
        if let Some((at, len)) = last {
            b[at + record::RECORD_HDR_BYTES + len / 2] ^= 0x5a;
            std::fs::write(p, &b).unwrap();
            return;
        }
    }
    panic!("no record to corrupt in {}", dir.display());
}
