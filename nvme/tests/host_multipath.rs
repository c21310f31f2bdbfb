//! The host bdev with several paths and several namespaces: ANA moves I/O to the other
//! path (on a path error and on an ANA change notice while idle), a lost path fails over to
//! a second target exporting the same subsystem (the DR case), and the SPDK-named
//! `bdev_nvme_*` methods attach every namespace, add and remove paths and keep them in
//! `save_config`. Assertions count completions and states; time only bounds waits.

mod common;

use common::*;
use engine::bdev::{Bdev, BdevChannel, IoCompletion, IoOp, IoRequest};
use engine::buf::DmaBuf;
use nvme::host::bdev::{HostBdevOpts, ReconnectOpts};
use nvme::host::{NvmeCtrlr, TransportId};
use nvme::nvmf::ana::AnaState;
use nvme::nvmf::{SubsystemParams, Target};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn opts() -> HostBdevOpts {
    HostBdevOpts {
        reconnect: ReconnectOpts {
            ctrlr_loss_timeout_sec: 30,
            reconnect_delay_sec: 1,
            fast_io_fail_timeout_sec: 0,
        },
        ..host_bdev_opts()
    }
}

fn trid(addr: SocketAddr, nqn: &str) -> TransportId {
    TransportId::parse(&format!(
        "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{} subnqn:{nqn}",
        addr.port()
    ))
    .unwrap()
}

/// A target exporting `nqn` with ANA reporting, controller IDs `cntlid`, namespace 1 over
/// a new RAM bdev `bdev`, on one listener in `state`.
fn ana_target(nqn: &str, bdev: &str, cntlid: (u16, u16), state: AnaState) -> (Arc<Target>, SocketAddr) {
    reactors();
    let b = engine::bdev::malloc::create(bdev, BLOCKS, BLOCK, Some(*b"baton-mp-ns-0001")).unwrap();
    engine::bdev::register(b).unwrap();
    let t = Target::new();
    t.create_subsystem(SubsystemParams {
        nqn: nqn.into(),
        allow_any_host: true,
        ana_reporting: true,
        min_cntlid: Some(cntlid.0),
        max_cntlid: Some(cntlid.1),
        ..Default::default()
    })
    .unwrap();
    t.add_namespace(nqn, bdev, Some(1), None).unwrap();
    let a = t.add_listener_ana(nqn, "127.0.0.1:0".parse().unwrap(), state).unwrap();
    (t, a)
}

fn io(ch: &mut BdevChannel, op: IoOp, lba: u64, buf: DmaBuf, user: u64) -> IoCompletion {
    ch.submit(IoRequest {
        op,
        offset_blocks: lba,
        num_blocks: 1,
        buf: Some(buf),
        user_data: user,
    })
    .expect("queue has room");
    let t0 = Instant::now();
    let mut got = None;
    while got.is_none() {
        assert!(t0.elapsed() < T, "no completion within {T:?}");
        ch.poll(&mut |c| got = Some(c));
        std::thread::sleep(Duration::from_millis(1));
    }
    got.unwrap()
}

fn write_ok(ch: &mut BdevChannel, lba: u64, seed: u8) {
    let c = io(ch, IoOp::Write, lba, buf_from(&pattern(lba, seed, BLOCK as usize)), lba);
    assert!(c.result.is_ok(), "write {lba}: {:?}", c.result);
}

fn read_is(ch: &mut BdevChannel, lba: u64, seed: u8) {
    let c = io(ch, IoOp::Read, lba, DmaBuf::alloc(BLOCK as usize), lba);
    assert!(c.result.is_ok(), "read {lba}: {:?}", c.result);
    assert!(
        c.buf.unwrap()[..] == pattern(lba, seed, BLOCK as usize)[..],
        "data at {lba}"
    );
}

