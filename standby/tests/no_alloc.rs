//! The standby's data path allocates nothing per op once warm: a wire op offered to the
//! ordered receiver (copied out of the receive buffer), staged or written, and applied
//! or formed into a snapshot at its epoch's restart point, in both modes, over RAM bdevs.
//!
//! A counting global allocator counts the calling thread's allocations (everything here
//! runs on it: the RAM bdev completes inline). A restart point closes every epoch of
//! [`EPOCH_WRITES`] writes. What a restart point itself costs is allowed: copies of its
//! tag as it moves from the receiver to the epoch being applied (delayed mode, about 8
//! per epoch), and in snapshot mode the new snapshot's metadata: the list of blocks it
//! wrote and the entries of the versions B-tree, which splits a node every few inserts
//! (about 0.2 per write, proportional to the blocks the epoch wrote, at forming time).
//! One allocation per op on the data path (a receive copy, a staging record, a volume
//! write's buffer) adds at least one per write and fails the bounds.

mod common;

use common::offer_wire;
use engine::alloc_count::{thread_allocations, CountingAllocator};
use engine::bdev::{malloc, BdevChannel, IoOp, IoRequest};
use engine::buf::DmaBuf;
use rdma_transport::wire::Op;
use standby::delayed::DelayedOpts;
use standby::snapshot::SnapshotOpts;
use standby::{ModeConfig, StandbyConfig, StandbyVolume};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const BS: usize = 4096;
const EPOCH_WRITES: u64 = 256;
const WORKING_SET_BLOCKS: u64 = 1024;

struct Feed {
    lsn: u64,
    epoch: u64,
    x: u64,
    data: Vec<Vec<u8>>,
}

impl Feed {
    fn new() -> Feed {
        Feed {
            lsn: 0,
            epoch: 0,
            x: 0x9e37_79b9_7f4a_7c15,
            data: (0..4u8).map(|i| vec![i; 2 * BS]).collect(),
        }
    }

    /// `epochs` epochs of `EPOCH_WRITES` one-block writes (some two-block) each,
    /// over the working set, then waits until the last one is applied or formed.
    fn run(&mut self, v: &mut StandbyVolume, epochs: u64) -> u64 {
        let mut writes = 0;
        for _ in 0..epochs {
            for _ in 0..EPOCH_WRITES {
                self.x ^= self.x << 13;
                self.x ^= self.x >> 7;
                self.x ^= self.x << 17;
                self.lsn += 1;
                let n = 1 + u32::from(self.x.is_multiple_of(8));
                let d = &self.data[(self.x % 4) as usize][..n as usize * BS];
                let op = Op::Write {
                    lsn: self.lsn,
                    offset_blocks: (self.x >> 8) % (WORKING_SET_BLOCKS - 1),
                    num_blocks: n,
                    data: d,
                };
                offer_wire(v, &op);
                v.poll(0);
                writes += 1;
            }
            self.lsn += 1;
            self.epoch += 1;
            let rp = Op::RestartPoint {
                lsn: self.lsn,
                epoch: self.epoch,
                last_lsn: self.lsn - 1,
                tag: b"rp",
            };
            offer_wire(v, &rp);
        }
        while v.applied_epoch() < self.epoch {
            v.poll(0);
            assert!(v.error().is_none(), "{:?}", v.error());
        }
        writes
    }
}

/// (allocations, writes, epochs) of a warm stretch.
fn measure(delayed: bool) -> (u64, u64, u64) {
    let tag = if delayed { "d" } else { "s" };
    let mode = if delayed {
        ModeConfig::Delayed {
            volume: malloc::create(&format!("na-vol-{tag}"), 4096, BS as u32, None).unwrap(),
            staging: malloc::create(&format!("na-stg-{tag}"), 2 + 4096, BS as u32, None).unwrap(),
            opts: DelayedOpts::default(),
        }
    } else {
        ModeConfig::Snapshot {
            data: malloc::create(&format!("na-data-{tag}"), 16384, BS as u32, None).unwrap(),
            metadata: malloc::create(&format!("na-meta-{tag}"), 2 + 2 * 2048, BS as u32, None).unwrap(),
            volume_blocks: 4096,
            opts: SnapshotOpts { keep_last: 2 },
        }
    };
    let mut v = StandbyVolume::open(StandbyConfig {
        name: format!("na-{tag}"),
        mode,
        format: true,
    })
    .unwrap();
    let mut f = Feed::new();
    // Warm up: every block of the working set written in every retained snapshot,
    // the recycling cache and every reserved queue at their working sizes.
    f.run(&mut v, 40);
    let before = thread_allocations();
    let writes = f.run(&mut v, 40);
    let allocs = thread_allocations() - before;
    println!(
        "{} mode: {writes} writes in 40 epochs, {allocs} allocations: {:.4} per write, {:.1} per epoch",
        if delayed { "delayed" } else { "snapshot" },
        allocs as f64 / writes as f64,
        allocs as f64 / 40.0,
    );
    (allocs, writes, 40)
}

