//! Conformance: the host library drives the target over loopback TCP through every
//! supported command, with digests on and off, in-capsule and R2T writes, large I/O,
//! several queues and reconnects.

mod common;

use common::*;
use engine::buf::DmaBuf;
use nvme::host::{cmd, discover, Controller, Data, HostOpts};
use nvme::spec::fabrics::{fid, DISCOVERY_NQN};
use nvme::spec::identify::cns;
use nvme::spec::log::lid;
use nvme::spec::{get_str, Status};

#[test]
fn connect_identify_and_basic_io() {
    let f = fixture();
    let (mut c, mut q) = connect(&f, &opts());
    assert_eq!(c.vs, 0x0001_0300);
    assert_eq!(c.cap & 0xFFFF, 127, "MQES");
    assert_eq!(get_str(&c.id.subnqn), f.nqn);
    assert_eq!(get_str(&c.id.sn), format!("SN{}", &f.nqn[f.nqn.len() - 1..]));
    assert_eq!(c.id.cntrltype, 1);
    assert!(c.id.sgls & 1 != 0);
    assert_eq!(c.id.icdoff, 0);
    assert_eq!(c.id.ioccsz, (64 + 8192) / 16);
    assert_eq!(c.active_namespaces().unwrap(), vec![1]);
    let ns = c.identify_namespace(1).unwrap();
    assert_eq!(ns.nsze, BLOCKS);
    assert_eq!((ns.lbaf[0] >> 16) & 0xFF, 9);
    // Inactive but valid NSID reads as zeroes; invalid NSID is an error.
    assert_eq!(c.identify_namespace(2).unwrap().nsze, 0);
    assert!(
        matches!(c.identify(cns::NAMESPACE, 0xFFFF_FFFF), Err(nvme::host::HostError::Status(s)) if s.same_code(Status::INVALID_NAMESPACE))
    );
    let d = c.identify(cns::NS_ID_DESCRIPTORS, 1).unwrap();
    assert_eq!(d[0], 2);
    assert_eq!(d[1], 16);
    assert_eq!(d[20], 3);
    write_read(&mut q, 0, 1, 1);
    write_read(&mut q, 100, 8, 2);
    write_read(&mut q, BLOCKS - 16, 16, 3); // 8 KiB: in-capsule
    write_read(&mut q, 1000, 64, 4); // 32 KiB: R2T
    write_read(&mut q, 2000, 256, 5); // 128 KiB: one large buffer
    c.disconnect();
}

#[test]
fn digests_all_combinations() {
    let f = fixture();
    for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
        let o = HostOpts {
            hdgst: hd,
            ddgst: dd,
            ..opts()
        };
        let (c, mut q) = connect(&f, &o);
        assert_eq!(q.digests().hdgst, hd);
        assert_eq!(q.digests().ddgst, dd);
        let base = 200 * (u64::from(hd) * 2 + u64::from(dd));
        write_read(&mut q, base, 8, 9);
        write_read(&mut q, base + 8, 128, 10);
        c.disconnect();
    }
}

#[test]
fn r2t_writes_with_split_h2c_data_and_forced_r2t() {
    let f = fixture();
    let o = HostOpts {
        in_capsule_max: Some(0),
        h2c_chunk_bytes: Some(4096),
        ddgst: true,
        ..opts()
    };
    let (c, mut q) = connect(&f, &o);
    write_read(&mut q, 0, 1, 7); // even 512 bytes via R2T
    write_read(&mut q, 10, 256, 8); // 128 KiB in 32 H2CData PDUs
    c.disconnect();
}

#[test]
fn io_errors_have_spec_statuses() {
    let f = fixture();
    let (c, mut q) = connect(&f, &opts());
    let st = |q: &mut nvme::host::Qpair, s, d| q.sync(s, d, T).unwrap().status();
    assert!(
        st(&mut q, cmd::read(1, BLOCKS - 1, 2), Data::FromCtrl(DmaBuf::alloc(1024)))
            .same_code(Status::LBA_OUT_OF_RANGE)
    );
    assert!(st(&mut q, cmd::write(1, BLOCKS, 1), Data::ToCtrl(DmaBuf::alloc(512))).same_code(Status::LBA_OUT_OF_RANGE));
    assert!(st(&mut q, cmd::read(2, 0, 1), Data::FromCtrl(DmaBuf::alloc(512))).same_code(Status::INVALID_NAMESPACE));
    // Above MDTS (1 MiB by default; the edges are in tests/mdts.rs).
    assert!(
        st(&mut q, cmd::read(1, 0, 4096), Data::FromCtrl(DmaBuf::alloc(4096 * 512))).same_code(Status::INVALID_FIELD)
    );
    // Buffer (SGL length) shorter than the blocks.
    assert!(
        st(&mut q, cmd::read(1, 0, 8), Data::FromCtrl(DmaBuf::alloc(512))).same_code(Status::DATA_SGL_LENGTH_INVALID)
    );
    assert!(st(&mut q, raw_sqe(0x7E, 1), Data::None).same_code(Status::INVALID_OPCODE));
    assert!(st(&mut q, cmd::write_zeroes(1, BLOCKS - 2, 4), Data::None).same_code(Status::LBA_OUT_OF_RANGE));
    let r = cmd::dsm_ranges(&[(BLOCKS, 1)]);
    assert!(st(&mut q, cmd::deallocate(1, 1), Data::ToCtrl(r)).same_code(Status::LBA_OUT_OF_RANGE));
    // The queue still works.
    write_read(&mut q, 5, 2, 1);
    c.disconnect();
}

