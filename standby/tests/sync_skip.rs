//! A hole no relay holds, covered by a block sync (`standby/src/sync_skip.rs`), through
//! the real standby in both modes.
//!
//! A deterministic primary writes epochs of random ops; the standby then loses a tail of
//! them (every relay lost it). The primary's block sync follows: a `Begin` marker, the
//! current content of every block written in the lost range (runs of up to four blocks,
//! each as an ordinary write carrying the content as of its own LSN), new writes and
//! restart points interleaved with it, the `End`, and a closing restart point. The
//! standby skips the hole when told no relay holds it, and must then show:
//! - nothing past the last restart point before the hole until the closing point (the
//!   points inside the sync are dropped, never shown);
//! - exactly the primary's image at the closing point after it;
//! - after a failure declared inside the sync, exactly the image before the hole;
//! - after a restart inside the sync, the same end result.
//!
//! A standby that has every LSN treats the sync writes as ordinary writes and shows every
//! restart point, the ones inside the sync included.

mod common;

use common::*;
use engine::bdev::{malloc, Bdev};
use engine::buf::DmaBuf;
use rdma_transport::wire::SyncMark;
use standby::delayed::DelayedOpts;
use standby::receive::DmaBufEq;
use standby::snapshot::SnapshotOpts;
use standby::{ModeConfig, Offer, OpBody, OwnedOp, Readiness, StandbyConfig, StandbyVolume};
use std::collections::BTreeSet;
use std::sync::Arc;

const BS: usize = 512;
const BLOCKS: u64 = 64;
const GEN: u64 = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    /// The standby has every LSN.
    NoHole,
    /// The hole is skipped and the sync completes.
    Skip,
    /// Primary failure declared after the skip, before the sync's end.
    FailInside,
    /// The standby restarts after the skip, before the sync's end.
    ReopenInside,
}

struct Stream {
    ops: Vec<OwnedOp>,
    /// Lost LSNs: `hole.0..=hole.1`.
    hole: (u64, u64),
    sync_begin: u64,
    sync_end: u64,
    /// Epoch of the last restart point before the hole, and its image.
    before: (u64, Vec<u8>),
    /// Every restart point after the hole: (epoch, LSN, image).
    after: Vec<(u64, u64, Vec<u8>)>,
}

fn write_op(lsn: u64, off: u64, data: &[u8]) -> OwnedOp {
    let mut d = DmaBuf::alloc(data.len());
    d.copy_from_slice(data);
    OwnedOp {
        lsn,
        generation: GEN,
        body: OpBody::Write {
            offset_blocks: off,
            num_blocks: (data.len() / BS) as u32,
            data: DmaBufEq(d),
        },
    }
}

fn rp(lsn: u64, epoch: u64) -> OwnedOp {
    OwnedOp {
        lsn,
        generation: GEN,
        body: OpBody::RestartPoint {
            epoch,
            last_lsn: lsn - 1,
            tag: format!("rp{epoch}").into_bytes(),
        },
    }
}

fn mark(lsn: u64, mark: SyncMark) -> OwnedOp {
    OwnedOp {
        lsn,
        generation: GEN,
        body: OpBody::Sync { mark, skipped: false },
    }
}

fn touched(op: &OwnedOp) -> Option<(u64, u64)> {
    match op.body {
        OpBody::Write {
            offset_blocks,
            num_blocks,
            ..
        }
        | OpBody::WriteZeroes {
            offset_blocks,
            num_blocks,
        }
        | OpBody::Deallocate {
            offset_blocks,
            num_blocks,
        } => Some((offset_blocks, num_blocks as u64)),
        _ => None,
    }
}

