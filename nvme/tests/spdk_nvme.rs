//! The `spdk-nvme` bdev (feature `spdk`) against baton's own NVMe/TCP target on loopback,
//! and optionally against another target (SPDK's `nvmf_tgt`) named by
//! `BATON_SPDK_TEST_TRID`. Needs an installed SPDK (the feature) and hugepages, so the
//! tests are ignored by default; run them with (docs/spdk.md):
//!
//! ```sh
//! BATON_ENV=dpdk LD_LIBRARY_PATH=$SPDK_DIR/build/lib PKG_CONFIG_PATH=$SPDK_DIR/build/lib/pkgconfig \
//!   cargo test -p baton-nvme --features spdk --test spdk_nvme -- --ignored --test-threads 1
//! ```
#![cfg(feature = "spdk")]

mod common;

use common::*;
use engine::bdev::{Bdev, BdevChannel, IoCompletion, IoOp, IoRequest};
use engine::buf::DmaBuf;
use nvme::spdk::{attach, SpdkError, SpdkNvmeOpts};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

fn dpdk_env() {
    let o = engine::env::EnvOpts {
        kind: engine::env::EnvKind::Dpdk,
        ..engine::env::EnvOpts::default()
    };
    engine::env::init(o).expect("baton's DPDK env (hugepages reserved? see docs/spdk.md)");
}

/// The fixture's subsystem as an SPDK transport ID.
fn spdk_trid(f: &Fixture) -> String {
    format!(
        "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{} subnqn:{}",
        f.addr.port(),
        f.nqn
    )
}

/// Polls until `n` completions arrived; returns them by user data.
fn reap(ch: &mut BdevChannel, n: usize) -> HashMap<u64, IoCompletion> {
    let t0 = Instant::now();
    let mut got = HashMap::new();
    while got.len() < n {
        assert!(t0.elapsed() < T, "{} of {n} completions within {T:?}", got.len());
        ch.poll(&mut |c| {
            assert!(got.insert(c.user_data, c).is_none(), "one completion per request");
        });
    }
    got
}

/// Writes a pattern to `count` places at queue depth `count`, reads all back at the same
/// depth, and compares; then checks the channel's refusals and the bdev's counters.
/// Returns the channel (its queue pair stays connected).
fn round_trip(b: &dyn Bdev, count: u64, nlb: u32) -> BdevChannel {
    let bs = b.block_size() as usize;
    let mut ch = b.open_channel().unwrap();
    let lba = |i: u64| (i * 97) % (b.num_blocks() - nlb as u64);
    let before = b.io_stats();
    for i in 0..count {
        let data = pattern(lba(i), 5, nlb as usize * bs);
        let io = IoRequest {
            op: IoOp::Write,
            offset_blocks: lba(i),
            num_blocks: nlb,
            buf: Some(buf_from(&data)),
            user_data: i,
        };
        ch.submit(io).expect("room for the writes");
    }
    for (_, c) in reap(&mut ch, count as usize) {
        assert!(c.result.is_ok(), "write: {:?}", c.result);
        assert_eq!(
            c.buf.map(|b| b.len()),
            Some(nlb as usize * bs),
            "write hands its buffer back"
        );
    }
    for i in 0..count {
        let io = IoRequest {
            op: IoOp::Read,
            offset_blocks: lba(i),
            num_blocks: nlb,
            buf: Some(DmaBuf::alloc(nlb as usize * bs)),
            user_data: i,
        };
        ch.submit(io).expect("room for the reads");
    }
    for (i, c) in reap(&mut ch, count as usize) {
        assert!(c.result.is_ok(), "read: {:?}", c.result);
        let got = c.buf.expect("read hands its buffer back");
        assert!(
            got[..] == pattern(lba(i), 5, nlb as usize * bs)[..],
            "read {i} returns what was written"
        );
    }
    // Out of range: refused by the channel wrapper, reported by the next poll.
    let io = IoRequest {
        op: IoOp::Read,
        offset_blocks: b.num_blocks(),
        num_blocks: 1,
        buf: Some(DmaBuf::alloc(bs)),
        user_data: 99,
    };
    ch.submit(io).unwrap();
    assert!(reap(&mut ch, 1)[&99].result.is_err());
    let st = b.io_stats();
    assert_eq!(st.num_write_ops - before.num_write_ops, count);
    assert_eq!(st.num_read_ops - before.num_read_ops, count);
    assert_eq!(ch.outstanding(), 0);
    ch
}

