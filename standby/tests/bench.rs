//! Standby measurements (ignored: run with
//! `cargo test --release -p baton-standby --test bench -- --ignored --nocapture`).
//! Prints apply throughput of 4 KiB random writes in both modes, snapshot
//! forming time against blocks written in the epoch for two volume sizes,
//! rollback time and the space overhead of snapshot mode. Back ends are
//! `uring` bdevs over files in /dev/shm (tmpfs: buffered, no device latency),
//! written through once before the clock starts (the first touch of a tmpfs
//! page costs far more than a write on a VM that reports free pages to its
//! host), so the numbers are the standby's CPU cost, not a disk's or the
//! hypervisor's. Apply throughput offers wire ops, as the network side does:
//! it includes the copy out of the receive buffer.

mod common;

use engine::bdev::{uring, Bdev};
use engine::buf::DmaBuf;
use rdma_transport::wire::Op;
use standby::delayed::DelayedOpts;
use standby::receive::DmaBufEq;
use standby::snapshot::SnapshotOpts;
use standby::{ModeConfig, Offer, OpBody, OwnedOp, StandbyConfig, StandbyVolume};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

const BS: usize = 4096;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn shm_bdev(tag: &str, name: &str, blocks: u64) -> Arc<dyn Bdev> {
    let dir = PathBuf::from("/dev/shm").join(format!("baton-standby-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{tag}-{name}"));
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = blocks * BS as u64;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        std::io::Write::write_all(&mut f, &chunk[..n]).unwrap();
        left -= n as u64;
    }
    uring::create(name, &p, Some(BS as u32), None).unwrap()
}

fn cleanup() {
    let dir = PathBuf::from("/dev/shm").join(format!("baton-standby-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(dir);
}

struct Feeder {
    lsn: u64,
    epoch: u64,
    rng: Rng,
    volume_blocks: u64,
}

impl Feeder {
    fn write(&mut self) -> OwnedOp {
        self.lsn += 1;
        let mut d = DmaBuf::alloc(BS);
        let v = self.rng.next();
        d[..8].copy_from_slice(&v.to_le_bytes());
        OwnedOp {
            lsn: self.lsn,
            generation: 1,
            body: OpBody::Write {
                offset_blocks: v % self.volume_blocks,
                num_blocks: 1,
                data: DmaBufEq(d),
            },
        }
    }
    fn write_at(&mut self, lba: u64) -> OwnedOp {
        let mut op = self.write();
        if let OpBody::Write { offset_blocks, .. } = &mut op.body {
            *offset_blocks = lba;
        }
        op
    }
    fn rp(&mut self) -> OwnedOp {
        self.lsn += 1;
        self.epoch += 1;
        OwnedOp {
            lsn: self.lsn,
            generation: 1,
            body: OpBody::RestartPoint {
                epoch: self.epoch,
                last_lsn: self.lsn - 1,
                tag: Vec::new(),
            },
        }
    }
}

/// Offers with back-pressure: polls until the receiver takes the op.
fn offer_retry(v: &mut StandbyVolume, op: OwnedOp) {
    loop {
        match v.offer_owned(op.clone(), 0) {
            Offer::Accepted | Offer::Duplicate => return,
            Offer::Full => {
                v.poll(0);
            }
            o => panic!("{o:?}: {:?}", v.status()),
        }
    }
}

fn settle(v: &mut StandbyVolume, epoch: u64) {
    while v.applied().0 < epoch {
        v.poll(engine::clock::now_ns());
        assert!(v.error().is_none(), "{:?}", v.error());
    }
}

fn apply_throughput(delayed: bool, writes: u64, epoch_writes: u64) -> f64 {
    let volume_blocks = 65536; // 256 MiB
    let tag = if delayed { "d" } else { "s" };
    let mode = if delayed {
        ModeConfig::Delayed {
            volume: shm_bdev(tag, "vol", volume_blocks),
            staging: shm_bdev(tag, "stg", 2 + 4 * epoch_writes * 2 + 1024),
            opts: DelayedOpts::default(),
        }
    } else {
        ModeConfig::Snapshot {
            data: shm_bdev(tag, "data", volume_blocks * 2 + epoch_writes * 4),
            metadata: shm_bdev(tag, "meta", 2 + 2 * 16384),
            volume_blocks,
            opts: SnapshotOpts { keep_last: 4 },
        }
    };
    let mut v = StandbyVolume::open(StandbyConfig {
        name: "bench".into(),
        mode,
        format: true,
    })
    .unwrap();
    let mut f = Feeder {
        lsn: 0,
        epoch: 0,
        rng: Rng(0x1234_5678),
        volume_blocks,
    };
    // Pre-build the ops (the bench measures the standby, not op generation);
    // each write's data is one of a few blocks, as wire ops borrow it.
    let blocks: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; BS]).collect();
    let mut ops: Vec<Op<'_>> = Vec::with_capacity(writes as usize + (writes / epoch_writes) as usize + 1);
    for i in 0..writes {
        let o = f.write();
        if let OpBody::Write { offset_blocks, .. } = o.body {
            ops.push(Op::Write {
                lsn: o.lsn,
                offset_blocks,
                num_blocks: 1,
                data: &blocks[i as usize % blocks.len()],
            });
        }
        if (i + 1) % epoch_writes == 0 {
            if let OpBody::RestartPoint { epoch, last_lsn, .. } = f.rp().body {
                ops.push(Op::RestartPoint {
                    lsn: f.lsn,
                    epoch,
                    last_lsn,
                    tag: &[],
                });
            }
        }
    }
    let last = f.epoch;
    let t = Instant::now();
    for op in &ops {
        common::offer_wire(&mut v, op);
        v.poll(0);
    }
    settle(&mut v, last);
    let s = t.elapsed().as_secs_f64();
    let mbps = (writes * BS as u64) as f64 / s / 1e6;
    drop(v);
    cleanup();
    mbps
}

