//! Restart points in band (R15) end to end in one process: the NVMe/TCP host library
//! writes to a replicated volume exported by the NVMe/TCP target and declares restart points
//! with the vendor command 81h on the same I/O queue; an in-process relay forwards to the
//! test sink, which must see each restart point right after exactly the writes that
//! completed before it, with its tag. Also: the error statuses (not replicated, oversize,
//! malformed), Flush as a restart point, the policy-unmet status and unregistration when
//! the volume stops. One test function because a process has one reactor set.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use nvme::host::{self, cmd, Controller, Data, HostError, HostOpts, Qpair};
use nvme::nvmf::{SubsystemParams, Target};
use nvme::spec::Status;
use relay::relay::{Relay, RelayConfig};
use relay::volume::{AckPolicy, OnRelayDown, ReplicatedVolume, VolumeConfig};

const WAIT: Duration = Duration::from_secs(30);
const VOLUME_CORE: u32 = 0;
const RELAY_CORE: u32 = 1;
const BS: usize = 4096;

fn start_relay(dir: &std::path::Path, standby: Option<SocketAddr>) -> Arc<Relay> {
    let mut cfg = RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), dir);
    cfg.standby = standby.map(Into::into);
    cfg.forwarder = true;
    cfg.core = Some(RELAY_CORE);
    cfg.segment_bytes = 1 << 20;
    Relay::start(cfg).expect("relay starts")
}

fn volume(name: &str, relays: Vec<SocketAddr>, flush_rp: bool) -> Arc<ReplicatedVolume> {
    let base = engine::bdev::malloc::create(&format!("{name}_base"), 1024, BS as u32, None).unwrap();
    let mut cfg = VolumeConfig::new(name, relays);
    cfg.ack_policy = AckPolicy::All;
    cfg.on_relay_down = OnRelayDown::Block;
    cfg.relay_down_timeout_ms = 300;
    cfg.core = Some(VOLUME_CORE);
    cfg.flush_is_restart_point = flush_rp;
    let v = ReplicatedVolume::create(cfg, base).expect("volume");
    engine::bdev::register(v.clone()).expect("register the volume bdev");
    v
}

fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Writes block `lba` of namespace `nsid` stamped with `seq` (first 8 bytes).
fn write(q: &mut Qpair, nsid: u32, lba: u64, seq: u64) -> Status {
    let mut b = engine::buf::DmaBuf::alloc(BS);
    fill(&mut b, seq);
    q.sync(cmd::write(nsid, lba, 1), Data::ToCtrl(b), WAIT)
        .unwrap()
        .status()
}

fn rp_status(q: &mut Qpair, nsid: u32, tag_len: u32, data: &[u8]) -> Status {
    let d = if data.is_empty() {
        Data::None
    } else {
        let mut b = engine::buf::DmaBuf::alloc(data.len());
        b.copy_from_slice(data);
        Data::ToCtrl(b)
    };
    q.sync(cmd::restart_point(nsid, tag_len), d, WAIT).unwrap().status()
}

