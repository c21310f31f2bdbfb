//! Execution-image transfer benchmark over loopback (ignored by default):
//!
//! ```text
//! cargo test --release -p baton-standby --test image_bench -- --ignored --nocapture
//! ```
//!
//! A 64 MiB image goes whole, then 1% of its 4 KiB pages change at random
//! and it goes again, then unchanged once more; prints image bytes, changed
//! bytes, wire bytes, their ratio and times, then the restore time.
//! `IMAGE_BENCH_MIB` and `IMAGE_BENCH_CHANGE_PCT` change the shape.

use standby::image::{ImageClient, ImageServer, TransferReport, CHUNK_SIZE};
use std::time::Instant;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn env(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn line(what: &str, r: &TransferReport, changed: u64) {
    let ratio = if changed > 0 {
        format!("{:.4}", r.wire_bytes_sent as f64 / changed as f64)
    } else {
        "-".into()
    };
    println!(
        "{what:<10} image {:>10} B  changed {:>10} B  chunks sent {:>6}/{:<6}  data {:>10} B  wire {:>10} B  wire/changed {ratio:>7}  {:>8.1} ms  {:>7.1} MiB/s of image",
        r.image_bytes,
        changed,
        r.chunks_sent,
        r.chunks_total,
        r.data_bytes_sent,
        r.wire_bytes_sent,
        r.elapsed.as_secs_f64() * 1e3,
        r.image_bytes as f64 / (1 << 20) as f64 / r.elapsed.as_secs_f64(),
    );
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture, in release"]
fn image_transfer_64mib_one_percent_delta() {
    let mib = env("IMAGE_BENCH_MIB", 64.0) as usize;
    let pct = env("IMAGE_BENCH_CHANGE_PCT", 1.0);
    let dir = std::env::temp_dir().join(format!("baton-image-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let srv = ImageServer::start("127.0.0.1:0".parse().unwrap(), &dir).unwrap();
    let mut rng = Rng(0xbe4c);
    let mut img = vec![0u8; mib << 20];
    rng.fill(&mut img);
    let pages = img.len() / CHUNK_SIZE;
    let k = ((pages as f64) * pct / 100.0).round() as usize;
    let mut c = ImageClient::connect(srv.addr(), "bench").unwrap();

    let r1 = c.transfer(1, &img).unwrap();
    line("full", &r1, img.len() as u64);

    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < k {
        picked.insert((rng.next() % pages as u64) as usize);
    }
    for &p in &picked {
        rng.fill(&mut img[p * CHUNK_SIZE..(p + 1) * CHUNK_SIZE]);
    }
    let changed = (k * CHUNK_SIZE) as u64;
    let r2 = c.transfer(2, &img).unwrap();
    line(&format!("delta {pct}%"), &r2, changed);
    assert_eq!(r2.chunks_sent, k as u64);
    assert!(r2.wire_bytes_sent < 2 * changed, "wire bytes not within 2x of changed");

    let r3 = c.transfer(3, &img).unwrap();
    line("unchanged", &r3, 0);

    let store = srv.store();
    let t = Instant::now();
    let path = store.restore("bench", 2, &r2.hash).unwrap();
    let dt = t.elapsed();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), img.len() as u64);
    println!(
        "restore    {} B verified and written in {:.1} ms",
        img.len(),
        dt.as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let rep = store.prune("bench", 3).unwrap();
    println!(
        "prune      below seq 3: {rep:?} in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    srv.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
