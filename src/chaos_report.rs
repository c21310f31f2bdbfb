//! The reports of `baton chaos`: one line per round from its JSON, and the bits of the
//! standby host's failover status worth showing.

use serde_json::{json, Value};

use crate::chaos_writer::{Moment, Progress};

pub fn moment_name(m: Moment) -> String {
    match m {
        Moment::Writes(n) => format!("writes (after write {n} of the round)"),
        Moment::Point(n) => format!("point (a restart point in flight, after {n}+ writes)"),
        Moment::AfterPoint(n) => format!("after-point (a restart point just acknowledged, after {n}+ writes)"),
    }
}

pub fn progress_json(p: &Progress) -> Value {
    json!({"writes_acked": p.acked, "writes_failed": p.failed, "rp_submitted": p.rp_submitted,
           "rp_acked": p.rp_acked, "epoch_acked": p.last_epoch})
}

/// Text of a hex string (lossy; not hex: as is).
pub fn hex_text(h: &str) -> String {
    let bytes: Option<Vec<u8>> = (0..h.len() / 2)
        .map(|i| h.get(2 * i..2 * i + 2).and_then(|x| u8::from_str_radix(x, 16).ok()))
        .collect();
    match bytes {
        Some(b) if h.len().is_multiple_of(2) => String::from_utf8_lossy(&b).into_owned(),
        _ => h.to_string(),
    }
}

/// Every field of the failover report whose name mentions draining (the figures of the
/// drain of the relays before the rollback, when the standby host reports them).
pub fn drain_fields(v: &Value) -> Value {
    fn walk(v: &Value, path: &str, out: &mut serde_json::Map<String, Value>) {
        if let Value::Object(m) = v {
            for (k, x) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if k.contains("drain") {
                    out.insert(p, x.clone());
                } else {
                    walk(x, &p, out);
                }
            }
        } else if let Value::Array(a) = v {
            for (i, x) in a.iter().enumerate() {
                walk(x, &format!("{path}[{i}]"), out);
            }
        }
    }
    let mut out = serde_json::Map::new();
    walk(v, "", &mut out);
    Value::Object(out)
}

/// One line for a round's report.
pub fn round_line(r: &Value) -> String {
    let mut s = format!(
        "round {}/{} (cluster {}): {} killed at {}",
        r["round"],
        r["rounds"],
        r["cluster"],
        r["role"].as_str().unwrap_or("?"),
        r["moment"].as_str().unwrap_or("-")
    );
    let at = &r["at_kill"];
    if at.is_object() {
        s += &format!(
            " [{} writes acked, rp {} acked (epoch {}), rp {} submitted]",
            at["writes_acked"], at["rp_acked"], at["epoch_acked"], at["rp_submitted"]
        );
    }
    if r["caught_up"].is_object() {
        let c = &r["caught_up"];
        s += &format!(
            "; restarted after {} more writes; caught up: rp {} (epoch {}) applied at the standby, relays hold LSN {}",
            r["restarted_after_writes"], c["rp"], c["epoch"], c["primary_completed_lsn"]
        );
    }
    if r["promoted_epoch"].is_u64() {
        let lag = &r["lag_at_kill"];
        if lag.is_object() {
            s += &format!(
                "; at the kill the standby had applied epoch {} and was {} LSN / {} bytes behind relay 1",
                lag["standby_applied_epoch"], lag["relay1_forward_lag_lsn"], lag["relay1_forward_lag_bytes"]
            );
        }
        s += &format!(
            "; last acknowledged rp {} (epoch {}), promoted rp {} (epoch {}); {} of {} blocks mismatched; detection {} ms",
            r["last_acked_rp"], r["last_acked_epoch"], r["promoted_rp"], r["promoted_epoch"],
            r["blocks_mismatched"], r["blocks_checked"], r["detection_ms"]
        );
        let d = &r["drain"]["drain"][0];
        if d.is_object() {
            s += &format!(
                "; drain: {}/{} relays drained in {} us, LSN {} -> {} ({} bytes), {} restart points gained{}",
                d["relays_drained"],
                d["relays"],
                d["elapsed_us"],
                d["lsn_start"],
                d["lsn_reached"],
                d["bytes_drained"],
                d["restart_points_gained"],
                if d["timed_out"] == true { " (TIMED OUT)" } else { "" }
            );
        }
    }
    let problems = r["problems"].as_array().cloned().unwrap_or_default();
    if problems.is_empty() {
        s += ": ok";
    } else {
        for p in problems {
            s += &format!("\n  PROBLEM: {}", p.as_str().unwrap_or(""));
        }
    }
    s
}