/// Polls `ch` (no I/O outstanding) until `cond` holds.
fn until(ch: &mut BdevChannel, what: &str, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < T, "{what} within {T:?}");
        ch.poll(&mut |_| panic!("no I/O was outstanding"));
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn ana_moves_io_to_the_other_path_on_error_and_on_notice() {
    let nqn = "nqn.2016-06.io.baton:mp-ana";
    let (t, a) = ana_target(nqn, "MpAnaMalloc0", (1, 100), AnaState::Optimized);
    let b_addr = t
        .add_listener_ana(nqn, "127.0.0.1:0".parse().unwrap(), AnaState::Inaccessible)
        .unwrap();
    let c = NvmeCtrlr::attach("mpana", &trid(a, nqn), &opts()).unwrap();
    c.add_path(b_addr).unwrap();
    let bdev = c.namespace_bdev("mpanan1", 1).unwrap();
    bdev.preconnect(1).unwrap();
    let mut ch = bdev.open_channel().unwrap();
    write_ok(&mut ch, 3, 1);
    // The path in use becomes inaccessible, the other optimized: the next write gets a path
    // error, waits, and completes through the other path.
    t.set_ana_state(nqn, b_addr, AnaState::Optimized, None).unwrap();
    t.set_ana_state(nqn, a, AnaState::Inaccessible, None).unwrap();
    write_ok(&mut ch, 4, 2);
    read_is(&mut ch, 3, 1);
    assert_eq!(c.addr(), b_addr);
    assert!(c.reconnects() >= 1);
    // Back, with no I/O in flight: the ANA change notice alone moves the controller.
    let before = c.ana_failovers();
    t.set_ana_state(nqn, a, AnaState::Optimized, None).unwrap();
    t.set_ana_state(nqn, b_addr, AnaState::Inaccessible, None).unwrap();
    until(&mut ch, "failover on the ANA notice", || c.addr() == a && c.connected());
    assert!(c.ana_failovers() > before);
    read_is(&mut ch, 4, 2);
    write_ok(&mut ch, 5, 3);
    drop(ch);
    drop(bdev);
    drop(c);
    t.shutdown();
}

