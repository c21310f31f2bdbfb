//! The JSON-RPC server over real sockets: framing (pipelined, split, batches),
//! protocol errors, misbehaving clients, concurrency, and the framework methods.

mod rpc_support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engine::rpc::client::{Client, ClientError};
use engine::rpc::registry::{RpcState, StateMask};
use engine::rpc::server::{Server, ServerError, CONNECTIONS_MAX};
use rpc_support::{call_err, engine_registry, socket_path, TestServer};
use serde_json::{json, Value};

fn read_values(stream: &mut UnixStream, want: usize) -> Vec<Value> {
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let vals: Vec<Value> = serde_json::Deserializer::from_slice(&buf)
            .into_iter::<Value>()
            .take_while(|v| v.is_ok())
            .map(|v| v.unwrap())
            .collect();
        if vals.len() >= want {
            return vals;
        }
        let n = stream.read(&mut chunk).expect("read");
        if n == 0 {
            return vals;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn spdk_get_version_and_params_errors() {
    let srv = TestServer::start("version");
    let mut c = srv.client();
    let v = c.call("spdk_get_version", None).unwrap();
    assert!(v["version"].as_str().unwrap().starts_with("baton v"));
    assert!(v["fields"]["major"].is_u64());
    // Empty params are the same as none (rpc.py never sends them, others do).
    c.call("spdk_get_version", Some(json!({}))).unwrap();
    let (code, msg) = call_err(&mut c, "spdk_get_version", Some(json!({"x": 1})));
    assert_eq!(code, -32602, "{msg}");
}

#[test]
fn rpc_get_methods_lists_current_and_aliases() {
    let mut reg = engine_registry();
    reg.register("startup_only", "test", |_: ()| Ok(true))
        .states(StateMask::STARTUP);
    reg.register_alias("get_rpc_methods", "rpc_get_methods");
    let srv = TestServer::start_with("methods", reg, false);
    let mut c = srv.client();
    let all: Vec<String> = serde_json::from_value(c.call("rpc_get_methods", None).unwrap()).unwrap();
    for m in [
        "spdk_get_version",
        "rpc_get_methods",
        "framework_get_reactors",
        "framework_wait_init",
        "thread_get_stats",
        "bdev_get_bdevs",
        "bdev_get_iostat",
        "bdev_malloc_create",
        "bdev_malloc_delete",
        "bdev_null_create",
        "bdev_null_delete",
        "bdev_uring_create",
        "bdev_uring_delete",
        "save_config",
        "spdk_kill_instance",
        "startup_only",
    ] {
        assert!(all.iter().any(|x| x == m), "{m} missing from {all:?}");
    }
    assert!(!all.iter().any(|x| x == "get_rpc_methods"));
    let current: Vec<String> =
        serde_json::from_value(c.call("rpc_get_methods", Some(json!({"current": true}))).unwrap()).unwrap();
    assert!(!current.iter().any(|x| x == "startup_only"));
    assert!(current.iter().any(|x| x == "bdev_get_bdevs"));
    let with_alias: Vec<String> = serde_json::from_value(
        c.call("rpc_get_methods", Some(json!({"include_aliases": true})))
            .unwrap(),
    )
    .unwrap();
    assert!(with_alias.iter().any(|x| x == "get_rpc_methods"));
    // The alias works.
    c.call("get_rpc_methods", None).unwrap();
    let (code, msg) = call_err(&mut c, "rpc_get_methods", Some(json!({"current": "yes"})));
    assert_eq!(code, -32602);
    assert!(msg.contains("current") && msg.contains("\"yes\""), "{msg}");
    let (code, _) = call_err(&mut c, "startup_only", None);
    assert_eq!(code, -1);
}

#[test]
fn unknown_method_and_invalid_request() {
    let srv = TestServer::start("unknown");
    let mut c = srv.client();
    let (code, msg) = call_err(&mut c, "bdev_frobnicate", None);
    assert_eq!(code, -32601);
    assert!(msg.contains("bdev_frobnicate"), "{msg}");

    let mut s = UnixStream::connect(&srv.path).unwrap();
    s.write_all(br#"{"jsonrpc":"1.0","method":"spdk_get_version","id":5}{"method":7,"id":6}{"id":7,"method":"spdk_get_version","params":"x"}"#)
        .unwrap();
    let v = read_values(&mut s, 3);
    assert_eq!(v.len(), 3);
    for (resp, id) in v.iter().zip([5, 6, 7]) {
        assert_eq!(resp["error"]["code"], json!(-32600), "{resp}");
        assert_eq!(resp["id"], json!(id));
    }
    assert!(v[0]["error"]["message"].as_str().unwrap().contains("jsonrpc"));
    assert!(v[2]["error"]["message"].as_str().unwrap().contains("params"));
    // The connection is still usable after invalid requests.
    s.write_all(br#"{"jsonrpc":"2.0","method":"spdk_get_version","id":8}"#)
        .unwrap();
    let v = read_values(&mut s, 1);
    assert_eq!(v[0]["id"], json!(8));
    assert!(v[0]["result"].is_object());
}

#[test]
fn pipelined_requests_answered_in_order() {
    let srv = TestServer::start("pipeline");
    let mut s = UnixStream::connect(&srv.path).unwrap();
    let mut reqs = Vec::new();
    for id in 0..200 {
        // rpc.py's framing: indented JSON, requests joined by newlines.
        let r = json!({"jsonrpc":"2.0","method":"spdk_get_version","id":id});
        reqs.extend_from_slice(serde_json::to_string_pretty(&r).unwrap().as_bytes());
        reqs.push(b'\n');
    }
    s.write_all(&reqs).unwrap();
    let v = read_values(&mut s, 200);
    assert_eq!(v.len(), 200);
    for (i, r) in v.iter().enumerate() {
        assert_eq!(r["id"], json!(i));
        assert_eq!(r["jsonrpc"], json!("2.0"));
    }

    // Same through the client library: send several, then read.
    let mut c = srv.client();
    let ids: Vec<u64> = (0..10).map(|_| c.send("rpc_get_methods", None).unwrap()).collect();
    for id in ids {
        let r = c.recv().unwrap();
        assert_eq!(r["id"], json!(id));
    }
}

#[test]
fn request_split_byte_by_byte() {
    let srv = TestServer::start("split");
    let mut s = UnixStream::connect(&srv.path).unwrap();
    let req = br#"{"jsonrpc": "2.0", "method": "bdev_get_bdevs", "params": {"name": "no\"such}"}, "id": "a{b"}"#;
    for (i, b) in req.iter().enumerate() {
        s.write_all(std::slice::from_ref(b)).unwrap();
        if i % 8 == 0 {
            // Give the server time to read the partial request.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let v = read_values(&mut s, 1);
    assert_eq!(v[0]["id"], json!("a{b"));
    assert_eq!(v[0]["error"]["code"], json!(-19));
}

#[test]
fn batch_requests() {
    let srv = TestServer::start("batch");
    let mut s = UnixStream::connect(&srv.path).unwrap();
    s.write_all(
        br#"[{"jsonrpc":"2.0","method":"spdk_get_version","id":1},
             {"jsonrpc":"2.0","method":"spdk_get_version"},
             {"jsonrpc":"2.0","method":"nope","id":2}, 5]"#,
    )
    .unwrap();
    let v = read_values(&mut s, 1);
    let arr = v[0].as_array().expect("batch answer is an array");
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[0]["id"], json!(1));
    assert!(arr[0]["result"].is_object());
    assert_eq!(arr[1]["error"]["code"], json!(-32601));
    assert_eq!(arr[2]["error"]["code"], json!(-32600));
}

#[test]
fn garbage_gets_parse_error_and_close_others_unaffected() {
    let srv = TestServer::start("garbage");
    let mut good = srv.client();
    let mut bad = UnixStream::connect(&srv.path).unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let v = read_values(&mut bad, 2);
    assert_eq!(v.len(), 1, "one parse error, then EOF: {v:?}");
    assert_eq!(v[0]["error"]["code"], json!(-32700));
    assert_eq!(v[0]["id"], Value::Null);
    // Invalid JSON inside a well-framed object closes too.
    let mut bad2 = UnixStream::connect(&srv.path).unwrap();
    bad2.write_all(b"{\"method\": nope}").unwrap();
    let v = read_values(&mut bad2, 2);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["error"]["code"], json!(-32700));

    // A client that disconnects in the middle of a request.
    let mut half = UnixStream::connect(&srv.path).unwrap();
    half.write_all(br#"{"jsonrpc":"2.0","method":"spdk_get_ver"#).unwrap();
    drop(half);
    // One that sends a request and leaves without reading the answer.
    let mut rude = UnixStream::connect(&srv.path).unwrap();
    rude.write_all(br#"{"jsonrpc":"2.0","method":"rpc_get_methods","id":1}"#)
        .unwrap();
    drop(rude);

    for _ in 0..50 {
        good.call("spdk_get_version", None).unwrap();
    }
    drop(good);
    drop(bad);
    drop(bad2);
    // Wait until the server has noticed every close, then check its counters.
    let mut probe = srv.client();
    probe.call("spdk_get_version", None).unwrap();
    drop(probe);
    // The server notices a close on its next poll (every 50 µs when idle).
    std::thread::sleep(Duration::from_millis(300));
    let stats = srv.stop();
    assert_eq!(stats.connections_accepted, 6);
    assert_eq!(stats.connections_closed, 6, "{stats:?}");
}

#[test]
fn concurrent_clients() {
    let srv = TestServer::start("concurrent");
    let path = srv.path.clone();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&path).unwrap();
                for i in 0..200 {
                    if i % 2 == 0 {
                        c.call("spdk_get_version", None).unwrap();
                    } else {
                        let (code, _) = call_err(
                            &mut c,
                            "bdev_get_bdevs",
                            Some(json!({"name": format!("absent-{t}-{i}")})),
                        );
                        assert_eq!(code, -19);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = srv.stop();
    assert_eq!(stats.requests, 8 * 200);
}

#[test]
fn connections_beyond_the_limit_are_refused_not_served() {
    let srv = TestServer::start("limit");
    let mut held: Vec<Client> = (0..CONNECTIONS_MAX).map(|_| srv.client()).collect();
    // Make sure every one is accepted before the extra one arrives.
    for c in held.iter_mut() {
        c.call("spdk_get_version", None).unwrap();
    }
    let mut extra = srv.client();
    match extra.call("spdk_get_version", None) {
        Err(ClientError::Closed { .. }) | Err(ClientError::Io(_)) => {}
        other => panic!("expected the extra connection closed, got {other:?}"),
    }
    held.pop();
    std::thread::sleep(Duration::from_millis(50));
    let mut again = srv.client();
    again.call("spdk_get_version", None).unwrap();
    let stats = srv.stop();
    assert_eq!(stats.connections_refused, 1);
}

#[test]
fn tcp_loopback_listener() {
    let srv = TestServer::start_with("tcp", engine_registry(), true);
    let addr = srv.tcp.unwrap();
    let mut c = Client::connect(std::path::Path::new(&addr.to_string())).unwrap();
    c.call("spdk_get_version", None).unwrap();
    let mut s = Server::new(engine_registry());
    match s.listen_tcp("0.0.0.0:0".parse().unwrap()) {
        Err(ServerError::NotLoopback { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn socket_in_use_and_stale_socket() {
    let path = socket_path("inuse");
    let mut a = Server::new(engine_registry());
    a.listen_unix(&path).unwrap();
    let mut b = Server::new(engine_registry());
    assert!(matches!(b.listen_unix(&path), Err(ServerError::SocketInUse { .. })));
    drop(a);
    assert!(!path.exists(), "socket file removed on drop");
    // A stale socket file (no server behind it) is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    assert!(path.exists());
    b.listen_unix(&path).unwrap();
    let file = socket_path("notasocket");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        Server::new(engine_registry()).listen_unix(&file),
        Err(ServerError::NotASocket { .. })
    ));
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn spdk_kill_instance_signals_through_the_handler() {
    let got = Arc::new(AtomicI32::new(0));
    let mut reg = engine_registry();
    let g = got.clone();
    reg.set_kill_handler(move |sig| g.store(sig, Ordering::Relaxed));
    let srv = TestServer::start_with("kill", reg, false);
    let mut c = srv.client();
    assert_eq!(
        c.call("spdk_kill_instance", Some(json!({"sig_name": "SIGTERM"})))
            .unwrap(),
        json!(true)
    );
    assert_eq!(got.load(Ordering::Relaxed), libc::SIGTERM);
    let (code, msg) = call_err(&mut c, "spdk_kill_instance", Some(json!({"sig_name": "SIGFOO"})));
    assert_eq!(code, -32602);
    assert!(msg.contains("sig_name") && msg.contains("SIGFOO"), "{msg}");
    let (code, msg) = call_err(&mut c, "spdk_kill_instance", None);
    assert_eq!(code, -32602);
    assert!(msg.contains("missing field `sig_name`"), "{msg}");
}

#[test]
fn framework_wait_init_waits_for_runtime() {
    let reg = engine_registry();
    let state = reg.state().clone();
    state.set(RpcState::Startup);
    let srv = TestServer::start_with("waitinit", reg, false);
    let mut c = srv.client();
    let id = c.send("framework_wait_init", None).unwrap();
    // Other connections are served while it waits.
    let mut other = srv.client();
    other.call("spdk_get_version", None).unwrap();
    let answered = Arc::new(AtomicU8::new(0));
    let a = answered.clone();
    let waiter = std::thread::spawn(move || {
        let r = c.recv().unwrap();
        a.store(1, Ordering::SeqCst);
        r
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(answered.load(Ordering::SeqCst), 0, "answered before init completed");
    state.set(RpcState::Runtime);
    let r = waiter.join().unwrap();
    assert_eq!(r["id"], json!(id));
    assert_eq!(r["result"], json!(true));
    // Once running it answers at once.
    assert_eq!(other.call("framework_wait_init", None).unwrap(), json!(true));
}

#[test]
fn save_config_and_subsystem_methods() {
    let mut reg = engine_registry();
    reg.register_config_provider("relay", &["bdev"], || {
        vec![engine::rpc::ConfigEntry {
            method: "relay_dummy".into(),
            params: Some(json!({"a": 1})),
        }]
    });
    let srv = TestServer::start_with("saveconfig", reg, false);
    let mut c = srv.client();
    let subs = c.call("framework_get_subsystems", None).unwrap();
    assert_eq!(
        subs,
        json!([{"subsystem":"bdev","depends_on":[]},{"subsystem":"relay","depends_on":["bdev"]}])
    );
    let cfg = c.call("save_config", None).unwrap();
    let subsystems = cfg["subsystems"].as_array().unwrap();
    assert_eq!(subsystems.len(), 2);
    assert_eq!(
        subsystems[1],
        json!({"subsystem":"relay","config":[{"method":"relay_dummy","params":{"a":1}}]})
    );
    assert_eq!(
        c.call("framework_get_config", Some(json!({"name": "relay"}))).unwrap(),
        json!([{"method":"relay_dummy","params":{"a":1}}])
    );
    let (code, msg) = call_err(&mut c, "framework_get_config", Some(json!({"name": "nvmf"})));
    assert_eq!(code, -32602);
    assert!(msg.contains("nvmf"));
}

#[test]
fn large_responses_are_delivered_whole() {
    // 1000 bdevs' worth of response through a client that reads slowly.
    let mut reg = engine_registry();
    reg.register("big", "A large result", |(n,): (usize,)| {
        Ok((0..n)
            .map(|i| format!("item-{i:08}-{}", "x".repeat(500)))
            .collect::<Vec<_>>())
    });
    let srv = TestServer::start_with("large", reg, false);
    let mut c = srv.client();
    let v = c.call("big", Some(json!([20_000]))).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 20_000);
    assert!(arr[19_999].as_str().unwrap().starts_with("item-00019999-"));
}

/// The socket is the owner's only, whatever the umask (bound under a temporary name and
/// renamed once its mode is set); a group mode is honoured; a mode that lets others in,
/// or leaves the owner out, is refused before anything is created.
#[test]
fn socket_mode_is_owner_only_whatever_the_umask() {
    use engine::rpc::server::SocketAccess;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: umask only changes the process's file-creation mask; restored below.
    let old = unsafe { libc::umask(0) };
    let path = socket_path("mode");
    let mut s = Server::new(engine_registry());
    s.listen_unix(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "umask 000 must not open it up"
    );
    drop(s);
    assert!(!path.exists(), "removed on drop");

    let gid = meta.gid();
    let mut s = Server::new(engine_registry());
    s.listen_unix_with(
        &path,
        SocketAccess {
            mode: 0o660,
            gid: Some(gid),
        },
    )
    .unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary socket left behind");
    drop(s);
    // SAFETY: as above.
    unsafe { libc::umask(old) };

    for mode in [0o666, 0o604, 0o400, 0o4600, 0o1600] {
        let mut s = Server::new(engine_registry());
        let e = s.listen_unix_with(&path, SocketAccess { mode, gid: None }).unwrap_err();
        assert!(matches!(e, ServerError::BadMode { .. }), "{mode:o}: {e}");
        assert!(!path.exists(), "{mode:o}: nothing created");
    }
}