#[test]
#[ignore]
fn standby_bench() {
    println!("== apply throughput, 4 KiB random writes, 256 MiB volume, uring on /dev/shm");
    for (delayed, name) in [(true, "delayed"), (false, "snapshot")] {
        for epoch_writes in [256u64, 4096] {
            let mbps = apply_throughput(delayed, 100_000, epoch_writes);
            println!(
                "{name:9} epoch of {epoch_writes:5} writes: {mbps:8.1} MB/s ({:.0} writes/s)",
                mbps * 1e6 / BS as f64
            );
        }
    }

    println!("== snapshot forming time vs blocks written in the epoch (4 KiB blocks, every block mapped first)");
    for volume_blocks in [16_384u64, 262_144] {
        let tag = format!("f{volume_blocks}");
        let mut v = StandbyVolume::open(StandbyConfig {
            name: "form".into(),
            mode: ModeConfig::Snapshot {
                data: shm_bdev(&tag, "data", volume_blocks * 2 + 200_000),
                metadata: shm_bdev(&tag, "meta", 2 + 2 * 65_536),
                volume_blocks,
                opts: SnapshotOpts { keep_last: 4 },
            },
            format: true,
        })
        .unwrap();
        let mut f = Feeder {
            lsn: 0,
            epoch: 0,
            rng: Rng(7),
            volume_blocks,
        };
        // Map every block of the volume (epoch 1).
        for lba in 0..volume_blocks {
            let op = f.write_at(lba);
            offer_retry(&mut v, op);
            v.poll(0);
        }
        offer_retry(&mut v, f.rp());
        settle(&mut v, f.epoch);
        for n in [16u64, 256, 4096, 32_768] {
            let mut times = Vec::new();
            for _ in 0..3 {
                for _ in 0..n {
                    let op = f.write();
                    offer_retry(&mut v, op);
                    v.poll(0);
                }
                offer_retry(&mut v, f.rp());
                settle(&mut v, f.epoch);
                let st = v.status().snapshot.unwrap();
                assert!(st.last_form_blocks <= n);
                times.push(st.last_form_ns as f64 / 1e3);
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "volume {:5} MiB, epoch of {n:6} blocks: forming {:9.1} us (median of 3)",
                (volume_blocks * BS as u64) >> 20,
                times[1]
            );
        }
        // Rollback: pending writes of an unfinished epoch.
        for _ in 0..32_768 {
            let op = f.write();
            offer_retry(&mut v, op);
            v.poll(0);
        }
        // Let every write land first: the time below is the rollback itself.
        while v.status().reorder_ops > 0 || v.status().snapshot.unwrap().inflight_writes > 0 {
            v.poll(0);
        }
        let st = v.status().snapshot.unwrap();
        let t = Instant::now();
        v.fail_over_blocking().unwrap();
        println!(
            "volume {:5} MiB: rollback of {} pending blocks: {:.1} us",
            (volume_blocks * BS as u64) >> 20,
            st.pending_blocks,
            t.elapsed().as_secs_f64() * 1e6
        );
        let st = v.status().snapshot.unwrap();
        let mapped = volume_blocks; // every block was mapped in epoch 1
        println!(
            "volume {:5} MiB: {} snapshots retained, data blocks used {} for {} mapped blocks: space overhead {:.1}% ({} meta blocks used)",
            (volume_blocks * BS as u64) >> 20,
            st.snapshots,
            st.used_blocks,
            mapped,
            (st.used_blocks as f64 / mapped as f64 - 1.0) * 100.0,
            st.meta_used_blocks
        );
        drop(v);
        cleanup();
    }

    println!("== delayed mode rollback (discard staging)");
    let volume_blocks = 65_536;
    let mut v = StandbyVolume::open(StandbyConfig {
        name: "rb".into(),
        mode: ModeConfig::Delayed {
            volume: shm_bdev("rb", "vol", volume_blocks),
            staging: shm_bdev("rb", "stg", 2 + 80_000),
            opts: DelayedOpts::default(),
        },
        format: true,
    })
    .unwrap();
    let mut f = Feeder {
        lsn: 0,
        epoch: 0,
        rng: Rng(9),
        volume_blocks,
    };
    for _ in 0..32_768 {
        let op = f.write();
        offer_retry(&mut v, op);
        v.poll(0);
    }
    while v.status().reorder_ops > 0 || v.status().delayed.unwrap().inflight_ios > 0 {
        v.poll(0);
    }
    let t = Instant::now();
    v.fail_over_blocking().unwrap();
    println!(
        "discarding 32768 staged writes (superblock write + flush): {:.1} us",
        t.elapsed().as_secs_f64() * 1e6
    );
    drop(v);
    cleanup();
}
