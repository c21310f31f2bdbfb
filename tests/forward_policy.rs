//! Each forward policy with a standby connected, real processes on loopback: the primary
//! child (`tests/support`) -> a forwarder `baton relay` and one or two `--backup` relays ->
//! one `baton standby`. What must hold (`docs/replication.md`, "Forward policies and gap
//! fetches"):
//!
//! - `immediate`: everything arrives in Forward frames; the backup link carries only
//!   control frames and no gap request goes anywhere: the WAN carries each byte once.
//! - `interval` (long) and a closed `window`: nothing new is forwarded between openings,
//!   the forwarder reports `holding`, and the standby does not fetch around it (no gap
//!   request, no stall pull) however many relay reports go by; a policy changed by RPC to
//!   `immediate` or to a window containing now lets everything through, still unfetched.
//! - `bandwidth`: the forwarder's delivery takes at least what the rate allows (a lower
//!   bound only: a slow machine only makes it slower).
//! - the forwarder dies: the standby pulls from one backup, not from each of them.
//!
//! Nothing here asserts an upper bound on time; every wait is bounded by `WAIT` (60 s) only
//! as a failure cap. Relay reports (`PrimaryLiveness`, every 100 ms) are counted through
//! the standby host's detector, so the hold tests run the host (`--failover-volume`) with
//! automatic failover off.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdma_transport::wire::{
    BATCH_HDR_BYTES, ENVELOPE_BYTES, HEARTBEAT_BODY_BYTES, HELLO_BODY_BYTES, OP_DESC_BYTES,
    PRIMARY_LIVENESS_BODY_BYTES, RESTART_TAG_BYTES_MAX,
};
use serde_json::{json, Value};
use support::*;

/// The primary's body when this binary runs as the child (ignored otherwise).
#[test]
#[ignore]
fn standby_primary_child() {
    primary_child_main();
}

/// The standby host's flags for the hold tests: the detector counts relay reports; it never
/// fails over on its own.
const HOST: [&str; 5] = [
    "--failover-volume",
    "vold",
    "--primary-timeout-ms",
    "600000",
    "--no-auto-failover",
];

/// A standby, relays (the first is the forwarder) and the primary writing `vold`.
struct Rig {
    sb: StandbyProc,
    relays: Vec<RelayProc>,
    p: Primary,
    m: Model,
    _dirs: Vec<TempDir>,
}

impl Rig {
    /// `relay_args[k]`: the extra arguments of relay `k`.
    fn start(tag: &str, standby_args: &[&str], relay_args: &[&[&str]]) -> Rig {
        let sd = TempDir::new("/dev/shm", &format!("fp-{tag}-s"));
        let sb = StandbyProc::start_with(&sd.0, free_port(), standby_args);
        let mut dirs = vec![sd];
        let mut relays = Vec::new();
        for (k, args) in relay_args.iter().enumerate() {
            let d = TempDir::new("/dev/shm", &format!("fp-{tag}-r{k}"));
            relays.push(RelayProc::for_standby(&d.0, free_port(), sb.addr(), args));
            dirs.push(d);
        }
        let addrs: Vec<String> = relays.iter().map(RelayProc::addr).collect();
        let p = Primary::start(&addrs);
        Rig {
            sb,
            relays,
            p,
            m: Model::new("vold"),
            _dirs: dirs,
        }
    }

    /// Writes `n` blocks, then declares a restart point; returns its LSN (every op up to it
    /// is durable at every relay: ack policy `all`).
    fn write_and_rp(&mut self, n: u64, tag: &str) -> u64 {
        self.m.write(&mut self.p, n);
        let l = self.p.cmd(&format!("RP vold {tag}"));
        l.split_whitespace().nth(3).unwrap().parse().unwrap()
    }

    fn vold(&self) -> Value {
        self.sb.status("vold").expect("standby_get_status vold")
    }

    fn relay_vold(&self, k: usize) -> Value {
        self.relays[k]
            .volume_status("vold")
            .unwrap_or_else(|| panic!("relay {k}: no status for vold"))
    }

