//! The host bdev across a lost target: I/O waits and completes after a restart within
//! `ctrlr_loss_timeout_sec`, fails clearly once it passes, fails early (and still recovers)
//! with `fast_io_fail_timeout_sec`, and bad option combinations are refused. Assertions
//! count completions and reconnects; the only timing is generous upper bounds.

mod common;

use common::*;
use engine::bdev::{Bdev, BdevChannel, IoCompletion, IoOp, IoRequest};
use engine::buf::DmaBuf;
use nvme::host::bdev::{connect, HostBdevOpts, NvmeHostBdev, ReconnectOpts};
use nvme::host::HostError;
use nvme::nvmf::Target;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn opts(loss: i32, delay: u32, fast: u32) -> HostBdevOpts {
    HostBdevOpts {
        reconnect: ReconnectOpts {
            ctrlr_loss_timeout_sec: loss,
            reconnect_delay_sec: delay,
            fast_io_fail_timeout_sec: fast,
        },
        ..host_bdev_opts()
    }
}

fn submit(ch: &mut BdevChannel, op: IoOp, lba: u64, nlb: u32, buf: DmaBuf, user: u64) {
    ch.submit(IoRequest {
        op,
        offset_blocks: lba,
        num_blocks: nlb,
        buf: Some(buf),
        user_data: user,
    })
    .expect("queue has room");
}

/// Polls until `n` completions arrived (at most `T`).
fn reap(ch: &mut BdevChannel, n: usize) -> Vec<IoCompletion> {
    let t0 = Instant::now();
    let mut got = Vec::new();
    while got.len() < n {
        assert!(t0.elapsed() < T, "{} of {n} completions within {T:?}", got.len());
        ch.poll(&mut |c| got.push(c));
        std::thread::sleep(Duration::from_millis(1));
    }
    got
}

