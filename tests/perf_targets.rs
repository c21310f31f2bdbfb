//! `baton perf` against the targets beside local bdevs: a baton NVMe/TCP target (in this
//! test process, on loopback) through `-r`, and a replicated volume whose relays run in this
//! test process (`--relays`), so what the harness reports is checked against what the far
//! side counted, not against the harness's own figures.

mod support;

use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use relay::relay::{Relay, RelayConfig};
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::baton;

static REACTORS: OnceLock<Reactors> = OnceLock::new();

fn reactors() {
    REACTORS.get_or_init(|| {
        let mut o = ReactorOpts::new(vec![0]);
        o.pin = false;
        o.idle = IdleMode::Adaptive {
            idle_before_sleep_us: 2000,
            sleep_us_max: 200,
        };
        Reactors::start(o).expect("reactors start")
    });
}

/// Runs `baton perf ARGS --json` (bounded: the run itself is `-t` long; a hung harness is
/// killed after 120 s).
fn perf(args: &[&str]) -> (Output, serde_json::Value) {
    let child = baton()
        .arg("perf")
        .args(args)
        .args(["--json", "--adaptive-idle"])
        .env("BATON_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Read the pipes on a thread (a JSON report is larger than a pipe's buffer).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("baton perf {args:?} did not finish in 120 s");
        }
    };
    assert!(
        out.status.success(),
        "baton perf {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("JSON: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out, v)
}

fn nvme_target(
    tag: &str,
) -> (
    std::sync::Arc<nvme::nvmf::Target>,
    String,
    SocketAddr,
    std::sync::Arc<dyn engine::bdev::Bdev>,
) {
    reactors();
    let name = format!("PerfT{}_{tag}", std::process::id());
    let b = engine::bdev::malloc::create(&name, 8192, 4096, None).unwrap();
    engine::bdev::register(b.clone()).unwrap();
    let t = nvme::nvmf::Target::new();
    let nqn = format!("nqn.2016-06.io.baton:perf-{tag}");
    t.create_subsystem(nvme::nvmf::SubsystemParams {
        nqn: nqn.clone(),
        serial_number: None,
        model_number: None,
        allow_any_host: true,
        max_namespaces: None,
        ..Default::default()
    })
    .unwrap();
    t.add_namespace(&nqn, &name, None, None).unwrap();
    let addr = t.add_listener(&nqn, "127.0.0.1:0".parse().unwrap()).unwrap();
    (t, nqn, addr, b)
}

#[test]
fn perf_drives_nvme_tcp_target_with_verify() {
    let (t, nqn, addr, b) = nvme_target("verify");
    let trid = format!(
        "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{} subnqn:{nqn} ns:1",
        addr.port()
    );
    let (_, v) = perf(&[
        "-r", &trid, "-w", "randrw", "--verify", "-q", "16", "-t", "1", "--warmup", "0", "-m", "0x1",
    ]);
    let total = &v["total"];
    let ios = total["ios"].as_u64().unwrap();
    assert!(ios > 0, "{v}");
    assert_eq!(total["errors"], 0, "{v}");
    assert_eq!(total["verify_failures"], 0, "{v}");
    let st = b.io_stats();
    assert_eq!(
        st.num_read_ops + st.num_write_ops,
        ios,
        "the target's bdev counted {st:?}, the harness {ios} I/Os"
    );
    assert_eq!(st.num_read_ops, total["reads"].as_u64().unwrap());
    assert_eq!(st.num_write_ops, total["writes"].as_u64().unwrap());
    assert_eq!(v["target"]["block_size"], 4096);
    assert_eq!(v["target"]["num_blocks"], 8192);

    // Without subnqn and ns: the discovery service picks the subsystem, Identify the
    // namespace. Compared against a local bdev in the same command.
    let before = b.io_stats();
    let trid = format!("trtype:tcp traddr:127.0.0.1 trsvcid:{}", addr.port());
    let (_, v) = perf(&[
        "-r",
        &trid,
        "--compare",
        "malloc,size=32M,bs=4096",
        "-w",
        "randread",
        "-q",
        "4",
        "-t",
        "0.5",
        "--warmup",
        "0",
    ]);
    let runs = v.as_array().expect("two reports");
    assert_eq!(runs.len(), 2);
    let ios = runs[0]["total"]["ios"].as_u64().unwrap();
    assert!(ios > 0 && runs[1]["total"]["ios"].as_u64().unwrap() > 0);
    assert_eq!(b.io_stats().num_read_ops - before.num_read_ops, ios);
    assert_eq!(runs[1]["target"]["driver"], "malloc");
    t.shutdown();
}