#[test]
fn flush_write_zeroes_deallocate_compare() {
    let f = fixture();
    let (c, mut q) = connect(&f, &opts());
    write_read(&mut q, 50, 4, 3);
    let s = q.sync(cmd::flush(1), Data::None, T).unwrap();
    assert!(s.status().is_success());
    // Compare equal, then different.
    let same = pattern(50, 3, 2048);
    assert!(q
        .sync(cmd::compare(1, 50, 4), Data::ToCtrl(buf_from(&same)), T)
        .unwrap()
        .status()
        .is_success());
    let mut diff = same.clone();
    diff[1000] ^= 1;
    assert!(q
        .sync(cmd::compare(1, 50, 4), Data::ToCtrl(buf_from(&diff)), T)
        .unwrap()
        .status()
        .same_code(Status::COMPARE_FAILURE));
    // Write zeroes reads back zeroes.
    assert!(q
        .sync(cmd::write_zeroes(1, 50, 2), Data::None, T)
        .unwrap()
        .status()
        .is_success());
    let r = q
        .sync(cmd::read(1, 50, 4), Data::FromCtrl(DmaBuf::alloc(2048)), T)
        .unwrap();
    let b = r.buf.unwrap();
    assert!(b[..1024].iter().all(|&x| x == 0));
    assert_eq!(&b[1024..], &same[1024..]);
    // Deallocate two ranges (RAM bdev: deallocated blocks read as zeroes).
    let ranges = cmd::dsm_ranges(&[(52, 1), (53, 1)]);
    assert!(q
        .sync(cmd::deallocate(1, 2), Data::ToCtrl(ranges), T)
        .unwrap()
        .status()
        .is_success());
    let st = f.target.subsystem(&f.nqn).unwrap();
    let ns = st.namespace(1).unwrap();
    assert!(ns.bdev.io_stats().num_unmap_ops >= 2);
    c.disconnect();
}

#[test]
fn admin_features_logs_keepalive_and_abort() {
    let f = fixture();
    let (mut c, _q) = connect(&f, &opts());
    assert!(c.io_queues_granted >= 1);
    let nq = c.get_features(fid::NUMBER_OF_QUEUES).unwrap();
    assert_eq!(nq & 0xFFFF, u32::from(c.io_queues_granted - 1));
    assert_eq!(c.get_features(fid::KEEP_ALIVE_TIMER).unwrap(), 10_000);
    c.set_features(fid::KEEP_ALIVE_TIMER, 20_000).unwrap();
    assert_eq!(c.get_features(fid::KEEP_ALIVE_TIMER).unwrap(), 20_000);
    assert_eq!(c.get_features(fid::ARBITRATION).unwrap(), 0);
    assert_eq!(c.get_features(fid::ASYNC_EVENT_CONFIG).unwrap(), 1 << 8);
    // Number of queues cannot change once an I/O queue exists.
    assert!(
        matches!(c.set_features(fid::NUMBER_OF_QUEUES, 0), Err(nvme::host::HostError::Status(s)) if s.same_code(Status::COMMAND_SEQUENCE_ERROR))
    );
    c.keep_alive().unwrap();
    let smart = c.get_log_page(lid::SMART, 0xFFFF_FFFF, 512, 0).unwrap();
    assert_eq!(smart[3], 100);
    let fw = c.get_log_page(lid::FIRMWARE_SLOT, 0, 512, 0).unwrap();
    assert_eq!(fw[0], 1);
    assert_eq!(&fw[8..13], b"0.1.0");
    assert_eq!(c.get_log_page(lid::ERROR, 0, 64, 0).unwrap(), vec![0u8; 64]);
    assert!(
        matches!(c.get_log_page(0x70, 0, 1024, 0), Err(nvme::host::HostError::Status(s)) if s.same_code(Status::INVALID_LOG_PAGE))
    );
    // Abort: never aborts, says so in DW0 bit 0.
    let a = c
        .admin_sync(
            nvme::spec::Sqe {
                opc: 0x08,
                cdw10: 5 << 16,
                ..Default::default()
            },
            Data::None,
        )
        .unwrap();
    assert!(a.status().is_success());
    assert_eq!(a.cqe.dw0 & 1, 1);
    c.disconnect();
}

