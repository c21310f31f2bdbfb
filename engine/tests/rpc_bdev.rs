//! bdev methods over the socket: happy paths, SPDK error codes, parameter errors
//! that name the parameter, and a 1000-bdev `bdev_get_bdevs` response.
//! Tests share the process's bdev registry, so each uses its own name prefix.

mod rpc_support;

use std::time::Duration;

use rpc_support::{call_err, TestServer};
use serde_json::{json, Value};

fn names_with_prefix(list: &Value, prefix: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn malloc_create_get_delete() {
    let srv = TestServer::start("malloc");
    let mut c = srv.client();
    let uuid = "0f5a2b6c-1d3e-4f70-8a9b-0c1d2e3f4a5b";
    let name = c
        .call(
            "bdev_malloc_create",
            Some(json!({"name": "m_a", "num_blocks": 256, "block_size": 4096, "uuid": uuid})),
        )
        .unwrap();
    assert_eq!(name, json!("m_a"));
    let got = c.call("bdev_get_bdevs", Some(json!({"name": "m_a"}))).unwrap();
    let b = &got[0];
    assert_eq!(b["name"], json!("m_a"));
    assert_eq!(b["num_blocks"], json!(256));
    assert_eq!(b["block_size"], json!(4096));
    assert_eq!(b["uuid"], json!(uuid));
    assert_eq!(b["product_name"], json!("Malloc disk"));
    assert_eq!(b["supported_io_types"]["read"], json!(true));
    assert_eq!(b["claimed"], json!(false));
    // rpc.py always sends these flags; with their "off" values they are accepted.
    c.call(
        "bdev_malloc_create",
        Some(json!({"name": "m_b", "num_blocks": 8, "block_size": 512,
                    "md_interleave": false, "dif_is_head_of_md": false, "numa_id": -1})),
    )
    .unwrap();

    let (code, msg) = call_err(
        &mut c,
        "bdev_malloc_create",
        Some(json!({"name": "m_a", "num_blocks": 8, "block_size": 512})),
    );
    assert_eq!(code, -17, "{msg}");
    assert!(msg.starts_with("File exists") && msg.contains("m_a"), "{msg}");

    let (code, msg) = call_err(
        &mut c,
        "bdev_malloc_create",
        Some(json!({"name": "m_c", "num_blocks": 8, "block_size": 1000})),
    );
    assert_eq!(code, -22, "{msg}");
    assert!(msg.contains("block_size") && msg.contains("1000"), "{msg}");

    let (code, msg) = call_err(
        &mut c,
        "bdev_malloc_create",
        Some(json!({"name": "m_c", "num_blocks": 0, "block_size": 512})),
    );
    assert_eq!(code, -22);
    assert!(msg.contains("num_blocks"), "{msg}");

    let (code, msg) = call_err(
        &mut c,
        "bdev_malloc_create",
        Some(json!({"name": "m_c", "num_blocks": 8, "block_size": 512, "md_size": 8})),
    );
    assert_eq!(code, -libc::EOPNOTSUPP);
    assert!(msg.contains("md_size"), "{msg}");

    let (code, msg) = call_err(
        &mut c,
        "bdev_malloc_create",
        Some(json!({"name": "m_c", "num_blocks": 8, "block_size": 512, "uuid": "not-a-uuid"})),
    );
    assert_eq!(code, -22);
    assert!(msg.contains("uuid") && msg.contains("not-a-uuid"), "{msg}");

    assert_eq!(
        c.call("bdev_malloc_delete", Some(json!({"name": "m_a"}))).unwrap(),
        json!(true)
    );
    c.call("bdev_malloc_delete", Some(json!({"name": "m_b"}))).unwrap();
    let (code, msg) = call_err(&mut c, "bdev_malloc_delete", Some(json!({"name": "m_a"})));
    assert_eq!(code, -19);
    assert!(msg.starts_with("No such device"), "{msg}");
    let (code, _) = call_err(&mut c, "bdev_get_bdevs", Some(json!({"name": "m_a"})));
    assert_eq!(code, -19);
}

#[test]
fn malloc_default_name() {
    let srv = TestServer::start("mallocname");
    let mut c = srv.client();
    let a = c
        .call("bdev_malloc_create", Some(json!({"num_blocks": 8, "block_size": 512})))
        .unwrap();
    let b = c
        .call("bdev_malloc_create", Some(json!({"num_blocks": 8, "block_size": 512})))
        .unwrap();
    let (a, b) = (a.as_str().unwrap().to_string(), b.as_str().unwrap().to_string());
    assert!(a.starts_with("Malloc") && b.starts_with("Malloc") && a != b, "{a} {b}");
    for n in [a, b] {
        c.call("bdev_malloc_delete", Some(json!({ "name": n }))).unwrap();
    }
}

#[test]
fn params_errors_name_the_parameter() {
    let srv = TestServer::start("paramerr");
    let mut c = srv.client();
    let cases = [
        (json!({"name": "p", "block_size": 512}), "missing field `num_blocks`"),
        (
            json!({"name": "p", "num_blocks": "many", "block_size": 512}),
            "num_blocks",
        ),
        (json!({"name": "p", "num_blocks": -5, "block_size": 512}), "num_blocks"),
        (
            json!({"name": "p", "num_blocks": 8, "block_size": 512, "bogus": [1]}),
            "`bogus` (received [1])",
        ),
        (json!({"name": 17, "num_blocks": 8, "block_size": 512}), "name"),
    ];
    for (params, want) in cases {
        let (code, msg) = call_err(&mut c, "bdev_null_create", Some(params.clone()));
        assert_eq!(code, -32602, "{params}: {msg}");
        assert!(msg.contains(want), "{params}: {msg:?} should contain {want:?}");
    }
    // Each method's params struct rejects unknown fields.
    for method in [
        "bdev_malloc_create",
        "bdev_malloc_delete",
        "bdev_null_create",
        "bdev_null_delete",
        "bdev_uring_create",
        "bdev_uring_delete",
        "bdev_aio_create",
        "bdev_aio_delete",
        "bdev_get_bdevs",
        "bdev_get_iostat",
        "rpc_get_methods",
        "spdk_kill_instance",
        "framework_get_config",
        "thread_get_stats",
        "framework_get_reactors",
        "save_config",
    ] {
        let (code, msg) = call_err(&mut c, method, Some(json!({"zzz_unknown": 1})));
        assert_eq!(code, -32602, "{method}: {msg}");
    }
}

#[test]
fn null_create_delete() {
    let srv = TestServer::start("null");
    let mut c = srv.client();
    assert_eq!(
        c.call(
            "bdev_null_create",
            Some(json!({"name": "n_a", "num_blocks": 1024, "block_size": 512}))
        )
        .unwrap(),
        json!("n_a")
    );
    let b = c.call("bdev_get_bdevs", Some(json!({"name": "n_a"}))).unwrap();
    assert_eq!(b[0]["product_name"], json!("Null disk"));
    // Deleting with the wrong back end's method is refused.
    let (code, msg) = call_err(&mut c, "bdev_malloc_delete", Some(json!({"name": "n_a"})));
    assert_eq!(code, -19);
    assert!(msg.contains("null"), "{msg}");
    let (code, _) = call_err(
        &mut c,
        "bdev_null_create",
        Some(json!({"name": "n_a", "num_blocks": 1, "block_size": 512})),
    );
    assert_eq!(code, -17);
    c.call("bdev_null_delete", Some(json!({"name": "n_a"}))).unwrap();
    let (code, _) = call_err(&mut c, "bdev_null_delete", Some(json!({"name": "n_a"})));
    assert_eq!(code, -19);
}

#[test]
fn uring_create_delete() {
    let srv = TestServer::start("uring");
    let mut c = srv.client();
    let file = std::env::temp_dir().join(format!("baton-rpc-uring-{}.img", std::process::id()));
    std::fs::write(&file, vec![0u8; 1 << 20]).unwrap();
    let name = c
        .call(
            "bdev_uring_create",
            Some(json!({"name": "u_a", "filename": file, "block_size": 4096})),
        )
        .unwrap();
    assert_eq!(name, json!("u_a"));
    let b = c.call("bdev_get_bdevs", Some(json!({"name": "u_a"}))).unwrap();
    assert_eq!(b[0]["num_blocks"], json!(256));
    assert_eq!(b[0]["block_size"], json!(4096));
    c.call("bdev_uring_delete", Some(json!({"name": "u_a"}))).unwrap();

    let (code, msg) = call_err(
        &mut c,
        "bdev_uring_create",
        Some(json!({"name": "u_b", "filename": "/nonexistent/baton.img"})),
    );
    assert_eq!(code, -libc::ENOENT);
    assert!(msg.contains("/nonexistent/baton.img"), "{msg}");
    let (code, msg) = call_err(&mut c, "bdev_uring_create", Some(json!({"name": "u_b"})));
    assert_eq!(code, -32602);
    assert!(msg.contains("filename"), "{msg}");
    let (code, _) = call_err(&mut c, "bdev_uring_delete", Some(json!({"name": "u_b"})));
    assert_eq!(code, -19);
    std::fs::remove_file(&file).unwrap();
}

/// SPDK's `bdev_aio_create` with the params rpc.py sends: an aio bdev (the io_uring engine
/// underneath) that does I/O-free management like SPDK's, saves as `bdev_aio_create`, and is
/// deleted only by `bdev_aio_delete`.
#[test]
fn aio_create_delete_and_save() {
    let srv = TestServer::start("aio");
    let mut c = srv.client();
    let file = std::env::temp_dir().join(format!("baton-rpc-aio-{}.img", std::process::id()));
    std::fs::write(&file, vec![0u8; 1 << 20]).unwrap();
    let name = c
        .call(
            "bdev_aio_create",
            Some(
                json!({"filename": file, "name": "aio_a", "block_size": 512, "readonly": false,
                        "fallocate": false, "nowait": false}),
            ),
        )
        .unwrap();
    assert_eq!(name, json!("aio_a"));
    let b = c.call("bdev_get_bdevs", Some(json!({"name": "aio_a"}))).unwrap();
    assert_eq!(b[0]["num_blocks"], json!(2048));
    assert_eq!(b[0]["product_name"], json!("AIO disk"));
    assert_eq!(b[0]["driver_specific"]["aio"]["filename"], json!(file));
    let saved = c.call("save_config", None).unwrap().to_string();
    assert!(saved.contains("bdev_aio_create"), "{saved}");
    let (code, msg) = call_err(
        &mut c,
        "bdev_aio_create",
        Some(json!({"filename": file, "name": "aio_b", "readonly": true})),
    );
    assert_eq!(code, -libc::EOPNOTSUPP);
    assert!(msg.contains("readonly"), "{msg}");
    let (code, _) = call_err(&mut c, "bdev_uring_delete", Some(json!({"name": "aio_a"})));
    assert_eq!(code, -libc::ENODEV);
    assert_eq!(
        c.call("bdev_aio_delete", Some(json!({"name": "aio_a"}))).unwrap(),
        json!(true)
    );
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn get_bdevs_timeout_waits_for_the_bdev() {
    let srv = TestServer::start("timeout");
    let mut c = srv.client();
    let path = srv.path.clone();
    let creator = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let mut c2 = engine::rpc::client::Client::connect(&path).unwrap();
        c2.call(
            "bdev_null_create",
            Some(json!({"name": "t_late", "num_blocks": 8, "block_size": 512})),
        )
        .unwrap();
    });
    let got = c
        .call("bdev_get_bdevs", Some(json!({"name": "t_late", "timeout": 10_000})))
        .unwrap();
    assert_eq!(got[0]["name"], json!("t_late"));
    creator.join().unwrap();
    // A bdev that never appears: -19 after the timeout.
    let (code, _) = call_err(
        &mut c,
        "bdev_get_bdevs",
        Some(json!({"name": "t_never", "timeout": 50})),
    );
    assert_eq!(code, -19);
    c.call("bdev_null_delete", Some(json!({"name": "t_late"}))).unwrap();
}