    /// Waits until every relay sent `n` more reports the detector counted.
    fn wait_reports(&self, n: u64) {
        let want = self.relays.len();
        let base = wait_for(
            "a report from every relay",
            || {
                let r = relay_reports(&self.sb, "vold");
                (r.len() == want).then_some(r)
            },
            || format!("{:?}", relay_reports(&self.sb, "vold")),
        );
        wait_for(
            &format!("{n} more reports from every relay"),
            || {
                let now = relay_reports(&self.sb, "vold");
                (now.len() == want && now.iter().zip(&base).all(|(a, b)| *a >= b + n)).then_some(())
            },
            || format!("{base:?} -> {:?}", relay_reports(&self.sb, "vold")),
        );
    }

    /// Waits for restart point `epoch` on `vold` and checks its image block for block.
    fn check_epoch(&self, epoch: u64, what: &str) {
        self.sb.wait_epoch("vold", epoch);
        assert_image(&read_delayed(&self.sb), &self.m, what);
    }
}

/// The standby's connected links of `vold` with `role`.
fn up_links(st: &Value, role: &str) -> Vec<Value> {
    links(st)
        .into_iter()
        .filter(|l| l["connected"] == true && l["role"] == role)
        .collect()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// No gap request to any relay, no stall pull: nothing was fetched around the forwarder.
fn assert_nothing_fetched(r: &Rig, what: &str) {
    let st = r.vold();
    for l in links(&st) {
        assert_eq!(l["gap_requests_sent"], 0, "{what}: a gap request went to a relay: {st}");
    }
    assert_eq!(st["stall_verdicts"]["pulled"], 0, "{what}: {st}");
    for k in 0..r.relays.len() {
        let rv = r.relay_vold(k);
        assert_eq!(rv["gap_requests"], 0, "{what}: relay {k} was asked: {rv}");
    }
}

/// Upper bound of the bytes a link that carried only control frames received: one Hello,
/// then `frames` heartbeats / liveness reports (the largest control frame a relay sends
/// after its Hello).
fn control_bytes_max(frames: u64) -> u64 {
    let frame = ENVELOPE_BYTES + HEARTBEAT_BODY_BYTES.max(PRIMARY_LIVENESS_BODY_BYTES);
    (ENVELOPE_BYTES + HELLO_BODY_BYTES) as u64 + frames * frame as u64
}

#[test]
fn immediate_forwards_everything_once_and_the_backup_is_never_asked() {
    let mut r = Rig::start("imm", &[], &[&[], &["--backup"]]);
    let ops = 2000;
    r.write_and_rp(ops, "rp1");
    r.check_epoch(1, "immediate: restart point 1");
    // One link per role (a backup that forwards reports itself a forwarder).
    let roles = |st: &Value| {
        let (f, b) = (up_links(st, "forwarder"), up_links(st, "backup"));
        assert_eq!((f.len(), b.len()), (1, 1), "one forwarder and one backup link: {st}");
        (f[0].clone(), b[0].clone())
    };
    // Steady state: two seconds' worth of reports after everything arrived.
    let frames0 = n(&roles(&r.vold()).1["frames_received"]);
    wait_for(
        "20 more frames on the backup link",
        || (n(&roles(&r.vold()).1["frames_received"]) >= frames0 + 20).then_some(()),
        || format!("{}", r.vold()),
    );
    assert_nothing_fetched(&r, "immediate");

    let st = r.vold();
    let (f, b) = &roles(&st);
    let data = ops * BS as u64;
    // The backup link: control frames only.
    assert_eq!((n(&b["forward_frames"]), n(&b["gap_replies"])), (0, 0), "{st}");
    let b_bytes = n(&b["bytes_received"]);
    assert!(
        b_bytes <= control_bytes_max(n(&b["frames_received"])),
        "the backup link carried more than control frames: {b_bytes} bytes: {st}"
    );
    // The forwarder link: the data once, plus per-op and per-frame headers.
    let f_bytes = n(&f["bytes_received"]);
    let f_frames = n(&f["frames_received"]);
    let overhead = (ops + 1) * OP_DESC_BYTES as u64
        + RESTART_TAG_BYTES_MAX as u64
        + f_frames * (ENVELOPE_BYTES + BATCH_HDR_BYTES) as u64
        + control_bytes_max(f_frames);
    assert!(
        (data..=data + overhead).contains(&f_bytes),
        "forwarder link: {f_bytes} bytes for {data} bytes of ops (overhead up to {overhead}): {st}"
    );
    eprintln!(
        "immediate: {data} bytes of ops; forwarder link {f_bytes} bytes ({f_frames} frames), \
         backup link {b_bytes} bytes ({} frames): {:.4}x the data in all",
        n(&b["frames_received"]),
        (f_bytes + b_bytes) as f64 / data as f64
    );
}

/// Checks the forwarder (relay 0) holds by policy: after `reports` more relay reports,
/// it has forwarded nothing past `forwarded` although it holds `rp_lsn`, the standby has
/// nothing past `forwarded`, reports `holding`, and fetched nothing around it.
fn assert_held(r: &Rig, forwarded: u64, rp_lsn: u64, what: &str) {
    r.wait_reports(20);
    let rv = r.relay_vold(0);
    assert_eq!(
        n(&rv["forwarded_lsn"]),
        forwarded,
        "{what}: forwarded past the policy: {rv}"
    );
    assert!(n(&rv["durable_lsn"]) >= rp_lsn, "{what}: {rv}");
    let st = r.vold();
    assert!(
        n(&st["durable_lsn"]) <= forwarded,
        "{what}: the standby got ops the forwarder holds: {st}"
    );
    assert!(st["applied_epoch"].as_u64() < Some(1), "{what}: {st}");
    let fwd = up_links(&st, "forwarder");
    assert_eq!(fwd.len(), 1, "{what}: {st}");
    assert_eq!(fwd[0]["forward_state"], "holding", "{what}: {st}");
    assert!(n(&st["stall_verdicts"]["policy_hold"]) > 0, "{what}: {st}");
    assert_nothing_fetched(r, what);
}

#[test]
fn interval_holds_between_openings_and_immediate_by_rpc_releases() {
    let mut r = Rig::start("int", &HOST, &[&["--forward", "interval:600000"], &["--backup"]]);
    // An opening forwards one journal read; the next is ten minutes later (the first may
    // already have passed: the relay's clock counts from its start). Whatever was
    // forwarded once the writes are done, nothing more may follow.
    let rp_lsn = r.write_and_rp(600, "rp1");
    let first = n(&r.relay_vold(0)["forwarded_lsn"]);
    assert!(first < rp_lsn, "{}", r.relay_vold(0));
    assert_held(&r, first, rp_lsn, "interval:600000");

    r.relays[0].set_forward_policy(json!({"mode": "immediate"}));
    r.check_epoch(1, "interval then immediate: restart point 1");
    assert_eq!(n(&r.relay_vold(0)["forwarded_lsn"]), rp_lsn);
    assert_nothing_fetched(&r, "after the change to immediate");
}

/// `HH:MM-HH:MM` from minutes of the UTC day (wrapping midnight).
fn window(start_min: u64, len_min: u64) -> String {
    let (s, e) = (start_min % 1440, (start_min + len_min) % 1440);
    format!("{:02}:{:02}-{:02}:{:02}", s / 60, s % 60, e / 60, e % 60)
}

/// The current minute of the UTC day.
fn utc_minute_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() % 86_400 / 60
}

