//! Crash tests: the standby runs in a child process (this test binary
//! re-invoked with `STANDBY_CRASH_CHILD` set) over `uring` bdevs on files,
//! and kills itself with SIGKILL at a random poll, which lands in the middle
//! of staging, applying, snapshot forming or metadata checkpoints. The
//! parent then recovers the standby from the same files and checks:
//! - what it shows is byte for byte the reference image of the restart point
//!   it claims (invariant 2), never older than the last one the child
//!   reported as applied (durability of a completed apply / formed snapshot);
//! - after feeding the rest of the stream (relays resend from the resume
//!   LSN), it ends at the final restart point with the final image.

mod common;

use common::*;
use engine::bdev::{uring, Bdev};
use standby::delayed::DelayedOpts;
use standby::snapshot::SnapshotOpts;
use standby::{ModeConfig, Offer, StandbyConfig, StandbyVolume};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

const BS: usize = 512;
const VOLUME_BLOCKS: u64 = 128;

fn shape(seed: u64) -> Shape {
    let mut r = Rng(seed);
    Shape {
        volume_blocks: VOLUME_BLOCKS,
        block_size: BS,
        epochs: 12 + r.below(8),
        ops_per_epoch_max: 10 + r.below(30),
        blocks_per_write_max: 1 + r.below(8),
        generation: 1,
    }
}

fn file(dir: &Path, name: &str, blocks: u64, create: bool) -> PathBuf {
    let p = dir.join(name);
    if create {
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(blocks * BS as u64).unwrap();
    }
    p
}

fn config(dir: &Path, delayed: bool, create: bool) -> StandbyConfig {
    let bdev = |name: &str, blocks: u64| -> Arc<dyn Bdev> {
        let p = file(dir, name, blocks, create);
        uring::create(name, &p, Some(BS as u32), None).unwrap()
    };
    let mode = if delayed {
        ModeConfig::Delayed {
            volume: bdev("volume", VOLUME_BLOCKS),
            staging: bdev("staging", 2 + 1200),
            opts: DelayedOpts {
                cache_bytes_max: 64 * 1024,
            },
        }
    } else {
        ModeConfig::Snapshot {
            data: bdev("data", VOLUME_BLOCKS * 6 + 800),
            metadata: bdev("meta", 2 + 2 * 120),
            volume_blocks: VOLUME_BLOCKS,
            opts: SnapshotOpts { keep_last: 3 },
        }
    };
    StandbyConfig {
        name: "crash".into(),
        mode,
        format: create,
    }
}

/// Feeds ops from `from` on (in order) until the stream ends, polling, and
/// calls `each_poll` after every poll; returns when everything is applied.
fn feed(vol: &mut StandbyVolume, p: &Primary, mut each_poll: impl FnMut(&mut StandbyVolume, bool)) {
    let final_epoch = p.rp_lsn.len() as u64 - 1;
    let mut i = 0;
    let mut polls = 0u64;
    while vol.applied().0 < final_epoch {
        while i < p.ops.len() {
            match vol.offer_owned(p.ops[i].clone(), 0) {
                Offer::Accepted | Offer::Duplicate => i += 1,
                Offer::Full => break,
                o => panic!("offer: {o:?}"),
            }
        }
        let busy = vol.poll(engine::clock::now_ns()) == engine::reactor::PollStatus::Busy;
        assert!(vol.error().is_none(), "{:?}", vol.error());
        each_poll(vol, busy);
        polls += 1;
        assert!(polls < 50_000_000, "standby made no progress");
    }
}

