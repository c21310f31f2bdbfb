//! Reactor methods against a running reactor set, and (ignored, run by hand with
//! `--release -- --ignored --nocapture`) the RPC latency measurements: idle, and
//! while a reactor drives a null bdev flat out.
//! One test per binary starts reactors: the set is process-wide.

mod rpc_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::bdev::{IoOp, IoRequest};
use engine::buf::DmaBuf;
use engine::metrics::LatencyHistogram;
use engine::reactor::{register_poller, IdleMode, PollStatus, ReactorOpts, Reactors};
use rpc_support::TestServer;
use serde_json::json;

fn start_reactors(cores: Vec<u32>) -> Reactors {
    Reactors::start(ReactorOpts {
        cores,
        pin: false,
        idle: IdleMode::Poll,
    })
    .unwrap()
}

#[test]
fn framework_get_reactors_and_thread_get_stats() {
    let reactors = start_reactors(vec![0]);
    engine::reactor::run_on(0, || {
        register_poller("rpc_test_poller", None, || PollStatus::Idle);
        register_poller("rpc_test_timed", Some(Duration::from_millis(10)), || PollStatus::Idle);
    })
    .unwrap();
    let srv = TestServer::start("reactors");
    let mut c = srv.client();
    let r1 = c.call("framework_get_reactors", None).unwrap();
    assert_eq!(r1["tick_rate"], json!(1_000_000_000u64));
    assert_eq!(r1["pid"], json!(std::process::id()));
    let reactor = &r1["reactors"][0];
    assert_eq!(reactor["lcore"], json!(0));
    assert_eq!(reactor["lw_threads"][0]["name"], json!("reactor_0"));
    let pollers: Vec<&str> = reactor["pollers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(pollers.contains(&"rpc_test_poller"), "{pollers:?}");
    std::thread::sleep(Duration::from_millis(20));
    let r2 = c.call("framework_get_reactors", None).unwrap();
    let total =
        |r: &serde_json::Value| r["reactors"][0]["busy"].as_u64().unwrap() + r["reactors"][0]["idle"].as_u64().unwrap();
    assert!(total(&r2) > total(&r1), "reactor time advances: {r1} {r2}");

    let t = c.call("thread_get_stats", None).unwrap();
    let th = &t["threads"][0];
    assert_eq!(th["name"], json!("reactor_0"));
    assert_eq!(th["cpumask"], json!("1"));
    assert!(th["active_pollers_count"].as_u64().unwrap() >= 1);
    assert!(th["timed_pollers_count"].as_u64().unwrap() >= 1);
    let (code, _) = rpc_support::call_err(&mut c, "thread_get_stats", Some(json!({"x": 1})));
    assert_eq!(code, -32602);
    drop(srv);

    // The management thread the binary runs: serves until the reactors stop,
    // and spdk_kill_instance reaches it through the kill handler.
    let path = rpc_support::socket_path("app");
    let mut reg = rpc_support::engine_registry();
    let stop = reactors.stop_flag();
    reg.set_kill_handler(move |_sig| stop.stop());
    let mut server = engine::rpc::Server::new(reg);
    server.listen_unix(&path).unwrap();
    let app = engine::rpc::server::spawn_app_thread(server, reactors.stop_flag()).unwrap();
    let mut c = engine::rpc::client::Client::connect(&path).unwrap();
    c.call("spdk_get_version", None).unwrap();
    c.call("spdk_kill_instance", Some(json!({"sig_name": "SIGINT"})))
        .unwrap();
    let stats = app.join().unwrap();
    assert_eq!(stats.requests, 2);
    assert!(!path.exists(), "socket removed when the server stops");
    reactors.shutdown();
    reactors.wait();
}

fn rpc_latency(c: &mut engine::rpc::client::Client, method: &str, calls: u32) -> LatencyHistogram {
    let mut h = LatencyHistogram::new();
    for _ in 0..calls {
        let t = Instant::now();
        c.call(method, None).unwrap();
        h.record_ns(t.elapsed().as_nanos() as u64);
    }
    h
}

fn report(label: &str, h: &LatencyHistogram) {
    println!(
        "{label}: {} calls, p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        h.count(),
        h.percentile_us(50.0),
        h.percentile_us(99.0),
        h.max_us()
    );
}

/// Measurement, not a check: prints RPC round-trip percentiles idle and under
/// I/O load, and the I/O rate with and without RPC traffic.
#[test]
#[ignore]
fn measure_rpc_latency() {
    // Idle: the server's poll thread spins (like a management reactor in poll mode).
    {
        let srv = TestServer::start("latency-idle");
        let mut c = srv.client();
        rpc_latency(&mut c, "spdk_get_version", 1_000);
        report(
            "idle spdk_get_version",
            &rpc_latency(&mut c, "spdk_get_version", 10_000),
        );
    }

    // Under load: reactor 0 runs a null bdev at queue depth 32 as fast as it can.
    let reactors = start_reactors(vec![0]);
    let bdev = engine::bdev::null::create("lat_null", 1 << 20, 4096, None).unwrap();
    engine::bdev::register(bdev.clone()).unwrap();
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (ops, stop, bdev) = (ops.clone(), stop.clone(), bdev.clone());
        engine::reactor::run_on(0, move || {
            let mut ch = bdev.open_channel().unwrap();
            let mut bufs: Vec<DmaBuf> = (0..32).map(|_| DmaBuf::alloc(4096)).collect();
            let mut next = 0u64;
            register_poller("lat_io", None, move || {
                if stop.load(Ordering::Relaxed) {
                    return PollStatus::Idle;
                }
                while let Some(buf) = bufs.pop() {
                    next = (next + 1) % (1 << 20);
                    let io = IoRequest {
                        op: IoOp::Read,
                        offset_blocks: next,
                        num_blocks: 1,
                        buf: Some(buf),
                        user_data: 0,
                    };
                    if let Err(io) = ch.submit(io) {
                        bufs.push(io.buf.unwrap());
                        break;
                    }
                }
                let mut done = 0u64;
                ch.poll(&mut |c| {
                    done += 1;
                    bufs.push(c.buf.unwrap());
                });
                ops.fetch_add(done, Ordering::Relaxed);
                if done > 0 {
                    PollStatus::Busy
                } else {
                    PollStatus::Idle
                }
            });
        })
        .unwrap();
    }
    let rate = |d: Duration| {
        let a = ops.load(Ordering::Relaxed);
        std::thread::sleep(d);
        (ops.load(Ordering::Relaxed) - a) as f64 / d.as_secs_f64()
    };
    rate(Duration::from_millis(200));
    let quiet = rate(Duration::from_secs(2));
    let srv = TestServer::start("latency-load");
    let busy = Arc::new(AtomicBool::new(true));
    let path = srv.path.clone();
    let b2 = busy.clone();
    let rpc_thread = std::thread::spawn(move || {
        let mut c = engine::rpc::client::Client::connect(&path).unwrap();
        let mut h = LatencyHistogram::new();
        let mut h2 = LatencyHistogram::new();
        while b2.load(Ordering::Relaxed) {
            let t = Instant::now();
            c.call("bdev_get_iostat", Some(json!({"name": "lat_null"}))).unwrap();
            h.record_ns(t.elapsed().as_nanos() as u64);
            let t = Instant::now();
            c.call("framework_get_reactors", None).unwrap();
            h2.record_ns(t.elapsed().as_nanos() as u64);
        }
        (h, h2)
    });
    let loaded = rate(Duration::from_secs(2));
    busy.store(false, Ordering::Relaxed);
    let (h, h2) = rpc_thread.join().unwrap();
    report("under load bdev_get_iostat", &h);
    report("under load framework_get_reactors", &h2);
    println!(
        "null bdev QD32 4 KiB reads on reactor 0: {:.0} IOPS without RPC traffic, {:.0} IOPS with back-to-back RPCs ({:+.1}%)",
        quiet,
        loaded,
        (loaded - quiet) / quiet * 100.0
    );
    stop.store(true, Ordering::Relaxed);
    drop(srv);
    reactors.shutdown();
    reactors.wait();
    engine::bdev::unregister("lat_null").unwrap();
}
