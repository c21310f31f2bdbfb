//! The standby process end to end, with real processes on loopback: a primary (this test
//! binary re-run as a child: two replicated volumes over RAM bdevs, driven by commands on
//! its stdin) -> two `baton relay` processes (a forwarder and a `--backup`) -> one
//! `baton standby` holding a delayed-write volume (`vold`) and a snapshot-mode volume
//! (`vols`) over files in /dev/shm.
//!
//! At each restart point the standby's image must equal the primary's image at that point,
//! byte for byte: delayed mode read from its volume file, snapshot mode exported by
//! `snapshot_export` and read over NVMe/TCP from the standby process. Then the forwarder is
//! killed (the standby pulls from the backup), the standby is killed and restarted (it
//! recovers and the relays resend from its resume LSN), and a relay presenting an older
//! generation is refused. Every wait is bounded.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// Exports snapshot `epoch` of `vols` as a bdev, puts it in an NVMe/TCP subsystem of the
/// standby process and reads it with the NVMe/TCP host.
fn read_snapshot_over_nvme(s: &StandbyProc, epoch: u64, transport: &mut bool) -> Vec<u8> {
    use nvme::host::{cmd, status_ok, Controller, Data, HostOpts};
    if !*transport {
        rpc(&s.sock, "nvmf_create_transport", Some(json!({"trtype": "TCP"}))).unwrap();
        *transport = true;
    }
    let bdev = rpc(
        &s.sock,
        "snapshot_export",
        Some(json!({"name": "vols", "epoch": epoch, "bdev_name": format!("vols_e{epoch}")})),
    )
    .unwrap();
    let nqn = format!("nqn.2016-06.io.baton:vols-e{epoch}");
    rpc(
        &s.sock,
        "nvmf_create_subsystem",
        Some(json!({"nqn": nqn, "allow_any_host": true})),
    )
    .unwrap();
    rpc(
        &s.sock,
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": nqn, "namespace": {"bdev_name": bdev}})),
    )
    .unwrap();
    let port = free_port();
    rpc(
        &s.sock,
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": nqn, "listen_address":
            {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}})),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = Controller::connect(addr, &nqn, &HostOpts::default()).expect("NVMe/TCP connect");
    let mut q = c.create_io_qpair().expect("I/O queue");
    let per = 16u32;
    let mut out = Vec::with_capacity(BLOCKS as usize * BS);
    for slba in (0..BLOCKS).step_by(per as usize) {
        let buf = engine::buf::DmaBuf::alloc(per as usize * BS);
        let done = q
            .sync(cmd::read(1, slba, per), Data::FromCtrl(buf), Duration::from_secs(10))
            .expect("NVMe read");
        status_ok(&done.cqe).expect("NVMe read status");
        out.extend_from_slice(&done.buf.expect("read buffer")[..]);
    }
    c.disconnect();
    out
}

/// A fake relay: sends a Hello and returns the standby's HelloReply.
fn hello_reply(
    standby: SocketAddr,
    volume: &str,
    volume_id: [u8; 16],
    generation: u64,
) -> rdma_transport::wire::HelloReply {
    use rdma_transport::wire::{self, Frame, Hello, Role};
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(standby).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let h = Hello {
        role: Role::Relay,
        block_size: BS as u32,
        volume_id,
        volume_name: volume,
        generation,
        resume_lsn: 1,
        frame_bytes_max: wire::FRAME_BYTES_MAX as u32,
        recv_credits: 0,
    };
    s.write_all(wire::encode_hello(&h).unwrap().as_bytes()).unwrap();
    let mut buf = vec![0u8; wire::ENVELOPE_BYTES + wire::HELLO_REPLY_BODY_BYTES];
    s.read_exact(&mut buf).unwrap();
    let r = match wire::parse(&buf).unwrap() {
        Frame::HelloReply(r) => r,
        f => panic!("expected a HelloReply, got {f:?}"),
    };
    r
}

