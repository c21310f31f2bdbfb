//! The promoted head of a snapshot-mode standby serves I/O on any number of channels at
//! once: channels on different threads writing and reading against a model image, the
//! same never-written block written through two channels at once (one block wins, the
//! other is freed), a read racing a first write, and a flush on one channel making
//! durable what other channels completed before it (checked by reopening the volume
//! from its metadata), and a read or overwrite held in flight across an unmap, its
//! journaling and a first write that could reuse the block (`Hold`). Over RAM bdevs,
//! which complete at the next poll: every interleaving below is fixed by the order of
//! submits and polls, none by timing.

mod common;

use common::{offer_wire, read_all};
use engine::bdev::{
    malloc, Bdev, BdevChannel, BdevError, BdevInfo, ChannelBackend, Geometry, IoCompletion, IoOp, IoRequest, IoStats,
    StatsSet,
};
use engine::buf::DmaBuf;
use rdma_transport::wire::Op;
use standby::snapshot::SnapshotOpts;
use standby::{ModeConfig, StandbyConfig, StandbyVolume};
use std::sync::{Arc, Barrier, Mutex};

const BS: usize = 4096;
const VOLUME_BLOCKS: u64 = 512;
/// Blocks the snapshot before promotion wrote (the head starts over them).
const SNAP_BLOCKS: u64 = 64;

struct Setup {
    vol: StandbyVolume,
    cfg: StandbyConfig,
}

/// A formatted snapshot-mode volume with one snapshot (blocks `0..SNAP_BLOCKS` hold
/// `snap_block(lba)`), failed over and promoted.
fn promoted(name: &str) -> (Setup, Arc<dyn Bdev>) {
    let data = malloc::create(&format!("{name}-data"), 4 * VOLUME_BLOCKS, BS as u32, None).unwrap();
    promoted_on(name, data)
}

/// [`promoted`] over a given data bdev.
fn promoted_on(name: &str, data: Arc<dyn Bdev>) -> (Setup, Arc<dyn Bdev>) {
    let cfg = StandbyConfig {
        name: name.to_string(),
        mode: ModeConfig::Snapshot {
            data,
            metadata: malloc::create(&format!("{name}-meta"), 2 + 2 * 1024, BS as u32, None).unwrap(),
            volume_blocks: VOLUME_BLOCKS,
            opts: SnapshotOpts { keep_last: 2 },
        },
        format: true,
    };
    let mut vol = StandbyVolume::open(cfg.clone()).unwrap();
    for lba in 0..SNAP_BLOCKS {
        let d = snap_block(lba);
        offer_wire(
            &mut vol,
            &Op::Write {
                lsn: lba + 1,
                offset_blocks: lba,
                num_blocks: 1,
                data: &d,
            },
        );
    }
    offer_wire(
        &mut vol,
        &Op::RestartPoint {
            lsn: SNAP_BLOCKS + 1,
            epoch: 1,
            last_lsn: SNAP_BLOCKS,
            tag: b"rp1",
        },
    );
    while vol.applied_epoch() < 1 {
        vol.poll(0);
        assert!(vol.error().is_none(), "{:?}", vol.error());
    }
    let head = vol.promote().unwrap();
    (Setup { vol, cfg }, head)
}

/// Reopens the volume from its bdevs, as after a crash (nothing unflushed is kept
/// in memory), and returns its head.
fn reopen(s: &mut Setup) -> Arc<dyn Bdev> {
    let mut cfg = s.cfg.clone();
    cfg.format = false;
    s.vol = StandbyVolume::open(cfg).unwrap();
    s.vol.promoted_bdev().unwrap()
}

fn snap_block(lba: u64) -> Vec<u8> {
    pattern(lba, 0, 0xff)
}

/// A block's contents naming its LBA, a version and a writer.
fn pattern(lba: u64, version: u64, writer: u8) -> Vec<u8> {
    let mut b = vec![writer; BS];
    b[..8].copy_from_slice(&lba.to_le_bytes());
    b[8..16].copy_from_slice(&version.to_le_bytes());
    b
}

fn model_image() -> Vec<u8> {
    let mut img = vec![0u8; VOLUME_BLOCKS as usize * BS];
    for lba in 0..SNAP_BLOCKS {
        img[lba as usize * BS..(lba as usize + 1) * BS].copy_from_slice(&snap_block(lba));
    }
    img
}

