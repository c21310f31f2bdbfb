//! End-to-end: `baton demo --scenario initial-sync|switchover|failback` (docs/demo.md,
//! "Scenarios"), each with its real processes on loopback and short settings. Each report
//! must say `verified: true`; the facts behind it are checked here again by counting (blocks,
//! bytes, restart points, state changes), never by time.

mod support;

use std::process::Stdio;

use serde_json::{json, Value};
use support::*;

/// Runs `baton demo --scenario S --json` with a small ledger; its report.
fn run_scenario(scenario: &str, extra: &[&str]) -> Value {
    let out = baton()
        .args(["demo", "--scenario", scenario, "--json"])
        .args(["--timeout-ms", "500", "--image-mib", "4", "--accounts", "512"])
        .args(["--group", "16", "--seed", "7"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("demo {scenario}: no JSON report ({e}):\n{stdout}\n{stderr}"));
    assert!(
        out.status.success(),
        "demo {scenario} failed: {}\n{stderr}",
        report["problems"]
    );
    assert_eq!(report["scenario"], scenario, "{report}");
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(report["problems"], json!([]), "{report}");
    report
}

#[test]
fn demo_initial_sync_makes_the_standby_the_primarys_image() {
    let r = run_scenario("initial-sync", &[]);
    let vol = r["volume_bytes"].as_u64().unwrap();
    assert_eq!(r["blocks_differing"], 0, "{r}");
    // The data written before replication reached the standby (the ledger overwrote only
    // its header and balance blocks).
    assert!(
        r["blocks_from_before_replication"].as_u64().unwrap() >= vol / 4096 - 16,
        "{r}"
    );
    let sync = &r["sync"];
    assert_eq!(sync["bytes_total"], vol, "{r}");
    assert!(sync["bytes_sent"].as_u64().unwrap() > 0, "{r}");
    assert!(sync["progress_samples"].as_u64().unwrap() >= 1, "{r}");
    let seen: Vec<&str> = sync["failover_target_seen"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let nv = seen.iter().position(|t| *t == "not_valid").expect("not_valid seen");
    assert_eq!(seen.last(), Some(&"valid"), "{r}");
    assert!(nv < seen.len() - 1, "{r}");
    // The point that made the standby valid was the ledger's own, after the sync.
    assert!(r["ledger"]["restart_points"].as_u64().unwrap() >= 1, "{r}");
}

#[test]
fn demo_switchover_restores_the_ledger_at_its_last_group() {
    let r = run_scenario("switchover", &["--groups", "4"]);
    assert_eq!(r["last_restart_point_at_primary"], 4, "{r}");
    assert_eq!(r["restored_restart_point"], 4, "{r}");
    assert_eq!(r["restored_transfers"], r["transfers_at_primary"], "{r}");
    let v = &r["switchover"]["volumes"][0];
    assert_eq!(
        v["final_point_reused"], true,
        "the ledger quiesced at its own point: {r}"
    );
    assert_eq!(v["promoted_epoch"], v["final_epoch"], "{r}");
    assert_eq!(r["switchover"]["no_acknowledged_write_lost"], true, "{r}");
    assert!(r["downtime_ms"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn demo_failback_moves_only_the_blocks_that_differ() {
    let r = run_scenario("failback", &["--run-secs", "1", "--kill-at", "writes"]);
    assert_eq!(r["restored_verified"], true, "{r}");
    assert!(
        r["restored_restart_point"].as_u64() >= r["last_restart_point_at_primary"].as_u64(),
        "{r}"
    );
    assert_eq!(r["blocks_differing"], 0, "{r}");
    assert_eq!(r["old_site_standby"]["failover_target"], "valid", "{r}");
    // The ledger rewrote its blocks after the promotion: something moved, a tiny share.
    let moved = r["bytes_moved"].as_u64().unwrap();
    assert!(moved > 0, "{r}");
    assert!(moved * 20 < r["volume_bytes"].as_u64().unwrap(), "{r}");
    assert_eq!(r["sync"]["bytes_sent"], moved, "{r}");
}
