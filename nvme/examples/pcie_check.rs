//! Checks the user-space NVMe driver (`nvme::pcie`, feature `vfio`) against a real
//! controller bound to vfio-pci: `pcie_check BDF` runs the data-integrity checks and prints
//! `PCIE ok NAME` / `PCIE FAIL NAME: why` per check and `pcie-check: N passed, M failed`,
//! exiting 0 only if all passed. `pcie_check BDF --bench qd1|qd32 SECONDS` runs 4 KiB random
//! reads at that depth and prints `IOPS n` and the allocations per I/O; `pcie_check
//! /dev/nvme0n1 --bench ...` runs the same benchmark on baton's uring bdev over the
//! kernel's driver, for the comparison. CI runs it in a QEMU
//! guest (`ci/nvme-pcie-e2e.sh`); without a VFIO device it says so and exits 2.

use engine::bdev::{Bdev, BdevChannel, IoCompletion, IoOp, IoRequest};
use engine::buf::{BufPool, DmaBuf};
use nvme::pcie::{PcieBdev, PcieCtrlr};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: engine::alloc_count::CountingAllocator = engine::alloc_count::CountingAllocator;

const T: Duration = Duration::from_secs(60);

fn pattern(lba: u64, seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (lba as usize * 131 + i * 7 + seed as usize) as u8)
        .collect()
}

fn io(ch: &mut BdevChannel, op: IoOp, lba: u64, blocks: u32, buf: Option<DmaBuf>) -> IoCompletion {
    ch.submit(IoRequest {
        op,
        offset_blocks: lba,
        num_blocks: blocks,
        buf,
        user_data: lba,
    })
    .map_err(|_| "queue full")
    .expect("room for one request");
    reap(ch, 1).pop().expect("one completion")
}

fn reap(ch: &mut BdevChannel, n: usize) -> Vec<IoCompletion> {
    let t0 = Instant::now();
    let mut got = Vec::new();
    while got.len() < n {
        assert!(t0.elapsed() < T, "{} of {n} completions within {T:?}", got.len());
        ch.poll(&mut |c| got.push(c));
    }
    got
}

struct Checks {
    pass: u32,
    fail: u32,
}

impl Checks {
    fn run(&mut self, name: &str, f: impl FnOnce() -> Result<(), String>) {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(())) => {
                self.pass += 1;
                println!("PCIE ok {name}");
            }
            Ok(Err(why)) => {
                self.fail += 1;
                println!("PCIE FAIL {name}: {why}");
            }
            Err(_) => {
                self.fail += 1;
                println!("PCIE FAIL {name}: panicked");
            }
        }
    }
}

/// The two pools: 4 KiB buffers (enough to fill a channel) and 128 KiB ones.
#[derive(Clone, Copy)]
struct Pools {
    small: &'static BufPool,
    big: &'static BufPool,
}

impl Pools {
    fn get(&self, len: usize) -> Option<DmaBuf> {
        if len <= self.small.buf_size() {
            self.small.get()
        } else {
            self.big.get()
        }
    }
}

fn from_pool(pool: Pools, len: usize, fill: &[u8]) -> DmaBuf {
    let mut b = pool.get(len).expect("pool buffer");
    b.set_len(len);
    b[..fill.len()].copy_from_slice(fill);
    b
}

/// Writes `blocks` at `lba` from `buf`, reads them back into `rbuf`, compares.
fn round_trip(ch: &mut BdevChannel, bs: usize, lba: u64, wbuf: DmaBuf, rbuf: DmaBuf) -> Result<(), String> {
    let blocks = (wbuf.len() / bs) as u32;
    let want = wbuf.to_vec();
    let c = io(ch, IoOp::Write, lba, blocks, Some(wbuf));
    c.result.map_err(|e| format!("write {lba}+{blocks}: {e}"))?;
    let c = io(ch, IoOp::Read, lba, blocks, Some(rbuf));
    c.result.map_err(|e| format!("read {lba}+{blocks}: {e}"))?;
    if c.buf.as_deref() != Some(&want[..]) {
        return Err(format!("data differs at {lba}+{blocks}"));
    }
    Ok(())
}