#[test]
fn delayed_mode_allocates_nothing_per_op() {
    let (allocs, writes, epochs) = measure(true);
    assert!(
        allocs <= 16 * epochs,
        "delayed mode: {allocs} allocations for {writes} writes in {epochs} epochs"
    );
}

#[test]
fn snapshot_mode_allocates_nothing_per_op() {
    let (allocs, writes, epochs) = measure(false);
    assert!(
        (allocs as f64) < 0.5 * writes as f64,
        "snapshot mode: {allocs} allocations for {writes} writes in {epochs} epochs"
    );
}

/// One request through `ch` with the caller's buffer, polled to completion; the
/// buffer comes back for the next request.
fn head_io(ch: &mut BdevChannel, op: IoOp, lba: u64, n: u32, buf: DmaBuf) -> DmaBuf {
    ch.submit(IoRequest {
        op,
        offset_blocks: lba,
        num_blocks: n,
        buf: Some(buf),
        user_data: lba,
    })
    .unwrap_or_else(|_| panic!("head channel full"));
    let mut got = None;
    while got.is_none() {
        ch.poll(&mut |c| got = Some(c));
    }
    let c = got.unwrap();
    c.result.unwrap();
    c.buf.unwrap()
}

/// The promoted head (two channels on this thread): reads of 1-4 blocks (of the
/// snapshot's blocks, the head's and never-written ones) and overwrites, alternating
/// channels, count no allocation once every block has had its first write and the
/// buffer caches are warm. First writes may allocate (a map leaf, the change list's
/// growth); reads and overwrites must not.
#[test]
fn promoted_head_reads_and_overwrites_allocate_nothing() {
    let mut v = StandbyVolume::open(StandbyConfig {
        name: "na-head".into(),
        mode: ModeConfig::Snapshot {
            data: malloc::create("na-head-data", 16384, BS as u32, None).unwrap(),
            metadata: malloc::create("na-head-meta", 2 + 2 * 2048, BS as u32, None).unwrap(),
            volume_blocks: 4096,
            opts: SnapshotOpts { keep_last: 2 },
        },
        format: true,
    })
    .unwrap();
    let mut f = Feed::new();
    f.run(&mut v, 2);
    let head = v.promote().unwrap();
    let mut chans = [head.open_channel().unwrap(), head.open_channel().unwrap()];
    let buf = DmaBuf::alloc(4 * BS);
    let mut one = DmaBuf::alloc(BS);
    // First writes of the overwritten set (blocks 2048..3072), through both channels.
    for lba in 2048..3072u64 {
        one = head_io(&mut chans[(lba % 2) as usize], IoOp::Write, lba, 1, one);
    }
    const OPS: u64 = 4000;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut round = |chans: &mut [BdevChannel; 2], mut buf: DmaBuf, mut one: DmaBuf| {
        for i in 0..OPS {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ch = &mut chans[(i % 2) as usize];
            if i % 2 == 0 {
                let n = 1 + (x % 4) as u32;
                // Snapshot blocks, head blocks and never-written blocks alike.
                let lba = (x >> 8) % (4096 - 4);
                buf.set_len(n as usize * BS);
                buf = head_io(ch, IoOp::Read, lba, n, buf);
            } else {
                one = head_io(ch, IoOp::Write, 2048 + (x >> 8) % 1024, 1, one);
            }
        }
        (buf, one)
    };
    let (b, o) = round(&mut chans, buf, one);
    let before = thread_allocations();
    let (_b, _o) = round(&mut chans, b, o);
    let allocs = thread_allocations() - before;
    println!("promoted head: {OPS} reads and overwrites over two channels, {allocs} allocations");
    assert_eq!(
        allocs, 0,
        "promoted head: {allocs} allocations in {OPS} reads and overwrites"
    );
}
