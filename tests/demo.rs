//! End-to-end: `baton demo` (primary, two relays, standby, the ledger; kill,
//! failover, restart from the execution image) in both standby modes with the
//! kill before, during and right after a restart point; and the ordering that
//! makes every restart point usable: the ledger never declares a restart point
//! whose execution image the standby host has not saved.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

fn run_demo(mode: &str, kill_at: &str, seed: u64) -> Value {
    let out = baton()
        .args(["demo", "--mode", mode, "--kill-at", kill_at, "--json"])
        .args(["--run-secs", "1", "--timeout-ms", "500", "--image-mib", "4"])
        .args(["--accounts", "512", "--group", "16", "--seed", &seed.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("demo {mode} {kill_at}: no JSON report ({e}):\n{stdout}\n{stderr}"));
    assert!(
        out.status.success(),
        "demo {mode} {kill_at} failed: {}\n{stderr}",
        report["problems"]
    );
    report
}

/// The report's own verdicts, and the facts behind them checked here again.
fn check(r: &Value, mode: &str, kill_at: &str) {
    let ctx = format!("{mode} {kill_at}: {r}");
    assert_eq!(r["mode"], mode, "{ctx}");
    assert_eq!(r["verified"], true, "{ctx}");
    assert_eq!(r["problems"], serde_json::json!([]), "{ctx}");
    let last = r["last_restart_point_at_primary"].as_u64().unwrap();
    let restored = r["restored_restart_point"].as_u64().unwrap();
    // Nothing the primary saw complete is lost; a point in flight may or may not survive.
    assert!(restored >= last, "{ctx}");
    assert!(restored <= last + 1, "{ctx}");
    assert_eq!(r["rpo_restart_points_lost"], 0, "{ctx}");
    assert!(
        r["restart_points_completed"].as_u64().unwrap() >= 2,
        "ran too briefly: {ctx}"
    );
    // The standby volume was promoted at exactly the restored restart point.
    let rto = r["rto_ms"].as_u64().unwrap();
    let detection = r["detection_ms"].as_u64().unwrap();
    assert!(rto > 0 && detection > 0 && detection <= rto, "{ctx}");
    let share = r["image_share_sent_per_point"].as_f64().unwrap();
    assert!(share > 0.0 && share < 0.5, "image deltas should be small: {ctx}");
    let host = &r["standby_host"]["failover"];
    assert_eq!(host["state"], "done", "{ctx}");
}

#[test]
fn demo_delayed_mode_fails_over_at_every_kill_point() {
    for (i, k) in ["writes", "point", "after-point"].into_iter().enumerate() {
        let r = run_demo("delayed", k, 11 + i as u64);
        check(&r, "delayed", k);
        if k == "writes" {
            // Killed between a group's writes and its restart point: those transfers
            // are rolled back at the standby, never half-applied.
            assert!(r["transfers_rolled_back"].as_u64().unwrap() > 0, "{r}");
        }
    }
}

#[test]
fn demo_snapshot_mode_fails_over_at_every_kill_point() {
    for (i, k) in ["writes", "point", "after-point", "random"].into_iter().enumerate() {
        let r = run_demo("snapshot", k, 21 + i as u64);
        check(&r, "snapshot", k);
    }
}

// --- restart points and their images ---

/// The primary's restart-point count as the replicated volume reports it: its
/// status is a snapshot the link reactor republishes every 10 ms, so let a few
/// refreshes pass first.
fn epoch(primary: &Path) -> u64 {
    std::thread::sleep(Duration::from_millis(100));
    let v = rpc(primary, "replication_get_volumes", Some(json!({"name": "Vol0"}))).unwrap();
    let e = &v[0]["epoch"];
    e.as_u64().unwrap_or_else(|| panic!("no epoch in {v}"))
}

fn ledger(dir: &Path, port: u16, images: SocketAddr, groups: u64) -> std::process::Output {
    baton()
        .args(["ledger", "--traddr", "127.0.0.1", "--trsvcid", &port.to_string()])
        .args([
            "--subnqn",
            "nqn.2016-06.io.baton:imgtest",
            "--accounts",
            "64",
            "--group",
            "8",
        ])
        .args(["--image-mib", "1", "--groups", &groups.to_string()])
        .arg("--image-server")
        .arg(images.to_string())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A relay, and a primary target (`primary.sock` in `dir`) whose replicated volume `Vol0`
/// (16 MiB of RAM, replicated to the relay) is exported over NVMe/TCP on port `tp`.
fn start_primary(dir: &Path, tp: u16) -> (Proc, Proc) {
    let rp = free_port();
    let relay = Proc::spawn(
        baton()
            .args(["relay", "--listen", &format!("127.0.0.1:{rp}"), "-r"])
            .arg(dir.join("relay.sock"))
            .arg("--journal-dir")
            .arg(dir.join("journal")),
        &dir.join("relay.log"),
    );
    wait_rpc(&dir.join("relay.sock"));
    let ps = dir.join("primary.sock");
    let primary = Proc::spawn(
        baton()
            .args(["target", "-r"])
            .arg(&ps)
            .args(["--bdev", "Base0=malloc,size=16M,bs=4096"]),
        &dir.join("primary.log"),
    );
    wait_rpc(&ps);
    let nqn = "nqn.2016-06.io.baton:imgtest";
    for (method, params) in [
        (
            "replication_create_volume",
            json!({"name": "Vol0", "base_bdev": "Base0", "relays": [format!("127.0.0.1:{rp}")]}),
        ),
        ("nvmf_create_transport", json!({"trtype": "TCP"})),
        ("nvmf_create_subsystem", json!({"nqn": nqn, "allow_any_host": true})),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn": nqn, "namespace": {"bdev_name": "Vol0"}}),
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
                   "trsvcid": tp.to_string()}}),
        ),
    ] {
        rpc(&ps, method, Some(params)).unwrap_or_else(|e| panic!("{method}: {e}"));
    }
    (relay, primary)
}