/// The primary's stream: `Primary::generate`'s epochs, a hole from after restart point 2
/// to its end, then the block sync with writes and restart points interleaved.
fn stream(seed: u64) -> Stream {
    let shape = Shape {
        volume_blocks: BLOCKS,
        block_size: BS,
        epochs: 6,
        ops_per_epoch_max: 12,
        blocks_per_write_max: 4,
        generation: GEN,
    };
    let p = Primary::generate(seed, &shape);
    let mut ops = p.ops.clone();
    let last = ops.last().unwrap().lsn;
    let hole = (p.rp_lsn[2] + 1, last);
    let mut img = vec![0u8; BLOCKS as usize * BS];
    for o in &ops {
        apply(&mut img, o, BS);
    }
    let mut todo = BTreeSet::new();
    for o in ops.iter().filter(|o| o.lsn >= hole.0) {
        if let Some((off, n)) = touched(o) {
            todo.extend(off..off + n);
        }
    }
    let mut rng = Rng(seed ^ 0x5eed);
    let mut lsn = last + 1;
    let mut epoch = p.images.len() as u64 - 1;
    let sync_begin = lsn;
    ops.push(mark(
        lsn,
        SyncMark::Begin {
            covers_from: hole.0,
            full: false,
        },
    ));
    let mut after = Vec::new();
    while let Some(&b) = todo.iter().next() {
        lsn += 1;
        match rng.below(6) {
            0 => {
                // A new write: it carries its blocks itself.
                let off = rng.below(BLOCKS - 2);
                let data: Vec<u8> = (0..2 * BS).map(|i| (lsn as u8) ^ (i as u8)).collect();
                img[off as usize * BS..(off as usize + 2) * BS].copy_from_slice(&data);
                for x in off..off + 2 {
                    todo.remove(&x);
                }
                ops.push(write_op(lsn, off, &data));
            }
            1 => {
                epoch += 1;
                ops.push(rp(lsn, epoch));
                after.push((epoch, lsn, img.clone()));
            }
            _ => {
                // The next run of blocks to send, at most four, with their content now.
                let mut n = 1;
                while n < 4 && todo.contains(&(b + n)) {
                    n += 1;
                }
                let data = img[b as usize * BS..(b + n) as usize * BS].to_vec();
                for x in b..b + n {
                    todo.remove(&x);
                }
                ops.push(write_op(lsn, b, &data));
            }
        }
    }
    lsn += 1;
    let sync_end = lsn;
    ops.push(mark(lsn, SyncMark::End { begin_lsn: sync_begin }));
    lsn += 1;
    let data = vec![0xabu8; BS];
    img[..BS].copy_from_slice(&data);
    ops.push(write_op(lsn, 0, &data));
    lsn += 1;
    epoch += 1;
    ops.push(rp(lsn, epoch));
    after.push((epoch, lsn, img));
    Stream {
        ops,
        hole,
        sync_begin,
        sync_end,
        before: (2, p.images[2].clone()),
        after,
    }
}

struct Setup {
    vol: StandbyVolume,
    cfg: StandbyConfig,
    volume: Option<Arc<dyn Bdev>>,
}

fn make(delayed: bool, name: &str) -> Setup {
    let (cfg, volume) = if delayed {
        let volume = malloc::create(&format!("{name}-vol"), BLOCKS, BS as u32, None).unwrap();
        let staging = malloc::create(&format!("{name}-stg"), 4096, BS as u32, None).unwrap();
        let mode = ModeConfig::Delayed {
            volume: volume.clone(),
            staging,
            opts: DelayedOpts::default(),
        };
        (mode, Some(volume))
    } else {
        let data = malloc::create(&format!("{name}-data"), BLOCKS * 16, BS as u32, None).unwrap();
        let metadata = malloc::create(&format!("{name}-meta"), 2048, BS as u32, None).unwrap();
        let mode = ModeConfig::Snapshot {
            data,
            metadata,
            volume_blocks: BLOCKS,
            opts: SnapshotOpts { keep_last: 16 },
        };
        (mode, None)
    };
    let cfg = StandbyConfig {
        name: name.to_string(),
        mode: cfg,
        format: true,
    };
    let vol = StandbyVolume::open(cfg.clone()).unwrap();
    Setup { vol, cfg, volume }
}

fn settle(v: &mut StandbyVolume) {
    for _ in 0..5000 {
        v.poll(0);
    }
}

