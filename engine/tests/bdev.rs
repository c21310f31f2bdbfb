//! Behaviour of every bdev back end: data integrity over the whole device,
//! concurrent I/O from several reactors, zeroing operations, error cases.

mod common;

use common::*;
use engine::bdev::{self, BdevError, IoOp, IoRequest};
use engine::buf::{BufPool, DmaBuf};
use engine::reactor::{register_poller, IdleMode, PollStatus, ReactorOpts, Reactors};
use std::sync::mpsc;

/// Writes a distinct pattern over every block (in 64 KiB requests), reads it
/// all back in different-sized requests, and compares.
#[test]
fn whole_device_pattern_round_trip() {
    for bs in [512u32, 4096] {
        let num_blocks = (8u64 << 20) / bs as u64;
        for (label, b, _keep) in data_bdevs(&format!("rt{bs}"), num_blocks, bs) {
            let mut ch = b.open_channel().unwrap();
            let per_write = (65536 / bs) as u64;
            let mut off = 0;
            while off < num_blocks {
                let n = per_write.min(num_blocks - off) as u32;
                let mut buf = DmaBuf::alloc(n as usize * bs as usize);
                pattern(&mut buf, bs as usize, off, 1);
                let (r, _) = io_sync(&mut ch, IoOp::Write, off, n, Some(buf));
                r.unwrap_or_else(|e| panic!("{label}: write at {off}: {e}"));
                off += n as u64;
            }
            let (r, _) = io_sync(&mut ch, IoOp::Flush, 0, 0, None);
            r.unwrap();
            let per_read = 3u64; // odd size: crosses write boundaries
            let mut off = 0;
            let mut want = vec![0u8; (per_read * bs as u64) as usize];
            while off < num_blocks {
                let n = per_read.min(num_blocks - off) as u32;
                let len = n as usize * bs as usize;
                let (r, got) = io_sync(&mut ch, IoOp::Read, off, n, Some(DmaBuf::alloc(len)));
                r.unwrap_or_else(|e| panic!("{label}: read at {off}: {e}"));
                pattern(&mut want[..len], bs as usize, off, 1);
                assert!(
                    got.unwrap()[..] == want[..len],
                    "{label} bs {bs}: data mismatch at block {off}"
                );
                off += n as u64;
            }
            let st = b.io_stats();
            assert_eq!(
                st.bytes_written,
                num_blocks * bs as u64,
                "{label}: iostat bytes_written"
            );
            assert_eq!(st.bytes_read, num_blocks * bs as u64, "{label}: iostat bytes_read");
            assert_eq!(st.num_errors, 0);
        }
    }
}

#[test]
fn write_zeroes_and_unmap_read_back_zero() {
    for (label, b, _keep) in data_bdevs("zero", 4096, 512) {
        let mut ch = b.open_channel().unwrap();
        let mut buf = DmaBuf::alloc(4096 * 512);
        pattern(&mut buf, 512, 0, 9);
        io_sync(&mut ch, IoOp::Write, 0, 4096, Some(buf)).0.unwrap();
        io_sync(&mut ch, IoOp::WriteZeroes, 100, 50, None).0.unwrap();
        io_sync(&mut ch, IoOp::Unmap, 1000, 8, None).0.unwrap();
        let (r, got) = io_sync(&mut ch, IoOp::Read, 0, 4096, Some(DmaBuf::alloc(4096 * 512)));
        r.unwrap();
        let got = got.unwrap();
        let mut want = vec![0u8; 4096 * 512];
        pattern(&mut want, 512, 0, 9);
        want[100 * 512..150 * 512].fill(0);
        want[1000 * 512..1008 * 512].fill(0);
        assert!(got[..] == want[..], "{label}: zeroed ranges wrong");
    }
}