#[test]
fn a_lost_primary_fails_over_to_the_standby_target() {
    // Two targets export one subsystem and namespace identity with disjoint controller IDs:
    // the primary's path optimized, the standby's inaccessible until it is promoted.
    let nqn = "nqn.2016-06.io.baton:mp-dr";
    let (p, pa) = ana_target(nqn, "MpDrPrimary0", (1, 999), AnaState::Optimized);
    let (s, sa) = ana_target(nqn, "MpDrStandby0", (1000, 1999), AnaState::Inaccessible);
    let c = NvmeCtrlr::attach("mpdr", &trid(pa, nqn), &opts()).unwrap();
    c.add_path(sa).unwrap();
    assert_eq!(c.cntlid(), Some(1));
    let bdev = c.namespace_bdev("mpdrn1", 1).unwrap();
    bdev.preconnect(1).unwrap();
    let mut ch = bdev.open_channel().unwrap();
    write_ok(&mut ch, 10, 1);
    // The primary site is lost; the standby's path is not usable yet, so I/O waits.
    p.shutdown();
    until(&mut ch, "loss noticed", || !c.connected());
    ch.submit(IoRequest {
        op: IoOp::Write,
        offset_blocks: 11,
        num_blocks: 1,
        buf: Some(buf_from(&pattern(11, 2, BLOCK as usize))),
        user_data: 11,
    })
    .unwrap();
    let mut early = 0;
    for _ in 0..100 {
        early += ch.poll(&mut |_| {});
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(early, 0, "I/O completed with no usable path");
    // The standby is promoted and its path made optimized: the waiting write completes there.
    s.set_ana_state(nqn, sa, AnaState::Optimized, None).unwrap();
    let t0 = Instant::now();
    let mut got = None;
    while got.is_none() {
        assert!(t0.elapsed() < T * 2, "the waiting write never completed");
        ch.poll(&mut |x| got = Some(x));
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(got.unwrap().result.is_ok());
    assert_eq!(c.addr(), sa);
    assert!(c.cntlid().unwrap() >= 1000, "the standby's controller IDs");
    read_is(&mut ch, 11, 2);
    drop(ch);
    drop(bdev);
    drop(c);
    s.shutdown();
}

#[test]
fn bdev_nvme_methods_attach_every_namespace_and_keep_paths() {
    let f = fixture();
    let b2 = format!("{}_ns2", f.bdev);
    engine::bdev::register(engine::bdev::malloc::create(&b2, 64, 4096, None).unwrap()).unwrap();
    f.target.add_namespace(&f.nqn, &b2, Some(2), None).unwrap();
    let second = f.target.add_listener(&f.nqn, "127.0.0.1:0".parse().unwrap()).unwrap();
    let t = Target::new();
    let mut reg = engine::rpc::Registry::new();
    nvme::rpc::register_rpcs_for(&mut reg, t.clone());
    let call = |m: &str, p: serde_json::Value| reg.call_blocking(m, Some(p), 100, Duration::from_millis(10));
    let attach = json!({"name": "MpRpc", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
        "trsvcid": f.addr.port().to_string(), "subnqn": f.nqn, "prchk_reftag": false, "prchk_guard": false,
        "hdgst": false, "ddgst": false, "allow_unrecognized_csi": false, "ctrlr_loss_timeout_sec": 10,
        "reconnect_delay_sec": 1});
    let names = call("bdev_nvme_attach_controller", attach.clone()).unwrap();
    assert_eq!(names, json!(["MpRpcn1", "MpRpcn2"]));
    let n2 = engine::bdev::lookup("MpRpcn2").expect("namespace 2 registered");
    assert_eq!((n2.block_size(), n2.num_blocks()), (4096, 64));
    // Same name again: refused unless it adds a failover path.
    let e = call("bdev_nvme_attach_controller", attach.clone()).unwrap_err();
    assert!(e.message.contains("failover"), "{}", e.message);
    let mut path = attach.clone();
    path["trsvcid"] = json!(second.port().to_string());
    path["multipath"] = json!("failover");
    assert_eq!(call("bdev_nvme_attach_controller", path.clone()).unwrap(), names);
    let e = call("bdev_nvme_attach_controller", path.clone()).unwrap_err();
    assert!(e.message.contains("already has a path"), "{}", e.message);
    let g = call("bdev_nvme_get_controllers", json!({"name": "MpRpc"})).unwrap();
    let ctrlr = &g[0]["ctrlrs"][0];
    assert_eq!(ctrlr["state"], "enabled");
    assert_eq!(ctrlr["trid"]["trsvcid"], json!(f.addr.port().to_string()));
    assert_eq!(ctrlr["alternate_trids"][0]["trsvcid"], json!(second.port().to_string()));
    // save_config re-attaches both paths, once (not once per namespace).
    let saved: Vec<_> = engine::rpc::methods::bdev::bdev_config()
        .into_iter()
        .filter(|e| e.method == "bdev_nvme_attach_controller")
        .filter(|e| e.params.as_ref().unwrap()["name"] == "MpRpc")
        .collect();
    assert_eq!(saved.len(), 2);
    assert_eq!(saved[1].params.as_ref().unwrap()["multipath"], "failover");
    // The bdevs do I/O.
    let b = engine::bdev::lookup("MpRpcn1").unwrap();
    let mut ch = b.open_channel().unwrap();
    write_ok(&mut ch, 9, 4);
    read_is(&mut ch, 9, 4);
    drop(ch);
    // Remove the second path, then the controller; its bdevs go with it.
    let detach_path = json!({"name": "MpRpc", "trtype": "tcp", "traddr": "127.0.0.1",
        "trsvcid": second.port().to_string()});
    assert_eq!(call("bdev_nvme_detach_controller", detach_path).unwrap(), json!(true));
    let g = call("bdev_nvme_get_controllers", json!({})).unwrap();
    let mine = g.as_array().unwrap().iter().find(|c| c["name"] == "MpRpc").unwrap();
    assert_eq!(mine["ctrlrs"][0]["alternate_trids"], json!([]));
    assert_eq!(
        call("bdev_nvme_detach_controller", json!({"name": "MpRpc"})).unwrap(),
        json!(true)
    );
    assert!(engine::bdev::lookup("MpRpcn1").is_none() && engine::bdev::lookup("MpRpcn2").is_none());
    let e = call("bdev_nvme_detach_controller", json!({"name": "MpRpc"})).unwrap_err();
    assert_eq!(e.code, -19);
    // Bad input is named.
    let mut bad = attach.clone();
    bad["trtype"] = json!("PCIe");
    bad["name"] = json!("MpRpcPcie");
    let e = call("bdev_nvme_attach_controller", bad).unwrap_err();
    assert!(e.message.contains("no PCI device 127.0.0.1"), "{}", e.message);
    // RDMA is refused by name in a build without the `rdma` feature (with it, this attach
    // fails at connect instead: the address has no RDMA device).
    let mut bad = attach.clone();
    bad["trtype"] = json!("RDMA");
    let e = call("bdev_nvme_attach_controller", bad).unwrap_err();
    assert!(cfg!(feature = "rdma") || e.message.contains("trtype"), "{}", e.message);
    let mut bad = attach;
    bad["ctrlr_loss_timeout_sec"] = json!(0);
    bad["name"] = json!("MpRpcBad");
    let e = call("bdev_nvme_attach_controller", bad).unwrap_err();
    assert!(e.message.contains("reconnect_delay_sec"), "{}", e.message);
    t.shutdown();
}