/// A new target on `addr` serving `nqn` over the same bdev (its data survives, as a
/// restarted target's would on persistent storage).
fn restart_target(nqn: &str, bdev: &str, addr: SocketAddr) -> std::sync::Arc<nvme::nvmf::Target> {
    let t = nvme::nvmf::Target::new();
    t.create_subsystem(nvme::nvmf::SubsystemParams {
        nqn: nqn.to_string(),
        allow_any_host: true,
        ..Default::default()
    })
    .unwrap();
    t.add_namespace(nqn, bdev, None, None).unwrap();
    let t0 = Instant::now();
    while let Err(e) = t.add_listener(nqn, addr) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "cannot listen on {addr} again: {e}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t
}

#[test]
fn perf_rides_through_a_target_restart_with_reconnect() {
    let (t, nqn, addr, b) = nvme_target("restart");
    let trid = format!(
        "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{} subnqn:{nqn} ns:1",
        addr.port()
    );
    let restarter = {
        let (nqn, bdev, b) = (nqn.clone(), b.name().to_string(), b.clone());
        std::thread::spawn(move || {
            // Once perf has I/O going, take the target down and bring it back.
            let t0 = Instant::now();
            while b.io_stats().num_write_ops < 2000 {
                assert!(t0.elapsed() < Duration::from_secs(60), "perf never started");
                std::thread::sleep(Duration::from_millis(5));
            }
            t.shutdown();
            let t2 = restart_target(&nqn, &bdev, addr);
            // The host reconnects: a live controller appears on the new target.
            let t0 = Instant::now();
            loop {
                let live = t2
                    .subsystem(&nqn)
                    .unwrap()
                    .state()
                    .controllers
                    .iter()
                    .any(|c| c.strong_count() > 0);
                if live {
                    break;
                }
                assert!(t0.elapsed() < Duration::from_secs(60), "the host never reconnected");
                std::thread::sleep(Duration::from_millis(5));
            }
            t2
        })
    };
    let (_, v) = perf(&[
        "-r",
        &trid,
        "-w",
        "randrw",
        "--verify",
        "-q",
        "16",
        "-t",
        "4",
        "--warmup",
        "0",
        "-m",
        "0x1",
        "--ctrlr-loss-timeout-sec",
        "30",
        "--reconnect-delay-sec",
        "1",
    ]);
    let t2 = restarter.join().expect("restart thread");
    let total = &v["total"];
    assert!(total["ios"].as_u64().unwrap() > 2000, "{v}");
    assert_eq!(total["errors"], 0, "{v}");
    assert_eq!(total["verify_failures"], 0, "{v}");
    t2.shutdown();
}

