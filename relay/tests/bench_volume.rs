//! Benchmark (ignored by default): 4 KiB writes at QD 1 and 32 on a replicated volume over a
//! RAM bdev with 1, 2 and 3 relays (journals on /dev/shm and /var/tmp), beside the same RAM
//! bdev without replication, in the same run. Relays run in this process on reactor 1, the
//! volume and the writer on reactor 0, over loopback TCP.
//!
//! `cargo test --release -p baton-relay --test bench_volume -- --ignored --nocapture`

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use relay::relay::{Relay, RelayConfig};
use relay::volume::{ReplicatedVolume, VolumeConfig};

#[test]
#[ignore]
fn bench_replicated_writes() {
    let reactors = Reactors::start(ReactorOpts {
        cores: vec![0, 1],
        pin: true,
        idle: IdleMode::Poll,
    })
    .unwrap();
    let (warm, dur) = (Duration::from_millis(500), Duration::from_secs(2));
    let base = engine::bdev::malloc::create("plain", 65536, 4096, None).unwrap();
    let mut plain = Vec::new();
    for qd in [1, 32] {
        plain.push(bench_writes(0, base.clone(), qd, warm, dur));
    }
    println!("| journal | relays | QD | IOPS | p50 µs | p99 µs | IOPS / unreplicated | p50 / unreplicated |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (i, qd) in [1, 32].into_iter().enumerate() {
        let (iops, p50, p99, _) = plain[i];
        println!("| none (malloc) | 0 | {qd} | {iops:.0} | {p50:.1} | {p99:.1} | 1.00 | 1.00 |");
    }
    for fs in ["/dev/shm", "/var/tmp"] {
        for n in 1..=3usize {
            let dirs: Vec<TempDir> = (0..n).map(|k| TempDir::new(fs, &format!("bench-{n}-{k}"))).collect();
            let relays: Vec<std::sync::Arc<Relay>> = dirs
                .iter()
                .map(|d| {
                    let mut c = RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), &d.0);
                    c.core = Some(1);
                    c.journal_bytes_max = 8 << 30;
                    c.segment_bytes = 256 << 20;
                    Relay::start(c).unwrap()
                })
                .collect();
            let b = engine::bdev::malloc::create(&format!("b{n}{}", fs.len()), 65536, 4096, None).unwrap();
            let mut cfg = VolumeConfig::new(&format!("v{n}{}", fs.len()), relays.iter().map(|r| r.listen_addr()));
            cfg.core = Some(0);
            let v = ReplicatedVolume::create(cfg, b).unwrap();
            for (i, qd) in [1, 32].into_iter().enumerate() {
                let (iops, p50, p99, errors) = bench_writes(0, v.clone(), qd, warm, dur);
                assert_eq!(errors, 0);
                let (piops, pp50, _, _) = plain[i];
                println!(
                    "| {fs} | {n} | {qd} | {iops:.0} | {p50:.1} | {p99:.1} | {:.2} | {:.2} |",
                    iops / piops,
                    p50 / pp50
                );
            }
            v.stop(Duration::from_secs(10)).unwrap();
            for r in &relays {
                r.stop(Duration::from_secs(10)).unwrap();
            }
        }
    }
    reactors.shutdown();
    reactors.wait();
}