/// A window that opens 12 hours from now (it cannot open during a test).
fn closed_window() -> String {
    window(utc_minute_now() + 12 * 60, 60)
}

#[test]
fn window_arithmetic_wraps_midnight() {
    assert_eq!(window(23 * 60 + 30, 60), "23:30-00:30");
    assert_eq!(window(1440 + 5, 10), "00:05-00:15");
    assert_eq!(window(1439 - 60 + 1440, 120), "22:59-00:59");
}

#[test]
fn closed_window_holds_everything_and_an_open_window_forwards() {
    let closed = closed_window();
    let arg = format!("window:{closed}");
    let mut r = Rig::start("win", &HOST, &[&["--forward", &arg], &["--backup"]]);
    let rp_lsn = r.write_and_rp(600, "rp1");
    assert_held(&r, 0, rp_lsn, &format!("window {closed}"));

    // A window from an hour ago to an hour from now (wrapping midnight if need be).
    let open = window(utc_minute_now() + 1440 - 60, 120);
    r.relays[0].set_forward_policy(json!({"mode": "windows", "windows": [open]}));
    r.check_epoch(1, &format!("window {open}: restart point 1"));
    assert_nothing_fetched(&r, &format!("window {open}"));
}

#[test]
fn bandwidth_caps_the_forwarders_delivery_rate() {
    const RATE: u64 = 2_000_000;
    const READ_OVERDRAW: u64 = 4 << 20;
    let closed = format!("window:{}", closed_window());
    let mut r = Rig::start("bw", &[], &[&["--forward", &closed], &["--backup"]]);
    // 10 MiB of ops journaled at both relays while the window holds them back.
    let ops = 2560;
    let rp_lsn = r.write_and_rp(ops, "rp1");
    let data = ops * BS as u64;
    assert_eq!(n(&r.relay_vold(0)["forwarded_lsn"]), 0);

    // Before the change nothing can leave, so the first byte leaves after `t0` and the
    // last arrives before the standby shows it: the elapsed time is at least the
    // forwarder's first-to-last span, which the bucket bounds (one second of burst, one
    // read of overdraw).
    let t0 = Instant::now();
    r.relays[0].set_forward_policy(json!({"mode": "bandwidth", "bytes_per_sec": RATE}));
    wait_for(
        "the standby has every op",
        || (n(&r.vold()["durable_lsn"]) >= rp_lsn).then_some(()),
        || format!("{}", r.vold()),
    );
    let elapsed = t0.elapsed();
    let floor = Duration::from_secs_f64((data - RATE - READ_OVERDRAW) as f64 / RATE as f64);
    eprintln!(
        "bandwidth:{RATE}: {data} bytes in {elapsed:?} ({:.0} B/s; at least {floor:?} allowed)",
        data as f64 / elapsed.as_secs_f64()
    );
    assert!(
        elapsed >= floor,
        "{data} bytes forwarded in {elapsed:?} at bandwidth:{RATE}: the cap allows no less than {floor:?}"
    );
    r.check_epoch(1, "bandwidth: restart point 1");
    assert_nothing_fetched(&r, "bandwidth");
}