fn submit(ch: &mut BdevChannel, op: IoOp, lba: u64, data: Option<&[u8]>, n: u32, tag: u64) {
    let buf = match op {
        IoOp::Write => {
            let d = data.unwrap();
            let mut b = DmaBuf::alloc(d.len());
            b.copy_from_slice(d);
            Some(b)
        }
        IoOp::Read => Some(DmaBuf::alloc(n as usize * BS)),
        _ => None,
    };
    ch.submit(IoRequest {
        op,
        offset_blocks: lba,
        num_blocks: n,
        buf,
        user_data: tag,
    })
    .unwrap();
}

/// Polls until `n` completions arrive; all must succeed.
fn complete(ch: &mut BdevChannel, n: usize) -> Vec<IoCompletion> {
    let mut got = Vec::new();
    while got.len() < n {
        ch.poll(&mut |c| got.push(c));
    }
    for c in &got {
        assert!(c.result.is_ok(), "{:?}", c.result);
    }
    got
}

fn read_one(ch: &mut BdevChannel, lba: u64) -> Vec<u8> {
    submit(ch, IoOp::Read, lba, None, 1, 0);
    complete(ch, 1).pop().unwrap().buf.unwrap().to_vec()
}

fn io(ch: &mut BdevChannel, op: IoOp, lba: u64, data: Option<&[u8]>, n: u32) {
    submit(ch, op, lba, data, n, 0);
    complete(ch, 1);
}

fn used_blocks(s: &Setup) -> u64 {
    s.vol.status().snapshot.unwrap().used_blocks
}

#[test]
fn channels_on_several_threads_share_one_volume() {
    const THREADS: u64 = 3;
    const ROUNDS: u64 = 12;
    const STRIPE: u64 = 8;
    let (s, head) = promoted("hc-threads");
    let model = Arc::new(Mutex::new(model_image()));
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (head, model, barrier) = (head.clone(), model.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut ch = head.open_channel().unwrap();
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                for round in 0..ROUNDS {
                    // Several writes in flight at once in this thread's stripes (stripe
                    // k belongs to thread k % THREADS), first writes and overwrites,
                    // some over the snapshot's blocks, some unmapped, each read back.
                    let mut mine = Vec::new();
                    for _ in 0..6 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let stripe = (x % (VOLUME_BLOCKS / STRIPE / THREADS)) * THREADS + t;
                        let n = 1 + (x >> 20) % 3;
                        let lba = stripe * STRIPE + (x >> 30) % (STRIPE - n + 1);
                        if mine.iter().any(|&(l, m)| lba < l + m && l < lba + n) {
                            continue;
                        }
                        mine.push((lba, n));
                    }
                    let mut img = model.lock().unwrap();
                    for (i, &(lba, n)) in mine.iter().enumerate() {
                        let unmap = (x >> (40 + i)) & 7 == 0;
                        let mut d = Vec::new();
                        for b in lba..lba + n {
                            d.extend(if unmap {
                                vec![0; BS]
                            } else {
                                pattern(b, round + 1, t as u8)
                            });
                        }
                        let op = if unmap { IoOp::Unmap } else { IoOp::Write };
                        submit(&mut ch, op, lba, (!unmap).then_some(&d[..]), n as u32, i as u64);
                        img[lba as usize * BS..(lba + n) as usize * BS].copy_from_slice(&d);
                    }
                    drop(img);
                    complete(&mut ch, mine.len());
                    for &(lba, n) in &mine {
                        submit(&mut ch, IoOp::Read, lba, None, n as u32, 0);
                        let got = complete(&mut ch, 1).pop().unwrap().buf.unwrap();
                        let img = model.lock().unwrap();
                        assert!(
                            got[..] == img[lba as usize * BS..(lba + n) as usize * BS],
                            "thread {t} round {round}: own write at {lba}+{n} reads back wrong"
                        );
                    }
                    if round % 4 == t % 4 {
                        io(&mut ch, IoOp::Flush, 0, None, 0);
                    }
                    // Every thread's completed writes, read through this channel.
                    barrier.wait();
                    let img = model.lock().unwrap().clone();
                    for lba in 0..VOLUME_BLOCKS {
                        let got = read_one(&mut ch, lba);
                        assert!(
                            got[..] == img[lba as usize * BS..(lba as usize + 1) * BS],
                            "thread {t} round {round}: block {lba} differs from the model"
                        );
                    }
                    barrier.wait();
                }
                io(&mut ch, IoOp::Flush, 0, None, 0);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let want = model.lock().unwrap().clone();
    assert!(read_all(&head) == want, "head differs from the model");
    drop(head);
    let mut s = s;
    let head = reopen(&mut s);
    assert!(
        read_all(&head) == want,
        "flushed head differs from the model after reopening"
    );
}