/// What the standby shows: (epoch, image).
fn shown(s: &mut Setup) -> (u64, Vec<u8>) {
    settle(&mut s.vol);
    let epoch = s.vol.applied().0;
    match &s.volume {
        Some(v) => {
            assert!(s.vol.quiescent(), "settled: {:?}", s.vol.status());
            (epoch, read_all(v))
        }
        None if epoch == 0 => (0, vec![0u8; BLOCKS as usize * BS]),
        None => {
            let b = s
                .vol
                .export_snapshot(epoch, &format!("{}-show-{epoch}", s.cfg.name))
                .unwrap();
            (epoch, read_all(&b))
        }
    }
}

/// Offers every op from the standby's next LSN up to `upto` that it may receive (not
/// the lost ones unless `with_hole`), polling on back-pressure.
fn feed(v: &mut StandbyVolume, st: &Stream, upto: u64, with_hole: bool) {
    let from = v.next_lsn();
    for op in st.ops.iter().filter(|o| o.lsn >= from && o.lsn <= upto) {
        if !with_hole && op.lsn >= st.hole.0 && op.lsn <= st.hole.1 {
            continue;
        }
        let mut op = op.clone();
        loop {
            match v.try_offer_owned(op, 0) {
                Ok(_) => break,
                Err((Offer::Full, o)) => {
                    op = o;
                    v.poll(0);
                }
                Err((o, _)) => panic!("{o:?}: {:?}", v.status()),
            }
        }
        v.poll(0);
    }
    settle(v);
}

/// The standby is at the hole; every relay said it does not hold it.
fn skip(v: &mut StandbyVolume, st: &Stream) {
    let next = v.next_lsn();
    assert!(
        next >= st.hole.0 && next <= st.hole.1,
        "not at the hole: {:?}",
        v.status()
    );
    assert_eq!(v.skip_unheld_hole(), Some(st.sync_begin));
    assert_eq!(v.next_lsn(), st.sync_begin);
}

fn run(seed: u64, delayed: bool, case: Case) {
    let st = stream(seed);
    let name = format!("sync-skip-{seed}-{delayed}-{case:?}");
    let mut s = make(delayed, &name);
    let last = st.ops.last().unwrap().lsn;
    let (closing_epoch, _, final_img) = st.after.last().unwrap().clone();
    if case == Case::NoHole {
        feed(&mut s.vol, &st, last, true);
        let (epoch, img) = shown(&mut s);
        assert_eq!(epoch, closing_epoch);
        assert!(
            img == final_img,
            "differs at block {:?}",
            first_diff(&img, &final_img, BS)
        );
        assert_eq!(s.vol.status().sync_skip.restart_points_dropped, 0);
        return;
    }
    let inside = matches!(case, Case::FailInside | Case::ReopenInside);
    feed(&mut s.vol, &st, if inside { st.sync_end - 1 } else { last }, false);
    // Stuck at the hole, with the restart point before it shown.
    let (epoch, img) = shown(&mut s);
    assert_eq!(epoch, st.before.0, "{:?}", s.vol.status());
    assert!(img == st.before.1);
    skip(&mut s.vol, &st);
    match case {
        Case::FailInside | Case::ReopenInside => {
            // Everything up to just before the End is taken; nothing after the hole shows.
            settle(&mut s.vol);
            assert_eq!(s.vol.status().sync_skip.state, "syncing", "{:?}", s.vol.status());
            assert!(
                matches!(s.vol.failover_readiness(), Readiness::Stale(_)),
                "a skipped hole leaves an older but valid target"
            );
            assert_eq!(s.vol.status().failover_target, "stale");
            let (epoch, img) = shown(&mut s);
            assert_eq!(epoch, st.before.0);
            assert!(img == st.before.1, "a point inside the sync was shown");
            if case == Case::FailInside {
                s.vol.declare_failure();
                for _ in 0..100 {
                    settle(&mut s.vol);
                    if s.vol.failed_over() {
                        break;
                    }
                }
                assert!(s.vol.failed_over(), "{:?}", s.vol.status());
                let (epoch, img) = shown(&mut s);
                assert_eq!(epoch, st.before.0);
                assert!(
                    img == st.before.1,
                    "rolled back to something else than the point before the hole"
                );
                return;
            }
            let mut cfg = s.cfg.clone();
            cfg.format = false;
            s.vol = StandbyVolume::open(cfg).unwrap();
            feed(&mut s.vol, &st, last, false);
            let next = s.vol.next_lsn();
            if next >= st.hole.0 && next <= st.hole.1 {
                // Snapshot mode keeps nothing past its last snapshot: the hole again.
                skip(&mut s.vol, &st);
            }
            feed(&mut s.vol, &st, last, false);
        }
        Case::Skip => {}
        Case::NoHole => unreachable!("returned above"),
    }
    settle(&mut s.vol);
    let status = s.vol.status();
    let (epoch, img) = shown(&mut s);
    assert_eq!(epoch, closing_epoch, "{status:?}");
    assert!(
        img == final_img,
        "differs at block {:?}",
        first_diff(&img, &final_img, BS)
    );
    assert_eq!(status.sync_skip.state, "none");
    assert_eq!(status.failover_target, "valid");
    if case == Case::Skip {
        assert_eq!(status.sync_skip.restart_points_dropped, st.after.len() as u64 - 1);
        assert_eq!(status.sync_skip.holes_skipped, 1);
    }
}