#[test]
fn forwarder_dead_the_standby_pulls_from_one_backup() {
    let mut r = Rig::start("dead", &[], &[&[], &["--backup"], &["--backup"]]);
    r.write_and_rp(300, "rp1");
    r.check_epoch(1, "three relays: restart point 1");
    let backup_bytes =
        |st: &Value| -> Vec<u64> { up_links(st, "backup").iter().map(|l| n(&l["bytes_received"])).collect() };
    let before = backup_bytes(&r.vold());
    assert_eq!(before.len(), 2, "{}", r.vold());

    r.relays[0].kill9();
    let ops = 1500;
    r.write_and_rp(ops, "rp2");
    r.check_epoch(2, "forwarder dead: restart point 2");
    let st = r.vold();
    let after = backup_bytes(&st);
    assert_eq!(after.len(), 2, "{st}");
    let carried: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    let data = ops * BS as u64;
    eprintln!(
        "forwarder dead: {data} bytes of ops; backup links carried {:?} bytes = {:.3}x the data",
        after.iter().zip(&before).map(|(a, b)| a - b).collect::<Vec<_>>(),
        carried as f64 / data as f64
    );
    assert!(
        carried >= data,
        "the backups carried less than the ops: {carried}: {st}"
    );
    assert!(
        carried < data * 3 / 2,
        "the backups carried {carried} bytes for {data} bytes of ops: pulled from more than one: {st}"
    );
}
