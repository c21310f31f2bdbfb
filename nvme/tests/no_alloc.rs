//! The NVMe/TCP data path allocates nothing per I/O: baton's target (on the test
//! reactors, RAM namespace) and the NVMe/TCP host bdev (polled from this thread) over
//! loopback, 4 KiB reads and writes at QD 1 and QD 16.
//!
//! A counting global allocator counts every allocation of every thread. Background work
//! (keep-alive, status) may allocate, so an idle stretch of the same length is counted too
//! and the I/O is charged only with the difference: a per-I/O allocation shows up as one
//! or more per I/O.
//!
//! The pool-exhaustion case runs a fixed number of rounds, each with more large I/O in
//! flight than the target's pools hold (`num_shared_buffers` 4): every I/O completes with
//! its data, requests waited for buffers (`buffer_waits`), and the allocations are counted
//! per operation over the rounds (no clock involved).

mod common;

use common::*;
use engine::alloc_count::{allocations, CountingAllocator};
use engine::bdev::{Bdev, BdevChannel, IoOp, IoRequest};
use engine::buf::DmaBuf;
use nvme::host::bdev::connect;
use nvme::rpc::{nvmf_create_transport, nvmf_get_stats, CreateTransport};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::Duration;

/// The tests of this file count the allocations of the whole process: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Keeps `qd` 4 KiB I/O in flight (alternating writes and reads) until `n` have been
/// submitted, then waits for them; returns the I/O completed (`n`). Buffers are taken once
/// and reused. Counted, not timed: a slow machine takes longer, never fails.
fn run(ch: &mut BdevChannel, bufs: &mut Vec<DmaBuf>, qd: usize, n: u64) -> u64 {
    let blocks = BLOCKS / 8;
    let (mut seq, mut in_flight, mut done) = (0u64, 0usize, 0u64);
    loop {
        let running = seq < n;
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
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = fixture();
    let b = connect("na0", &trid(&f), &host_bdev_opts()).unwrap();
    b.preconnect(1).unwrap();
    let mut ch = b.open_channel().unwrap();
    let mut bufs: Vec<DmaBuf> = (0..16).map(|_| DmaBuf::alloc(8 * BLOCK as usize)).collect();
    let span = Duration::from_millis(500);
    for qd in [1usize, 16] {
        run(&mut ch, &mut bufs, qd, 200); // warm-up
        let before = allocations();
        std::thread::sleep(span);
        let idle = allocations() - before;
        let before = allocations();
        let ios = run(&mut ch, &mut bufs, qd, 2_000);
        let busy = allocations() - before;
        assert_eq!(ios, 2_000, "QD {qd}");
        let per_io = busy.saturating_sub(idle) as f64 / ios as f64;
        println!("QD {qd}: {ios} I/O, {busy} allocations (idle stretch: {idle}): {per_io:.4} per I/O");
        assert!(
            per_io < 0.05,
            "QD {qd}: {per_io:.3} allocations per NVMe/TCP I/O ({busy} during {ios} I/O, {idle} idle)"
        );
    }
    drop(ch);
}

/// Fills `b` with the pattern of I/O `tag` (no allocation).
fn fill(b: &mut [u8], tag: u64) {
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u64).wrapping_mul(31).wrapping_add(tag.wrapping_mul(131)) as u8;
    }
}

fn is_pattern(b: &[u8], tag: u64) -> bool {
    b.iter()
        .enumerate()
        .all(|(i, x)| *x == (i as u64).wrapping_mul(31).wrapping_add(tag.wrapping_mul(131)) as u8)
}