#[test]
fn concurrent_first_writes_of_one_block_keep_one() {
    let (s, head) = promoted("hc-race");
    let mut a = head.open_channel().unwrap();
    let mut b = head.open_channel().unwrap();
    let used0 = used_blocks(&s);
    // Blocks never written, and blocks of the snapshot: both are first writes.
    let lbas: Vec<u64> = (SNAP_BLOCKS - 8..SNAP_BLOCKS + 24).collect();
    for &lba in &lbas {
        submit(&mut a, IoOp::Write, lba, Some(&pattern(lba, 1, 0xa)), 1, lba);
        submit(&mut b, IoOp::Write, lba, Some(&pattern(lba, 1, 0xb)), 1, lba);
    }
    // A publishes first; B finds every block taken and writes into A's blocks.
    complete(&mut a, lbas.len());
    complete(&mut b, lbas.len());
    assert_eq!(
        used_blocks(&s),
        used0 + lbas.len() as u64,
        "one block per LBA is kept, the losers' blocks are freed"
    );
    for &lba in &lbas {
        let via_a = read_one(&mut a, lba);
        let via_b = read_one(&mut b, lba);
        assert_eq!(via_a, via_b, "block {lba}: channels disagree");
        assert!(
            via_a == pattern(lba, 1, 0xa) || via_a == pattern(lba, 1, 0xb),
            "block {lba}: neither write"
        );
    }
    // The same on threads: two channels racing over the same never-written blocks.
    let barrier = Arc::new(Barrier::new(2));
    let lbas2: Vec<u64> = (256..384).collect();
    let used1 = used_blocks(&s);
    let ts: Vec<_> = [0xcu8, 0xd]
        .into_iter()
        .map(|w| {
            let (head, barrier, lbas2) = (head.clone(), barrier.clone(), lbas2.clone());
            std::thread::spawn(move || {
                let mut ch = head.open_channel().unwrap();
                barrier.wait();
                for chunk in lbas2.chunks(16) {
                    for &lba in chunk {
                        submit(&mut ch, IoOp::Write, lba, Some(&pattern(lba, 2, w)), 1, lba);
                    }
                    complete(&mut ch, chunk.len());
                }
            })
        })
        .collect();
    for t in ts {
        t.join().unwrap();
    }
    assert_eq!(used_blocks(&s), used1 + lbas2.len() as u64);
    for &lba in &lbas2 {
        let got = read_one(&mut a, lba);
        assert!(
            got == pattern(lba, 2, 0xc) || got == pattern(lba, 2, 0xd),
            "block {lba}"
        );
    }
}

#[test]
fn a_read_racing_a_first_write_sees_old_or_new() {
    let (_s, head) = promoted("hc-read-race");
    let mut a = head.open_channel().unwrap();
    let mut b = head.open_channel().unwrap();
    let (snap, fresh) = (3u64, SNAP_BLOCKS + 5);
    submit(&mut a, IoOp::Write, snap, Some(&pattern(snap, 1, 0xa)), 1, 0);
    submit(&mut a, IoOp::Write, fresh, Some(&pattern(fresh, 1, 0xa)), 1, 1);
    // A's data is in its new blocks but not published: B reads the old contents.
    assert_eq!(read_one(&mut b, snap), snap_block(snap));
    assert_eq!(read_one(&mut b, fresh), vec![0u8; BS]);
    complete(&mut a, 2);
    assert_eq!(read_one(&mut b, snap), pattern(snap, 1, 0xa));
    assert_eq!(read_one(&mut b, fresh), pattern(fresh, 1, 0xa));
}