#[test]
fn namespace_change_raises_aen_and_changed_list() {
    let f = fixture();
    let (mut c, mut q) = connect(&f, &opts());
    c.admin
        .submit(
            nvme::spec::Sqe {
                opc: 0x0C,
                ..Default::default()
            },
            Data::None,
            77,
        )
        .map_err(|e| e.0)
        .unwrap();
    let b = engine::bdev::malloc::create(&format!("{}_b", f.bdev), 64, 4096, None).unwrap();
    engine::bdev::register(b).unwrap();
    let nsid = f
        .target
        .add_namespace(&f.nqn, &format!("{}_b", f.bdev), Some(5), None)
        .unwrap();
    assert_eq!(nsid, 5);
    let deadline = std::time::Instant::now() + T;
    let mut aen = None;
    while aen.is_none() {
        c.admin.poll(&mut |cpl| aen = Some(cpl)).unwrap();
        assert!(std::time::Instant::now() < deadline, "no AEN");
        std::thread::yield_now();
    }
    let aen = aen.unwrap();
    assert_eq!(aen.user, 77);
    assert_eq!(aen.cqe.dw0, 0x0004_0002);
    let l = c.get_log_page(lid::CHANGED_NS_LIST, 0, 4096, 0).unwrap();
    assert_eq!(&l[..8], &[5, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(c.active_namespaces().unwrap(), vec![1, 5]);
    // The existing I/O queue sees the new namespace.
    let r = q
        .sync(cmd::write(5, 3, 1), Data::ToCtrl(buf_from(&[0xAB; 4096])), T)
        .unwrap();
    assert!(r.status().is_success());
    f.target.remove_namespace(&f.nqn, 5).unwrap();
    let r = q
        .sync(cmd::read(5, 3, 1), Data::FromCtrl(DmaBuf::alloc(4096)), T)
        .unwrap();
    assert!(r.status().same_code(Status::INVALID_NAMESPACE));
    c.disconnect();
}

#[test]
fn many_queues_async_qd32_and_reconnect() {
    let f = fixture();
    let (mut c, mut q1) = connect(&f, &opts());
    let mut qs = vec![];
    for _ in 0..6 {
        qs.push(c.create_io_qpair().unwrap());
    }
    qs.push(q1);
    // Pre-fill, then verify with 32 async reads in flight per queue.
    for (i, q) in qs.iter_mut().enumerate() {
        for k in 0..32u64 {
            let lba = (i as u64 * 64 + k) * 8;
            let c = q
                .sync(cmd::write(1, lba, 8), Data::ToCtrl(buf_from(&pattern(lba, 1, 4096))), T)
                .unwrap();
            assert!(c.status().is_success());
        }
    }
    for (i, q) in qs.iter_mut().enumerate() {
        for k in 0..32u64 {
            let lba = (i as u64 * 64 + k) * 8;
            q.submit(cmd::read(1, lba, 8), Data::FromCtrl(DmaBuf::alloc(4096)), lba)
                .map_err(|e| e.0)
                .unwrap();
        }
    }
    let mut left = qs.len() * 32;
    let deadline = std::time::Instant::now() + T;
    while left > 0 {
        for q in qs.iter_mut() {
            q.poll(&mut |cpl| {
                assert!(cpl.status().is_success());
                assert!(cpl.buf.as_deref().unwrap() == &pattern(cpl.user, 1, 4096)[..]);
                left -= 1;
            })
            .unwrap();
        }
        assert!(std::time::Instant::now() < deadline);
    }
    // Connections were spread over both reactors: each has a poll group with I/O queues.
    let mut cores: Vec<u32> = nvme::nvmf::tcp::group_stats()
        .iter()
        .filter(|g| g.io_qpairs.load(std::sync::atomic::Ordering::Relaxed) > 0)
        .map(|g| g.core)
        .collect();
    cores.sort_unstable();
    cores.dedup();
    assert_eq!(cores, vec![0, 1]);
    // Duplicate queue ID is refused.
    assert!(
        matches!(c.create_io_qpair_with_qid(1), Err(nvme::host::HostError::Connect { status, .. }) if status.same_code(Status::CONNECT_INVALID_PARAMETERS))
    );
    drop(qs);
    c.disconnect();
    // Reconnect: a new controller with a new ID, and the data is still there.
    let (c2, mut q2) = connect(&f, &opts());
    let r = q2
        .sync(cmd::read(1, 0, 8), Data::FromCtrl(DmaBuf::alloc(4096)), T)
        .unwrap();
    assert!(r.buf.unwrap()[..] == pattern(0, 1, 4096)[..]);
    q1 = q2;
    write_read(&mut q1, 7, 1, 1);
    c2.disconnect();
}

#[test]
fn discovery_lists_subsystems_for_allowed_hosts() {
    let f = fixture();
    let e = discover(f.addr, &opts()).unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].subnqn, f.nqn);
    assert_eq!(e[0].trtype, 3);
    assert_eq!(e[0].socket_addr(), Some(f.addr));
    let c = nvme::host::connect_discovered(f.addr, &f.nqn, &opts()).unwrap();
    assert_eq!(c.id.cntrltype, 1);
    c.disconnect();
    // A host not on the list does not see a restricted subsystem.
    f.target.allow_any_host(&f.nqn, false).unwrap();
    assert!(discover(f.addr, &opts()).unwrap().is_empty());
    let d = Controller::connect(f.addr, DISCOVERY_NQN, &opts()).unwrap();
    assert_eq!(d.id.cntrltype, 2);
    d.disconnect();
}