/// Writes (then reads back and checks) `bufs.len()` I/O of `blocks` blocks each at once,
/// I/O `i` at block `i * blocks`, tagged `round * 100 + i`; waits for all of each.
fn burst(ch: &mut BdevChannel, bufs: &mut Vec<DmaBuf>, blocks: u32, round: u64) {
    let n = bufs.len();
    for op in [IoOp::Write, IoOp::Read] {
        for i in 0..n {
            let mut buf = bufs.pop().expect("buffer");
            let tag = round * 100 + i as u64;
            if op == IoOp::Write {
                fill(&mut buf, tag);
            } else {
                buf.fill(0);
            }
            let io = IoRequest {
                op,
                offset_blocks: i as u64 * u64::from(blocks),
                num_blocks: blocks,
                buf: Some(buf),
                user_data: tag,
            };
            assert!(ch.submit(io).is_ok(), "host queue full at {i} of {n}");
        }
        let mut done = 0;
        while done < n {
            ch.poll(&mut |c| {
                assert!(c.result.is_ok(), "{op:?} {}: {:?}", c.user_data, c.result);
                let b = c.buf.expect("buffer back");
                if op == IoOp::Read {
                    assert!(is_pattern(&b, c.user_data), "read {} returned other data", c.user_data);
                }
                bufs.push(b);
                done += 1;
            });
        }
    }
}

fn buffer_waits() -> u64 {
    nvme::nvmf::tcp::group_stats()
        .iter()
        .map(|g| g.buffer_waits.load(Relaxed))
        .sum()
}

#[test]
fn exhausted_pools_make_io_wait_without_allocating() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = fixture();
    // 4 large (128 KiB) buffers and the minimum of 2 huge (1 MiB) ones.
    let p: CreateTransport =
        serde_json::from_value(serde_json::json!({"trtype": "TCP", "num_shared_buffers": 4})).unwrap();
    assert!(nvmf_create_transport(&f.target, p).unwrap());
    let b = connect("na1", &trid(&f), &host_bdev_opts()).unwrap();
    b.preconnect(1).unwrap();
    let mut ch = b.open_channel().unwrap();
    // 16 x 64 KiB (large pool, 4 buffers) and 8 x 256 KiB (huge pool, 2 buffers) at once.
    let cases: [(u32, usize); 2] = [(128, 16), (512, 8)];
    let mut sets: Vec<Vec<DmaBuf>> = cases
        .iter()
        .map(|&(blocks, n)| {
            (0..n)
                .map(|_| DmaBuf::alloc(blocks as usize * BLOCK as usize))
                .collect()
        })
        .collect();
    // Warm-up: the first round may size queues and caches on either side.
    for (i, &(blocks, _)) in cases.iter().enumerate() {
        burst(&mut ch, &mut sets[i], blocks, 0);
    }
    const ROUNDS: u64 = 20;
    let waits_before = buffer_waits();
    let before = allocations();
    for round in 1..=ROUNDS {
        for (i, &(blocks, _)) in cases.iter().enumerate() {
            burst(&mut ch, &mut sets[i], blocks, round);
        }
    }
    let allocs = allocations() - before;
    let waits = buffer_waits() - waits_before;
    let ops = ROUNDS * 2 * cases.iter().map(|&(_, n)| n as u64).sum::<u64>();
    let per_op = allocs as f64 / ops as f64;
    println!("pool exhaustion: {ops} I/O, {waits} buffer waits, {allocs} allocations: {per_op:.4} per I/O");
    assert!(waits > 0, "no request waited for a buffer");
    assert!(per_op < 0.05, "{per_op:.3} allocations per I/O ({allocs} during {ops})");
    // Nothing is left waiting or in flight; the stats show the counters.
    let stats = nvmf_get_stats(&f.target, None).unwrap();
    let groups = stats["poll_groups"].as_array().unwrap();
    let total = |k: &str| -> u64 { groups.iter().map(|g| g["transports"][0][k].as_u64().unwrap()).sum() };
    assert_eq!(total("pending_data_buffer"), 0);
    assert!(total("buffer_waits") >= waits);
    for g in groups {
        let states = g["transports"][0]["request_states"].as_object().unwrap();
        for n in nvme::nvmf::tcp::REQ_STATE_NAMES {
            assert!(states.contains_key(n), "{n} missing from {states:?}");
        }
        assert_eq!(states["need_buffer"], 0);
    }
    drop(ch);
}
