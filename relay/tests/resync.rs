//! Resync in one process, over real loopback TCP and real journals: relays that lack LSNs
//! the primary no longer holds (a journal that lost its tail, a relay added to a live
//! volume, an outage longer than the retention ring) get a history base and count again.
//! One test function runs the scenarios in order because a process has one reactor set.
//! No timed assertions: every wait is on a counted event, with a cap as failure bound.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use rdma_transport::tcp::{TcpAcceptor, TcpConfig, TcpConnection};
use rdma_transport::wire::{self, Frame, GapRequest, GapStatus, HelloReply};
use rdma_transport::{Connection, OutFrame};
use relay::journal::{Journal, JournalConfig};
use relay::relay::{Relay, RelayConfig, RelayVolumeStatus};
use relay::volume::{AckPolicy, OnRelayDown, RelayStatus, ReplicatedVolume, VolumeConfig};

const WAIT: Duration = Duration::from_secs(30);
const VOLUME_CORE: u32 = 0;
const RELAY_CORE: u32 = 1;
/// Retention of 16 writes of 4 KiB: outages of more writes than that need a resync.
const RETAIN_SMALL: u64 = 64 * 1024;

fn start_relay(dir: &Path, standby: Option<SocketAddr>, forwarder: bool, port: u16) -> Arc<Relay> {
    let mut cfg = RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], port)), dir);
    cfg.standby = standby.map(Into::into);
    cfg.forwarder = forwarder;
    cfg.core = Some(RELAY_CORE);
    cfg.segment_bytes = 1 << 20;
    // A stopped relay's listener closes on its reactor shortly after `stop` returns: a
    // restart on the same port retries the bind for a bounded time.
    let start = Instant::now();
    loop {
        match Relay::start(cfg.clone()) {
            Ok(r) => return r,
            Err(e) if port != 0 && start.elapsed() < WAIT => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("relay starts: {e}"),
        }
    }
}

fn volume(
    name: &str,
    relays: Vec<SocketAddr>,
    down: OnRelayDown,
    retain: u64,
    dirty_map: Option<PathBuf>,
) -> Arc<ReplicatedVolume> {
    let base = engine::bdev::malloc::create(&format!("{name}_base"), 4096, 4096, None).unwrap();
    let mut cfg = VolumeConfig::new(name, relays);
    cfg.ack_policy = AckPolicy::All;
    cfg.on_relay_down = down;
    cfg.relay_down_timeout_ms = 300;
    cfg.retain_bytes_max = retain;
    cfg.dirty_map = dirty_map;
    cfg.core = Some(VOLUME_CORE);
    ReplicatedVolume::create(cfg, base).expect("volume")
}

fn write_n(v: &Arc<ReplicatedVolume>, n: u64, what: &str) {
    let rx = drive_writes(VOLUME_CORE, v.clone(), 4, n, Arc::new(AtomicBool::new(false)));
    let res = collect(&rx, n, WAIT, what);
    let ok = res.iter().filter(|r| matches!(r, WriteResult::Ok(_))).count() as u64;
    assert_eq!(ok, n, "{what}: every write acknowledged: {res:?}");
}

fn link(v: &ReplicatedVolume, relay: SocketAddr) -> RelayStatus {
    let find = || v.status().relays.into_iter().find(|r| r.addr == relay.to_string());
    wait_until(WAIT, "volume shows the relay", || find().is_some());
    find().expect("relay is configured")
}

fn journal_status(r: &Relay, vol: &str) -> RelayVolumeStatus {
    let find = || r.status().volumes.into_iter().find(|v| v.name == vol);
    wait_until(WAIT, "relay shows the volume", || find().is_some());
    find().expect("relay has the volume")
}

/// LSNs of every op the journal in `dir` holds in `first..=last`, in order (the relay
/// owning it must be stopped).
fn journal_ops(dir: &Path, first: u64, last: u64) -> Vec<u64> {
    let (mut j, _) = Journal::open(JournalConfig::new(dir)).expect("journal opens");
    let mut lsns = Vec::new();
    j.read_range(first, last, &mut |rec| {
        if let Ok(Frame::Ops(b)) = wire::parse(rec.payload) {
            lsns.extend(b.ops.iter().map(|o| o.lsn()).filter(|l| (first..=last).contains(l)));
        }
    })
    .expect("read back");
    lsns
}

