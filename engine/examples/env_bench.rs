//! baton's env against DPDK's, side by side in one run (docs/dpdk.md):
//!
//! 1. the message ring alone: one producer thread, one consumer thread;
//! 2. messages per second between two reactors (`engine::reactor::call` from
//!    a poller on one reactor to the other) with each env's rings;
//! 3. the malloc and null bdevs at queue depth 128 on one reactor, every
//!    request taking a 4 KiB buffer from a pool of each env and giving it back
//!    on completion.
//!
//! `cargo run -p baton-engine --release --features dpdk --example env_bench -- [seconds per figure] [rounds]`
//! (`BATON_BENCH_CORES=2,3` picks the two cores; default: the first two this process may use.)

use engine::bdev::{self, IoOp, IoRequest};
use engine::buf::BufPool;
use engine::env::{self, EnvKind, EnvOpts};
use engine::reactor::{self, register_poller, IdleMode, PollStatus, ReactorOpts, Reactors};
use engine::ring::Ring;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KINDS: [EnvKind; 2] = [EnvKind::Baton, EnvKind::Dpdk];
const QD: usize = 128;

fn cores() -> (u32, u32) {
    if let Ok(v) = std::env::var("BATON_BENCH_CORES") {
        let c: Vec<u32> = v.split(',').filter_map(|s| s.trim().parse().ok()).collect();
        if c.len() == 2 {
            return (c[0], c[1]);
        }
    }
    let ids: Vec<u32> = core_ids();
    (ids[0], *ids.get(1).unwrap_or(&ids[0]))
}

fn core_ids() -> Vec<u32> {
    let mut v = Vec::new();
    for c in 0..libc_cpus() {
        v.push(c);
    }
    v
}