/// The child: runs the stream and dies by SIGKILL at poll `kill_at`.
#[test]
#[ignore]
fn crash_child() {
    let Ok(arg) = std::env::var("STANDBY_CRASH_CHILD") else {
        return;
    };
    let parts: Vec<&str> = arg.split(',').collect();
    let delayed = parts[0] == "delayed";
    let seed: u64 = parts[1].parse().unwrap();
    let kill_at: u64 = parts[2].parse().unwrap();
    let dir = PathBuf::from(parts[3]);
    let p = Primary::generate(seed, &shape(seed));
    let mut vol = StandbyVolume::open(config(&dir, delayed, true)).unwrap();
    let mut polls = 0u64;
    let mut reported = 0;
    feed(&mut vol, &p, |v, busy| {
        // Count only polls that did something: idle spins waiting for the
        // kernel would make the kill point depend on machine speed.
        polls += u64::from(busy);
        let e = v.applied().0;
        if e != reported {
            reported = e;
            println!("applied {e} at {polls}");
        }
        if busy && polls == kill_at {
            // SAFETY: sending a signal to ourselves has no memory effects.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    });
    println!("done at {polls}");
    // Finished before the kill point: die anyway, like a crash after the end.
    // SAFETY: as above.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

fn run(delayed: bool, iterations: u64) {
    let exe = std::env::current_exe().unwrap();
    let mut kills_mid_run = 0;
    for it in 0..iterations {
        let seed = it * 7919 + u64::from(delayed);
        let mut rng = Rng(seed ^ 0x5eed);
        let dir = std::env::temp_dir().join(format!("baton-standby-crash-{}-{delayed}-{it}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kill_at = 1 + rng.below(160);
        let out = Command::new(&exe)
            .args(["crash_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(
                "STANDBY_CRASH_CHILD",
                format!(
                    "{},{seed},{kill_at},{}",
                    if delayed { "delayed" } else { "snapshot" },
                    dir.display()
                ),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "child did not die by SIGKILL");
        let mut reported = 0u64;
        let mut done = false;
        for line in BufReader::new(&out.stdout[..]).lines() {
            let line = line.unwrap();
            if let Some(e) = line.strip_prefix("applied ") {
                reported = e.split(' ').next().unwrap().parse().unwrap();
            }
            done |= line.starts_with("done");
        }
        kills_mid_run += u64::from(!done);
        if std::env::var("CRASH_TRACE").is_ok() {
            eprintln!("it {it}: kill at poll {kill_at}, child reported epoch {reported}, done {done}");
        }
        // Recover in this process.
        let p = Primary::generate(seed, &shape(seed));
        let mut vol = StandbyVolume::open(config(&dir, delayed, false)).unwrap();
        // Let a redone apply finish before looking (the volume is not
        // exposed while one runs).
        let mut spins = 0u64;
        while !vol.quiescent() {
            vol.poll(0);
            spins += 1;
            assert!(spins < 100_000_000, "it {it}: recovery never quiesces");
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            }
        }
        let e = vol.applied().0;
        if std::env::var("CRASH_TRACE").is_ok() {
            let img = shown_after(&mut vol, delayed, &dir);
            let m: Vec<usize> = p
                .images
                .iter()
                .enumerate()
                .filter(|(_, i)| **i == img)
                .map(|(k, _)| k)
                .collect();
            eprintln!("it {it}: recovered {:?}; volume matches epochs {m:?}", vol.status());
        }
        assert!(
            e >= reported,
            "it {it}: child reported epoch {reported} applied, recovery shows {e}"
        );
        let shown = shown(&mut vol, &p, delayed, &dir);
        assert!(
            shown == p.images[e as usize],
            "it {it} (kill at poll {kill_at}): recovered epoch {e} differs from the reference at block {:?}",
            first_diff(&shown, &p.images[e as usize], BS)
        );
        // Finish the stream after the restart.
        feed(&mut vol, &p, |_, _| {});
        let last = p.rp_lsn.len() - 1;
        let shown = shown_after(&mut vol, delayed, &dir);
        assert!(shown == p.images[last], "it {it}: final image after recovery differs");
        drop(vol);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    assert!(kills_mid_run > 0, "no child was killed before the end of its stream");
}

fn shown(vol: &mut StandbyVolume, _p: &Primary, delayed: bool, dir: &Path) -> Vec<u8> {
    shown_after(vol, delayed, dir)
}

fn shown_after(vol: &mut StandbyVolume, delayed: bool, dir: &Path) -> Vec<u8> {
    let e = vol.applied().0;
    if delayed {
        let b = uring::create("check", &dir.join("volume"), Some(BS as u32), None).unwrap();
        read_all(&b)
    } else if e == 0 {
        vec![0u8; VOLUME_BLOCKS as usize * BS]
    } else {
        let b = vol.export_snapshot(e, "check").unwrap();
        read_all(&b)
    }
}

#[test]
fn crash_delayed() {
    run(true, 24);
}

#[test]
fn crash_snapshot() {
    run(false, 24);
}