#[test]
fn a_restart_point_is_never_declared_before_its_image_is_saved() {
    let tmp = temp_dir("imgorder");
    let dir = &tmp.0;
    let (tp, ip, sp) = (free_port(), free_port(), free_port());
    let (_relay, _primary) = start_primary(dir, tp);
    let ps = dir.join("primary.sock");
    assert_eq!(epoch(&ps), 0);

    // 1. An image server that accepts and hangs up (a standby host that cannot save):
    //    the ledger fails at its first restart point, and declares none.
    let refusing = TcpListener::bind("127.0.0.1:0").unwrap();
    let refusing_addr = refusing.local_addr().unwrap();
    let hangup = std::thread::spawn(move || {
        for c in refusing.incoming().take(1) {
            drop(c);
        }
    });
    let out = ledger(dir, tp, refusing_addr, 3);
    hangup.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ledger must fail without its images:\n{stderr}");
    assert!(stderr.to_lowercase().contains("image"), "{stderr}");
    assert_eq!(
        epoch(&ps),
        0,
        "a restart point was declared without its image:\n{stderr}"
    );

    // 2. A real image store: point 0 (the formatted ledger) and one per group.
    let images: SocketAddr = format!("127.0.0.1:{ip}").parse().unwrap();
    let mut standby = Proc::spawn(
        baton()
            .args(["standby", "--listen", &format!("127.0.0.1:{sp}"), "-r"])
            .arg(dir.join("standby.sock"))
            .args(["--image-listen", &images.to_string()])
            .arg("--image-dir")
            .arg(dir.join("images")),
        &dir.join("standby.log"),
    );
    wait_until(WAIT, "the image store listens", || {
        std::net::TcpStream::connect(images).is_ok()
    });
    let out = ledger(dir, tp, images, 3);
    assert!(
        out.status.success(),
        "ledger with a working image store:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches("\nPOINT ").count() + stdout.starts_with("POINT ") as usize,
        4,
        "{stdout}"
    );
    wait_for(
        "epoch 4 after 4 points",
        || (epoch(&ps) == 4).then_some(()),
        || format!("epoch {}: {stdout}", epoch(&ps)),
    );
    let after_ok = 4;

    // 3. The store goes away mid-life: the next point is not declared.
    standby.kill9();
    let out = ledger(dir, tp, images, 2);
    assert!(!out.status.success());
    assert_eq!(epoch(&ps), after_ok, "{}", String::from_utf8_lossy(&out.stderr));
}
