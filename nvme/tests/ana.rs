//! ANA and multipath on the target: two listeners of one subsystem, per-listener group
//! states, the ANA log page, ANA change notices, path errors on inaccessible paths, and the
//! controller ID range that lets two targets export one subsystem (`docs/nvme-tcp.md`,
//! "ANA and multipath").

mod common;

use common::{buf_from, opts, reactors, T};
use engine::buf::DmaBuf;
use nvme::host::{cmd, Controller, Data, HostError};
use nvme::nvmf::ana::AnaState;
use nvme::nvmf::{NsOptions, SubsystemParams, Target};
use nvme::spec::fabrics::fid;
use nvme::spec::Status;
use std::net::SocketAddr;
use std::sync::Arc;

struct TwoPaths {
    target: Arc<Target>,
    nqn: String,
    a: SocketAddr,
    b: SocketAddr,
}

impl Drop for TwoPaths {
    fn drop(&mut self) {
        self.target.shutdown();
    }
}

/// A subsystem with ANA reporting, namespaces 1 (group 1) and 2 (group 2), controller IDs
/// 100..=101, listening on two ports.
fn two_paths(tag: &str) -> TwoPaths {
    reactors();
    let target = Target::new();
    let nqn = format!("nqn.2016-06.io.baton:ana-{tag}");
    target
        .create_subsystem(SubsystemParams {
            nqn: nqn.clone(),
            allow_any_host: true,
            max_namespaces: Some(4),
            ana_reporting: true,
            min_cntlid: Some(100),
            max_cntlid: Some(101),
            ..Default::default()
        })
        .unwrap();
    for (i, grp) in [(1, 1), (2, 2)] {
        let name = format!("AnaMalloc_{tag}_{i}");
        let b = engine::bdev::malloc::create(&name, 1024, 512, None).unwrap();
        engine::bdev::register(b).unwrap();
        let o = NsOptions {
            nsid: Some(i),
            anagrpid: Some(grp),
            ..Default::default()
        };
        assert_eq!(target.add_ns(&nqn, &name, o).unwrap(), i);
    }
    let a = target.add_listener(&nqn, "127.0.0.1:0".parse().unwrap()).unwrap();
    let b = target
        .add_listener_ana(&nqn, "127.0.0.1:0".parse().unwrap(), AnaState::NonOptimized)
        .unwrap();
    TwoPaths { target, nqn, a, b }
}

fn write(q: &mut nvme::host::Qpair, nsid: u32) -> Status {
    q.sync(cmd::write(nsid, 7, 1), Data::ToCtrl(buf_from(&[0x5A; 512])), T)
        .unwrap()
        .status()
}

