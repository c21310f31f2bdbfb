//! The standby's JSON-RPC methods through a real registry and reactor:
//! create (both modes), status, snapshot list/export/delete, declare failure,
//! promote (generation bump, bdev registered), save_config, delete, and the
//! parameter errors that must name the parameter.

mod common;

use common::*;
use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use engine::rpc::Registry;
use serde_json::json;
use standby::{OpBody, OwnedOp};
use std::time::Duration;

fn rp(lsn: u64, epoch: u64, last_lsn: u64) -> OwnedOp {
    OwnedOp {
        lsn,
        generation: 1,
        body: OpBody::RestartPoint {
            epoch,
            last_lsn,
            tag: format!("t{epoch}").into_bytes(),
        },
    }
}

fn wait_epoch(name: &str, epoch: u64) {
    for _ in 0..100_000 {
        let e = standby::registry::with_standby(name, |v| v.applied().0).unwrap();
        if e >= epoch {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    panic!("{name} never reached epoch {epoch}");
}

#[test]
fn standby_methods() {
    let r = Reactors::start(ReactorOpts {
        cores: vec![0],
        pin: false,
        idle: IdleMode::Poll,
    })
    .unwrap();
    let mut reg = Registry::new();
    engine::rpc::methods::register_rpcs(&mut reg);
    standby::rpc::register_rpcs(&mut reg);
    for (n, b) in [("r_vol", 64), ("r_stg", 256), ("r_data", 512), ("r_meta", 130)] {
        call(
            &reg,
            "bdev_malloc_create",
            json!({"name": n, "num_blocks": b, "block_size": 512}),
        )
        .unwrap();
    }

    // Parameter errors name the parameter.
    let e = call(
        &reg,
        "standby_create",
        json!({"name": "x", "mode": "delayed", "bogus": 1}),
    )
    .unwrap_err();
    assert_eq!(e.code, -32602);
    assert!(e.message.contains("bogus"), "{}", e.message);
    let e = call(
        &reg,
        "standby_create",
        json!({"name": "x", "mode": "delayed", "volume_bdev": "r_vol"}),
    )
    .unwrap_err();
    assert!(e.message.contains("staging_bdev"), "{}", e.message);
    let e = call(&reg, "standby_create", json!({"name": "x", "mode": "sideways"})).unwrap_err();
    assert_eq!(e.code, -32602, "{}", e.message);
    let e = call(
        &reg,
        "standby_create",
        json!({"name": "x", "mode": "delayed", "volume_bdev": "nope", "staging_bdev": "r_stg"}),
    )
    .unwrap_err();
    assert_eq!(e.code, -19, "{}", e.message);
    assert!(e.message.contains("nope"), "{}", e.message);

    // Delayed standby.
    let v = call(
        &reg,
        "standby_create",
        json!({"name": "sd", "mode": "delayed", "volume_bdev": "r_vol", "staging_bdev": "r_stg", "format": true}),
    )
    .unwrap();
    assert_eq!(v, json!("sd"));
    let e = call(
        &reg,
        "standby_create",
        json!({"name": "sd", "mode": "delayed", "volume_bdev": "r_vol", "staging_bdev": "r_stg"}),
    )
    .unwrap_err();
    assert_eq!(e.code, -17, "{}", e.message);
    standby::registry::with_standby("sd", |v| {
        for op in [write(1, 3, 0xaa), rp(2, 1, 1), write(3, 3, 0xbb)] {
            v.offer_owned(op, 0);
        }
    })
    .unwrap();
    wait_epoch("sd", 1);
    let st = call(&reg, "standby_get_status", json!({"name": "sd"})).unwrap();
    assert_eq!(st[0]["mode"], json!("delayed"));
    assert_eq!(st[0]["applied_epoch"], json!(1));
    assert_eq!(st[0]["applied_tag"], json!("t1"));
    assert_eq!(st[0]["lsn_received_max"], json!(3));
    assert!(st[0]["delayed"]["staging_records"].as_u64().unwrap() >= 1);

    // Snapshot standby.
    call(&reg, "standby_create", json!({"name": "ss", "mode": "snapshot", "data_bdev": "r_data", "metadata_bdev": "r_meta", "volume_blocks": 64, "keep_last": 2, "format": true})).unwrap();
    standby::registry::with_standby("ss", |v| {
        let mut lsn = 0;
        for epoch in 1..=4u64 {
            lsn += 1;
            v.offer_owned(write(lsn, epoch, epoch as u8), 0);
            lsn += 1;
            v.offer_owned(rp(lsn, epoch, lsn - 1), 0);
        }
    })
    .unwrap();
    wait_epoch("ss", 4);
    let l = call(&reg, "snapshot_list", json!({"name": "ss"})).unwrap();
    let epochs: Vec<u64> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, vec![3, 4], "keep_last 2");
    let e = call(&reg, "snapshot_export", json!({"name": "ss", "epoch": 1})).unwrap_err();
    assert_eq!(e.code, -2, "{}", e.message);
    let b = call(
        &reg,
        "snapshot_export",
        json!({"name": "ss", "epoch": 3, "bdev_name": "ss3"}),
    )
    .unwrap();
    assert_eq!(b, json!("ss3"));
    let snap = engine::bdev::lookup("ss3").unwrap();
    let img = read_all(&snap);
    assert!(img[512..1024].iter().all(|&x| x == 1) && img[1536..2048].iter().all(|&x| x == 3));
    assert!(
        img[2048..2560].iter().all(|&x| x == 0),
        "epoch 4's write is not in snapshot 3"
    );
    let e = call(&reg, "snapshot_delete", json!({"name": "ss", "epoch": 3})).unwrap_err();
    assert_eq!(e.code, -16, "exported: {}", e.message);
    let e = call(&reg, "snapshot_delete", json!({"name": "ss", "epoch": 4})).unwrap_err();
    assert_eq!(e.code, -16, "latest: {}", e.message);
    let e = call(&reg, "snapshot_list", json!({"name": "sd"})).unwrap();
    assert_eq!(e, json!([]));

    // save_config replays standby_create without format.
    let cfg = standby::rpc::standby_config();
    assert_eq!(cfg.len(), 2);
    assert!(cfg
        .iter()
        .all(|c| c.method == "standby_create" && c.params.as_ref().unwrap().get("format").is_none()));

    // Failure and promotion.
    call(&reg, "standby_declare_failure", json!({"name": "sd"})).unwrap();
    let p = call(&reg, "standby_promote", json!({"name": "sd"})).unwrap();
    // Delayed mode: the volume bdev behind the record of changes since promotion.
    assert_eq!(p["bdev_name"], json!("sd_head"));
    assert_eq!(p["generation"], json!(2));
    let st = call(&reg, "standby_get_status", json!({"name": "sd"})).unwrap();
    assert_eq!(st[0]["promoted"], json!(true));
    assert_eq!(st[0]["applied_epoch"], json!(1), "the epoch-2 write was rolled back");
    assert_eq!(
        st[0]["changed"]["changed_regions"],
        json!(1),
        "the rolled-back write's block is recorded as changed: {st}"
    );
    let e = call(&reg, "standby_promote", json!({"name": "sd"})).unwrap_err();
    assert_eq!(e.code, -16, "{}", e.message);
    let p = call(&reg, "standby_promote", json!({"name": "ss", "bdev_name": "ss_head"})).unwrap();
    assert_eq!(p["bdev_name"], json!("ss_head"));
    let head = engine::bdev::lookup("ss_head").unwrap();
    let img = read_all(&head);
    assert!(img[2048..2560].iter().all(|&x| x == 4), "head is at snapshot 4");

    let all = call(&reg, "standby_get_status", json!({})).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
    for n in ["sd", "ss"] {
        assert_eq!(call(&reg, "standby_delete", json!({"name": n})).unwrap(), json!(true));
    }
    let e = call(&reg, "standby_get_status", json!({"name": "sd"})).unwrap_err();
    assert_eq!(e.code, -19, "{}", e.message);
    drop(snap);
    drop(head);
    r.shutdown();
    r.wait();
}
