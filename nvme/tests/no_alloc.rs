//! The NVMe/TCP data path allocates nothing per I/O: baton's target (on the test
//! reactors, RAM namespace) and the NVMe/TCP host bdev (polled from this thread) over
//! loopback, 4 KiB reads and writes at QD 1 and QD 16.
//!
//! A counting global allocator counts every allocation of every thread. Background work
//! (keep-alive, status) may allocate, so an idle stretch of the same length is counted too
//! and the I/O is charged only with the difference: a per-I/O allocation shows up as one
//! or more per I/O.

mod common;

use common::*;
use engine::alloc_count::{allocations, CountingAllocator};
use engine::bdev::{Bdev, BdevChannel, IoOp, IoRequest};
use engine::buf::DmaBuf;
use nvme::host::bdev::connect;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Keeps `qd` 4 KiB I/O in flight (alternating writes and reads) for `dur`; returns the
/// I/O completed. Buffers are taken once and reused.
fn run(ch: &mut BdevChannel, bufs: &mut Vec<DmaBuf>, qd: usize, dur: Duration) -> u64 {
    let blocks = BLOCKS / 8;
    let (mut seq, mut in_flight, mut done) = (0u64, 0usize, 0u64);
    let end = Instant::now() + dur;
    loop {
        let running = Instant::now() < end;
        while running && in_flight < qd {
            let Some(buf) = bufs.pop() else { break };
            let op = if seq % 2 == 0 { IoOp::Write } else { IoOp::Read };
            let io = IoRequest {
                op,
                offset_blocks: (seq.wrapping_mul(2654435761) % blocks) * 8,
                num_blocks: 8,
                buf: Some(buf),
                user_data: seq,
            };
            match ch.submit(io) {
                Ok(()) => {
                    seq += 1;
                    in_flight += 1;
                }
                Err(io) => {
                    bufs.push(io.buf.unwrap());
                    break;
                }
            }
        }
        ch.poll(&mut |c| {
            assert!(c.result.is_ok(), "{:?}", c.result);
            bufs.push(c.buf.expect("buffer back"));
            in_flight -= 1;
            done += 1;
        });
        if !running && in_flight == 0 {
            return done;
        }
    }
}

#[test]
fn nvme_tcp_io_allocates_nothing_per_io() {
    let f = fixture();
    let b = connect("na0", &trid(&f), &host_bdev_opts()).unwrap();
    b.preconnect(1).unwrap();
    let mut ch = b.open_channel().unwrap();
    let mut bufs: Vec<DmaBuf> = (0..16).map(|_| DmaBuf::alloc(8 * BLOCK as usize)).collect();
    let span = Duration::from_millis(500);
    for qd in [1usize, 16] {
        run(&mut ch, &mut bufs, qd, Duration::from_millis(200)); // warm-up
        let before = allocations();
        std::thread::sleep(span);
        let idle = allocations() - before;
        let before = allocations();
        let ios = run(&mut ch, &mut bufs, qd, span);
        let busy = allocations() - before;
        assert!(ios > 100, "QD {qd}: only {ios} I/O");
        let per_io = busy.saturating_sub(idle) as f64 / ios as f64;
        println!("QD {qd}: {ios} I/O, {busy} allocations (idle stretch: {idle}): {per_io:.4} per I/O");
        assert!(
            per_io < 0.05,
            "QD {qd}: {per_io:.3} allocations per NVMe/TCP I/O ({busy} during {ios} I/O, {idle} idle)"
        );
    }
    drop(ch);
}