#[test]
fn identify_and_ana_log_per_listener() {
    let p = two_paths("log");
    let mut ca = Controller::connect(p.a, &p.nqn, &opts()).unwrap();
    let mut cb = Controller::connect(p.b, &p.nqn, &opts()).unwrap();
    assert_eq!(ca.cntlid(), 100);
    assert_eq!(cb.cntlid(), 101);
    assert!(ca.ana_reporting());
    assert_eq!(ca.id.cmic & 0x0B, 0x0B, "multi-port, multi-controller, ANA reporting");
    assert_eq!(ca.id.anagrpmax, 4);
    assert_eq!(ca.id.nanagrpid, 4);
    assert_eq!(ca.id.mnan, 4, "Linux refuses an ANA controller with MNAN 0");
    assert_ne!(ca.id.oaes & (1 << 11), 0);
    assert_ne!(ca.id.anacap & 0x07, 0);
    assert_eq!(ca.get_features(fid::ASYNC_EVENT_CONFIG).unwrap() & (1 << 11), 1 << 11);
    assert_eq!(ca.identify_namespace(2).unwrap().anagrpid, 2);
    assert_eq!(ca.identify_namespace(2).unwrap().nmic & 1, 1);
    let groups = ca.ana_log().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(
        (groups[0].anagrpid, groups[0].state, groups[0].nsids.clone()),
        (1, 0x01, vec![1])
    );
    assert_eq!(
        (groups[1].anagrpid, groups[1].state, groups[1].nsids.clone()),
        (2, 0x01, vec![2])
    );
    let groups = cb.ana_log().unwrap();
    assert!(
        groups.iter().all(|g| g.state == 0x02),
        "listener b starts non-optimized: {groups:?}"
    );
    // A third controller finds the ID range used up: Connect is refused, not mis-numbered.
    match Controller::connect(p.a, &p.nqn, &opts()) {
        Err(HostError::Connect { status, .. }) => assert!(status.same_code(Status::CONNECT_CONTROLLER_BUSY)),
        Err(e) => panic!("unexpected error {e}"),
        Ok(c) => panic!("a third controller got ID {}", c.cntlid()),
    }
    cb.disconnect();
    // Its ID is free again once the controller is gone.
    let mut again = None;
    for _ in 0..200 {
        match Controller::connect(p.b, &p.nqn, &opts()) {
            Ok(c) => {
                again = Some(c);
                break;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    let again = again.expect("the freed controller ID is reused");
    assert_eq!(again.cntlid(), 101);
    again.disconnect();
    ca.disconnect();
}

#[test]
fn inaccessible_path_fails_io_with_a_path_error_and_notifies() {
    let p = two_paths("io");
    let mut ca = Controller::connect(p.a, &p.nqn, &opts()).unwrap();
    let mut qa = ca.create_io_qpair().unwrap();
    let mut cb = Controller::connect(p.b, &p.nqn, &opts()).unwrap();
    let mut qb = cb.create_io_qpair().unwrap();
    assert!(write(&mut qa, 1).is_success());
    // An outstanding AER on each controller.
    for c in [&mut ca, &mut cb] {
        c.admin
            .submit(common::raw_sqe(0x0C, 0), Data::None, 77)
            .map_err(|e| e.0)
            .unwrap();
    }
    p.target
        .set_ana_state(&p.nqn, p.a, AnaState::Inaccessible, Some(1))
        .unwrap();
    // Controller a gets the ANA change notice; b, whose listener did not change, does not.
    let deadline = std::time::Instant::now() + T;
    let mut aen = None;
    while aen.is_none() {
        ca.admin.poll(&mut |cpl| aen = Some(cpl)).unwrap();
        assert!(std::time::Instant::now() < deadline, "no ANA change notice");
        std::thread::yield_now();
    }
    assert_eq!(aen.unwrap().cqe.dw0, 0x000C_0302);
    let mut other = None;
    cb.admin.poll(&mut |cpl| other = Some(cpl)).unwrap();
    assert!(
        other.is_none(),
        "listener b's controller was told of a change it did not have"
    );
    // Group 1 through a: path error (SCT 3), not retried by DNR; group 2 still works.
    let s = write(&mut qa, 1);
    assert!(s.same_code(Status::ANA_INACCESSIBLE), "{s}");
    assert!(!s.dnr);
    let r = qa
        .sync(cmd::read(1, 7, 1), Data::FromCtrl(DmaBuf::alloc(512)), T)
        .unwrap();
    assert!(r.status().same_code(Status::ANA_INACCESSIBLE));
    assert!(write(&mut qa, 2).is_success());
    // Through b every group works.
    assert!(write(&mut qb, 1).is_success());
    let g = ca.ana_log().unwrap();
    assert_eq!((g[0].state, g[1].state), (0x03, 0x01));
    // Fail over by state: a inaccessible for all, b optimized; then back.
    p.target
        .set_ana_state(&p.nqn, p.a, AnaState::Inaccessible, None)
        .unwrap();
    p.target.set_ana_state(&p.nqn, p.b, AnaState::Optimized, None).unwrap();
    assert!(write(&mut qa, 2).same_code(Status::ANA_INACCESSIBLE));
    assert!(cb.ana_log().unwrap().iter().all(|g| g.state == 0x01));
    p.target.set_ana_state(&p.nqn, p.a, AnaState::Optimized, None).unwrap();
    assert!(write(&mut qa, 1).is_success());
    // Errors name what is wrong.
    let e = p
        .target
        .set_ana_state(&p.nqn, "127.0.0.1:1".parse().unwrap(), AnaState::Optimized, None)
        .unwrap_err();
    assert!(e.to_string().contains("does not listen"), "{e}");
    let e = p
        .target
        .set_ana_state(&p.nqn, p.a, AnaState::Optimized, Some(9))
        .unwrap_err();
    assert!(e.to_string().contains("anagrpid"), "{e}");
    ca.disconnect();
    cb.disconnect();
}

#[test]
fn rpc_methods_and_save_config_keep_ana() {
    reactors();
    let t = Target::new();
    let mut reg = engine::rpc::Registry::new();
    nvme::rpc::register_rpcs_for(&mut reg, t.clone());
    let call = |m: &str, p: serde_json::Value| reg.call_blocking(m, Some(p), 100, std::time::Duration::from_millis(10));
    let nqn = "nqn.2016-06.io.baton:ana-rpc";
    call(
        "nvmf_create_subsystem",
        serde_json::json!({"nqn": nqn, "allow_any_host": true, "ana_reporting": true,
                           "min_cntlid": 1000, "max_cntlid": 1999}),
    )
    .unwrap();
    let b = engine::bdev::malloc::create("AnaRpcMalloc0", 64, 512, None).unwrap();
    engine::bdev::register(b).unwrap();
    call(
        "nvmf_subsystem_add_ns",
        serde_json::json!({"nqn": nqn, "namespace": {"bdev_name": "AnaRpcMalloc0", "anagrpid": 3}}),
    )
    .unwrap();
    let la = serde_json::json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "0"});
    call(
        "nvmf_subsystem_add_listener",
        serde_json::json!({"nqn": nqn, "listen_address": la}),
    )
    .unwrap();
    let addr = t.subsystem(nqn).unwrap().state().listeners[0];
    let la = serde_json::json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
                                "trsvcid": addr.port().to_string()});
    call(
        "nvmf_subsystem_listener_set_ana_state",
        serde_json::json!({"nqn": nqn, "listen_address": la, "ana_state": "inaccessible", "anagrpid": 3}),
    )
    .unwrap();
    let e = call(
        "nvmf_subsystem_listener_set_ana_state",
        serde_json::json!({"nqn": nqn, "listen_address": la, "ana_state": "sideways"}),
    )
    .unwrap_err();
    assert!(e.message.contains("ana_state"), "{}", e.message);
    let l = call("nvmf_subsystem_get_listeners", serde_json::json!({"nqn": nqn})).unwrap();
    assert_eq!(
        l[0]["ana_states"],
        serde_json::json!([{"ana_group": 3, "ana_state": "inaccessible"}])
    );
    let s = call("nvmf_get_subsystems", serde_json::json!({"nqn": nqn})).unwrap();
    assert_eq!(s[0]["ana_reporting"], true);
    assert_eq!(s[0]["min_cntlid"], 1000);
    assert_eq!(s[0]["namespaces"][0]["anagrpid"], 3);
    let cfg = nvme::rpc::config_entries(&t);
    let methods: Vec<&str> = cfg.iter().map(|(m, _)| *m).collect();
    assert_eq!(methods.last(), Some(&"nvmf_subsystem_listener_set_ana_state"));
    let create = &cfg.iter().find(|(m, _)| *m == "nvmf_create_subsystem").unwrap().1;
    assert_eq!(create["max_cntlid"], 1999);
    // A bad range is refused by name.
    let e = call(
        "nvmf_create_subsystem",
        serde_json::json!({"nqn": "nqn.2016-06.io.baton:ana-bad", "min_cntlid": 9, "max_cntlid": 3}),
    )
    .unwrap_err();
    assert!(e.message.contains("min_cntlid"), "{}", e.message);
    t.shutdown();
}