#[test]
fn rpc_methods_build_a_working_target_and_save_it() {
    use nvme::rpc::*;
    reactors();
    let t = nvme::nvmf::Target::new();
    let b = engine::bdev::malloc::create("RpcMalloc0", 2048, 4096, None).unwrap();
    engine::bdev::register(b).unwrap();
    let nqn = "nqn.2016-06.io.spdk:rpc1".to_string();
    let p = |v: serde_json::Value| v;
    nvmf_create_transport(
        &t,
        serde_json::from_value(p(serde_json::json!({"trtype": "TCP", "io_unit_size": 65536}))).unwrap(),
    )
    .unwrap();
    nvmf_create_subsystem(
        &t,
        serde_json::from_value(p(
            serde_json::json!({"nqn": nqn, "serial_number": "SPDK001", "allow_any_host": false}),
        ))
        .unwrap(),
    )
    .unwrap();
    let nsid = nvmf_subsystem_add_ns(
        &t,
        serde_json::from_value(p(
            serde_json::json!({"nqn": nqn, "namespace": {"bdev_name": "RpcMalloc0"}}),
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(nsid, 1);
    nvmf_subsystem_add_listener(&t, serde_json::from_value(p(serde_json::json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "0"}}))).unwrap()).unwrap();
    let subs = nvmf_get_subsystems(&t, None).unwrap();
    let port: u16 = subs[1]["listen_addresses"][0]["trsvcid"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Not allowed yet.
    assert!(Controller::connect(addr, &nqn, &opts()).is_err());
    nvmf_subsystem_add_host(
        &t,
        serde_json::from_value(p(serde_json::json!({"nqn": nqn, "host": opts().hostnqn}))).unwrap(),
    )
    .unwrap();
    let mut c = Controller::connect(addr, &nqn, &opts()).unwrap();
    let mut q = c.create_io_qpair().unwrap();
    let w = q
        .sync(cmd::write(1, 1, 1), Data::ToCtrl(buf_from(&[3u8; 4096])), T)
        .unwrap();
    assert!(w.status().is_success());
    assert_eq!(c.identify_namespace(1).unwrap().nsze, 2048);
    let stats = nvmf_get_stats(&t, None).unwrap();
    let total_io: u64 = stats["poll_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["io_qpairs"].as_u64().unwrap())
        .sum();
    assert!(total_io >= 1);
    let cfg = config_entries(&t);
    let names: Vec<_> = cfg.iter().map(|c| c.0).collect();
    assert_eq!(
        names,
        vec![
            "nvmf_create_transport",
            "nvmf_create_subsystem",
            "nvmf_subsystem_add_listener",
            "nvmf_subsystem_add_host",
            "nvmf_subsystem_add_ns"
        ]
    );
    assert_eq!(cfg[2].1["listen_address"]["trsvcid"], port.to_string());
    // Removing the namespace over RPC is seen by the connected queue.
    nvmf_subsystem_remove_ns(
        &t,
        serde_json::from_value(p(serde_json::json!({"nqn": nqn, "nsid": 1}))).unwrap(),
    )
    .unwrap();
    let r = q
        .sync(cmd::read(1, 1, 1), Data::FromCtrl(DmaBuf::alloc(4096)), T)
        .unwrap();
    assert!(r.status().same_code(Status::INVALID_NAMESPACE));
    nvmf_subsystem_remove_listener(&t, serde_json::from_value(p(serde_json::json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}))).unwrap()).unwrap();
    nvmf_delete_subsystem(&t, serde_json::from_value(p(serde_json::json!({"nqn": nqn}))).unwrap()).unwrap();
    // Deleting the subsystem disconnects its controllers.
    let deadline = std::time::Instant::now() + T;
    while c.keep_alive().is_ok() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    t.shutdown();
}

