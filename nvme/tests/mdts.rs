//! Maximum data transfer size: 1 MiB by default (MDTS 8), `max_io_size` of
//! `nvmf_create_transport` changes it, and the edges hold: exactly the maximum works (reads
//! come back in several C2HData PDUs, writes through R2T and H2CData), one block more is
//! refused with Invalid Field in Command and the queue keeps working.

mod common;

use common::*;
use engine::buf::DmaBuf;
use nvme::host::{cmd, Data, HostOpts, Qpair};
use nvme::nvmf::{TargetError, TransportOpts};
use nvme::rpc::{nvmf_create_transport, CreateTransport};
use nvme::spec::Status;

fn status(q: &mut Qpair, s: nvme::spec::Sqe, d: Data) -> Status {
    q.sync(s, d, T).unwrap().status()
}

/// Exactly `max` bytes work both ways; `max` + one block is Invalid Field both ways.
fn check_edges(q: &mut Qpair, max: u32) {
    let blocks = max / BLOCK;
    write_read(q, 7, blocks, 3);
    let over = blocks + 1;
    let len = (over * BLOCK) as usize;
    let s = status(q, cmd::read(1, 0, over), Data::FromCtrl(DmaBuf::alloc(len)));
    assert!(s.same_code(Status::INVALID_FIELD), "read of max + 1 block: {s}");
    let s = status(q, cmd::write(1, 0, over), Data::ToCtrl(buf_from(&vec![0xA5; len])));
    assert!(s.same_code(Status::INVALID_FIELD), "write of max + 1 block: {s}");
    // Nothing of the refused write landed, and the queue still serves.
    write_read(q, 7, blocks, 4);
}

#[test]
fn default_mdts_is_1_mib_and_its_edges_hold() {
    let f = fixture();
    assert_eq!(TransportOpts::default().max_io_size, 1 << 20);
    let (c, mut q) = connect(&f, &opts());
    assert_eq!(c.id.mdts, 8, "MDTS in 4 KiB pages, log2");
    check_edges(&mut q, 1 << 20);
    c.disconnect();
    // The same through R2T only, with data digests and small H2CData PDUs.
    let o = HostOpts {
        in_capsule_max: Some(0),
        h2c_chunk_bytes: Some(32 * 1024),
        ddgst: true,
        hdgst: true,
        ..opts()
    };
    let (c, mut q) = connect(&f, &o);
    check_edges(&mut q, 1 << 20);
    c.disconnect();
}

#[test]
fn max_io_size_sets_mdts_both_down_and_up() {
    for (max, mdts) in [(64 * 1024u32, 4u8), (4 << 20, 10)] {
        let f = fixture();
        let p: CreateTransport =
            serde_json::from_value(serde_json::json!({"trtype": "TCP", "max_io_size": max})).unwrap();
        let r = nvmf_create_transport(&f.target, p).unwrap();
        assert!(r);
        let (c, mut q) = connect(&f, &opts());
        assert_eq!(c.id.mdts, mdts, "max_io_size {max}");
        check_edges(&mut q, max);
        c.disconnect();
    }
}

#[test]
fn bad_max_io_size_is_refused_by_name() {
    let f = fixture();
    for bad in [0u32, 2048, 3 * 65536, 8 << 20] {
        let o = TransportOpts {
            max_io_size: bad,
            ..TransportOpts::default()
        };
        match f.target.create_transport(o) {
            Err(TargetError::InvalidParam { param, .. }) => assert_eq!(param, "max_io_size"),
            other => panic!("max_io_size {bad}: {other:?}"),
        }
    }
    assert_eq!(f.target.transport_opts().max_io_size, 1 << 20);
}