/// The primary's body when this binary runs as the child (ignored otherwise).
#[test]
#[ignore]
fn standby_primary_child() {
    primary_child_main();
}

#[test]
fn standby_process_follows_relays_through_forwarder_and_standby_kill9() {
    let sd = TempDir::new("/dev/shm", "standby-s");
    let d1 = TempDir::new("/dev/shm", "standby-r1");
    let d2 = TempDir::new("/dev/shm", "standby-r2");
    let mut sb = StandbyProc::start(&sd.0, free_port());
    let sa = sb.addr();
    let port1 = free_port();
    let mut r1 = RelayProc::for_standby(&d1.0, port1, sa, &[]);
    let r2 = RelayProc::for_standby(&d2.0, free_port(), sa, &["--backup"]);
    let mut p = Primary::start(&[r1.addr(), r2.addr()]);
    let mut models = [Model::new("vold"), Model::new("vols")];
    let mut nvme_transport = false;

    // Restart point 1 through the forwarder.
    let check = |sb: &StandbyProc, models: &[Model; 2], epoch: u64, nvme: &mut bool, what: &str| {
        for m in models {
            let st = sb.wait_epoch(m.name, epoch);
            assert_eq!(st["applied_epoch"].as_u64(), Some(epoch), "{what}: {st}");
        }
        assert_image(&read_delayed(sb), &models[0], &format!("{what}: delayed volume"));
        assert_image(
            &read_snapshot_over_nvme(sb, epoch, nvme),
            &models[1],
            &format!("{what}: snapshot {epoch}"),
        );
    };
    for m in &mut models {
        m.write(&mut p, 1500);
        assert_eq!(m.restart_point(&mut p, "rp1"), 1);
    }
    check(&sb, &models, 1, &mut nvme_transport, "restart point 1");
    for m in &models {
        let st = sb.status(m.name).unwrap();
        let up: Vec<Value> = links(&st).into_iter().filter(|l| l["connected"] == true).collect();
        assert_eq!(up.len(), 2, "{}: both relays linked: {st}", m.name);
        assert!(
            up.iter()
                .any(|l| l["role"] == "forwarder" && l["forward_frames"].as_u64() > Some(0)),
            "{}: a forwarder link: {st}",
            m.name
        );
        assert_eq!(st["applied_tag"], "rp1", "{st}");
    }
    // Delayed mode: everything the relays sent is staged and durable, so SafeUpTo
    // lets them release all of it.
    let st = sb.status("vold").unwrap();
    assert_eq!(
        st["durable_lsn"].as_u64(),
        st["relay_lsn_max"].as_u64(),
        "vold: all that relays sent is durable: {st}"
    );

    // Kill the forwarder: the standby pulls the next epoch from the backup.
    r1.kill9();
    for m in &mut models {
        m.write(&mut p, 1000);
        assert_eq!(m.restart_point(&mut p, "rp2"), 2);
    }
    check(&sb, &models, 2, &mut nvme_transport, "restart point 2, forwarder dead");
    for m in &models {
        let st = sb.status(m.name).unwrap();
        let backup: Vec<Value> = links(&st)
            .into_iter()
            .filter(|l| l["connected"] == true && l["gap_replies"].as_u64() > Some(0))
            .collect();
        assert!(!backup.is_empty(), "{}: the backup answered gap requests: {st}", m.name);
    }

    // The forwarder comes back; the standby is killed, writes go on, it restarts.
    let _r1b = RelayProc::for_standby(&d1.0, port1, sa, &[]);
    sb.kill9();
    for m in &mut models {
        m.write(&mut p, 500);
    }
    let sb = StandbyProc::start(&sd.0, sb.port);
    for m in &models {
        let st = sb.status(m.name).unwrap();
        assert!(
            st["applied_epoch"].as_u64() >= Some(2),
            "{}: recovered at restart point 2 or later: {st}",
            m.name
        );
    }
    for m in &mut models {
        assert_eq!(m.restart_point(&mut p, "rp3"), 3);
    }
    let mut nvme_transport = false;
    check(
        &sb,
        &models,
        3,
        &mut nvme_transport,
        "restart point 3, after the standby restart",
    );

    assert_fencing(&sb);
    drop(r2);
}

