//! The standby host end to end, in one process: a delayed-mode standby over RAM bdevs fed
//! two epochs (with 40-byte image tags) and part of a third, direct heartbeats over real
//! UDP, relay reports through `StandbyHost::relay_report`. Then:
//! 1. the direct path goes silent while the "relay" still hears the primary: no failover;
//! 2. the relay goes silent too: failover; the volume is promoted at restart point 2
//!    (the partial epoch 3 rolled back, generation bumped), exported over NVMe/TCP (read
//!    back with the host driver), the image resolved for tag 2 and the restart command run
//!    with the `BATON_*` environment;
//! 3. the RPC methods show the timeline and refuse a second declaration.
//!
//! A second host in the same process (auto failover off) fails over only when declared
//! by RPC.

mod common;
use common::{call, wait_until, write};

use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use engine::rpc::Registry;
use nvme::host::{Controller, Data, HostOpts};
use rdma_transport::liveness::{self, PrimaryHeartbeat};
use serde_json::json;
use standby::host::{ExportConfig, FailoverState, FailoverVolume, StandbyHost, StandbyHostConfig};
use standby::{OpBody, OwnedOp};
use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// A restart tag as the image store makes them: seq u64 LE + 32-byte digest.
fn tag(seq: u64) -> Vec<u8> {
    let mut t = seq.to_le_bytes().to_vec();
    t.extend((0..32u8).map(|i| i.wrapping_mul(7).wrapping_add(seq as u8)));
    t
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn rp(lsn: u64, epoch: u64, last_lsn: u64) -> OwnedOp {
    OwnedOp {
        lsn,
        generation: 1,
        body: OpBody::RestartPoint {
            epoch,
            last_lsn,
            tag: tag(epoch),
        },
    }
}

/// The primary's direct heartbeats, until `stop`.
fn heartbeats(volume: &'static str, to: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = Vec::new();
        let mut seq = 0;
        while !stop.load(Ordering::Acquire) {
            seq += 1;
            liveness::encode(
                &PrimaryHeartbeat {
                    volume,
                    interval_ms: 10,
                    seq,
                    generation: 1,
                    last_lsn: 5,
                    epoch: 2,
                    time_ns: 0,
                },
                &mut buf,
            )
            .unwrap();
            let _ = s.send_to(&buf, to);
            std::thread::sleep(Duration::from_millis(10));
        }
        seq
    })
}

fn read_block(c: &mut nvme::host::Qpair, nsid: u32, lba: u64) -> Vec<u8> {
    let r = c
        .sync(
            nvme::host::cmd::read(nsid, lba, 1),
            Data::FromCtrl(engine::buf::DmaBuf::alloc(512)),
            WAIT,
        )
        .unwrap();
    assert!(r.status().is_success(), "read {lba}: {}", r.status());
    r.buf.unwrap().to_vec()
}

fn make_standby(reg: &Registry, name: &str) {
    for (n, b) in [(format!("{name}_vol"), 64), (format!("{name}_stg"), 256)] {
        call(
            reg,
            "bdev_malloc_create",
            json!({"name": n, "num_blocks": b, "block_size": 512}),
        )
        .unwrap();
    }
    call(
        reg,
        "standby_create",
        json!({"name": name, "mode": "delayed", "volume_bdev": format!("{name}_vol"),
               "staging_bdev": format!("{name}_stg"), "format": true}),
    )
    .unwrap();
    // Epoch 1: block 3 = 0xaa. Epoch 2: block 4 = 0xbb. Then half of epoch 3 (block 3 =
    // 0xcc, no restart point yet): must be rolled back.
    standby::registry::with_standby(name, |v| {
        for op in [
            write(1, 3, 0xaa),
            rp(2, 1, 1),
            write(3, 4, 0xbb),
            rp(4, 2, 3),
            write(5, 3, 0xcc),
        ] {
            v.offer_owned(op, 0);
        }
    })
    .unwrap();
    wait_until(WAIT, "epoch 2 applied", || {
        standby::registry::with_standby(name, |v| v.applied().0).unwrap() >= 2
    });
}

