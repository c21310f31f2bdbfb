//! Loopback NVMe/TCP micro-benchmark: target on reactor core 0 with a RAM namespace, the host
//! library on core 1, 4 KiB random reads at QD 1 / 32 / 128, 4 KiB random writes at QD 32
//! and 128 KiB sequential reads at QD 8. Prints IOPS, bandwidth and latency percentiles.
//!
//! `cargo run --release -p baton-nvme --example tcp_bench [seconds_per_case] [digests]`

use engine::buf::DmaBuf;
use engine::metrics::LatencyHistogram;
use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use nvme::host::{cmd, Controller, Data, HostOpts};
use nvme::nvmf::{SubsystemParams, Target};
use std::time::{Duration, Instant};

const BLOCK: u32 = 4096;
const BLOCKS: u64 = 65536; // 256 MiB

// One piece on purpose: an example, read top to bottom (target, connection, measurement,
// report).
fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let digests = std::env::args().nth(2).is_some_and(|a| a == "digests");
    let mut o = ReactorOpts::new(vec![0]);
    o.idle = IdleMode::Poll;
    let _r = Reactors::start(o).expect("reactor on core 0");
    let b = engine::bdev::malloc::create("Malloc0", BLOCKS, BLOCK, None).unwrap();
    engine::bdev::register(b).unwrap();
    let t = Target::new();
    let nqn = "nqn.2016-06.io.baton:bench";
    t.create_subsystem(SubsystemParams {
        nqn: nqn.into(),
        allow_any_host: true,
        ..Default::default()
    })
    .unwrap();
    t.add_namespace(nqn, "Malloc0", None, None).unwrap();
    let addr = t.add_listener(nqn, "127.0.0.1:0".parse().unwrap()).unwrap();
    if let Some(c) = core_affinity::get_core_ids().and_then(|v| v.into_iter().find(|c| c.id == 1)) {
        core_affinity::set_for_current(c);
    }
    let ho = HostOpts {
        hdgst: digests,
        ddgst: digests,
        ..HostOpts::default()
    };
    let mut c = Controller::connect(addr, nqn, &ho).unwrap();
    println!("header and data digests: {}", if digests { "on" } else { "off" });
    let mut q = c.create_io_qpair().unwrap();
    // Fill so reads read real data.
    for lba in (0..BLOCKS).step_by(32) {
        let r = q
            .sync(
                cmd::write(1, lba, 32),
                Data::ToCtrl(DmaBuf::alloc(32 * 4096)),
                Duration::from_secs(10),
            )
            .unwrap();
        assert!(r.status().is_success());
        c.tick().unwrap();
    }
    println!("case                         qd      IOPS    MB/s   p50us   p99us  p99.9us");
    for (name, write, seq, nlb, qd) in [
        ("4k randread", false, false, 1u32, 1usize),
        ("4k randread", false, false, 1, 32),
        ("4k randread", false, false, 1, 128),
        ("4k randwrite", true, false, 1, 32),
        ("128k seqread", false, true, 32, 8),
    ] {
        let mut h = LatencyHistogram::new();
        let mut rng: u64 = 0x2545F4914F6CDD1D;
        let mut next_seq = 0u64;
        let mut submit_ns = vec![0u64; qd];
        let mut bufs: Vec<Option<DmaBuf>> = (0..qd).map(|_| Some(DmaBuf::alloc((nlb * BLOCK) as usize))).collect();
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let mut done = 0u64;
        let mut inflight = 0usize;
        let mut stopping = false;
        let mut iter = 0u64;
        loop {
            for slot in 0..qd {
                if stopping {
                    break;
                }
                if let Some(b) = bufs[slot].take() {
                    let lba = if seq {
                        let l = next_seq;
                        next_seq = (next_seq + u64::from(nlb)) % BLOCKS;
                        l
                    } else {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng % (BLOCKS - u64::from(nlb))
                    };
                    let (s, d) = if write {
                        (cmd::write(1, lba, nlb), Data::ToCtrl(b))
                    } else {
                        (cmd::read(1, lba, nlb), Data::FromCtrl(b))
                    };
                    submit_ns[slot] = engine::clock::now_ns();
                    q.submit(s, d, slot as u64).map_err(|e| e.0).unwrap();
                    inflight += 1;
                }
            }
            q.poll(&mut |cpl| {
                assert!(cpl.status().is_success());
                let slot = cpl.user as usize;
                h.record_ns(engine::clock::now_ns() - submit_ns[slot]);
                bufs[slot] = cpl.buf;
                done += 1;
                inflight -= 1;
            })
            .unwrap();
            iter += 1;
            if iter.is_multiple_of(4096) {
                c.tick().unwrap();
            }
            if !stopping && Instant::now() >= end {
                stopping = true;
            }
            if stopping && inflight == 0 {
                break;
            }
        }
        let el = start.elapsed().as_secs_f64();
        let iops = done as f64 / el;
        println!(
            "{name:<28} {qd:>3} {iops:>9.0} {:>7.0} {:>7.1} {:>7.1} {:>8.1}",
            iops * f64::from(nlb * BLOCK) / 1e6,
            h.percentile_us(50.0),
            h.percentile_us(99.0),
            h.percentile_us(99.9)
        );
    }
    c.disconnect();
    t.shutdown();
}