/// Fencing: a relay of an older generation is refused (vold's id is its base bdev's UUID,
/// [1; 16]), and so are another volume id and an unknown volume; the refusal shows in the
/// standby's status.
fn assert_fencing(sb: &StandbyProc) {
    use rdma_transport::wire::{HelloReply, RefuseReason};
    match hello_reply(sb.addr(), "vold", [1; 16], 0) {
        HelloReply::Refused {
            reason: RefuseReason::StaleGeneration,
            generation,
            ..
        } => assert_eq!(generation, 1),
        r => panic!("a generation-0 relay must be refused as stale: {r:?}"),
    }
    match hello_reply(sb.addr(), "vold", [9; 16], 1) {
        HelloReply::Refused {
            reason: RefuseReason::UnknownVolume,
            ..
        } => {}
        r => panic!("a relay of another volume id must be refused: {r:?}"),
    }
    match hello_reply(sb.addr(), "nosuch", [1; 16], 1) {
        HelloReply::Refused {
            reason: RefuseReason::UnknownVolume,
            ..
        } => {}
        r => panic!("a relay of an unknown volume must be refused: {r:?}"),
    }
    let st = sb.status("vold").unwrap();
    assert!(
        links(&st)
            .iter()
            .any(|l| l["connected"] == false && l["last_error"].as_str().unwrap_or("").contains("fenced")),
        "the refusal is in the status: {st}"
    );
}

/// A forwarder that holds ops back by policy is not fetched around (the standby stays
/// behind, no gap request goes to either relay), and at failover the standby host drains
/// both relays first, so the promoted volume is at the last acknowledged restart point,
/// not at what the standby happened to hold.
#[test]
fn standby_lagging_by_policy_is_not_fetched_around_and_failover_drains_the_relays() {
    let sd = TempDir::new("/dev/shm", "drain-s");
    let d1 = TempDir::new("/dev/shm", "drain-r1");
    let d2 = TempDir::new("/dev/shm", "drain-r2");
    let host = ["--failover-volume", "vold", "--primary-timeout-ms", "500"];
    let sb = StandbyProc::start_with(&sd.0, free_port(), &host);
    let sa = sb.addr();
    // The forwarder holds everything: its first interval opening comes ten minutes after
    // it took the volume on.
    let r1 = RelayProc::for_standby(&d1.0, free_port(), sa, &["--forward", "interval:600000"]);
    let r2 = RelayProc::for_standby(&d2.0, free_port(), sa, &["--backup"]);
    let mut p = Primary::start(&[r1.addr(), r2.addr()]);
    let mut m = Model::new("vold");
    m.write(&mut p, 300);
    assert_eq!(m.restart_point(&mut p, "rp1"), 1);
    m.write(&mut p, 300);
    assert_eq!(m.restart_point(&mut p, "rp2"), 2);
    let at_rp2 = m.img.clone();
    // Not covered by a restart point: must not show after failover.
    m.write(&mut p, 100);

    // Ten reports from each relay (a second of them) after the last write: the old
    // standby pulled around a stalled forwarder after 200 ms.
    let base = relay_reports(&sb, "vold");
    wait_for(
        "ten more reports from both relays",
        || {
            let now = relay_reports(&sb, "vold");
            (now.len() == 2 && base.len() == 2 && now.iter().zip(&base).all(|(n, b)| *n >= b + 10)).then_some(())
        },
        || format!("{:?}", rpc(&sb.sock, "standby_host_get_status", None)),
    );
    let st = sb.status("vold").unwrap();
    let up: Vec<Value> = links(&st).into_iter().filter(|l| l["connected"] == true).collect();
    assert_eq!(up.len(), 2, "both relays linked: {st}");
    for l in &up {
        assert_eq!(l["gap_requests_sent"], 0, "nothing fetched around the policy: {st}");
    }
    assert_eq!(st["stall_verdicts"]["pulled"], 0, "{st}");
    assert!(
        up.iter().any(|l| l["forward_state"] == "holding"),
        "the forwarder reports holding by policy: {st}"
    );
    assert!(
        st["applied_epoch"].as_u64() < Some(2),
        "the standby lags by policy (restart point 2 not forwarded): {st}"
    );

    // The primary dies; the standby host detects it, drains both relays, rolls back to
    // the newest restart point that arrived in full (2), promotes.
    drop(p);
    let rep = wait_for(
        "failover done",
        || {
            let h = rpc(&sb.sock, "standby_host_get_status", None).ok()?;
            let f = h["failover"].clone();
            (f["state"] == "done" || f["state"] == "failed").then_some(f)
        },
        || format!("{:?}", rpc(&sb.sock, "standby_host_get_status", None)),
    );
    assert_eq!(rep["state"], "done", "{rep}");
    assert_eq!(
        rep["volumes"][0]["epoch"], 2,
        "promoted at the last acknowledged restart point: {rep}"
    );
    let d = &rep["drain"][0];
    assert_eq!(d["relays"], 2, "{rep}");
    assert_eq!(d["relays_drained"], 2, "{rep}");
    assert!(d["restart_points_gained"].as_u64() >= Some(1), "{rep}");
    assert!(d["lsn_reached"].as_u64() > d["lsn_start"].as_u64(), "{rep}");
    assert!(rep["drained_us"].as_u64().is_some(), "{rep}");
    let want = Model {
        name: "vold",
        img: at_rp2,
        next_seq: 0,
    };
    assert_image(&read_delayed(&sb), &want, "promoted volume at restart point 2");
    drop((r1, r2));
}

