//! The NVMe/TCP-backed bdev (`nvme::host::bdev`) against baton's target on loopback: data
//! round trips through a bdev channel, every op's buffer comes back, discovery picks the
//! subsystem, and a target that goes away turns I/O into errors instead of a hang.

mod common;

use common::*;
use engine::bdev::{BdevChannel, IoCompletion, IoOp, IoRequest};
use engine::buf::DmaBuf;
use nvme::host::bdev::connect;
use nvme::host::TransportId;
use std::time::Instant;

fn wait_one(ch: &mut BdevChannel) -> IoCompletion {
    let t0 = Instant::now();
    let mut got = None;
    while got.is_none() {
        assert!(t0.elapsed() < T, "no completion within {T:?}");
        ch.poll(&mut |c| got = Some(c));
    }
    got.unwrap()
}

fn io(ch: &mut BdevChannel, op: IoOp, lba: u64, nlb: u32, buf: Option<DmaBuf>) -> IoCompletion {
    ch.submit(IoRequest {
        op,
        offset_blocks: lba,
        num_blocks: nlb,
        buf,
        user_data: 7,
    })
    .expect("queue has room");
    let c = wait_one(ch);
    assert_eq!(c.user_data, 7);
    c
}

#[test]
fn host_bdev_round_trips_and_fails_cleanly() {
    let f = fixture();
    let b = connect("hb0", &trid(&f), &host_bdev_opts()).unwrap();
    use engine::bdev::Bdev;
    assert_eq!((b.block_size(), b.num_blocks()), (BLOCK, BLOCKS));
    assert_eq!(b.queue_entries(), 32);
    b.preconnect(1).unwrap();
    let mut ch = b.open_channel().unwrap();

    let data = pattern(100, 3, 4 * BLOCK as usize);
    let c = io(&mut ch, IoOp::Write, 100, 4, Some(buf_from(&data)));
    assert!(c.result.is_ok(), "{:?}", c.result);
    assert_eq!(c.buf.unwrap().len(), data.len(), "write hands its buffer back");
    let c = io(&mut ch, IoOp::Read, 100, 4, Some(DmaBuf::alloc(data.len())));
    assert!(c.result.is_ok());
    assert!(c.buf.unwrap()[..] == data[..], "read returns what was written");
    let c = io(&mut ch, IoOp::Flush, 0, 0, None);
    assert!(c.result.is_ok(), "{:?}", c.result);
    // Unmap carries its own range list on the wire; the caller's buffer comes back.
    let c = io(&mut ch, IoOp::Unmap, 100, 2, Some(DmaBuf::alloc(7)));
    assert!(c.result.is_ok(), "{:?}", c.result);
    assert_eq!(c.buf.map(|b| b.len()), Some(7));
    let c = io(&mut ch, IoOp::WriteZeroes, 102, 2, None);
    assert!(c.result.is_ok());
    let c = io(&mut ch, IoOp::Read, 100, 4, Some(DmaBuf::alloc(data.len())));
    assert!(
        c.buf.unwrap().iter().all(|&x| x == 0),
        "deallocated/zeroed blocks read as zeroes"
    );
    // Out of range is refused by the channel wrapper, before the wire.
    let c = io(&mut ch, IoOp::Read, BLOCKS, 1, Some(DmaBuf::alloc(BLOCK as usize)));
    assert!(c.result.is_err());
    let st = engine::bdev::lookup(&f.bdev).unwrap().io_stats();
    assert_eq!((st.num_write_ops, st.num_read_ops), (1, 2));

    // Without subnqn and ns: discovery, then the first active namespace.
    let trid = TransportId::parse(&format!("trtype:tcp traddr:127.0.0.1 trsvcid:{}", f.addr.port())).unwrap();
    let d = connect("hb1", &trid, &host_bdev_opts()).unwrap();
    assert_eq!((d.subnqn(), d.nsid()), (f.nqn.as_str(), 1));
    let mut ch2 = d.open_channel().unwrap();
    let c = io(&mut ch2, IoOp::Read, 100, 4, Some(DmaBuf::alloc(data.len())));
    assert!(c.result.is_ok());
    drop(ch2);
    drop(d);

    // The target goes away: I/O completes with an error (buffer back), none hangs.
    f.target.shutdown();
    let mut errors = 0;
    for _ in 0..3 {
        let c = io(&mut ch, IoOp::Read, 0, 1, Some(DmaBuf::alloc(BLOCK as usize)));
        assert!(c.buf.is_some());
        if c.result.is_err() {
            errors += 1;
        }
    }
    assert!(errors > 0, "reads after the target shut down all succeeded");
}

#[test]
fn host_bdev_refuses_a_missing_subsystem_and_namespace() {
    let f = fixture();
    let bad = TransportId::parse(&format!(
        "trtype:TCP traddr:127.0.0.1 trsvcid:{} subnqn:nqn.2016-06.io.baton:nope",
        f.addr.port()
    ))
    .unwrap();
    assert!(connect("hb2", &bad, &host_bdev_opts()).is_err());
    let bad = TransportId::parse(&format!(
        "trtype:TCP traddr:127.0.0.1 trsvcid:{} subnqn:{} ns:9",
        f.addr.port(),
        f.nqn
    ))
    .unwrap();
    assert!(connect("hb3", &bad, &host_bdev_opts()).is_err());
}