#[test]
fn a_flush_on_one_channel_makes_other_channels_writes_durable() {
    let (mut s, head) = promoted("hc-flush");
    let mut a = head.open_channel().unwrap();
    let mut b = head.open_channel().unwrap();
    let mut c = head.open_channel().unwrap();
    let mut want = model_image();
    let put = |img: &mut Vec<u8>, lba: u64, d: &[u8]| {
        img[lba as usize * BS..lba as usize * BS + d.len()].copy_from_slice(d);
    };
    // Completed on A and on C (first writes, an overwrite, an unmap), flushed on B.
    io(&mut a, IoOp::Write, 10, Some(&pattern(10, 1, 0xa)), 1);
    io(&mut a, IoOp::Write, 10, Some(&pattern(10, 2, 0xa)), 1);
    io(&mut c, IoOp::Write, 100, Some(&pattern(100, 1, 0xc)), 1);
    io(&mut c, IoOp::Unmap, 20, None, 2);
    put(&mut want, 10, &pattern(10, 2, 0xa));
    put(&mut want, 100, &pattern(100, 1, 0xc));
    put(&mut want, 20, &[0u8; 2 * BS]);
    // A first write in flight on A when B's flush is submitted: not covered by it.
    submit(&mut a, IoOp::Write, 200, Some(&pattern(200, 1, 0xa)), 1, 0);
    io(&mut b, IoOp::Flush, 0, None, 0);
    complete(&mut a, 1);
    // Completed after the flush and never flushed: lost by the crash.
    io(&mut c, IoOp::Write, 300, Some(&pattern(300, 1, 0xc)), 1);
    // Two flushes at once on two channels: one journals, the other waits for it.
    io(&mut a, IoOp::Write, 400, Some(&pattern(400, 1, 0xa)), 1);
    submit(&mut a, IoOp::Flush, 0, None, 0, 0);
    submit(&mut c, IoOp::Flush, 0, None, 0, 0);
    complete(&mut c, 1);
    complete(&mut a, 1);
    put(&mut want, 400, &pattern(400, 1, 0xa));
    // After the second flush, 200 and 300 were completed before it: durable too.
    put(&mut want, 200, &pattern(200, 1, 0xa));
    put(&mut want, 300, &pattern(300, 1, 0xc));
    io(&mut b, IoOp::Write, 500, Some(&pattern(500, 1, 0xb)), 1);
    drop((a, b, c));
    drop(head);
    let head = reopen(&mut s);
    let got = read_all(&head);
    assert!(
        got == want,
        "after reopening, block {:?} differs",
        common::first_diff(&got, &want, BS)
    );
    // The unflushed write is gone and the blocks it took are free again.
    let mut ch = head.open_channel().unwrap();
    assert_eq!(read_one(&mut ch, 500), vec![0u8; BS]);
}

#[test]
fn a_flush_covers_only_changes_before_it() {
    let (mut s, head) = promoted("hc-cut");
    let mut a = head.open_channel().unwrap();
    let mut b = head.open_channel().unwrap();
    io(&mut a, IoOp::Write, 30, Some(&pattern(30, 1, 0xa)), 1);
    // In flight (not completed) when the flush is submitted: not covered by it.
    submit(&mut a, IoOp::Write, 32, Some(&pattern(32, 1, 0xa)), 1, 0);
    io(&mut b, IoOp::Flush, 0, None, 0);
    complete(&mut a, 1);
    // Submitted after the flush completed and never flushed.
    io(&mut a, IoOp::Write, 31, Some(&pattern(31, 1, 0xa)), 1);
    drop((a, b));
    drop(head);
    let head = reopen(&mut s);
    let mut ch = head.open_channel().unwrap();
    assert_eq!(read_one(&mut ch, 30), pattern(30, 1, 0xa));
    assert_eq!(read_one(&mut ch, 31), snap_block(31));
    assert_eq!(read_one(&mut ch, 32), snap_block(32));
}

/// What a [`Hold`] bdev holds: once armed with an op, the next request of that op on
/// any of its channels is kept (not run) until `release`.
#[derive(Default)]
struct HoldState {
    arm: Option<IoOp>,
    held: usize,
    release: bool,
}

/// A data bdev over a RAM bdev whose completions the test controls (`HoldState`).
struct Hold {
    info: BdevInfo,
    inner: Arc<dyn Bdev>,
    state: Arc<Mutex<HoldState>>,
    stats: StatsSet,
}

struct HoldChannel {
    inner: BdevChannel,
    state: Arc<Mutex<HoldState>>,
    held: Vec<IoRequest>,
}

impl ChannelBackend for HoldChannel {
    fn submit(&mut self, io: IoRequest) -> Result<(), IoRequest> {
        let mut st = self.state.lock().unwrap();
        if st.arm == Some(io.op) {
            st.arm = None;
            st.held += 1;
            self.held.push(io);
            return Ok(());
        }
        drop(st);
        self.inner.submit(io)
    }

    fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        if self.state.lock().unwrap().release {
            for io in self.held.drain(..) {
                assert!(self.inner.submit(io).is_ok(), "RAM channel full");
            }
        }
        self.inner.poll(f)
    }
}

impl Bdev for Hold {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        let inner = self.inner.open_channel()?;
        let g: Geometry = inner.geometry();
        Ok(BdevChannel::new(
            self.name(),
            g,
            self.stats.new_channel(),
            Box::new(HoldChannel {
                inner,
                state: self.state.clone(),
                held: Vec::new(),
            }),
        ))
    }
    fn io_stats(&self) -> IoStats {
        self.stats.sum()
    }
}

/// A read or an overwrite of block X held in flight on channel A while B unmaps X,
/// flushes (the unmapping is durable) and first-writes Y with no other free block than
/// X's old one: the held I/O must not land in (or read) Y's block. The head defers
/// reusing X's block until the held I/O completes (its pin), then frees it.
fn held_io_never_touches_a_reused_block(name: &str, op: IoOp) {
    let state = Arc::new(Mutex::new(HoldState::default()));
    let inner = malloc::create(&format!("{name}-data"), 2 * SNAP_BLOCKS, BS as u32, None).unwrap();
    let data = Arc::new(Hold {
        info: BdevInfo::wrapping(&*inner, inner.name(), "Hold", "hold"),
        inner,
        state: state.clone(),
        stats: StatsSet::default(),
    });
    let (_s, head) = promoted_on(name, data);
    let mut a = head.open_channel().unwrap();
    let mut b = head.open_channel().unwrap();
    let (x, y) = (SNAP_BLOCKS + 1, SNAP_BLOCKS + 2);
    io(&mut a, IoOp::Write, x, Some(&pattern(x, 1, 0xa)), 1);
    // First writes until the data bdev is full: X's block will be the only one freed.
    let mut lba = SNAP_BLOCKS + 3;
    loop {
        assert!(lba < VOLUME_BLOCKS, "the data bdev never filled");
        submit(&mut b, IoOp::Write, lba, Some(&pattern(lba, 1, 0xb)), 1, 0);
        let mut got = Vec::new();
        while got.is_empty() {
            b.poll(&mut |c| got.push(c));
        }
        if got[0].result.is_err() {
            break;
        }
        lba += 1;
    }
    io(&mut b, IoOp::Flush, 0, None, 0);
    state.lock().unwrap().arm = Some(op);
    let new_x = pattern(x, 2, 0xa);
    submit(&mut a, op, x, (op == IoOp::Write).then_some(&new_x[..]), 1, 7);
    assert_eq!(state.lock().unwrap().held, 1, "the I/O on X is held");
    io(&mut b, IoOp::Unmap, x, None, 1);
    io(&mut b, IoOp::Flush, 0, None, 0);
    submit(&mut b, IoOp::Write, y, Some(&pattern(y, 1, 0xb)), 1, 0);
    let mut got = Vec::new();
    while got.is_empty() {
        b.poll(&mut |c| got.push(c));
    }
    let y_written = got[0].result.is_ok();
    state.lock().unwrap().release = true;
    let held = complete(&mut a, 1).pop().unwrap();
    if op == IoOp::Read {
        let r = held.buf.unwrap().to_vec();
        assert!(
            r == pattern(x, 1, 0xa) || r == vec![0u8; BS],
            "the held read of X returned another block's data"
        );
    }
    if y_written {
        assert_eq!(
            read_one(&mut b, y),
            pattern(y, 1, 0xb),
            "Y's block was reused under X's I/O"
        );
    }
    assert!(!y_written, "X's block was reused while an I/O on it was in flight");
    assert_eq!(read_one(&mut b, x), vec![0u8; BS]);
    // The held I/O completed: X's old block is free now, and Y takes it.
    io(&mut b, IoOp::Write, y, Some(&pattern(y, 2, 0xb)), 1);
    assert_eq!(read_one(&mut a, y), pattern(y, 2, 0xb));
    assert_eq!(read_one(&mut a, x), vec![0u8; BS]);
}

#[test]
fn a_held_overwrite_never_lands_in_a_reused_block() {
    held_io_never_touches_a_reused_block("hc-held-write", IoOp::Write);
}

#[test]
fn a_held_read_never_reads_a_reused_block() {
    held_io_never_touches_a_reused_block("hc-held-read", IoOp::Read);
}