fn checks(ctrlr: &Arc<PcieCtrlr>, b: &Arc<PcieBdev>, pool: Pools) -> Checks {
    let mut k = Checks { pass: 0, fail: 0 };
    let bs = b.block_size() as usize;
    let mut ch = b.open_channel().expect("channel (I/O queue pair)");
    k.run("identify", || {
        if b.num_blocks() == 0 || ctrlr.max_xfer < 4096 {
            return Err(format!("{} blocks, max transfer {}", b.num_blocks(), ctrlr.max_xfer));
        }
        println!(
            "PCIE      {} blocks of {bs} B, max transfer {} KiB, {} I/O queues of {} entries",
            b.num_blocks(),
            ctrlr.max_xfer >> 10,
            ctrlr.io_queues,
            ctrlr.io_depth
        );
        Ok(())
    });
    k.run("rw-4k-pool", || {
        for lba in [0u64, 8, 1000, b.num_blocks() - (4096 / bs) as u64] {
            let d = pattern(lba, 1, 4096);
            round_trip(&mut ch, bs, lba, from_pool(pool, 4096, &d), from_pool(pool, 4096, &[]))?;
        }
        Ok(())
    });
    k.run("rw-prp-list-128k", || {
        let d = pattern(64, 2, 128 << 10);
        round_trip(
            &mut ch,
            bs,
            64,
            from_pool(pool, 128 << 10, &d),
            from_pool(pool, 128 << 10, &[]),
        )
    });
    k.run("rw-bounce-heap-8k", || {
        let mut w = DmaBuf::alloc(8192);
        w.copy_from_slice(&pattern(2048, 3, 8192));
        round_trip(&mut ch, bs, 2048, w, DmaBuf::alloc(8192))?;
        if b.bounced.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return Err("the heap buffer did not go through the bounce slots".into());
        }
        Ok(())
    });
    k.run("rw-split-2m", || {
        // Larger than the controller's maximum transfer and a bounce slot: split.
        let len = 2 << 20;
        let mut w = DmaBuf::alloc(len);
        w.copy_from_slice(&pattern(4096, 4, len));
        round_trip(&mut ch, bs, 4096, w, DmaBuf::alloc(len))
    });
    k.run("flush", || {
        io(&mut ch, IoOp::Flush, 0, 0, None).result.map_err(|e| e.to_string())
    });
    k.run("write-zeroes", || {
        let d = pattern(300, 5, 16 * bs);
        let c = io(&mut ch, IoOp::Write, 300, 16, Some(from_pool(pool, 16 * bs, &d)));
        c.result.map_err(|e| e.to_string())?;
        io(&mut ch, IoOp::WriteZeroes, 300, 16, None)
            .result
            .map_err(|e| e.to_string())?;
        let c = io(&mut ch, IoOp::Read, 300, 16, Some(from_pool(pool, 16 * bs, &[])));
        c.result.map_err(|e| e.to_string())?;
        if c.buf.unwrap().iter().any(|&x| x != 0) {
            return Err("not zero after Write Zeroes".into());
        }
        Ok(())
    });
    k.run("deallocate", || {
        io(&mut ch, IoOp::Unmap, 500, 64, None)
            .result
            .map_err(|e| e.to_string())
    });
    k.run("out-of-range-refused", || {
        let c = io(&mut ch, IoOp::Read, b.num_blocks(), 1, Some(from_pool(pool, bs, &[])));
        match c.result {
            Err(e) if e.to_string().contains("range") || e.to_string().contains("beyond") => Ok(()),
            Err(e) => Err(format!("refused, but with {e}")),
            Ok(()) => Err("a read past the end succeeded".into()),
        }
    });
    k.run("misaligned-length-refused", || {
        let c = io(&mut ch, IoOp::Write, 0, 2, Some(from_pool(pool, bs, &[1])));
        match c.result {
            Err(_) => Ok(()),
            Ok(()) => Err("a 2-block write with a 1-block buffer succeeded".into()),
        }
    });
    k.run("queue-full-back-pressure", || {
        let mut n = 0u64;
        loop {
            let Some(mut buf) = pool.get(bs) else { break };
            buf.set_len(bs);
            let r = ch.submit(IoRequest {
                op: IoOp::Read,
                offset_blocks: n % 1024,
                num_blocks: 1,
                buf: Some(buf),
                user_data: n,
            });
            if r.is_err() {
                break;
            }
            n += 1;
        }
        let got = reap(&mut ch, n as usize);
        if n < 256 {
            return Err(format!("only {n} requests before back-pressure"));
        }
        match got.iter().find(|c| c.result.is_err()) {
            Some(c) => Err(format!("{:?}", c.result)),
            None => {
                println!("PCIE      {n} requests queued before the channel pushed back, all completed");
                Ok(())
            }
        }
    });
    k.run("two-queues", || {
        let mut ch2 = b.open_channel().map_err(|e| e.to_string())?;
        let d = pattern(7000, 6, 4096);
        round_trip(
            &mut ch2,
            bs,
            7000,
            from_pool(pool, 4096, &d),
            from_pool(pool, 4096, &[]),
        )?;
        let c = io(
            &mut ch,
            IoOp::Read,
            7000,
            (4096 / bs) as u32,
            Some(from_pool(pool, 4096, &[])),
        );
        c.result.map_err(|e| e.to_string())?;
        if c.buf.as_deref() != Some(&d[..]) {
            return Err("the other queue does not see the write".into());
        }
        if ctrlr.queues().len() < 2 {
            return Err(format!("{} queues listed", ctrlr.queues().len()));
        }
        Ok(())
    });
    k.run("reset-under-io", || {
        let mut sent = 0;
        for i in 0..64u64 {
            let d = pattern(10_000 + i * 8, 7, 4096);
            if ch
                .submit(IoRequest {
                    op: IoOp::Write,
                    offset_blocks: 10_000 + i * 8,
                    num_blocks: (4096 / bs) as u32,
                    buf: Some(from_pool(pool, 4096, &d)),
                    user_data: i,
                })
                .is_ok()
            {
                sent += 1;
            }
        }
        ctrlr.reset().map_err(|e| e.to_string())?;
        let got = reap(&mut ch, sent);
        let failed = got.iter().filter(|c| c.result.is_err()).count();
        for c in got.iter().filter_map(|c| c.result.as_ref().err()) {
            if !c.to_string().contains("reset") {
                return Err(format!("a failure that does not name the reset: {c}"));
            }
        }
        println!(
            "PCIE      reset with {sent} writes in flight: {} completed, {failed} failed naming the reset",
            sent - failed
        );
        // The channel works again on a new queue pair.
        let d = pattern(20_000, 8, 4096);
        round_trip(
            &mut ch,
            bs,
            20_000,
            from_pool(pool, 4096, &d),
            from_pool(pool, 4096, &[]),
        )
    });
    k.run("no-allocation-per-io", || {
        let bufs: Vec<DmaBuf> = (0..32).map(|_| from_pool(pool, 4096, &[])).collect();
        let mut bufs: Vec<Option<DmaBuf>> = bufs.into_iter().map(Some).collect();
        // Warm up, then count.
        let run = |ch: &mut BdevChannel, bufs: &mut Vec<Option<DmaBuf>>, rounds: u64| {
            for r in 0..rounds {
                for (i, b) in bufs.iter_mut().enumerate() {
                    let buf = b.take().expect("buffer back");
                    ch.submit(IoRequest {
                        op: if r % 2 == 0 { IoOp::Read } else { IoOp::Write },
                        offset_blocks: (i as u64) * 8,
                        num_blocks: (4096 / bs) as u32,
                        buf: Some(buf),
                        user_data: i as u64,
                    })
                    .map_err(|_| "full")
                    .expect("room");
                }
                let mut left = bufs.len();
                while left > 0 {
                    left -= ch.poll(&mut |c| bufs[c.user_data as usize] = c.buf);
                }
            }
        };
        run(&mut ch, &mut bufs, 10);
        let before = engine::alloc_count::thread_allocations();
        run(&mut ch, &mut bufs, 100);
        let n = engine::alloc_count::thread_allocations() - before;
        println!("PCIE      3200 I/Os: {n} allocations");
        if n > 0 {
            return Err(format!("{n} allocations in 3200 I/Os"));
        }
        Ok(())
    });
    k
}