#[test]
fn a_standby_with_every_lsn_shows_every_point() {
    for seed in 0..6 {
        run(seed, true, Case::NoHole);
        run(seed, false, Case::NoHole);
    }
}

#[test]
fn a_skipped_hole_ends_at_the_primarys_image() {
    for seed in 0..6 {
        run(seed, true, Case::Skip);
        run(seed, false, Case::Skip);
    }
}

#[test]
fn failure_inside_the_sync_rolls_back_to_before_the_hole() {
    for seed in 0..6 {
        run(seed, true, Case::FailInside);
        run(seed, false, Case::FailInside);
    }
}

#[test]
fn restart_inside_the_sync_recovers_the_skip() {
    for seed in 0..6 {
        run(seed, true, Case::ReopenInside);
        run(seed, false, Case::ReopenInside);
    }
}

/// An initial sync (the primary's volume held data no LSN wrote): the standby is not a
/// valid failover target until the first restart point after the sync's End, in both
/// modes and across a restart of the standby; promotion by RPC refuses it without force.
#[test]
fn an_initial_sync_is_not_a_failover_target_until_its_closing_point() {
    for delayed in [true, false] {
        let name = format!("initial-ready-{delayed}");
        let mut s = make(delayed, &name);
        let blk = |b: u8| vec![b; BS * 4];
        let mut ops = vec![mark(1, SyncMark::Initial)];
        // Sync chunks and ordinary writes interleaved, a restart point inside the sync.
        for (i, lsn) in (2..10).enumerate() {
            ops.push(write_op(lsn, (i as u64) * 4, &blk(i as u8 + 1)));
        }
        ops.push(rp(10, 1));
        ops.push(write_op(11, 40, &blk(0xEE)));
        ops.push(mark(12, SyncMark::End { begin_lsn: 1 }));
        ops.push(write_op(13, 44, &blk(0xDD)));
        ops.push(rp(14, 2));
        let st = Stream {
            ops,
            hole: (u64::MAX, u64::MAX),
            sync_begin: 1,
            sync_end: 12,
            before: (0, Vec::new()),
            after: Vec::new(),
        };
        feed(&mut s.vol, &st, 11, true);
        let r = s.vol.failover_readiness();
        assert!(matches!(r, Readiness::NotValid(_)), "{r:?}");
        assert_eq!(s.vol.status().failover_target, "not_valid");
        assert!(s.vol.status().sync_skip.initial);
        // A restart of the standby inside the sync keeps it invalid.
        drop(s.vol);
        let mut cfg = s.cfg.clone();
        cfg.format = false;
        s.vol = StandbyVolume::open(cfg).unwrap();
        feed(&mut s.vol, &st, 13, true);
        assert!(
            matches!(s.vol.failover_readiness(), Readiness::NotValid(_)),
            "between the End and the closing point: {:?}",
            s.vol.status()
        );
        feed(&mut s.vol, &st, 14, true);
        assert_eq!(s.vol.failover_readiness(), Readiness::Valid, "{:?}", s.vol.status());
        assert_eq!(s.vol.applied().0, 2, "the closing point is shown");
    }
}