/// Takes the fixture's target down (controllers failed, listener closed).
fn kill(f: &Fixture, b: &NvmeHostBdev, ch: &mut BdevChannel) {
    f.target.shutdown();
    let t0 = Instant::now();
    while b.connected() {
        assert!(t0.elapsed() < T, "loss not noticed");
        ch.poll(&mut |_| panic!("no I/O was outstanding"));
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn io_waits_for_a_target_restart_and_completes() {
    let f = fixture();
    let b = connect("hbr0", &trid(&f), &opts(30, 1, 0)).unwrap();
    b.preconnect(1).unwrap();
    let mut ch = b.open_channel().unwrap();
    let data = pattern(40, 9, 8 * BLOCK as usize);
    submit(&mut ch, IoOp::Write, 40, 8, buf_from(&data), 1);
    assert!(reap(&mut ch, 1)[0].result.is_ok());

    kill(&f, &b, &mut ch);
    // Down: a write and a read wait instead of failing.
    let data2 = pattern(80, 4, 8 * BLOCK as usize);
    submit(&mut ch, IoOp::Write, 80, 8, buf_from(&data2), 2);
    submit(&mut ch, IoOp::Read, 40, 8, DmaBuf::alloc(data.len()), 3);
    let mut early = 0;
    for _ in 0..100 {
        early += ch.poll(&mut |_| {});
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(early, 0, "I/O completed while the target was down");

    let t2 = restart(&f);
    let mut got = reap(&mut ch, 2);
    got.sort_by_key(|c| c.user_data);
    assert!(
        got.iter().all(|c| c.result.is_ok()),
        "{:?}",
        got.iter().map(|c| &c.result).collect::<Vec<_>>()
    );
    assert!(got[1].buf.as_ref().unwrap()[..] == data[..], "read after reconnect");
    assert_eq!(b.reconnects(), 1);
    // The new queue pair keeps working, and the waiting write landed.
    submit(&mut ch, IoOp::Read, 80, 8, DmaBuf::alloc(data2.len()), 4);
    let c = reap(&mut ch, 1).pop().unwrap();
    assert!(c.result.is_ok() && c.buf.unwrap()[..] == data2[..]);
    drop(ch);
    drop(b);
    t2.shutdown();
}

#[test]
fn io_fails_clearly_after_ctrlr_loss_timeout() {
    let f = fixture();
    let b = connect("hbr1", &trid(&f), &opts(2, 1, 0)).unwrap();
    b.preconnect(1).unwrap();
    let mut ch = b.open_channel().unwrap();
    kill(&f, &b, &mut ch);
    submit(&mut ch, IoOp::Read, 0, 1, DmaBuf::alloc(BLOCK as usize), 5);
    let c = reap(&mut ch, 1).pop().unwrap();
    let e = c.result.unwrap_err().to_string();
    assert!(e.contains("ctrlr_loss_timeout_sec"), "{e}");
    assert!(c.buf.is_some(), "the buffer comes back");
    // From now on every request fails at once.
    submit(&mut ch, IoOp::Write, 0, 1, DmaBuf::alloc(BLOCK as usize), 6);
    assert!(reap(&mut ch, 1)[0].result.is_err());
    assert_eq!(b.reconnects(), 0);
}

#[test]
fn fast_io_fail_fails_waiting_io_and_recovery_goes_on() {
    let f = fixture();
    let b = connect("hbr2", &trid(&f), &opts(60, 1, 1)).unwrap();
    b.preconnect(1).unwrap();
    let mut ch = b.open_channel().unwrap();
    kill(&f, &b, &mut ch);
    submit(&mut ch, IoOp::Read, 0, 1, DmaBuf::alloc(BLOCK as usize), 7);
    let e = reap(&mut ch, 1).pop().unwrap().result.unwrap_err().to_string();
    assert!(e.contains("fast_io_fail_timeout_sec"), "{e}");
    let t2 = restart(&f);
    // Once reconnected, I/O works again on this same channel.
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < T, "never recovered");
        submit(&mut ch, IoOp::Read, 0, 1, DmaBuf::alloc(BLOCK as usize), 8);
        if reap(&mut ch, 1)[0].result.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b.reconnects(), 1);
    drop(ch);
    drop(b);
    t2.shutdown();
}

#[test]
fn bad_reconnect_options_are_refused_by_name() {
    let f = fixture();
    for (o, param) in [
        (opts(0, 1, 0), "reconnect_delay_sec"),
        (opts(10, 0, 0), "reconnect_delay_sec"),
        (opts(5, 1, 10), "fast_io_fail_timeout_sec"),
        (opts(-3, 1, 0), "ctrlr_loss_timeout_sec"),
    ] {
        match connect("hbr3", &trid(&f), &o) {
            Err(HostError::Invalid(m)) => assert!(m.contains(param), "{m}"),
            Err(e) => panic!("{e}"),
            Ok(b) => panic!("accepted {:?}", b.reconnect_opts()),
        }
    }
    let b = connect("hbr3", &trid(&f), &opts(-1, 1, 0)).unwrap();
    assert_eq!(b.block_size(), BLOCK);
}

#[test]
fn queue_depth_16_keeps_flowing_across_a_restart() {
    let f = fixture();
    let b = connect("hbr4", &trid(&f), &opts(30, 1, 0)).unwrap();
    b.preconnect(1).unwrap();
    let mut ch = b.open_channel().unwrap();
    let bs = BLOCK as usize;
    let mut next = 0u64;
    let mut outstanding = 0usize;
    let mut done = 0u64;
    let mut errors = 0u64;
    let mut restarted: Option<Arc<Target>> = None;
    let t0 = Instant::now();
    // 16 reads in flight all along; the target goes down after 500 completions and comes
    // back; the run ends 2000 completions after the reconnect.
    let mut after = 0u64;
    let mut base: Option<u64> = None;
    while after < 2000 {
        assert!(
            t0.elapsed() < T * 2,
            "stalled: {done} done, {outstanding} outstanding, {after} after the restart"
        );
        while outstanding < 16 {
            submit(&mut ch, IoOp::Read, next % 1000, 1, DmaBuf::alloc(bs), next);
            next += 1;
            outstanding += 1;
        }
        ch.poll(&mut |c| {
            outstanding -= 1;
            done += 1;
            if c.result.is_err() {
                errors += 1;
            }
        });
        if done >= 500 && restarted.is_none() {
            f.target.shutdown();
            restarted = Some(restart(&f));
        }
        if b.reconnects() > 0 {
            after = done - *base.get_or_insert(done);
        }
    }
    // Drain: every submitted request is reported exactly once.
    while outstanding > 0 {
        assert!(t0.elapsed() < T * 2, "{outstanding} never completed");
        ch.poll(&mut |c| {
            outstanding -= 1;
            done += 1;
            if c.result.is_err() {
                errors += 1;
            }
        });
    }
    assert_eq!(done, next, "completions vs submissions");
    assert_eq!(ch.outstanding(), 0);
    assert_eq!(errors, 0);
    assert_eq!(b.reconnects(), 1);
    drop(ch);
    drop(b);
    restarted.unwrap().shutdown();
}
