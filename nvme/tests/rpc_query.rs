//! The SPDK query and referral methods through the registry (as `baton rpc` and SPDK's
//! `rpc.py` reach them): shapes and values with real connections, referrals in the
//! discovery log, errors naming the bad parameter, and `save_config` replaying referrals.

mod common;

use common::*;
use engine::rpc::Registry;
use nvme::host::discover;
use nvme::spec::log::{SUBTYPE_DISCOVERY, SUBTYPE_NVME};
use serde_json::{json, Value};
use std::time::Duration;

fn registry(f: &Fixture) -> Registry {
    let mut reg = Registry::new();
    nvme::rpc::register_rpcs_for(&mut reg, f.target.clone());
    engine::rpc::methods::logging::register_rpcs(&mut reg);
    reg
}

fn call(reg: &Registry, m: &str, p: Value) -> Result<Value, engine::rpc::RpcError> {
    reg.call_blocking(m, Some(p), 10, Duration::from_millis(1))
}

#[test]
fn controllers_qpairs_and_listeners_have_spdk_shapes() {
    let f = fixture();
    let reg = registry(&f);
    let nqn = json!({ "nqn": f.nqn });
    assert_eq!(
        call(&reg, "nvmf_subsystem_get_controllers", nqn.clone()).unwrap(),
        json!([])
    );
    let (mut c, _q1) = connect(&f, &opts());
    let _q2 = c.create_io_qpair().unwrap();
    let ctrls = call(&reg, "nvmf_subsystem_get_controllers", nqn.clone()).unwrap();
    assert_eq!(ctrls.as_array().unwrap().len(), 1);
    let ct = &ctrls[0];
    assert_eq!(ct["cntlid"], json!(c.cntlid()));
    assert_eq!(ct["cntrltype"], "io");
    assert_eq!(ct["hostnqn"], json!(opts().hostnqn));
    assert_eq!(ct["num_io_qpairs"], 2);
    assert_eq!(ct["hostid"].as_str().unwrap().len(), 36, "UUID string");

    let qp = call(&reg, "nvmf_subsystem_get_qpairs", nqn.clone()).unwrap();
    let qids: Vec<u64> = qp
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["qid"].as_u64().unwrap())
        .collect();
    assert_eq!(qids, vec![0, 1, 2]);
    for q in qp.as_array().unwrap() {
        assert_eq!(q["cntlid"], json!(c.cntlid()));
        assert_eq!(q["state"], "enabled");
        assert!(q["thread"].as_str().unwrap().starts_with("nvmf_tgt_poll_group_"));
        assert_eq!(q["listen_address"]["trsvcid"], json!(f.addr.port().to_string()));
        assert_eq!(q["listen_address"]["trtype"], "TCP");
        assert_eq!(q["peer_address"]["traddr"], "127.0.0.1");
    }
    let l = call(&reg, "nvmf_subsystem_get_listeners", nqn.clone()).unwrap();
    assert_eq!(
        l,
        json!([{ "address": { "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": f.addr.port().to_string() },
                 "ana_states": [{ "ana_group": 1, "ana_state": "optimized" }] }])
    );
    // Queues leave the list when they close; the controller when its admin queue does.
    drop(_q2);
    let mut n = usize::MAX;
    for _ in 0..2000 {
        n = call(&reg, "nvmf_subsystem_get_qpairs", nqn.clone())
            .unwrap()
            .as_array()
            .unwrap()
            .len();
        if n == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(n, 2, "closed I/O queue still listed");
    c.disconnect();
    let mut left = usize::MAX;
    for _ in 0..2000 {
        left = call(&reg, "nvmf_subsystem_get_controllers", nqn.clone())
            .unwrap()
            .as_array()
            .unwrap()
            .len();
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(left, 0, "disconnected controller still listed");
    // Errors name what is wrong.
    let e = call(
        &reg,
        "nvmf_subsystem_get_qpairs",
        json!({"nqn": "nqn.2016-06.io.baton:none"}),
    )
    .unwrap_err();
    assert!(e.message.contains("nqn.2016-06.io.baton:none"), "{}", e.message);
    let e = call(
        &reg,
        "nvmf_subsystem_get_controllers",
        json!({"nqn": f.nqn, "bogus": 1}),
    )
    .unwrap_err();
    assert_eq!(e.code, -32602);
}

#[test]
fn referrals_reach_the_discovery_log_and_save_config() {
    let f = fixture();
    let reg = registry(&f);
    let addr = json!({"trtype": "tcp", "adrfam": "ipv4", "traddr": "192.0.2.7", "trsvcid": "4420"});
    assert_eq!(
        call(&reg, "nvmf_discovery_add_referral", json!({"address": addr})).unwrap(),
        json!(true)
    );
    let sub = json!({"address": addr, "subnqn": "nqn.2016-06.io.baton:far", "secure_channel": false});
    assert_eq!(
        call(&reg, "nvmf_discovery_add_referral", sub.clone()).unwrap(),
        json!(true)
    );
    let e = call(&reg, "nvmf_discovery_add_referral", json!({"address": addr})).unwrap_err();
    assert!(e.message.contains("already exists"), "{}", e.message);
    let e = call(
        &reg,
        "nvmf_discovery_add_referral",
        json!({"address": {"trtype": "tcp", "traddr": "192.0.2.7"}}),
    )
    .unwrap_err();
    assert!(e.message.contains("trsvcid"), "{}", e.message);
    let got = call(&reg, "nvmf_discovery_get_referrals", json!({})).unwrap();
    assert_eq!(got.as_array().unwrap().len(), 2);
    assert_eq!(got[0]["subnqn"], nvme::spec::fabrics::DISCOVERY_NQN);
    assert_eq!(got[0]["address"]["traddr"], "192.0.2.7");
    assert_eq!(got[1]["secure_channel"], false);

    // The discovery log: the subsystem's listener, then both referrals.
    let log = discover(f.addr, &opts()).unwrap();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!((log[0].subtype, log[0].subnqn.as_str()), (SUBTYPE_NVME, f.nqn.as_str()));
    assert_eq!(log[1].subtype, SUBTYPE_DISCOVERY);
    assert_eq!((log[1].traddr.as_str(), log[1].trsvcid.as_str()), ("192.0.2.7", "4420"));
    assert_eq!(
        (log[2].subtype, log[2].subnqn.as_str()),
        (SUBTYPE_NVME, "nqn.2016-06.io.baton:far")
    );

    let cfg = reg.subsystem_config("nvmf").unwrap();
    let refs: Vec<_> = cfg
        .iter()
        .filter(|c| c.method == "nvmf_discovery_add_referral")
        .collect();
    assert_eq!(refs.len(), 2);

    assert_eq!(call(&reg, "nvmf_discovery_remove_referral", sub).unwrap(), json!(true));
    let e = call(
        &reg,
        "nvmf_discovery_remove_referral",
        json!({"address": {"trtype": "tcp", "traddr": "192.0.2.8", "trsvcid": "4420"}}),
    )
    .unwrap_err();
    assert!(e.message.contains("no referral"), "{}", e.message);
    assert_eq!(discover(f.addr, &opts()).unwrap().len(), 2);
}

#[test]
fn log_levels_round_trip_by_spdk_name() {
    let f = fixture();
    let reg = registry(&f);
    let before = log::max_level();
    for l in ["ERROR", "warning", "NOTICE", "INFO", "DEBUG", "DISABLED"] {
        assert_eq!(call(&reg, "log_set_level", json!({ "level": l })).unwrap(), json!(true));
        assert_eq!(
            call(&reg, "log_get_level", json!(null)).unwrap(),
            json!(l.to_uppercase())
        );
    }
    call(&reg, "log_set_print_level", json!({"level": "NOTICE"})).unwrap();
    assert_eq!(call(&reg, "log_get_print_level", json!(null)).unwrap(), json!("NOTICE"));
    let e = call(&reg, "log_set_level", json!({"level": "LOUD"})).unwrap_err();
    assert_eq!(e.code, -32602);
    log::set_max_level(before);
}