/// A standby that only asks for gaps: accepts one relay, lets it resume at LSN 1 (nothing
/// is safe, nothing released) and sends GapRequests.
struct GapAsker {
    conn: TcpConnection<Vec<u8>>,
    next_id: u64,
}

impl GapAsker {
    fn accept(acc: &TcpAcceptor) -> GapAsker {
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < WAIT, "relay did not connect to the gap asker");
            if let Ok(Some((mut conn, _))) = acc.poll_accept::<Vec<u8>>() {
                let mut hello = None;
                while hello.is_none() {
                    assert!(start.elapsed() < WAIT, "relay sent no Hello");
                    conn.poll_recv(&mut |f| {
                        if let Frame::Hello(h) = f {
                            hello = Some(h.generation);
                        }
                    })
                    .expect("receive Hello");
                }
                let reply = HelloReply::Accepted {
                    version_max: wire::WIRE_VERSION,
                    generation: hello.unwrap(),
                    resume_lsn: 1,
                    frame_bytes_max: wire::FRAME_BYTES_MAX as u32,
                    recv_credits: 0,
                };
                conn.send(OutFrame::control(wire::encode_hello_reply(&reply), 0))
                    .unwrap();
                let _ = conn.poll_send(&mut |_| {});
                return GapAsker { conn, next_id: 1 };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Asks for `first..=last`: (status, LSNs carried).
    fn ask(&mut self, first: u64, last: u64) -> (GapStatus, Vec<u64>) {
        let id = self.next_id;
        self.next_id += 1;
        let g = GapRequest {
            request_id: id,
            lsn_first: first,
            lsn_last: last,
        };
        self.conn
            .send(OutFrame::control(wire::encode_gap_request(&g), 0))
            .unwrap();
        let start = Instant::now();
        let mut got = None;
        while got.is_none() {
            assert!(start.elapsed() < WAIT, "no GapReply to {first}..={last}");
            let _ = self.conn.poll_send(&mut |_| {});
            self.conn
                .poll_recv(&mut |f| {
                    if let Frame::GapReply(r) = f {
                        if r.request_id == id {
                            got = Some((r.status, r.batch.ops.iter().map(|o| o.lsn()).collect()));
                        }
                    }
                })
                .expect("receive GapReply");
            std::thread::sleep(Duration::from_millis(1));
        }
        got.unwrap()
    }
}

/// The first 8 bytes of every block of `b` (the writers' stamps; 0 for never written).
fn read_stamps(b: &Arc<dyn engine::bdev::Bdev>) -> Vec<u64> {
    use engine::bdev::{IoCompletion, IoOp, IoRequest};
    let mut ch = b.open_channel().unwrap();
    let bs = b.block_size() as usize;
    let mut out = Vec::new();
    let chunk = 256u64;
    let mut off = 0;
    while off < b.num_blocks() {
        let n = chunk.min(b.num_blocks() - off);
        ch.submit(IoRequest {
            op: IoOp::Read,
            offset_blocks: off,
            num_blocks: n as u32,
            buf: Some(engine::buf::DmaBuf::alloc(n as usize * bs)),
            user_data: 0,
        })
        .unwrap();
        let mut got: Option<IoCompletion> = None;
        while got.is_none() {
            ch.poll(&mut |c| got = Some(c));
        }
        let buf = got.unwrap().buf.unwrap();
        out.extend(buf.chunks(bs).map(|b| u64::from_le_bytes(b[..8].try_into().unwrap())));
        off += n;
    }
    out
}

/// 5. One relay, no other holds its lost tail: the primary resyncs it with a base and a
///    block sync. A standby that started after the loss sees a hole no relay holds; by
///    the standby's rule (skip to the sync's Begin if it covers the hole) its image, built
///    from what the relay forwards, equals the primary's once the sync ended, with writes
///    overwriting synced blocks while the sync ran.
fn block_sync_scenario(root: &TempDir) {
    let dir = root.0.join("r7");
    let r7 = start_relay(&dir, None, true, 0);
    let r7_addr = r7.listen_addr();
    let v = volume("rs5", vec![r7_addr], OnRelayDown::Block, RETAIN_SMALL, None);
    write_n(&v, 300, "rs5 first writes");
    r7.stop(WAIT).unwrap();
    drop(r7);
    corrupt_last_record(&dir.join("rs5"));
    let sink = Sink::start();
    let r7 = start_relay(&dir, Some(sink.addr), true, r7_addr.port());
    let lost = journal_status(&r7, "rs5").durable_lsn;
    assert!(lost < 300, "r7 lost its tail");
    // Writes during the sync overwrite blocks it sends (stamps 4097.. land on blocks 1..).
    let rx = drive_writes_from(VOLUME_CORE, v.clone(), 8, 4097, 400, Arc::new(AtomicBool::new(false)));
    let res = collect(&rx, 400, WAIT, "rs5 writes during the sync");
    assert!(res.iter().all(|r| matches!(r, WriteResult::Ok(_))), "{res:?}");
    wait_until(WAIT, "the block sync ended and r7 resynced", || {
        let st = v.status();
        let l = link(&v, r7_addr);
        st.sync.as_ref().is_some_and(|s| s.state == "done") && l.resyncs_done >= 1 && l.state == "up"
    });
    let st = v.status().sync.unwrap();
    assert!(st.chunks_total > 0 && st.chunks_done == st.chunks_total, "{st:?}");
    assert!(st.bytes_sent > 0, "{st:?}");
    // Every LSN the volume assigned: the writes, the two markers, one write per chunk sent.
    let last = 300 + 400 + 2 + st.bytes_sent / relay::volume::SYNC_CHUNK_BYTES;
    // The forwarder sends in LSN order: the last LSN there means everything it holds is.
    sink.wait_delivered(|s| s.received.contains_key(&last), WAIT, "rs5 at the sink");
    let base = read_stamps(v.base());
    let s = sink.state.lock().unwrap();
    assert_eq!(s.received.keys().next_back(), Some(&last), "nothing after the last LSN");
    let hole = (1..=last)
        .find(|l| !s.received.contains_key(l))
        .expect("the standby has a hole");
    assert_eq!(hole, lost + 1, "the hole is what r7 lost");
    let (&begin, b) = s
        .received
        .range(hole..)
        .find(|(_, d)| d.kind == 5 && d.last_lsn & 0xff == 1)
        .expect("a sync Begin follows the hole");
    assert!(b.offset_blocks <= hole, "the sync covers the hole: {b:?}");
    assert!(
        (begin..=last).all(|l| s.received.contains_key(&l)),
        "nothing missing after the Begin"
    );
    let mut img = vec![0u64; base.len()];
    for d in s
        .received
        .range(..hole)
        .chain(s.received.range(begin..=last))
        .map(|(_, d)| d)
    {
        if d.kind == 1 {
            for (k, stamp) in d.stamps.iter().enumerate() {
                img[d.offset_blocks as usize + k] = *stamp;
            }
        }
    }
    let diff: Vec<usize> = (0..img.len()).filter(|&b| img[b] != base[b]).take(5).collect();
    assert!(
        diff.is_empty(),
        "standby image differs from the primary at blocks {diff:?}: {:?} vs {:?}; hole {hole}, begin {begin}, last {last}, {st:?}",
        diff.iter().map(|&b| img[b]).collect::<Vec<_>>(),
        diff.iter().map(|&b| base[b]).collect::<Vec<_>>()
    );
    drop(s);
    v.stop(WAIT).unwrap();
    r7.stop(WAIT).unwrap();
}

/// 6. A replicated volume created over a bdev that already holds data, with
///    `initial_sync`: the first op every relay gets is the Initial marker, then every block
///    of the base (writes overwriting some of them meanwhile), then the End. A standby that
///    applies the stream from LSN 1 ends with exactly the primary's image.
fn initial_sync_scenario(root: &TempDir) {
    let base = base_with_data("rs6_base");
    let sink = Sink::start();
    let r8 = start_relay(&root.0.join("r8"), Some(sink.addr), true, 0);
    let mut cfg = VolumeConfig::new("rs6", vec![r8.listen_addr()]);
    cfg.relay_down_timeout_ms = 300;
    cfg.core = Some(VOLUME_CORE);
    cfg.initial_sync = true;
    let v = ReplicatedVolume::create(cfg, base).expect("volume");
    let rx = drive_writes_from(VOLUME_CORE, v.clone(), 8, 8193, 300, Arc::new(AtomicBool::new(false)));
    let res = collect(&rx, 300, WAIT, "rs6 writes during the initial sync");
    assert!(res.iter().all(|r| matches!(r, WriteResult::Ok(_))), "{res:?}");
    wait_until(WAIT, "the initial sync ended", || {
        v.status().sync.as_ref().is_some_and(|s| s.state == "done")
    });
    let st = v.status().sync.unwrap();
    assert!(st.initial && st.full && st.chunks_done == st.chunks_total, "{st:?}");
    // Progress as an operator sees it: all of it, nothing left, a rate.
    assert_eq!(
        st.bytes_total,
        st.chunks_total * relay::volume::SYNC_CHUNK_BYTES,
        "{st:?}"
    );
    assert!(st.percent == 100.0 && st.eta_ms == Some(0), "{st:?}");
    assert!(st.bytes_sent > 0 && st.rate_bytes_per_sec > 0, "{st:?}");
    let last = 300 + 2 + st.bytes_sent / relay::volume::SYNC_CHUNK_BYTES;
    sink.wait_delivered(|s| s.delivered.len() as u64 >= last, WAIT, "rs6 at the sink");
    let want = read_stamps(v.base());
    let s = sink.state.lock().unwrap();
    assert_eq!(s.delivered.len() as u64, last, "nothing after the End's writes");
    assert_eq!(
        (s.delivered[0].lsn, s.delivered[0].kind, s.delivered[0].last_lsn),
        (1, 5, 3),
        "Initial first"
    );
    let mut img = vec![0u64; want.len()];
    for d in s.delivered.iter().filter(|d| d.kind == 1) {
        for (k, stamp) in d.stamps.iter().enumerate() {
            img[d.offset_blocks as usize + k] = *stamp;
        }
    }
    let diff: Vec<usize> = (0..img.len()).filter(|&b| img[b] != want[b]).take(5).collect();
    assert!(
        diff.is_empty(),
        "standby image differs from the primary at blocks {diff:?}"
    );
    drop(s);
    v.stop(WAIT).unwrap();
    r8.stop(WAIT).unwrap();
}

/// A RAM base whose every 3rd block holds data no LSN wrote (stamps `100_000 + block`).
fn base_with_data(name: &str) -> Arc<dyn engine::bdev::Bdev> {
    use engine::bdev::{IoOp, IoRequest};
    let base = engine::bdev::malloc::create(name, 4096, 4096, None).unwrap();
    let mut ch = base.open_channel().unwrap();
    for b in (0..4096u64).step_by(3) {
        let mut buf = engine::buf::DmaBuf::alloc(4096);
        fill(&mut buf, 100_000 + b);
        ch.submit(IoRequest {
            op: IoOp::Write,
            offset_blocks: b,
            num_blocks: 1,
            buf: Some(buf),
            user_data: b,
        })
        .unwrap();
        let mut done = false;
        while !done {
            ch.poll(&mut |c| {
                c.result.unwrap();
                done = true;
            });
        }
    }
    base
}

/// 7. An initial sync cut short by a restart of the primary (with a `dirty_map`, its
///    progress is persisted beside it) goes on where it was: the new incarnation sends
///    only what was left (a full `Begin` marker, so a syncing standby takes its End as
///    making it whole), and the sink's image is the primary's.
fn resumed_sync_scenario(root: &TempDir) {
    let base = base_with_data("rs7_base");
    let sink = Sink::start();
    let r9 = start_relay(&root.0.join("r9"), Some(sink.addr), true, 0);
    let dirty = root.0.join("rs7.dirty");
    let progress = dirty.with_extension("sync");
    let mut cfg = VolumeConfig::new("rs7", vec![r9.listen_addr()]);
    cfg.relay_down_timeout_ms = 300;
    cfg.core = Some(VOLUME_CORE);
    cfg.dirty_map = Some(dirty.clone());
    cfg.initial_sync = true;
    // 1 MiB/s: the 16 MiB copy takes 16 s, long enough to be cut short.
    cfg.initial_sync_bytes_per_sec = 1 << 20;
    let v = ReplicatedVolume::create(cfg.clone(), base.clone()).expect("volume");
    // Cut short once the persisted progress shows a part done and the dirty-block record
    // (which also covers recent sync writes until every relay confirmed them) has let
    // most of those go.
    let chunk_bits = |p: &std::path::Path| {
        engine::regionmap::read(p)
            .ok()
            .flatten()
            .map(|m| m.words.iter().map(|w| u64::from(w.count_ones())).sum::<u64>())
    };
    wait_until(WAIT, "progress persisted after a part of the copy", || {
        let st = v.status();
        chunk_bits(&progress).is_some_and(|left| left <= 192) && st.dirty.dirty_regions < 1024
    });
    v.stop(WAIT).unwrap();
    let left = chunk_bits(&progress).expect("progress kept at the stop");
    let dirty_runs = engine::regionmap::read(&dirty).unwrap().unwrap().runs(4096);
    let mut chunks: Vec<u64> = engine::regionmap::read(&progress)
        .unwrap()
        .unwrap()
        .runs(4096)
        .into_iter()
        .chain(dirty_runs)
        .flat_map(|(o, n)| o / 16..(o + n).div_ceil(16))
        .collect();
    chunks.sort_unstable();
    chunks.dedup();
    drop(v);
    let _ = engine::bdev::unregister("rs7");
    // The restart: same record, no initial_sync option (save_config does not keep it).
    cfg.initial_sync = false;
    cfg.initial_sync_bytes_per_sec = 0;
    let v = ReplicatedVolume::create(cfg, base).expect("volume again");
    wait_until(WAIT, "the resumed sync ended", || {
        v.status().sync.as_ref().is_some_and(|s| s.state == "done")
    });
    let second = v.status().sync.unwrap();
    assert_eq!(second.reason, "resumed after a restart", "{second:?}");
    assert!(second.full && !second.initial, "a full Begin marker: {second:?}");
    assert_eq!(
        second.chunks_total,
        chunks.len() as u64,
        "what was left ({left} chunks) and the dirty-block record, nothing else: {second:?}"
    );
    assert!(second.chunks_total < 256, "went on, did not start over: {second:?}");
    wait_until(WAIT, "the progress file removed", || !progress.exists());
    let want = read_stamps(v.base());
    let end = second.end_lsn;
    sink.wait_delivered(
        |s| s.delivered.last().is_some_and(|d| d.lsn >= end),
        WAIT,
        "rs7 at the sink",
    );
    let s = sink.state.lock().unwrap();
    let mut img = vec![0u64; want.len()];
    for d in s.delivered.iter().filter(|d| d.kind == 1) {
        for (k, stamp) in d.stamps.iter().enumerate() {
            img[d.offset_blocks as usize + k] = *stamp;
        }
    }
    let diff: Vec<usize> = (0..img.len()).filter(|&b| img[b] != want[b]).take(5).collect();
    assert!(
        diff.is_empty(),
        "sink image differs from the primary at blocks {diff:?}"
    );
    drop(s);
    v.stop(WAIT).unwrap();
    r9.stop(WAIT).unwrap();
}

#[test]
fn resync_scenarios() {
    let reactors = Reactors::start(ReactorOpts {
        cores: vec![VOLUME_CORE, RELAY_CORE],
        pin: false,
        idle: IdleMode::Poll,
    })
    .unwrap();
    let root = TempDir::new("/dev/shm", "resync");

    // 1. `all` + `block`, two relays (r1 forwards to the sink, r2 backs it up). r1's journal
    //    loses its last record; restarted, it holds fewer LSNs than it acknowledged, and the
    //    primary no longer holds the ones it lost: it is resynced from a base instead of
    //    being parked, writes resume and are acknowledged by both, and r1's journal holds
    //    every one of them from the base on. The sink still gets every LSN once, in order.
    let sink = Sink::start();
    let r1_dir = root.0.join("r1");
    let r1 = start_relay(&r1_dir, Some(sink.addr), true, 0);
    let r1_addr = r1.listen_addr();
    let r2 = start_relay(&root.0.join("r2"), Some(sink.addr), false, 0);
    let v1 = volume(
        "rs1",
        vec![r1_addr, r2.listen_addr()],
        OnRelayDown::Block,
        RETAIN_SMALL,
        None,
    );
    write_n(&v1, 300, "rs1 first writes");
    r1.stop(WAIT).unwrap();
    drop(r1);
    corrupt_last_record(&r1_dir.join("rs1"));
    let r1 = start_relay(&r1_dir, Some(sink.addr), true, r1_addr.port());
    let lost = journal_status(&r1, "rs1");
    assert!(lost.torn_tail.is_some(), "the corrupt record is cut: {lost:?}");
    assert!(lost.durable_lsn < 300, "r1 lost its tail: {lost:?}");
    wait_until(WAIT, "r1 resynced", || {
        let l = link(&v1, r1_addr);
        l.resyncs_done >= 1 && l.state == "up" && !v1.status().writes_blocked
    });
    let l = link(&v1, r1_addr);
    assert_eq!(l.resyncs, 1, "{l:?}");
    // The restart shows in the link's lifetime counters, though it is up again.
    assert!(
        l.link.ups >= 2 && l.link.reconnects >= 1 && l.link.failures >= 1,
        "r1's restart in its link counters: {l:?}"
    );
    let r2_standby = journal_status(&r2, "rs1").standby_link;
    assert!(
        r2_standby.is_some_and(|c| c.ups >= 1 && c.connects >= 1),
        "{r2_standby:?}"
    );
    write_n(&v1, 100, "rs1 writes after the resync");
    wait_until(WAIT, "r1 shows its base", || journal_status(&r1, "rs1").base_lsn != 0);
    let j = journal_status(&r1, "rs1");
    assert_eq!(
        j.base_lsn, 301,
        "r1's history restarts after what the primary had dropped: {j:?}"
    );
    wait_until(WAIT, "r1 durable to the end", || {
        journal_status(&r1, "rs1").durable_lsn >= 400
    });
    sink.wait_delivered(|s| s.delivered.len() >= 400, WAIT, "rs1 at the sink");
    {
        let s = sink.state.lock().unwrap();
        let lsns: Vec<u64> = s.delivered.iter().map(|d| d.lsn).collect();
        assert_eq!(lsns, (1..=400).collect::<Vec<u64>>(), "the sink's history has no hole");
    }

    // 2. A relay added to a live volume, after the retention ring moved on: resynced from
    //    the oldest LSN the primary holds, and counted by `all` + `block` from then on.
    let r3 = start_relay(&root.0.join("r3"), None, false, 0);
    let v2 = volume("rs2", vec![r3.listen_addr()], OnRelayDown::Block, RETAIN_SMALL, None);
    write_n(&v2, 100, "rs2 first writes");
    let r5_dir = root.0.join("r5");
    let r5 = start_relay(&r5_dir, None, false, 0);
    v2.add_relay(r5.listen_addr()).unwrap();
    wait_until(WAIT, "r5 resynced", || link(&v2, r5.listen_addr()).resyncs_done >= 1);
    write_n(&v2, 50, "rs2 writes with r5");
    // `all` + `block` completed them: r5 acknowledged them (the status snapshot follows).
    wait_until(WAIT, "r5 acked everything", || {
        link(&v2, r5.listen_addr()).acked_lsn >= 150
    });
    wait_until(WAIT, "r5 durable", || journal_status(&r5, "rs2").durable_lsn >= 150);
    let j = journal_status(&r5, "rs2");
    assert_eq!(j.base_lsn, 101, "{j:?}");

    // 3. `degraded`: r6 is down for more writes than the retention ring holds; back, it is
    //    resynced from the oldest retained LSN, catches up, and counts again.
    let r6_dir = root.0.join("r6");
    let r6 = start_relay(&r6_dir, None, false, 0);
    let r6_addr = r6.listen_addr();
    let dirty_file = root.0.join("rs3.dirty");
    let v3 = volume(
        "rs3",
        vec![r3.listen_addr(), r6_addr],
        OnRelayDown::Degraded,
        RETAIN_SMALL,
        Some(dirty_file.clone()),
    );
    write_n(&v3, 100, "rs3 first writes");
    r6.stop(WAIT).unwrap();
    drop(r6);
    write_n(&v3, 300, "rs3 writes with r6 down");
    let r6 = start_relay(&r6_dir, None, false, r6_addr.port());
    wait_until(WAIT, "r6 resynced and caught up", || {
        let l = link(&v3, r6_addr);
        l.resyncs_done >= 1 && l.acked_lsn >= 400 && l.state == "up"
    });
    // The relay's status snapshot follows the primary's view within its refresh period.
    wait_until(WAIT, "r6 shows its base", || journal_status(&r6, "rs3").base_lsn != 0);
    let base = journal_status(&r6, "rs3").base_lsn;
    assert!(
        base > 101 && base <= 400,
        "r6's base is what the primary retained: {base}"
    );
    write_n(&v3, 50, "rs3 writes with r6 counted again");
    wait_until(WAIT, "r6 holds the new writes", || {
        journal_status(&r6, "rs3").durable_lsn >= 450
    });
    // The writes r6 skipped stay in the persisted dirty-block record (a block-level resync
    // would send those regions); every write that completed had its regions flushed first.
    let d = v3.status().dirty;
    assert!(d.dirty_regions > 0 && d.start_lsn <= 101, "{d:?}");
    assert!(d.marks > 0 && d.flushed_marks == d.marks, "{d:?}");
    assert!(!v3.dirty_runs().is_empty());
    assert!(dirty_file.exists(), "the record is persisted");

    // 4. Restarted after the marker, r1 recovers its base: GapRequests for what it skipped
    //    are answered `not_held`, and what it holds from the base on is served.
    for v in [&v1, &v2, &v3] {
        v.stop(WAIT).unwrap();
    }
    r1.stop(WAIT).unwrap();
    drop(r1);
    let ops = journal_ops(&r1_dir.join("rs1"), 301, 400);
    assert_eq!(ops, (301..=400).collect::<Vec<u64>>(), "r1's journal from the base on");
    let asker = TcpAcceptor::bind("127.0.0.1:0".parse().unwrap(), TcpConfig::default()).unwrap();
    let r1 = start_relay(&r1_dir, Some(asker.local_addr()), false, 0);
    let j = journal_status(&r1, "rs1");
    assert_eq!(j.base_lsn, 301, "base recovered: {j:?}");
    assert_eq!(j.durable_lsn, 400, "{j:?}");
    let mut g = GapAsker::accept(&asker);
    let lost_first = lost.durable_lsn + 1;
    assert_eq!(g.ask(lost_first, 300), (GapStatus::NotHeld, vec![]));
    assert_eq!(g.ask(301, 305), (GapStatus::Complete, (301..=305).collect()));
    // A range across the skipped LSNs: the reply is one contiguous run, never ops from
    // both sides of the skipped ones (what lies before them may have been released).
    let from = lost_first.saturating_sub(2).max(1);
    let (st, lsns) = g.ask(from, 303);
    assert_ne!(st, GapStatus::NotHeld, "it holds 301..=303 at least");
    let run: Vec<u64> = (lsns[0]..lsns[0] + lsns.len() as u64).collect();
    assert_eq!(lsns, run, "{st:?}: one contiguous run");
    assert!(
        lsns.iter().all(|&l| l < lost_first) || lsns.iter().all(|&l| l >= 301),
        "{st:?} {lsns:?}: never both sides of the skipped LSNs"
    );

    for r in [&r1, &r2, &r3, &r5, &r6] {
        r.stop(WAIT).unwrap();
    }
    drop(sink);

    block_sync_scenario(&root);
    initial_sync_scenario(&root);
    resumed_sync_scenario(&root);
    reactors.shutdown();
    reactors.wait();
}