fn bench(b: &Arc<dyn Bdev>, pool: Pools, qd: usize, secs: u64) {
    let mut ch = b.open_channel().expect("channel");
    let bs = b.block_size() as usize;
    let span = (b.num_blocks() / (4096 / bs) as u64).min(16384);
    let mut bufs: Vec<Option<DmaBuf>> = (0..qd).map(|_| Some(from_pool(pool, 4096, &[]))).collect();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let next = |rng: &mut u64| {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        (*rng % span) * (4096 / bs) as u64
    };
    let submit = |ch: &mut BdevChannel, i: usize, buf: DmaBuf, lba: u64| {
        ch.submit(IoRequest {
            op: IoOp::Read,
            offset_blocks: lba,
            num_blocks: (4096 / bs) as u32,
            buf: Some(buf),
            user_data: i as u64,
        })
        .map_err(|_| "full")
        .expect("room");
    };
    for (i, b) in bufs.iter_mut().enumerate() {
        let lba = next(&mut rng);
        submit(&mut ch, i, b.take().unwrap(), lba);
    }
    let t0 = Instant::now();
    let a0 = engine::alloc_count::thread_allocations();
    let mut done = 0u64;
    let end = Duration::from_secs(secs);
    let mut back: Vec<usize> = Vec::with_capacity(qd);
    let mut spins = 0u32;
    // The clock is read every 1024 polls: in a guest without a vDSO clock each read is a
    // system call, which would be counted against the driver.
    while !spins.is_multiple_of(1024) || t0.elapsed() < end {
        spins = spins.wrapping_add(1);
        ch.poll(&mut |c| {
            assert!(c.result.is_ok(), "read failed: {:?}", c.result);
            let i = c.user_data as usize;
            bufs[i] = c.buf;
            back.push(i);
        });
        for i in back.drain(..) {
            done += 1;
            let lba = next(&mut rng);
            submit(&mut ch, i, bufs[i].take().unwrap(), lba);
        }
    }
    let el = t0.elapsed().as_secs_f64();
    let allocs = engine::alloc_count::thread_allocations() - a0;
    let left = reap(&mut ch, qd);
    drop(left);
    println!("IOPS {}", (done as f64 / el) as u64);
    println!(
        "allocations per I/O {:.4} ({allocs} in {done})",
        allocs as f64 / done.max(1) as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(bdf) = args.get(1) else {
        eprintln!("usage: pcie_check BDF|/dev/BLOCKDEV [--bench qd1|qd32 SECONDS]");
        std::process::exit(2);
    };
    let bench_args = || {
        let qd = match args.get(3).map(String::as_str) {
            Some("qd1") => 1,
            Some("qd32") => 32,
            other => panic!("--bench qd1|qd32, not {other:?}"),
        };
        (qd, args.get(4).and_then(|s| s.parse().ok()).unwrap_or(10))
    };
    // Pools first: the controller maps every pool that exists when it attaches.
    let pool = Pools {
        small: BufPool::new("pcie-check-4k", 1200, 4096).expect("buffer pool"),
        big: BufPool::new("pcie-check-128k", 32, 128 << 10).expect("buffer pool"),
    };
    if bdf.starts_with('/') {
        // The comparison: the same benchmark on baton's uring bdev over the kernel's driver.
        let b = engine::bdev::uring::create("UringCheck", std::path::Path::new(bdf), None, None).expect("uring bdev");
        let (qd, secs) = bench_args();
        bench(&b, pool, qd, secs);
        return;
    }
    let ctrlr = match PcieCtrlr::attach(bdf) {
        Ok(c) => c,
        Err(e) => {
            println!("pcie-check: skipped: {e}");
            std::process::exit(2);
        }
    };
    let nsid = ctrlr.namespaces.first().map(|n| n.nsid).expect("a namespace");
    let b = PcieBdev::new(&ctrlr, "PcieCheckn1", nsid).expect("bdev");
    if args.get(2).map(String::as_str) == Some("--bench") {
        let (qd, secs) = bench_args();
        let b: Arc<dyn Bdev> = b;
        bench(&b, pool, qd, secs);
        return;
    }
    let k = checks(&ctrlr, &b, pool);
    println!(
        "PCIE      resets {}, aborts {}, bounced requests {}",
        ctrlr.resets.load(std::sync::atomic::Ordering::Relaxed),
        ctrlr.aborts.load(std::sync::atomic::Ordering::Relaxed),
        b.bounced.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!("pcie-check: {} passed, {} failed", k.pass, k.fail);
    std::process::exit(if k.fail == 0 { 0 } else { 1 });
}