#[test]
fn invalid_requests_complete_with_named_errors() {
    for (label, b, _keep) in data_bdevs("err", 1024, 512) {
        let mut ch = b.open_channel().unwrap();
        let (r, _) = io_sync(&mut ch, IoOp::Read, 1020, 8, Some(DmaBuf::alloc(8 * 512)));
        assert!(
            matches!(
                r,
                Err(BdevError::OutOfRange {
                    offset_blocks: 1020,
                    num_blocks: 8,
                    size_blocks: 1024
                })
            ),
            "{label}: {r:?}"
        );
        let (r, _) = io_sync(&mut ch, IoOp::Write, u64::MAX - 1, 4, Some(DmaBuf::alloc(4 * 512)));
        assert!(
            matches!(r, Err(BdevError::OutOfRange { .. })),
            "{label}: overflow must not wrap: {r:?}"
        );
        let (r, buf) = io_sync(&mut ch, IoOp::Write, 0, 2, Some(DmaBuf::alloc(1000)));
        assert!(
            matches!(
                r,
                Err(BdevError::WrongSize {
                    got_bytes: 1000,
                    num_blocks: 2,
                    block_size: 512
                })
            ),
            "{label}: {r:?}"
        );
        assert!(buf.is_some(), "the buffer comes back with the error");
        let (r, _) = io_sync(&mut ch, IoOp::Read, 0, 1, None);
        assert!(matches!(r, Err(BdevError::NoBuffer { .. })), "{label}: {r:?}");
        let (r, _) = io_sync(&mut ch, IoOp::Unmap, 0, 0, None);
        assert!(matches!(r, Err(BdevError::ZeroLength { .. })), "{label}: {r:?}");
        assert_eq!(ch.outstanding(), 0);
        assert_eq!(b.io_stats().num_errors, 5, "{label}");
        // The channel still works after errors.
        io_sync(&mut ch, IoOp::Read, 0, 1, Some(DmaBuf::alloc(512))).0.unwrap();
    }
}

#[test]
fn full_queue_hands_request_back() {
    let b = bdev::null::create("qfull", 1 << 20, 512, None).unwrap();
    let mut ch = b.open_channel().unwrap();
    let mut accepted = 0;
    loop {
        let r = ch.submit(IoRequest {
            op: IoOp::Flush,
            offset_blocks: 0,
            num_blocks: 0,
            buf: None,
            user_data: accepted,
        });
        match r {
            Ok(()) => accepted += 1,
            Err(back) => {
                assert_eq!(back.user_data, accepted);
                break;
            }
        }
    }
    assert_eq!(accepted as usize, bdev::CHANNEL_QUEUE_DEPTH_MAX);
    let mut seen = Vec::new();
    ch.poll(&mut |c| seen.push(c.user_data));
    assert_eq!(
        seen,
        (0..accepted).collect::<Vec<_>>(),
        "completions in order, each once"
    );
}

#[test]
fn bad_creation_parameters_are_named() {
    let e = bdev::malloc::create("x", 0, 512, None).err().unwrap();
    assert!(e.to_string().contains("num_blocks"), "{e}");
    let e = bdev::malloc::create("x", 8, 1000, None).err().unwrap();
    assert!(e.to_string().contains("block_size"), "{e}");
    let e = bdev::uring::create("x", std::path::Path::new("/nonexistent/file"), None, None)
        .err()
        .unwrap();
    assert!(matches!(e, BdevError::Open { .. }), "{e}");
    let f = TempFile::new("/dev/shm", "tiny", 100);
    let e = bdev::uring::create("x", &f.0, None, None).err().unwrap();
    assert!(e.to_string().contains("filename"), "{e}");
}

#[test]
fn registry_names_are_unique() {
    let b = bdev::malloc::create("reg-unique", 8, 512, None).unwrap();
    bdev::register(b.clone()).unwrap();
    assert!(matches!(bdev::register(b), Err(BdevError::Exists(_))));
    assert!(bdev::lookup("reg-unique").is_some());
    bdev::unregister("reg-unique").unwrap();
    assert!(matches!(bdev::unregister("reg-unique"), Err(BdevError::NotFound(_))));
}