#[test]
fn perf_rejects_bad_transport_ids() {
    for (trid, word) in [
        ("trtype:TCP trsvcid:4420", "traddr"),
        ("trtype:TCP traddr:127.0.0.1 colour:red", "colour"),
        ("trtype:RDMA traddr:127.0.0.1", "RDMA"),
    ] {
        let out = baton().args(["perf", "-r", trid, "-t", "0.1"]).output().unwrap();
        assert!(!out.status.success(), "{trid}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(word), "{trid}: {err}");
    }
}

/// `-r` and `--bdev` name two different targets: refused, not one silently ignored.
#[test]
fn perf_refuses_a_transport_id_and_a_bdev_together() {
    let out = baton()
        .args([
            "perf",
            "-r",
            "trtype:TCP traddr:127.0.0.1 trsvcid:4420",
            "--bdev",
            "null",
            "-t",
            "0.1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--bdev") && err.contains("--transport-id"), "{err}");
}

#[test]
fn perf_replicated_writes_reach_every_relay_journal() {
    reactors();
    let dirs: Vec<std::path::PathBuf> = (0..2)
        .map(|k| {
            let d = std::env::temp_dir().join(format!("baton-perf-test-{}-{k}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            d
        })
        .collect();
    let relays: Vec<_> = dirs
        .iter()
        .map(|d| {
            let mut c = RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), d);
            c.core = Some(0);
            c.direct_io = false;
            Relay::start(c).unwrap()
        })
        .collect();
    let list = relays
        .iter()
        .map(|r| r.listen_addr().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let (_, v) = perf(&[
        "--bdev",
        "malloc,size=32M,bs=4096",
        "--replicate",
        "2",
        "--relays",
        &list,
        "-w",
        "randrw",
        "--verify",
        "-q",
        "8",
        "-t",
        "1",
        "--warmup",
        "0",
    ]);
    let total = &v["total"];
    let writes = total["writes"].as_u64().unwrap();
    assert!(writes > 0, "{v}");
    assert_eq!(total["errors"], 0);
    assert_eq!(total["verify_failures"], 0);
    let vol = v["target"]["replication"]["volume"].as_str().unwrap().to_string();
    // Every write completed only once both relays held it (ack policy all): each journal
    // must hold exactly the writes issued, no more, no less.
    for r in &relays {
        let t0 = Instant::now();
        let appended = loop {
            let st = r.status();
            let a = st
                .volumes
                .iter()
                .find(|x| x.name == vol)
                .map(|x| (x.appended_lsn, x.durable_lsn))
                .unwrap_or((0, 0));
            if a.1 >= writes || t0.elapsed() > Duration::from_secs(10) {
                break a;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            appended,
            (writes, writes),
            "relay {}: {:?}",
            r.listen_addr(),
            r.status()
        );
    }
    for r in &relays {
        r.stop(Duration::from_secs(10)).unwrap();
    }
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `--replicate N` without `--relays`: the harness starts the relays itself (journals
/// under `--journal-dir`), and each of its relays' journals holds exactly the writes
/// issued; `--compare plain` runs the same workload on the bare base.
#[test]
fn perf_replicate_starts_its_own_relays_and_compares_with_plain() {
    let dir = std::env::temp_dir().join(format!("baton-perf-inproc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (_, v) = perf(&[
        "--bdev",
        "malloc,size=32M,bs=4096",
        "--replicate",
        "2",
        "--journal-dir",
        dir.to_str().unwrap(),
        "--compare",
        "plain",
        "-w",
        "randwrite",
        "--verify",
        "-q",
        "4",
        "-t",
        "0.5",
        "--warmup",
        "0",
    ]);
    let reports = v.as_array().unwrap_or_else(|| panic!("two reports expected: {v}"));
    assert_eq!(reports.len(), 2, "{v}");
    let (repl, plain) = (&reports[0], &reports[1]);
    assert!(plain["target"].get("replication").is_none(), "{plain}");
    for r in [repl, plain] {
        assert_eq!(r["total"]["errors"], 0, "{r}");
        assert_eq!(r["total"]["verify_failures"], 0, "{r}");
        assert!(r["total"]["writes"].as_u64().unwrap() > 0, "{r}");
    }
    let writes = repl["total"]["writes"].as_u64().unwrap();
    let rep = &repl["target"]["replication"];
    let relays = rep["in_process_relays"].as_array().unwrap();
    assert_eq!(relays.len(), 2, "{rep}");
    for r in relays {
        let vols = r["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 1, "{r}");
        assert_eq!(vols[0]["durable_lsn"], writes, "{r}");
        assert_eq!(vols[0]["appended_lsn"], writes, "{r}");
    }
    for r in rep["relays"].as_array().unwrap() {
        assert_eq!(r["acked_lsn"], writes, "{rep}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
