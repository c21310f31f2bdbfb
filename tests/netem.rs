//! Network faults between the sites (`docs/faults.md`): the primary, two relays at the
//! relay site (each its own namespace: one can be cut alone) and the standby, joined by
//! veth pairs; `tc netem` puts 20 ms of delay, 2 % loss and reordering on the WAN links
//! (relay site to standby) and 1 % loss near the primary. Under those faults: every ack
//! policy loses nothing acknowledged; a partition of the relay site from the standby
//! heals and the standby catches up; `degraded` goes on while a relay is cut and the relay
//! catches up from the primary's retention when it returns, `block` refuses writes until it
//! does; a holding forward policy is not fetched around over a lossy WAN.
//!
//! Needs root and a kernel with `sch_netem` (skipped with a printed reason otherwise): the
//! CI host has none, so `ci/netem-guest.sh` runs this binary in a QEMU guest whose Debian
//! kernel has it. Waits are for events, bounded by [`WAIT`]; nothing is asserted on timing.

mod support;
use support::netns::{self, Cluster, Layout, Net};
use support::*;

use serde_json::{json, Value};

#[test]
#[ignore]
fn standby_primary_child() {
    support::primary_child_main();
}

/// The WAN between the relay site and the standby.
const WAN: &str = "delay 20ms loss 2% reorder 25% 50%";
/// Between the primary and the relay site, and the primary's heartbeats to the standby.
const NEAR: &str = "delay 1ms loss 1%";
const RELAY_SITES: [&str; 2] = ["r1", "r2"];

/// `BATON_NETEM_NO_QDISC=1`: run the scenarios without the netem qdiscs where the kernel
/// has none (partitions only; for working on the tests, not a substitute for the guest).
fn without_qdiscs() -> bool {
    std::env::var("BATON_NETEM_NO_QDISC").is_ok_and(|v| v == "1")
}

/// Why these tests cannot run here, or `None`.
fn unavailable() -> Option<String> {
    if let Some(why) = netns::unavailable() {
        return Some(why);
    }
    if without_qdiscs() {
        return None;
    }
    netns::netem_available()
        .err()
        .map(|e| format!("no sch_netem in this kernel (ci/netem-guest.sh runs these in a guest): {e}"))
}

/// Skips the test (saying why) where it cannot run; with `BATON_NETEM_REQUIRED=1` (the
/// guest) that is a failure instead.
macro_rules! needs_netem {
    ($name:literal) => {
        if let Some(why) = unavailable() {
            assert!(
                std::env::var("BATON_NETEM_REQUIRED").map_or(true, |v| v != "1"),
                "{}: cannot run: {why}",
                $name
            );
            eprintln!("{}: SKIPPED: {why}", $name);
            return;
        }
    };
}

/// Four sites, five links; netem on each.
fn faulty_net() -> Net {
    let links = [("p", "r1"), ("p", "r2"), ("r1", "s"), ("r2", "s"), ("p", "s")];
    let net = Net::new(&["p", "r1", "r2", "s"], &links).unwrap_or_else(|e| panic!("namespaces: {e}"));
    if without_qdiscs() {
        return net;
    }
    for r in RELAY_SITES {
        net.netem(r, "s", WAN).unwrap();
        net.netem("p", r, NEAR).unwrap();
    }
    net.netem("p", "s", NEAR).unwrap();
    net
}

/// Relay 0 (site r1) forwards with `forward`, relay 1 (r2) is a backup; the primary uses
/// `ack` / `on_down`, a 2 s relay-down timeout, and naps when idle (slow guests).
fn cluster(net: &Net, tag: &str, ack: &str, on_down: &str, forward: &str) -> Cluster {
    let hb = format!("{}:4601", net.ip("s", "p"));
    let standby_args = [
        "--failover-volume",
        "vold",
        "--no-auto-failover",
        "--heartbeat-listen",
        &hb,
    ];
    let layout = Layout {
        primary: "p",
        standby: "s",
        relays: vec![
            ("r1", vec!["--forward".to_string(), forward.to_string()]),
            ("r2", vec!["--backup".to_string()]),
        ],
        standby_args: standby_args.iter().map(|a| a.to_string()).collect(),
        primary_env: vec![
            ("BATON_SP_ACK", ack.to_string()),
            ("BATON_SP_ON_DOWN", on_down.to_string()),
            ("BATON_SP_DOWN_MS", "2000".to_string()),
            ("BATON_SP_HEARTBEAT", hb),
            ("BATON_SP_IDLE", "nap".to_string()),
        ],
    };
    net.start(tag, &layout)
}