#[test]
fn restart_points_in_band_on_the_nvme_queue() {
    let reactors = Reactors::start(ReactorOpts {
        cores: vec![VOLUME_CORE, RELAY_CORE],
        pin: false,
        idle: IdleMode::Adaptive {
            idle_before_sleep_us: 2000,
            sleep_us_max: 200,
        },
    })
    .unwrap();
    let root = TempDir::new("/dev/shm", "nvme-rp");
    let sink = Sink::start();
    let r1 = start_relay(&root.0.join("r1"), Some(sink.addr));
    let r2 = start_relay(&root.0.join("r2"), None);
    let v1 = volume("nvrp_vol1", vec![r1.listen_addr()], false);
    let v2 = volume("nvrp_vol2", vec![r2.listen_addr()], true);
    let v3 = volume("nvrp_vol3", vec![dead_addr()], false);
    let plain = engine::bdev::malloc::create("nvrp_plain", 1024, BS as u32, None).unwrap();
    engine::bdev::register(plain).unwrap();

    let target = Target::new();
    let nqn = "nqn.2016-06.io.baton:nvrp";
    target
        .create_subsystem(SubsystemParams {
            nqn: nqn.into(),
            allow_any_host: true,
            ..Default::default()
        })
        .unwrap();
    for (bdev, nsid) in [("nvrp_vol1", 1), ("nvrp_plain", 2), ("nvrp_vol2", 3), ("nvrp_vol3", 4)] {
        assert_eq!(target.add_namespace(nqn, bdev, Some(nsid), None).unwrap(), nsid);
    }
    let addr = target.add_listener(nqn, "127.0.0.1:0".parse().unwrap()).unwrap();
    let opts = HostOpts {
        timeout: WAIT,
        ..HostOpts::default()
    };
    let mut c = Controller::connect(addr, nqn, &opts).unwrap();
    let mut q = c.create_io_qpair().unwrap();

    // 1. Ten writes, a restart point, five writes, a restart point (in-capsule tags).
    for seq in 1..=10u64 {
        assert!(write(&mut q, 1, seq, seq).is_success(), "write {seq}");
    }
    assert_eq!(host::declare_restart_point(&mut q, 1, b"app-state-1", WAIT), Ok(1));
    for seq in 11..=15u64 {
        assert!(write(&mut q, 1, seq, seq).is_success(), "write {seq}");
    }
    assert_eq!(host::declare_restart_point(&mut q, 1, b"app-state-2", WAIT), Ok(2));
    // An empty tag, through a queue that sends all data by R2T, after one more write.
    let mut q_r2t = {
        let mut o = opts.clone();
        o.in_capsule_max = Some(0);
        let mut c2 = Controller::connect(addr, nqn, &o).unwrap();
        let q = c2.create_io_qpair().unwrap();
        std::mem::forget(c2); // its admin queue stays open until the target shuts down
        q
    };
    assert!(write(&mut q_r2t, 1, 16, 16).is_success());
    assert_eq!(host::declare_restart_point(&mut q_r2t, 1, b"", WAIT), Ok(3));
    assert_eq!(host::declare_restart_point(&mut q_r2t, 1, &[7u8; 256], WAIT), Ok(4));

    sink.wait_delivered(|s| s.delivered.len() >= 20, WAIT, "16 writes + 4 restart points");
    {
        let s = sink.state.lock().unwrap();
        let d = &s.delivered;
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        for (i, op) in d.iter().enumerate() {
            assert_eq!(op.lsn, i as u64 + 1, "LSN order");
        }
        let writes = |r: std::ops::Range<usize>, first_seq: u64| {
            for (k, i) in r.enumerate() {
                assert_eq!(
                    (d[i].kind, d[i].stamp),
                    (1, first_seq + k as u64),
                    "write at LSN {}",
                    d[i].lsn
                );
            }
        };
        let point = |i: usize, epoch: u64, tag: &[u8]| {
            assert_eq!(d[i].kind, 4, "restart point at LSN {}", d[i].lsn);
            assert_eq!(d[i].offset_blocks, epoch, "epoch");
            assert_eq!(d[i].last_lsn, d[i].lsn - 1, "covers everything before it");
            assert_eq!(d[i].tag, tag, "tag of epoch {epoch}");
        };
        writes(0..10, 1);
        point(10, 1, b"app-state-1");
        writes(11..16, 11);
        point(16, 2, b"app-state-2");
        writes(17..18, 16);
        point(18, 3, b"");
        point(19, 4, &[7u8; 256]);
        assert_eq!(d.len(), 20, "nothing else was replicated");
    }

    // 2. Errors, each leaving the queue working: a namespace that is not replicated, an
    //    oversize tag, a tag length that does not match the data.
    assert_eq!(
        host::declare_restart_point(&mut q, 2, b"nope", WAIT),
        Err(HostError::Status(Status::INVALID_OPCODE))
    );
    assert!(write(&mut q, 2, 0, 99).is_success(), "the plain namespace still writes");
    assert_eq!(rp_status(&mut q, 1, 300, &[1u8; 300]), Status::INVALID_FIELD);
    assert_eq!(rp_status(&mut q, 1, 5, &[1u8; 8]), Status::INVALID_FIELD);
    assert_eq!(rp_status(&mut q_r2t, 1, 5, &[1u8; 8]), Status::INVALID_FIELD);
    assert!(
        write(&mut q, 1, 17, 17).is_success(),
        "a write after the malformed ones"
    );
    assert_eq!(host::declare_restart_point(&mut q, 1, b"after-errors", WAIT), Ok(5));
    sink.wait_delivered(|s| s.delivered.len() >= 22, WAIT, "write 17 + restart point 5");
    {
        let s = sink.state.lock().unwrap();
        let d = &s.delivered;
        assert_eq!(d.len(), 22, "the refused restart points were never replicated");
        assert_eq!((d[20].kind, d[20].stamp), (1, 17));
        assert_eq!(
            (d[21].kind, d[21].offset_blocks, &d[21].tag[..]),
            (4, 5, &b"after-errors"[..])
        );
    }

    // 3. Outstanding writes and a restart point together: the point covers at least every
    //    write completed before it was submitted (NVMe orders no outstanding commands).
    let mut seqs = Vec::new();
    for seq in 18..=25u64 {
        let mut b = engine::buf::DmaBuf::alloc(BS);
        fill(&mut b, seq);
        q.submit(cmd::write(1, seq, 1), Data::ToCtrl(b), seq).unwrap();
        seqs.push(seq);
    }
    let epoch = host::declare_restart_point(&mut q, 1, b"mixed", WAIT).unwrap();
    assert_eq!(epoch, 6);
    let mut done = 0;
    wait_until(WAIT, "outstanding writes complete", || {
        q.poll(&mut |c| {
            assert!(c.status().is_success(), "write {}: {}", c.user, c.status());
            done += 1;
        })
        .unwrap();
        done == seqs.len()
    });
    sink.wait_delivered(|s| s.delivered.len() >= 31, WAIT, "8 writes + restart point 6");
    {
        let s = sink.state.lock().unwrap();
        let d = &s.delivered[22..31];
        let rp = d.iter().find(|o| o.kind == 4).expect("restart point 6");
        assert_eq!((rp.offset_blocks, &rp.tag[..]), (6, &b"mixed"[..]));
        assert!(rp.last_lsn >= 22, "covers every write completed before it");
        assert_eq!(d.iter().filter(|o| o.kind == 1).count(), 8);
    }

    // 4. Flush as a restart point (vol2: flush_is_restart_point): the Flush completes once
    //    the point (empty tag) is replicated and reports its epoch.
    assert!(write(&mut q, 3, 0, 1).is_success());
    let f = q.sync(cmd::flush(3), Data::None, WAIT).unwrap();
    assert!(f.status().is_success(), "{}", f.status());
    assert_eq!(host::restart_point_epoch(&f.cqe), 1);
    assert_eq!(host::declare_restart_point(&mut q, 3, b"v2", WAIT), Ok(2));
    wait_until(WAIT, "vol2 epoch 2 on its relay", || v2.status().epoch == 2);
    // A Flush on vol1 (option off) declares nothing.
    assert!(q.sync(cmd::flush(1), Data::None, WAIT).unwrap().status().is_success());
    assert_eq!(host::declare_restart_point(&mut q, 1, b"", WAIT), Ok(7));

    // 5. vol3's only relay is dead (block mode): once it is marked down, a restart point
    //    fails at once with Namespace Not Ready, like writes fail.
    wait_until(WAIT, "vol3 writes blocked", || v3.status().writes_blocked);
    assert_eq!(
        host::declare_restart_point(&mut q, 4, b"x", WAIT),
        Err(HostError::Status(Status::NAMESPACE_NOT_READY))
    );
    assert!(write(&mut q, 1, 30, 30).is_success(), "other namespaces are unaffected");

    // 6. Stopping a volume unregisters it: its namespace answers Invalid Opcode.
    v3.stop(WAIT).unwrap();
    assert!(nvme::nvmf::restart::lookup("nvrp_vol3").is_none());
    assert_eq!(
        host::declare_restart_point(&mut q, 4, b"x", WAIT),
        Err(HostError::Status(Status::INVALID_OPCODE))
    );
    assert_eq!(host::declare_restart_point(&mut q, 1, b"end", WAIT), Ok(8));

    // 7. The RPC path: replication_create_volume takes flush_is_restart_point, save_config
    //    keeps it, the volume is registered as a sink until replication_delete_volume.
    let mut reg = engine::rpc::Registry::new();
    relay::rpc::register_rpcs(&mut reg);
    let base = engine::bdev::malloc::create("nvrp_vol4_base", 64, BS as u32, None).unwrap();
    engine::bdev::register(base).unwrap();
    let call = |m: &str, p: serde_json::Value| reg.call_blocking(m, Some(p), 100, Duration::from_millis(10));
    call(
        "replication_create_volume",
        serde_json::json!({"name": "nvrp_vol4", "base_bdev": "nvrp_vol4_base",
            "relays": [r2.listen_addr().to_string()], "flush_is_restart_point": true}),
    )
    .unwrap();
    let saved = reg.subsystem_config("replication").unwrap();
    let e = saved
        .iter()
        .find(|e| e.params.as_ref().is_some_and(|p| p["name"] == "nvrp_vol4"))
        .expect("save_config lists nvrp_vol4");
    assert_eq!(e.params.as_ref().unwrap()["flush_is_restart_point"], true);
    assert!(nvme::nvmf::restart::lookup("nvrp_vol4").is_some());
    assert_eq!(
        relay::rpc::volume("nvrp_vol4").map(|v| v.config().flush_is_restart_point),
        Some(true)
    );
    call("replication_delete_volume", serde_json::json!({"name": "nvrp_vol4"})).unwrap();
    assert!(nvme::nvmf::restart::lookup("nvrp_vol4").is_none());

    c.disconnect();
    target.shutdown();
    for v in [&v1, &v2] {
        v.stop(WAIT).unwrap();
    }
    for r in [&r1, &r2] {
        r.stop(WAIT).unwrap();
    }
    drop(sink);
    reactors.shutdown();
    reactors.wait();
}