fn libc_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Raw ring: producer pushes u64s as fast as it can, consumer pops them.
fn ring_raw(kind: EnvKind, secs: f64) -> f64 {
    let ring = Arc::new(Ring::<[u64; 3]>::new_in(kind, reactor::MSG_RING_CAPACITY).expect("ring"));
    let stop = Arc::new(AtomicBool::new(false));
    let (r2, s2) = (ring.clone(), stop.clone());
    let consumer = std::thread::spawn(move || {
        let mut n = 0u64;
        let mut sum = 0u64;
        while !s2.load(Ordering::Relaxed) {
            match r2.pop() {
                Some(v) => {
                    n += 1;
                    sum = sum.wrapping_add(v[0]);
                }
                None => std::hint::spin_loop(),
            }
        }
        std::hint::black_box(sum);
        n
    });
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        for _ in 0..256 {
            if ring.push([i, 0, 0]).is_ok() {
                i += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let n = consumer.join().expect("consumer");
    n as f64 / t0.elapsed().as_secs_f64()
}

/// The message: does nothing (the receiving reactor's own counter counts it).
fn on_msg(arg: usize) {
    std::hint::black_box(arg);
}

/// Messages from a poller on reactor `a` to reactor `b` for `secs`.
fn ring_reactors(kind: EnvKind, a: u32, b: u32, secs: f64) -> f64 {
    let r = Reactors::start_in(
        kind,
        ReactorOpts {
            cores: vec![a, b],
            pin: a != b,
            idle: IdleMode::Poll,
        },
    )
    .expect("reactors");
    let before = r.stats();
    r.run_on(a, move || {
        let mut seq = 0usize;
        register_poller("bench_send", None, move || {
            for _ in 0..64 {
                if reactor::call(b, on_msg, seq).is_err() {
                    break;
                }
                seq += 1;
            }
            PollStatus::Busy
        });
    })
    .expect("register");
    std::thread::sleep(Duration::from_secs_f64(secs));
    let after = r.stats();
    let msgs = |s: &[reactor::ReactorStats]| s.iter().find(|s| s.core == b).map(|s| s.msgs).unwrap_or(0);
    let got = msgs(&after) - msgs(&before);
    r.shutdown();
    r.wait();
    got as f64 / secs
}

/// 4 KiB reads at QD 128 on one reactor; every request takes a buffer from
/// `pool` and its completion drops it back.
fn bdev_qd(kind: EnvKind, pool: &'static BufPool, backend: &str, core: u32, secs: f64) -> f64 {
    let name = format!("bench_{backend}_{}", kind.name());
    let b = match backend {
        "malloc" => bdev::malloc::create(&name, (64 << 20) / 4096, 4096, None),
        _ => bdev::null::create(&name, 1 << 20, 4096, None),
    }
    .expect("bdev");
    let r = Reactors::start_in(
        EnvKind::Baton,
        ReactorOpts {
            cores: vec![core],
            pin: true,
            idle: IdleMode::Poll,
        },
    )
    .expect("reactor");
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (d2, s2) = (done.clone(), stop.clone());
    let blocks = b.num_blocks();
    r.run_on(core, move || {
        let mut ch = b.open_channel().expect("channel");
        let mut inflight = 0usize;
        let mut next = 0u64;
        let mut completed = 0u64;
        register_poller("bench_qd", None, move || {
            while inflight < QD && !s2.load(Ordering::Relaxed) {
                let Some(buf) = pool.get() else { break };
                let io = IoRequest {
                    op: IoOp::Read,
                    offset_blocks: next % blocks,
                    num_blocks: 1,
                    buf: Some(buf),
                    user_data: next,
                };
                next = next.wrapping_add(7919);
                if ch.submit(io).is_err() {
                    break;
                }
                inflight += 1;
            }
            let n = ch.poll(&mut |c| {
                debug_assert!(c.result.is_ok());
                drop(c.buf);
            });
            inflight -= n;
            completed += n as u64;
            d2.store(completed, Ordering::Relaxed);
            PollStatus::Busy
        });
    })
    .expect("register");
    std::thread::sleep(Duration::from_millis(200));
    let c0 = done.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let c1 = done.load(Ordering::Relaxed);
    let el = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    r.shutdown();
    r.wait();
    (c1 - c0) as f64 / el
}

fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    // Baton's env for the process; DPDK's EAL started alongside so both kinds exist.
    env::init(EnvOpts::default()).expect("env");
    if let Err(e) = env::ensure(EnvKind::Dpdk, &EnvOpts::from_env().unwrap_or_default()) {
        eprintln!("env_bench: {e}");
        std::process::exit(1);
    }
    let (a, b) = cores();
    let rounds: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    println!("cores {a},{b}; {secs} s per figure; {rounds} rounds, each alternating baton, dpdk; median (min..max)");
    let pools: Vec<&'static BufPool> = KINDS
        .iter()
        .map(|&k| BufPool::new_in(k, &format!("bench-{}", k.name()), 4096, 4096).expect("pool"))
        .collect();
    // figure name -> per-kind samples
    let names = [
        "ring, two threads (M msg/s)",
        "ring, two reactors (M msg/s)",
        "null bdev QD128 4 KiB read (M IOPS)",
        "malloc bdev QD128 4 KiB read (M IOPS)",
    ];
    let mut samples = vec![[Vec::new(), Vec::new()]; names.len()];
    for _ in 0..rounds {
        for (i, &k) in KINDS.iter().enumerate() {
            samples[0][i].push(ring_raw(k, secs) / 1e6);
        }
        for (i, &k) in KINDS.iter().enumerate() {
            samples[1][i].push(ring_reactors(k, a, b, secs) / 1e6);
        }
        for (f, backend) in [(2, "null"), (3, "malloc")] {
            for (i, &k) in KINDS.iter().enumerate() {
                samples[f][i].push(bdev_qd(k, pools[i], backend, a, secs) / 1e6);
            }
        }
    }
    println!("{:<40} {:>24} {:>24}", "", "baton", "dpdk");
    for (name, per_kind) in names.iter().zip(samples.iter_mut()) {
        let cells: Vec<String> = per_kind
            .iter_mut()
            .map(|v| {
                v.sort_by(f64::total_cmp);
                format!("{:.2} ({:.2}..{:.2})", v[v.len() / 2], v[0], v[v.len() - 1])
            })
            .collect();
        println!("{name:<40} {:>24} {:>24}", cells[0], cells[1]);
    }
}