#[test]
fn failover_end_to_end() {
    let mut o = ReactorOpts::new(vec![0, 1]);
    o.pin = false;
    o.idle = IdleMode::Adaptive {
        idle_before_sleep_us: 2000,
        sleep_us_max: 200,
    };
    let reactors = Reactors::start(o).unwrap();
    let mut reg = Registry::new();
    engine::rpc::methods::register_rpcs(&mut reg);
    standby::rpc::register_rpcs(&mut reg);
    make_standby(&reg, "sa");

    let dir = std::env::temp_dir().join(format!("baton-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let env_file = dir.join("env");
    let target = nvme::nvmf::Target::new();
    let mut cfg = StandbyHostConfig::new(vec![FailoverVolume {
        primary_volume: "pvol".into(),
        standby: "sa".into(),
        head_bdev: None,
        nsid: None,
    }]);
    cfg.heartbeat_listen = Some("127.0.0.1:0".parse().unwrap());
    // Long enough that a test thread starved by a loaded machine (the relay reports come
    // from it every 20 ms) does not look like a silent relay.
    cfg.timeout_ms = 1000;
    let nqn = "nqn.2016-06.io.baton:failover-test";
    cfg.export = Some(ExportConfig {
        nqn: nqn.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        allow_any_host: true,
    });
    cfg.restart_cmd = Some(format!("env | grep '^BATON_' > {}", env_file.display()));
    let image_dir = dir.clone();
    let resolved = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let r2 = resolved.clone();
    let resolver: standby::host::ImageResolver = Box::new(move |t: &[u8]| {
        r2.lock().unwrap().push(t.to_vec());
        if t.len() != 40 {
            return Err(format!("tag of {} bytes", t.len()));
        }
        Ok(image_dir.join(format!("image-{}", u64::from_le_bytes(t[..8].try_into().unwrap()))))
    });
    let host = StandbyHost::start_with_target(cfg, Some(resolver), target.clone()).unwrap();
    standby::host::register_rpcs_for(&mut reg, host.clone());
    let hb_addr = host.heartbeat_addr().unwrap();

    // The primary is alive: direct heartbeats and a relay that hears it.
    let relay: SocketAddr = "10.1.1.1:7000".parse().unwrap();
    let stop_hb = Arc::new(AtomicBool::new(false));
    let hb = heartbeats("pvol", hb_addr, stop_hb.clone());
    // Junk on the heartbeat port is counted, not fatal.
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"not a heartbeat", hb_addr)
        .unwrap();
    wait_until(WAIT, "heartbeats seen", || {
        let st = host.status();
        st.detector.volumes[0].heartbeats >= 3 && st.bad_datagrams == 1
    });
    assert_eq!(host.status().detector.volumes[0].epoch, 2);

    // 1. The standby<->primary link is cut; the relay still hears the primary. Run for 3x
    //    the timeout: no failover (the detector's rule, not a timing check).
    stop_hb.store(true, Ordering::Release);
    let sent = hb.join().unwrap();
    assert!(sent > 0);
    let cut = Instant::now();
    while cut.elapsed() < Duration::from_millis(3000) {
        host.relay_report(relay, "pvol", 5, true);
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = host.status();
    assert!(st.failover.is_none(), "failed over while a relay hears the primary");
    assert!(st.detector.primary_alive);
    assert!(
        st.detector.volumes[0].direct_age_ms.unwrap() >= 1000,
        "{:?}",
        st.detector
    );

    // 2. The relay loses the primary too: failover.
    host.relay_report(relay, "pvol", 5, false);
    let rep = host.wait_failover(WAIT).expect("failover finishes");
    assert_eq!(rep.state, FailoverState::Done, "{rep:?}");
    // No relay is connected to this standby (the relay above is only a report): the drain
    // waits its grace for one, then goes on and says so.
    assert!(rep.error.is_none(), "{rep:?}");
    assert_eq!(rep.warnings.len(), 1, "{rep:?}");
    assert!(rep.warnings[0].contains("relays unreachable"), "{rep:?}");
    assert_eq!(rep.drain.len(), 1, "{rep:?}");
    assert!(rep.drain[0].relays_unreachable && !rep.drain[0].timed_out, "{rep:?}");
    assert!(rep.drained_us.is_some(), "{rep:?}");
    let v = &rep.volumes[0];
    assert_eq!((v.epoch, v.last_lsn, v.generation), (2, 3, 2), "{rep:?}");
    assert_eq!(v.tag, hex(&tag(2)));
    assert_eq!(v.nsid, Some(1));
    assert_eq!(*resolved.lock().unwrap(), vec![tag(2)]);
    println!(
        "failover after detection: rolled back {:?} us, promoted {:?} us, exported {:?} us, \
         image resolved {:?} us, application started {:?} us",
        rep.rolled_back_us, rep.promoted_us, rep.exported_us, rep.image_resolved_us, rep.app_started_us
    );
    let (t1, t2, t3, t4, t5) = (
        rep.rolled_back_us.unwrap(),
        rep.promoted_us.unwrap(),
        rep.exported_us.unwrap(),
        rep.image_resolved_us.unwrap(),
        rep.app_started_us.unwrap(),
    );
    assert!(t1 <= t2 && t2 <= t3 && t3 <= t4 && t4 <= t5, "steps in order");
    assert_eq!(rep.rto_us, Some(t5));
    let st = standby::registry::with_standby("sa", |v| (v.promoted(), v.generation())).unwrap();
    assert_eq!(st, (true, 2));

    // Exported: the data of restart point 2, not the rolled-back write of epoch 3.
    let addr: SocketAddr = format!("{}:{}", rep.traddr.as_ref().unwrap(), rep.trsvcid.unwrap())
        .parse()
        .unwrap();
    let opts = HostOpts {
        timeout: WAIT,
        ..HostOpts::default()
    };
    let mut c = Controller::connect(addr, nqn, &opts).unwrap();
    let mut q = c.create_io_qpair().unwrap();
    assert!(
        read_block(&mut q, 1, 3).iter().all(|&b| b == 0xaa),
        "block 3 at epoch 1's write"
    );
    assert!(
        read_block(&mut q, 1, 4).iter().all(|&b| b == 0xbb),
        "block 4 at epoch 2's write"
    );
    assert!(
        read_block(&mut q, 1, 5).iter().all(|&b| b == 0),
        "block 5 never written"
    );
    drop(q);
    c.disconnect();

    // The restart command ran with the environment.
    let app = host.wait_app_exit(WAIT).expect("restart command exits");
    assert_eq!(app.exit_code, Some(0), "{app:?}");
    let text = std::fs::read_to_string(&env_file).unwrap();
    let env: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let image = dir.join("image-2");
    assert_eq!(env.get("BATON_IMAGE"), Some(&image.to_str().unwrap()), "{text}");
    assert_eq!(env.get("BATON_TRADDR"), Some(&"127.0.0.1"), "{text}");
    assert_eq!(
        env.get("BATON_TRSVCID"),
        Some(&addr.port().to_string().as_str()),
        "{text}"
    );
    assert_eq!(env.get("BATON_SUBNQN"), Some(&nqn), "{text}");
    assert_eq!(env.get("BATON_NSID"), Some(&"1"), "{text}");
    assert_eq!(env.get("BATON_EPOCH"), Some(&"2"), "{text}");
    assert_eq!(env.get("BATON_GENERATION"), Some(&"2"), "{text}");
    assert_eq!(env.get("BATON_RESTART_TAG"), Some(&hex(&tag(2)).as_str()), "{text}");

    // 3. RPC: the status carries the timeline; a second declaration is refused.
    let s = call(&reg, "standby_host_get_status", json!({})).unwrap();
    assert_eq!(s["failover"]["state"], json!("done"), "{s}");
    assert_eq!(s["failover"]["cause"], json!("timeout"), "{s}");
    assert_eq!(s["failover"]["app"]["exit_code"], json!(0), "{s}");
    assert_eq!(
        s["detector"]["volumes"][0]["relays"][0]["relay"],
        json!("10.1.1.1:7000")
    );
    assert!(s["failover"]["rto_us"].is_u64(), "{s}");
    let e = call(&reg, "standby_host_declare_failure", json!({})).unwrap_err();
    assert_eq!(e.code, -libc::EALREADY, "{e:?}");
    let e = call(&reg, "standby_host_declare_failure", json!({"why": "x"})).unwrap_err();
    assert!(e.message.contains("why"), "{e:?}");
    host.stop();

    // A second host, automatic failover off: silence is reported, not acted on; an RPC
    // declaration fails over.
    make_standby(&reg, "sb");
    let mut cfg = StandbyHostConfig::new(vec![FailoverVolume {
        primary_volume: "qvol".into(),
        standby: "sb".into(),
        head_bdev: None,
        nsid: Some(7),
    }]);
    cfg.timeout_ms = 50;
    cfg.auto_failover = false;
    cfg.export = Some(ExportConfig {
        nqn: "nqn.2016-06.io.baton:failover-test2".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        allow_any_host: true,
    });
    let h2 = StandbyHost::start_with_target(cfg, None, target.clone()).unwrap();
    let mut reg2 = Registry::new();
    standby::host::register_rpcs_for(&mut reg2, h2.clone());
    h2.relay_report(relay, "qvol", 0, true);
    wait_until(WAIT, "silence detected", || h2.status().detector.decided.is_some());
    std::thread::sleep(Duration::from_millis(50));
    assert!(h2.status().failover.is_none(), "auto failover is off");
    call(&reg2, "standby_host_declare_failure", json!({"reason": "drill"})).unwrap();
    let rep = h2.wait_failover(WAIT).expect("declared failover finishes");
    assert_eq!(rep.state, FailoverState::Done, "{rep:?}");
    assert_eq!(rep.volumes[0].nsid, Some(7));
    assert_eq!(rep.volumes[0].epoch, 2);
    assert!(
        rep.app.is_none() && rep.image.is_none(),
        "no restart command configured"
    );
    h2.stop();

    // A host without volumes is refused.
    assert!(StandbyHost::start_with_target(StandbyHostConfig::new(vec![]), None, target.clone()).is_err());

    target.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    reactors.shutdown();
    reactors.wait();
}
