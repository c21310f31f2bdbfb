//! Micro-benchmark (ignored by default): journal append + group commit on /dev/shm and on
//! the root file system (/var/tmp): queue-depth-1 latency (append one 4 KiB write frame, poll
//! until durable) and throughput with up to 32 frames outstanding, beside a raw
//! `pwrite + fdatasync` of 4 KiB on the same file system in the same run.
//!
//! `cargo test --release -p baton-relay --test bench -- --ignored --nocapture`

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use engine::clock::now_ns;
use engine::metrics::LatencyHistogram;
use relay::journal::{Journal, JournalConfig, JournalError};

const FRAME_BYTES: usize = 16 + 16 + 32 + 4096;

fn dir(base: &str, name: &str) -> PathBuf {
    let p = PathBuf::from(base).join(format!("baton-jbench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn raw_fdatasync(base: &str, n: usize) -> LatencyHistogram {
    let p = dir(base, "raw");
    std::fs::create_dir_all(&p).unwrap();
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(p.join("f"))
        .unwrap();
    let buf = vec![1u8; 4096];
    let mut h = LatencyHistogram::new();
    for i in 0..n {
        let t = now_ns();
        f.write_all_at(&buf, (i * 4096) as u64).unwrap();
        f.sync_data().unwrap();
        h.record_ns(now_ns() - t);
    }
    let _ = std::fs::remove_dir_all(&p);
    h
}

fn qd1(base: &str, n: usize) -> (LatencyHistogram, &'static str) {
    let p = dir(base, "qd1");
    let (mut j, _) = Journal::open(JournalConfig::new(&p)).unwrap();
    let frame = vec![3u8; FRAME_BYTES];
    let mut h = LatencyHistogram::new();
    for lsn in 1..=n as u64 {
        let t = now_ns();
        j.append(lsn, lsn, &[&frame]).unwrap();
        while j.poll().unwrap() < lsn {}
        h.record_ns(now_ns() - t);
    }
    let direct = if j.memory_media() {
        "memory file system: inline pwrite, no fdatasync"
    } else if j.direct_io() {
        "O_DIRECT + fdatasync"
    } else {
        "buffered + fdatasync"
    };
    drop(j);
    let _ = std::fs::remove_dir_all(&p);
    (h, direct)
}

/// Keeps up to `depth` frames appended but not yet durable; latency per frame from append to
/// durable. Returns (histogram, frames/s, frames per batch).
fn loaded(base: &str, n: u64, depth: u64) -> (LatencyHistogram, f64, f64) {
    let p = dir(base, "qd32");
    let (mut j, _) = Journal::open(JournalConfig::new(&p)).unwrap();
    let frame = vec![4u8; FRAME_BYTES];
    let mut h = LatencyHistogram::new();
    let mut started = vec![0u64; n as usize + 1];
    let mut appended = 0u64;
    let mut durable = 0u64;
    let t0 = now_ns();
    while durable < n {
        while appended < n && appended - durable < depth {
            let lsn = appended + 1;
            match j.append(lsn, lsn, &[&frame]) {
                Ok(_) => {
                    started[lsn as usize] = now_ns();
                    appended = lsn;
                }
                Err(JournalError::Busy) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let d = j.poll().unwrap();
        if d > durable {
            let now = now_ns();
            for lsn in durable + 1..=d {
                h.record_ns(now - started[lsn as usize]);
            }
            durable = d;
        }
    }
    let secs = (now_ns() - t0) as f64 / 1e9;
    let per_batch = j.stats().records_committed as f64 / j.stats().batches_committed as f64;
    drop(j);
    let _ = std::fs::remove_dir_all(&p);
    (h, n as f64 / secs, per_batch)
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture, ideally --release"]
fn bench_journal_group_commit() {
    for base in ["/dev/shm", "/var/tmp"] {
        let raw = raw_fdatasync(base, 2000);
        let (q1, direct) = qd1(base, 2000);
        let (q32, fps, per_batch) = loaded(base, 20_000, 32);
        println!("journal on {base} ({direct}), 4 KiB write frames ({FRAME_BYTES} B):");
        println!(
            "  raw pwrite 4 KiB + fdatasync        p50 {:>8.2} us  p99 {:>8.2} us",
            raw.percentile_us(50.0),
            raw.percentile_us(99.0)
        );
        println!(
            "  journal QD1 append -> durable       p50 {:>8.2} us  p99 {:>8.2} us  ({:.2}x raw p50)",
            q1.percentile_us(50.0),
            q1.percentile_us(99.0),
            q1.percentile_us(50.0) / raw.percentile_us(50.0)
        );
        println!(
            "  journal 32 outstanding              p50 {:>8.2} us  p99 {:>8.2} us  {:>8.0} frames/s  {:>6.1} MiB/s  {:.1} frames per batch",
            q32.percentile_us(50.0),
            q32.percentile_us(99.0),
            fps,
            fps * FRAME_BYTES as f64 / (1024.0 * 1024.0),
            per_batch
        );
    }
}
