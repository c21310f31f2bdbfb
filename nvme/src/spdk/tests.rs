use super::*;

#[test]
fn spec_parses_trid_and_options() {
    let t = "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.2016-06.io.spdk:cnode1";
    let (trid, o) = parse_spec(t).unwrap();
    assert_eq!(trid, t);
    assert_eq!((o.nsid, o.io_queue_size, o.keep_alive_ms), (None, 256, 10_000));
    let (trid, o) = parse_spec(&format!("{t},ns=2,qsize=128,kato=0")).unwrap();
    assert_eq!(trid, t);
    assert_eq!((o.nsid, o.io_queue_size, o.keep_alive_ms), (Some(2), 128, 0));
    let (trid, _) = parse_spec("trtype:PCIe traddr:0000:04:00.0").unwrap();
    assert_eq!(trid, "trtype:PCIe traddr:0000:04:00.0");
}

#[test]
fn spec_and_rpc_take_spdks_resiliency_options() {
    let t = "trtype:TCP traddr:127.0.0.1 trsvcid:4420";
    let (_, o) = parse_spec(t).unwrap();
    assert_eq!(o.reconnect, None, "none given: the default behaviour");
    let (_, o) = parse_spec(&format!("{t},ctrlr_loss_timeout_sec=-1,reconnect_delay_sec=2")).unwrap();
    let r = o.reconnect.unwrap();
    assert_eq!(
        (
            r.ctrlr_loss_timeout_sec,
            r.reconnect_delay_sec,
            r.fast_io_fail_timeout_sec
        ),
        (-1, 2, 0)
    );
    // SPDK's rules for the combination: a delay needs a loss timeout, fast-fail at most
    // the loss timeout.
    assert!(matches!(
        parse_spec(&format!("{t},reconnect_delay_sec=2")),
        Err(SpdkError::Param(_))
    ));
    assert!(matches!(
        parse_spec(&format!(
            "{t},ctrlr_loss_timeout_sec=10,reconnect_delay_sec=2,fast_io_fail_timeout_sec=20"
        )),
        Err(SpdkError::Param(_))
    ));
    assert!(matches!(
        parse_spec(&format!("{t},ctrlr_loss_timeout_sec=x")),
        Err(SpdkError::Param(_))
    ));
    let p: rpc::AttachParams = serde_json::from_value(serde_json::json!({
        "name": "S0", "trid": t, "ctrlr_loss_timeout_sec": 30, "reconnect_delay_sec": 2, "fast_io_fail_timeout_sec": 10
    }))
    .unwrap();
    let r = p.opts().reconnect.unwrap();
    assert_eq!(
        (
            r.ctrlr_loss_timeout_sec,
            r.reconnect_delay_sec,
            r.fast_io_fail_timeout_sec
        ),
        (30, 2, 10)
    );
    // An invalid combination by RPC is refused before anything connects.
    let bad = rpc::AttachParams {
        fast_io_fail_timeout_sec: Some(1),
        ..p.clone()
    };
    match super::attach("S1", t, &bad.opts()) {
        Err(SpdkError::Param(m)) => assert!(m.contains("fast_io_fail_timeout_sec"), "{m}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("attached with an invalid combination"),
    }
}

#[test]
fn spec_refuses_what_it_cannot_use() {
    assert!(matches!(parse_spec("traddr:1.2.3.4"), Err(SpdkError::Param(_))));
    assert!(matches!(parse_spec("trtype:TCP,ns=x"), Err(SpdkError::Param(_))));
    assert!(matches!(parse_spec("trtype:TCP,colour=red"), Err(SpdkError::Param(_))));
}

#[test]
fn pcie_traddr_is_found_and_checked() {
    assert_eq!(
        pcie_traddr("trtype:PCIe traddr:0000:00:04.0").unwrap().as_deref(),
        Some("0000:00:04.0")
    );
    assert_eq!(
        pcie_traddr("TRADDR=00:04.0 trtype=pcie").unwrap().as_deref(),
        Some("0000:00:04.0")
    );
    assert_eq!(
        pcie_traddr("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420").unwrap(),
        None
    );
    assert!(matches!(pcie_traddr("trtype:PCIe"), Err(SpdkError::Trid(..))));
    assert!(matches!(
        pcie_traddr("trtype:PCIe traddr:00:40.0"),
        Err(SpdkError::Trid(..))
    ));
    // Nothing is on the allow-list in a process whose EAL runs with --no-pci.
    assert!(!engine::env::pci_allowed("0000:00:04.0"));
}

#[test]
fn trid_parse_goes_through_spdk() {
    // SPDK's own parser, no env needed: a known transport parses, nonsense does not.
    assert!(ffi::parse_trid("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420").is_ok());
    assert!(matches!(
        ffi::parse_trid("trtype:TCP adrfam:bogus-family"),
        Err(SpdkError::Trid(..))
    ));
}

#[test]
fn attach_params_round_trip_and_default() {
    let p: rpc::AttachParams = serde_json::from_value(serde_json::json!({
        "name": "S0", "trid": "trtype:TCP traddr:127.0.0.1 trsvcid:4420", "nsid": 2
    }))
    .unwrap();
    let o = p.opts();
    assert_eq!((o.nsid, o.io_queue_size, o.keep_alive_ms), (Some(2), 256, 10_000));
    let back: rpc::AttachParams = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    let bad = serde_json::from_value::<rpc::AttachParams>(serde_json::json!({"name": "S0", "trid": "x", "colour": 1}));
    assert!(bad.is_err(), "unknown parameters are refused");
}

#[test]
fn detach_refuses_unknown_names_and_other_drivers() {
    let e = rpc::detach_rpc(rpc::DetachParams { name: "no-such".into() }).unwrap_err();
    assert!(e.message.contains("no bdev named"), "{}", e.message);
    let m = engine::bdev::malloc::create("spdk-detach-test-m", 8, 512, None).unwrap();
    engine::bdev::register(m).unwrap();
    let e = rpc::detach_rpc(rpc::DetachParams {
        name: "spdk-detach-test-m".into(),
    })
    .unwrap_err();
    assert!(e.message.contains("not spdk_nvme"), "{}", e.message);
    assert!(engine::bdev::lookup("spdk-detach-test-m").is_some(), "left in place");
    engine::bdev::unregister("spdk-detach-test-m").unwrap();
}