#[test]
fn iostat() {
    let srv = TestServer::start("iostat");
    let mut c = srv.client();
    for n in ["s_a", "s_b"] {
        c.call(
            "bdev_null_create",
            Some(json!({"name": n, "num_blocks": 8, "block_size": 512})),
        )
        .unwrap();
    }
    let all = c.call("bdev_get_iostat", None).unwrap();
    assert_eq!(all["tick_rate"], json!(1_000_000_000u64));
    assert!(all["ticks"].as_u64().unwrap() > 0);
    let names = names_with_prefix(&all["bdevs"], "s_");
    assert_eq!(names, vec!["s_a", "s_b"]);
    let one = c.call("bdev_get_iostat", Some(json!({"name": "s_b"}))).unwrap();
    assert_eq!(one["bdevs"].as_array().unwrap().len(), 1);
    assert_eq!(one["bdevs"][0]["num_read_ops"], json!(0));
    let two = c
        .call(
            "bdev_get_iostat",
            Some(json!({"names": ["s_a", "s_b"], "per_channel": false})),
        )
        .unwrap();
    assert_eq!(two["bdevs"].as_array().unwrap().len(), 2);
    let (code, msg) = call_err(&mut c, "bdev_get_iostat", Some(json!({"names": ["s_a", "s_zz"]})));
    assert_eq!(code, -19);
    assert!(msg.contains("s_zz"));
    let (code, msg) = call_err(
        &mut c,
        "bdev_get_iostat",
        Some(json!({"name": "s_a", "per_channel": true})),
    );
    assert_eq!(code, -libc::EOPNOTSUPP);
    assert!(msg.contains("per_channel"), "{msg}");
    for n in ["s_a", "s_b"] {
        c.call("bdev_null_delete", Some(json!({ "name": n }))).unwrap();
    }
}

#[test]
fn get_bdevs_with_1000_bdevs() {
    let srv = TestServer::start("thousand");
    let mut c = srv.client();
    for i in 0..1000 {
        c.call(
            "bdev_null_create",
            Some(json!({"name": format!("k_{i:04}"), "num_blocks": 8, "block_size": 512})),
        )
        .unwrap();
    }
    let all = c.call("bdev_get_bdevs", None).unwrap();
    let names = names_with_prefix(&all, "k_");
    assert_eq!(names.len(), 1000);
    assert_eq!(names[999], "k_0999");
    for i in 0..1000 {
        c.call("bdev_null_delete", Some(json!({"name": format!("k_{i:04}")})))
            .unwrap();
    }
}
