//! NVMe/TCP from the end-to-end tests: export a bdev of a `baton` process in a new
//! subsystem, write stamped blocks and read a whole namespace back through the host.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use nvme::host::{cmd, Controller, Data, HostOpts, Qpair};
use serde_json::json;

use super::{fill, free_port, rpc, BS};

/// Exports `bdev` of the process behind `sock` as namespace 1 of a new subsystem `nqn`
/// (creating the TCP transport first if `transport`); its listening address.
pub fn export(sock: &Path, nqn: &str, bdev: &str, transport: bool) -> SocketAddr {
    let port = free_port();
    let mut calls = Vec::new();
    if transport {
        calls.push(("nvmf_create_transport", json!({"trtype": "TCP"})));
    }
    calls.extend([
        ("nvmf_create_subsystem", json!({"nqn": nqn, "allow_any_host": true})),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn": nqn, "namespace": {"bdev_name": bdev}}),
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
                   "traddr": "127.0.0.1", "trsvcid": port.to_string()}}),
        ),
    ]);
    for (m, p) in calls {
        rpc(sock, m, Some(p)).unwrap_or_else(|e| panic!("{m}: {e}"));
    }
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// Connects to `nqn` at `addr` with one I/O queue.
pub fn connect(addr: SocketAddr, nqn: &str) -> (Controller, Qpair) {
    let mut c = Controller::connect(addr, nqn, &HostOpts::default()).expect("NVMe/TCP connect");
    let q = c.create_io_qpair().expect("I/O queue");
    (c, q)
}

/// Writes block `lba` filled from `stamp` (`fill`); true if the controller acknowledged it.
pub fn write_block(q: &mut Qpair, lba: u64, stamp: u64) -> bool {
    let mut b = engine::buf::DmaBuf::alloc(BS);
    fill(&mut b, stamp);
    let done = q
        .sync(cmd::write(1, lba, 1), Data::ToCtrl(b), Duration::from_secs(10))
        .expect("NVMe write answered");
    done.cqe.status().is_success()
}

/// Reads `blocks` blocks of namespace 1 of `nqn` at `addr`.
pub fn read_all(addr: SocketAddr, nqn: &str, blocks: u64) -> Vec<u8> {
    let (c, mut q) = connect(addr, nqn);
    let mut out = Vec::with_capacity(blocks as usize * BS);
    for slba in (0..blocks).step_by(16) {
        let n = 16.min(blocks - slba) as u32;
        let done = q
            .sync(
                cmd::read(1, slba, n),
                Data::FromCtrl(engine::buf::DmaBuf::alloc(n as usize * BS)),
                Duration::from_secs(10),
            )
            .expect("NVMe read");
        assert!(done.cqe.status().is_success(), "read {slba}: {}", done.cqe.status());
        out.extend_from_slice(&done.buf.expect("read buffer")[..]);
    }
    c.disconnect();
    out
}

/// The first block where `a` and `b` differ.
pub fn first_block_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    (0..a.len().min(b.len()) / BS).find(|&k| a[k * BS..(k + 1) * BS] != b[k * BS..(k + 1) * BS])
}