/// Two reactors each drive their own channel to the same bdev at queue
/// depth 16, writing and verifying their own half with pool buffers, as the
/// data path does.
#[test]
fn concurrent_io_from_several_reactors() {
    let pool = BufPool::new("bdev-test-concurrent", 64, 8192).unwrap();
    for (label, b, _keep) in data_bdevs("conc", 8192, 4096) {
        let reactors = Reactors::start(ReactorOpts {
            cores: vec![0, 1],
            pin: false,
            idle: IdleMode::Poll,
        })
        .unwrap();
        let (tx, rx) = mpsc::channel::<Result<u64, String>>();
        for (i, core) in [0u32, 1].into_iter().enumerate() {
            let b = b.clone();
            let tx = tx.clone();
            reactors
                .send_msg(core, move || {
                    let half = b.num_blocks() / 2;
                    let base = i as u64 * half;
                    let mut ch = b.open_channel().unwrap();
                    let bs = b.block_size() as usize;
                    // Phase 0: write every block of my half; phase 1: read and verify.
                    let mut next = 0u64;
                    let mut done = 0u64;
                    let mut phase = 0;
                    let mut err: Option<String> = None;
                    register_poller("conc", None, move || {
                        if phase == 2 {
                            return PollStatus::Idle;
                        }
                        while next < half && ch.outstanding() < 16 {
                            let Some(mut buf) = pool.get() else { break };
                            buf.set_len(bs);
                            let op = if phase == 0 { IoOp::Write } else { IoOp::Read };
                            if phase == 0 {
                                pattern(&mut buf, bs, base + next, 3);
                            }
                            let req = IoRequest {
                                op,
                                offset_blocks: base + next,
                                num_blocks: 1,
                                buf: Some(buf),
                                user_data: base + next,
                            };
                            if ch.submit(req).is_err() {
                                break;
                            }
                            next += 1;
                        }
                        let mut want = [0u8; 4096];
                        ch.poll(&mut |c| {
                            if let Err(e) = c.result {
                                err.get_or_insert(e.to_string());
                            } else if phase == 1 {
                                pattern(&mut want[..bs], bs, c.user_data, 3);
                                if c.buf.as_ref().unwrap()[..] != want[..bs] {
                                    err.get_or_insert(format!("block {} mismatch", c.user_data));
                                }
                            }
                            done += 1;
                        });
                        if done == half {
                            if phase == 1 || err.is_some() {
                                let _ = tx.send(err.take().map_or(Ok(done), Err));
                                phase = 2;
                            } else {
                                phase = 1;
                                next = 0;
                                done = 0;
                            }
                        }
                        PollStatus::Busy
                    });
                })
                .unwrap();
        }
        for _ in 0..2 {
            let r = rx.recv().unwrap();
            assert!(r.is_ok(), "{label}: {r:?}");
        }
        reactors.shutdown();
        reactors.wait();
        assert_eq!(pool.free(), pool.len(), "{label}: every pool buffer came back");
    }
}

/// A uring bdev on tmpfs copies inline (no io_uring, whose every tmpfs request would go
/// through an io-wq worker); on the root file system it goes through io_uring. Both are
/// covered by every data test above (`common::data_bdevs` makes one of each).
#[test]
fn uring_on_tmpfs_copies_inline_and_says_so() {
    let shm = TempFile::new("/dev/shm", "inline", 1 << 20);
    let b = bdev::uring::create("inline-shm", &shm.0, Some(4096), None).unwrap();
    assert_eq!(b.driver_specific()["uring"]["memory_fs_inline"], true);
    let disk = TempFile::new("/var/tmp", "inline", 1 << 20);
    let b = bdev::uring::create("inline-disk", &disk.0, Some(4096), None).unwrap();
    if !engine::is_memory_fs(&std::fs::File::open(&disk.0).unwrap()) {
        assert_eq!(b.driver_specific()["uring"]["memory_fs_inline"], false);
    }
}
