//! JSON config round trip: state built over RPC, saved with `save_config`, torn
//! down, loaded into a fresh registry with `load_config`, saved again: equal.
//! Only `config_round_trip` creates bdevs in this binary (the bdev registry is
//! per process and the comparison covers all of it).

mod rpc_support;

use engine::rpc::config::{load_config, load_config_value, save_config, ConfigError};
use rpc_support::{engine_registry, TestServer};
use serde_json::{json, Value};

#[test]
fn config_round_trip() {
    let dir = std::env::temp_dir().join(format!("baton-rpc-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 256 * 1024]).unwrap();

    let srv = TestServer::start("config");
    let mut c = srv.client();
    c.call(
        "bdev_malloc_create",
        Some(json!({"name": "Malloc7", "num_blocks": 64, "block_size": 512})),
    )
    .unwrap();
    c.call(
        "bdev_null_create",
        Some(json!({"name": "Null0", "num_blocks": 1000, "block_size": 4096,
                    "uuid": "11111111-2222-4333-8444-555555555555"})),
    )
    .unwrap();
    c.call("bdev_uring_create", Some(json!({"name": "Uring0", "filename": img})))
        .unwrap();
    c.call(
        "bdev_uring_create",
        Some(json!({"name": "Uring1", "filename": img, "block_size": 4096})),
    )
    .unwrap();
    let saved = c.call("save_config", None).unwrap();
    let bdev_cfg = &saved["subsystems"][0];
    assert_eq!(bdev_cfg["subsystem"], json!("bdev"));
    let methods: Vec<&str> = bdev_cfg["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "bdev_malloc_create",
            "bdev_null_create",
            "bdev_uring_create",
            "bdev_uring_create"
        ]
    );

    // Tear the state down, as a restart would.
    for (m, n) in [
        ("bdev_malloc_delete", "Malloc7"),
        ("bdev_null_delete", "Null0"),
        ("bdev_uring_delete", "Uring0"),
        ("bdev_uring_delete", "Uring1"),
    ] {
        c.call(m, Some(json!({ "name": n }))).unwrap();
    }
    assert_eq!(c.call("bdev_get_bdevs", None).unwrap(), json!([]));
    drop(srv);

    let file = dir.join("baton.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&saved).unwrap()).unwrap();
    let fresh = engine_registry();
    load_config(&fresh, &file).unwrap();
    let again = serde_json::to_value(save_config(&fresh)).unwrap();
    assert_eq!(again, saved);

    // Loading the same config on top of itself fails on the first duplicate and
    // says where.
    match load_config(&fresh, &file) {
        Err(ConfigError::Call {
            subsystem,
            index,
            method,
            error,
        }) => {
            assert_eq!(
                (subsystem.as_str(), index, method.as_str()),
                ("bdev", 0, "bdev_malloc_create")
            );
            assert_eq!(error.code, -17);
        }
        other => panic!("{other:?}"),
    }
    for b in engine::bdev::list() {
        engine::bdev::unregister(b.name()).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_config_errors_say_where() {
    let reg = engine_registry();
    match load_config_value(
        &reg,
        json!({"subsystems": [
            {"subsystem": "accel", "config": null},
            {"subsystem": "bdev", "config": [
                {"method": "bdev_wait_for_examine"},
                {"method": "bdev_frobnicate", "params": {"x": 1}}]}]}),
    ) {
        Err(ConfigError::Call {
            subsystem,
            index,
            method,
            error,
        }) => {
            assert_eq!(
                (subsystem.as_str(), index, method.as_str()),
                ("bdev", 1, "bdev_frobnicate")
            );
            assert_eq!(error.code, -32601);
        }
        other => panic!("{other:?}"),
    }
    match load_config_value(&reg, json!({"subsystem": []})) {
        Err(ConfigError::Format(msg)) => assert!(msg.contains("subsystem"), "{msg}"),
        other => panic!("{other:?}"),
    }
    match load_config_value(
        &reg,
        json!({"subsystems": [{"subsystem": "bdev", "config": [{"params": {}}]}]}),
    ) {
        Err(ConfigError::Format(msg)) => assert!(msg.contains("method"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        load_config(&reg, std::path::Path::new("/nonexistent/baton.json")),
        Err(ConfigError::Read { .. })
    ));
    load_config_value(&reg, json!({"subsystems": []})).unwrap();
    let empty: Value = serde_json::to_value(save_config(&reg)).unwrap();
    assert_eq!(empty["subsystems"][0]["subsystem"], json!("bdev"));
}