#[test]
fn host_tick_keeps_a_short_kato_controller_alive() {
    let f = fixture();
    let o = HostOpts { kato_ms: 300, ..opts() };
    let (mut c, mut q) = connect(&f, &o);
    let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        c.tick().unwrap();
        q.poll(&mut |_| {}).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    write_read(&mut q, 3, 1, 3);
    c.disconnect();
}

#[test]
fn registry_dispatches_nvmf_methods_and_saves_config() {
    use engine::rpc::Registry;
    use serde_json::json;
    reactors();
    let t = nvme::nvmf::Target::new();
    let mut reg = Registry::new();
    nvme::rpc::register_rpcs_for(&mut reg, t.clone());
    let call = |m: &str, p: serde_json::Value| reg.call_blocking(m, Some(p), 10, std::time::Duration::from_millis(1));
    let b = engine::bdev::malloc::create("RegMalloc0", 1024, 512, None).unwrap();
    engine::bdev::register(b).unwrap();
    call("nvmf_create_transport", json!({"trtype": "TCP"})).unwrap();
    call(
        "nvmf_create_subsystem",
        json!({"nqn": "nqn.2016-06.io.spdk:reg", "allow_any_host": true}),
    )
    .unwrap();
    assert_eq!(
        call(
            "nvmf_subsystem_add_ns",
            json!({"nqn": "nqn.2016-06.io.spdk:reg", "namespace": {"bdev_name": "RegMalloc0", "nsid": 7}})
        )
        .unwrap(),
        json!(7)
    );
    let e = call(
        "nvmf_subsystem_add_ns",
        json!({"nqn": "nqn.2016-06.io.spdk:reg", "namespace": {"bdev": "RegMalloc0"}}),
    )
    .unwrap_err();
    assert_eq!(e.code, -32602);
    let e = call("nvmf_create_subsystem", json!({"nqn": "nqn.2016-06.io.spdk:reg"})).unwrap_err();
    assert!(e.message.contains("already exists"), "{}", e.message);
    call("nvmf_subsystem_add_listener", json!({"nqn": "nqn.2016-06.io.spdk:reg", "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "0"}})).unwrap();
    let subs = call("nvmf_get_subsystems", json!({"nqn": "nqn.2016-06.io.spdk:reg"})).unwrap();
    assert_eq!(subs[0]["namespaces"][0]["nsid"], 7);
    assert!(
        reg.call_blocking("nvmf_get_transports", None, 1, std::time::Duration::ZERO)
            .unwrap()[0]["trtype"]
            == "TCP"
    );
    let cfg = reg.subsystem_config("nvmf").unwrap();
    assert_eq!(
        cfg.iter().map(|c| c.method.as_str()).collect::<Vec<_>>(),
        vec![
            "nvmf_create_transport",
            "nvmf_create_subsystem",
            "nvmf_subsystem_add_listener",
            "nvmf_subsystem_add_ns"
        ]
    );
    // Replaying the saved calls on a fresh target through the registry recreates it.
    let t2 = nvme::nvmf::Target::new();
    let mut reg2 = Registry::new();
    nvme::rpc::register_rpcs_for(&mut reg2, t2.clone());
    for c in &cfg {
        let mut p = c.params.clone();
        if c.method == "nvmf_subsystem_add_listener" {
            p.as_mut().unwrap()["listen_address"]["trsvcid"] = json!("0");
        }
        reg2.call_blocking(&c.method, p, 10, std::time::Duration::from_millis(1))
            .unwrap();
    }
    assert_eq!(
        t2.subsystem("nqn.2016-06.io.spdk:reg")
            .unwrap()
            .namespace(7)
            .unwrap()
            .bdev
            .name(),
        "RegMalloc0"
    );
    t.shutdown();
    t2.shutdown();
}