/// `n` epochs of `blocks` writes each, every one closed by a restart point; returns the
/// last epoch.
fn epochs(c: &mut Cluster, m: &mut Model, n: u64, blocks: u64) -> u64 {
    let mut e = 0;
    for _ in 0..n {
        m.write(&mut c.p, blocks);
        e = m.restart_point(&mut c.p, "rp");
    }
    e
}

/// Netem's drop counters of both ends of every WAN link, summed.
fn wan_drops(net: &Net) -> u64 {
    let mut n = 0;
    for r in RELAY_SITES {
        for (a, b) in [(r, "s"), ("s", r)] {
            let st = net.qdisc_stats(a, b);
            n += st
                .split("dropped ")
                .skip(1)
                .filter_map(|t| t.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    n
}

/// Every policy over the faulty WAN: the standby reaches the last acknowledged restart
/// point, block for block, and the faults did happen (netem dropped packets).
#[test]
fn netem_every_ack_policy_loses_nothing_acknowledged() {
    needs_netem!("netem_every_ack_policy_loses_nothing_acknowledged");
    let net = faulty_net();
    for (i, ack) in ["all", "quorum:1", "any"].iter().enumerate() {
        let mut c = cluster(&net, &format!("nap{i}"), ack, "degraded", "immediate");
        let mut m = Model::new("vold");
        let last = epochs(&mut c, &mut m, 6, 64);
        c.sb.wait_epoch("vold", last);
        assert_image(
            &read_delayed(&c.sb),
            &m,
            &format!("standby at restart point {last}, ack {ack}"),
        );
    }
    let drops = wan_drops(&net);
    eprintln!("netem: WAN packets dropped by netem: {drops}");
    assert!(
        drops > 0 || without_qdiscs(),
        "netem dropped nothing: {}",
        net.qdisc_stats("r1", "s")
    );
}

/// The relay site is cut from the standby: writes and restart points go on (the ack
/// policy does not wait for the standby), the standby stays where it was; the partition
/// heals and the standby catches up to the last restart point.
#[test]
fn netem_relay_site_partition_heals_and_the_standby_catches_up() {
    needs_netem!("netem_relay_site_partition_heals_and_the_standby_catches_up");
    let net = faulty_net();
    let mut c = cluster(&net, "npart", "all", "block", "immediate");
    let mut m = Model::new("vold");
    let e1 = epochs(&mut c, &mut m, 1, 64);
    c.sb.wait_epoch("vold", e1);
    for r in RELAY_SITES {
        net.cut(r, "s");
    }
    let last = epochs(&mut c, &mut m, 4, 64);
    let st = c.sb.status("vold").unwrap();
    assert_eq!(st["applied_epoch"].as_u64(), Some(e1), "nothing can have arrived: {st}");
    for r in RELAY_SITES {
        net.heal(r, "s");
    }
    c.sb.wait_epoch("vold", last);
    assert_image(&read_delayed(&c.sb), &m, "standby after the partition healed");
}

/// Waits until the primary's `writes_blocked` is `want`.
fn wait_blocked(p: &mut Primary, want: bool) {
    let start = std::time::Instant::now();
    while p.state("vold").writes_blocked != want {
        assert!(start.elapsed() < WAIT, "writes_blocked never became {want}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Relay 2 is cut from the primary. `degraded`: writes go on, acknowledged by relay 1;
/// relay 2 catches up from the primary's retention when the cut heals. `block`: once relay
/// 2 is down new writes fail (the application sees the error); after the heal they
/// succeed again. Either way the standby ends at the last restart point, block for block.
#[test]
fn netem_degraded_goes_on_and_block_refuses_while_a_relay_is_cut() {
    needs_netem!("netem_degraded_goes_on_and_block_refuses_while_a_relay_is_cut");
    let net = faulty_net();
    for on_down in ["degraded", "block"] {
        let mut c = cluster(&net, &format!("ndeg-{on_down}"), "all", on_down, "immediate");
        let mut m = Model::new("vold");
        epochs(&mut c, &mut m, 1, 32);
        net.cut("p", "r2");
        if on_down == "degraded" {
            // The first batch waits out the down timeout, then completes without relay 2.
            epochs(&mut c, &mut m, 3, 32);
        } else {
            wait_blocked(&mut c.p, true);
            let first = m.next_seq;
            let e = m
                .try_write(&mut c.p, 8)
                .expect_err("block: a write with relay 2 down fails");
            assert!(e.contains("acknowledgement policy cannot be met"), "{e}");
            m.next_seq = first; // refused before the local write: written again below
        }
        net.heal("p", "r2");
        wait_blocked(&mut c.p, false);
        let last = epochs(&mut c, &mut m, 1, 32);
        let done = c.p.state("vold").completed_lsn;
        wait_for(
            "relay 2 caught up with the primary",
            || (c.relays[1].volume_status("vold")?["durable_lsn"].as_u64()? >= done).then_some(()),
            || format!("{:?}", c.relays[1].volume_status("vold")),
        );
        c.sb.wait_epoch("vold", last);
        assert_image(&read_delayed(&c.sb), &m, &format!("standby, {on_down}"));
    }
}

/// A forwarder holding everything by policy is not fetched around over the lossy,
/// reordering WAN (no gap request to either relay over 20 reports from each); released by
/// RPC, it delivers the last restart point.
#[test]
fn netem_forward_policy_holds_over_a_lossy_wan() {
    needs_netem!("netem_forward_policy_holds_over_a_lossy_wan");
    let net = faulty_net();
    let mut c = cluster(&net, "nfwd", "all", "degraded", "interval:600000");
    // Both relays' reports in first: a relay the standby has no fresh report from is
    // pulled from as before reports existed (docs/replication.md), which is not the
    // behaviour under test here.
    wait_for(
        "reports from both relays",
        || Some(relay_reports(&c.sb, "vold")).filter(|r| r.len() == 2 && r.iter().all(|n| *n > 0)),
        String::new,
    );
    let mut m = Model::new("vold");
    let last = epochs(&mut c, &mut m, 2, 64);
    let base = relay_reports(&c.sb, "vold");
    wait_for(
        "20 more reports from both relays",
        || {
            let now = relay_reports(&c.sb, "vold");
            (now.len() == 2 && base.len() == 2 && now.iter().zip(&base).all(|(n, b)| *n >= b + 20)).then_some(())
        },
        || format!("{base:?} {:?}", rpc(&c.sb.sock, "standby_host_get_status", None)),
    );
    let st = c.sb.status("vold").unwrap();
    let gaps = |st: &Value| -> u64 {
        links(st)
            .iter()
            .map(|l| l["gap_requests_sent"].as_u64().unwrap_or(0))
            .sum()
    };
    let v = &st["stall_verdicts"];
    assert!(v["policy_hold"].as_u64() > Some(0), "the hold was seen as policy: {st}");
    // Documented fallback: a relay whose last report is older than 2 s is pulled from as
    // before reports existed. A slow guest can starve a relay that long; every pull must be
    // one of those, and without one nothing is fetched at all.
    assert_eq!(
        v["pulled"], v["pulled_report_stale"],
        "every pull had a stale report: {st}"
    );
    let stale = v["pulled"].as_u64().unwrap_or(0);
    eprintln!("netem: stall pulls after a stale relay report: {stale}");
    if stale == 0 {
        assert_eq!(gaps(&st), 0, "nothing fetched around the policy: {st}");
        assert!(st["applied_epoch"].as_u64() < Some(last), "held by policy: {st}");
    }
    c.relays[0].set_forward_policy(json!({"mode": "immediate"}));
    c.sb.wait_epoch("vold", last);
    assert_image(&read_delayed(&c.sb), &m, "standby after the policy released");
    let st = c.sb.status("vold").unwrap();
    let v = &st["stall_verdicts"];
    assert_eq!(
        v["pulled"], v["pulled_report_stale"],
        "every pull had a stale report: {st}"
    );
    if v["pulled"] == 0 {
        assert_eq!(gaps(&st), 0, "still nothing fetched: {st}");
    }
}