/// One relay whose journal loses its tail before the standby had it: no relay holds the
/// hole. The primary resyncs the relay with a base and a block sync; the real standby,
/// answered `not_held` for the hole, skips to the sync's Begin, drops nothing it applied,
/// and at the first restart point after the sync shows exactly the primary's image.
#[test]
fn a_hole_no_relay_holds_is_covered_by_a_block_sync() {
    let sd = TempDir::new("/dev/shm", "bsync-s");
    let d1 = TempDir::new("/dev/shm", "bsync-r1");
    let sb = StandbyProc::start(&sd.0, free_port());
    let sa = sb.addr();
    // The relay holds everything back (its first forward opening is ten minutes away), so
    // the standby has nothing of what the relay is about to lose.
    let port = free_port();
    let mut r1 = RelayProc::for_standby(&d1.0, port, sa, &["--forward", "interval:600000"]);
    let mut p = Primary::start(&[r1.addr()]);
    let mut m = Model::new("vold");
    m.write(&mut p, 200);
    assert_eq!(m.restart_point(&mut p, "rp1"), 1);
    m.write(&mut p, 200);
    r1.kill9();
    common::corrupt_last_record(&d1.0.join("vold"));
    // The primary goes on without it (degraded), then it comes back, forwarding at once.
    m.write(&mut p, 100);
    let r1 = RelayProc::for_standby(&d1.0, port, sa, &[]);
    let st = wait_for(
        "the relay's block sync ended",
        || {
            let l = p.cmd("SYNC vold");
            (l == "OK SYNC done 1").then_some(l)
        },
        String::new,
    );
    // Writes after the sync, then the restart point that makes the standby consistent.
    m.write(&mut p, 50);
    let e = m.restart_point(&mut p, "rp-after-sync");
    let s = sb.wait_epoch("vold", e);
    assert_image(&read_delayed(&sb), &m, "standby after the block sync");
    assert_eq!(s["sync_skip"]["holes_skipped"], 1, "{s} ({st})");
    assert_eq!(s["sync_skip"]["state"], "none", "{s}");
    let rs = r1.volume_status("vold").unwrap();
    assert!(rs["base_lsn"].as_u64() > Some(0), "the relay has a history base: {rs}");
    drop(p);
}