#[test]
#[ignore = "needs SPDK, hugepages and BATON_ENV=dpdk: see docs/spdk.md"]
fn spdk_nvme_over_tcp_to_baton_target() {
    dpdk_env();
    let f = fixture();
    let trid = spdk_trid(&f);
    let b = attach("spdk0", &trid, &SpdkNvmeOpts::default()).unwrap();
    assert_eq!((b.block_size(), b.num_blocks(), b.nsid()), (BLOCK, BLOCKS, 1));
    // Kept open: a new queue pair right after closing one reuses its queue ID, and
    // baton's target may refuse that Connect (sct 1, sc 0x82) until it has seen the
    // old connection close.
    let _ch = round_trip(&*b, 64, 8);
    // What baton's target holds is what SPDK wrote: read it through the malloc bdev.
    let m = engine::bdev::lookup(&f.bdev).unwrap();
    let mut mch = m.open_channel().unwrap();
    let io = IoRequest {
        op: IoOp::Read,
        offset_blocks: 97,
        num_blocks: 8,
        buf: Some(DmaBuf::alloc(8 * BLOCK as usize)),
        user_data: 1,
    };
    mch.submit(io).unwrap();
    let c = reap(&mut mch, 1).remove(&1).unwrap();
    assert!(c.buf.unwrap()[..] == pattern(97, 5, 8 * BLOCK as usize)[..]);

    // On a reactor: the first channel runs the admin poller, and closing it stops the
    // poller (it unregisters itself on its next run).
    let admin_pollers = || {
        engine::reactor::stats()
            .iter()
            .flat_map(|r| r.pollers.iter())
            .filter(|p| p.name == "spdk_nvme_admin")
            .count()
    };
    // The I/O runs in a poller, as baton perf's workers do: a reactor must not be blocked
    // (it may be the one serving this very connection in the target).
    let b2 = b.clone();
    let state = Arc::new(AtomicU8::new(0));
    let st = state.clone();
    let io_poller = engine::reactor::run_on(0, move || {
        let mut ch = b2.open_channel().unwrap();
        assert_eq!(
            admin_pollers(),
            1,
            "the first channel on a reactor polls the admin queue"
        );
        let ch2 = b2.open_channel().unwrap();
        assert_eq!(admin_pollers(), 1, "one admin poller per controller");
        drop(ch2);
        let mut submitted = false;
        engine::reactor::register_poller("test-io", None, move || {
            if !submitted {
                let io = IoRequest {
                    op: IoOp::Read,
                    offset_blocks: 97,
                    num_blocks: 8,
                    buf: Some(DmaBuf::alloc(8 * BLOCK as usize)),
                    user_data: 3,
                };
                submitted = ch.submit(io).is_ok();
            }
            ch.poll(&mut |c| {
                let same = c.buf.is_some_and(|b| b[..] == pattern(97, 5, 8 * BLOCK as usize)[..]);
                st.store(if c.result.is_ok() && same { 1 } else { 2 }, Ordering::Release);
            });
            engine::reactor::PollStatus::Busy
        })
    })
    .unwrap();
    let t0 = Instant::now();
    while state.load(Ordering::Acquire) == 0 {
        assert!(t0.elapsed() < T, "no completion on the reactor within {T:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        state.load(Ordering::Acquire),
        1,
        "read on a reactor returns what was written"
    );
    // Dropping the poller drops the channel while the reactor removes pollers.
    engine::reactor::run_on(0, move || engine::reactor::unregister_poller(io_poller)).unwrap();
    let t0 = Instant::now();
    while admin_pollers() != 0 {
        assert!(t0.elapsed() < T, "the admin poller outlived its channel");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    // Detach by RPC: gone from the registry; the controller goes with the last user.
    engine::bdev::register(b.clone()).unwrap();
    assert_eq!(
        nvme::spdk::rpc::detach_rpc(nvme::spdk::rpc::DetachParams { name: "spdk0".into() }),
        Ok(true)
    );
    assert!(engine::bdev::lookup("spdk0").is_none());
    drop(_ch);
    drop(b);

    // A namespace the subsystem lacks, and a port nobody listens on: typed errors.
    let o = SpdkNvmeOpts {
        nsid: Some(9),
        ..SpdkNvmeOpts::default()
    };
    assert!(matches!(attach("spdk1", &trid, &o), Err(SpdkError::NoNamespace(_, 9))));
    let closed = trid.replace(&format!("trsvcid:{}", f.addr.port()), "trsvcid:1");
    assert!(matches!(
        attach("spdk2", &closed, &SpdkNvmeOpts::default()),
        Err(SpdkError::Connect(_))
    ));
}

#[test]
#[ignore = "needs SPDK, hugepages, BATON_ENV=dpdk and a target in BATON_SPDK_TEST_TRID: see docs/spdk.md"]
fn spdk_nvme_over_tcp_to_other_target() {
    let Ok(trid) = std::env::var("BATON_SPDK_TEST_TRID") else {
        panic!("set BATON_SPDK_TEST_TRID to a target's transport ID (e.g. SPDK's nvmf_tgt; docs/spdk.md)");
    };
    dpdk_env();
    let b = attach("spdk_other", &trid, &SpdkNvmeOpts::default()).unwrap();
    let nlb = (4096 / b.block_size()).max(1);
    drop(round_trip(&*b, 128, nlb));
}

/// One read of 8 blocks at `lba`; its completion.
fn read_once(ch: &mut BdevChannel, lba: u64, user: u64) -> IoCompletion {
    let io = IoRequest {
        op: IoOp::Read,
        offset_blocks: lba,
        num_blocks: 8,
        buf: Some(DmaBuf::alloc(8 * BLOCK as usize)),
        user_data: user,
    };
    ch.submit(io).expect("room for a read");
    reap(ch, 1).remove(&user).unwrap()
}

#[test]
#[ignore = "needs SPDK, hugepages and BATON_ENV=dpdk: see docs/spdk.md"]
fn spdk_nvme_reconnects_after_the_target_restarts() {
    dpdk_env();
    let f = fixture();
    let trid = spdk_trid(&f);
    let b = attach("spdk_rc", &trid, &SpdkNvmeOpts::default()).unwrap();
    let mut ch = round_trip(&*b, 16, 8);
    assert_eq!(b.recovery().resets, 0);

    // The target goes away: I/O fails at once (not held), with the transport's error.
    f.target.shutdown();
    let t0 = Instant::now();
    let mut failed = 0u64;
    while read_once(&mut ch, 97, 1000 + failed).result.is_ok() {
        assert!(t0.elapsed() < T, "the loss was not noticed");
        failed += 1;
    }

    // It comes back on the same address: the channel's polls reset the controller and
    // reconnect the queue pair; reads then return what was written before the loss.
    let _t2 = restart(&f);
    let t0 = Instant::now();
    let mut attempts = 0u64;
    let c = loop {
        let c = read_once(&mut ch, 97, 2000 + attempts);
        if c.result.is_ok() {
            break c;
        }
        attempts += 1;
        assert!(
            t0.elapsed() < T,
            "no reconnect after {attempts} reads: {:?}, {:?}",
            c.result,
            b.recovery()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(c.buf.unwrap()[..] == pattern(97, 5, 8 * BLOCK as usize)[..]);
    let r = b.recovery();
    assert!(r.resets >= 1, "the controller was reset: {r:?}");
    assert!(r.qpair_reconnects >= 1, "the queue pair was reconnected: {r:?}");
    assert!(!r.resetting);
    let info = b.driver_specific();
    assert_eq!(info["spdk_nvme"]["recovery"]["resets"], r.resets);
    drop(ch);
}

/// Submits one read of 8 blocks at `lba` without waiting for it.
fn submit_read(ch: &mut BdevChannel, lba: u64, user: u64) {
    let io = IoRequest {
        op: IoOp::Read,
        offset_blocks: lba,
        num_blocks: 8,
        buf: Some(DmaBuf::alloc(8 * BLOCK as usize)),
        user_data: user,
    };
    ch.submit(io).expect("room for a read");
}

#[test]
#[ignore = "needs SPDK, hugepages and BATON_ENV=dpdk: see docs/spdk.md"]
fn spdk_nvme_holds_io_for_the_reconnect_then_gives_up_after_the_loss_timeout() {
    dpdk_env();
    // Reconnect forever every second, I/O waits (SPDK: fast_io_fail_timeout_sec 0).
    let f = fixture();
    let trid = spdk_trid(&f);
    let o = SpdkNvmeOpts {
        reconnect: Some(nvme::host::reconnect::ReconnectOpts {
            ctrlr_loss_timeout_sec: -1,
            reconnect_delay_sec: 1,
            fast_io_fail_timeout_sec: 0,
        }),
        ..SpdkNvmeOpts::default()
    };
    let b = attach("spdk_hold", &trid, &o).unwrap();
    let mut ch = round_trip(&*b, 16, 8);
    f.target.shutdown();
    // Reads while the target is away: none completes, with success or failure, until
    // it is back (polled until at least two resets have failed).
    submit_read(&mut ch, 97, 1);
    let t0 = Instant::now();
    let mut polls = 0u64;
    while b.recovery().reset_failures < 2 {
        assert!(t0.elapsed() < T, "no failed reset seen: {:?}", b.recovery());
        ch.poll(&mut |c| panic!("completed while the target was away: {:?}", c.result));
        polls += 1;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(!b.recovery().given_up);
    submit_read(&mut ch, 97, 2);
    let _t2 = restart(&f);
    let got = reap(&mut ch, 2);
    for (user, c) in got {
        assert!(c.result.is_ok(), "read {user} after the reconnect: {:?}", c.result);
        assert!(c.buf.unwrap()[..] == pattern(97, 5, 8 * BLOCK as usize)[..]);
    }
    let r = b.recovery();
    assert!(r.resets >= 1 && r.reset_failures >= 2, "{r:?} after {polls} polls");
    drop(ch);

    // Reconnect for at most 2 s, a try a second: the waiting read fails once that passed
    // (given up), and so does every read after.
    let f = fixture();
    let trid = spdk_trid(&f);
    let o = SpdkNvmeOpts {
        reconnect: Some(nvme::host::reconnect::ReconnectOpts {
            ctrlr_loss_timeout_sec: 2,
            reconnect_delay_sec: 1,
            fast_io_fail_timeout_sec: 0,
        }),
        ..SpdkNvmeOpts::default()
    };
    let b = attach("spdk_giveup", &trid, &o).unwrap();
    let mut ch = round_trip(&*b, 16, 8);
    f.target.shutdown();
    submit_read(&mut ch, 97, 3);
    let c = reap(&mut ch, 1).remove(&3).unwrap();
    let e = c.result.unwrap_err().to_string();
    assert!(e.contains("ctrlr_loss_timeout_sec"), "{e}");
    let r = b.recovery();
    assert!(r.given_up && r.reset_failures >= 1, "{r:?}");
    assert!(read_once(&mut ch, 97, 4).result.is_err(), "given up is final");
    drop(ch);
}
