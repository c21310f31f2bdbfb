//! Replication in one process, over real loopback TCP and real journals: a replicated
//! volume over a RAM bdev, relays on another reactor, the test sink as the standby.
//! One test function runs the scenarios in order because a process has one reactor set.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use relay::relay::{Relay, RelayConfig};
use relay::volume::{AckPolicy, OnRelayDown, ReplicatedVolume, VolumeConfig};

const WAIT: Duration = Duration::from_secs(30);
const VOLUME_CORE: u32 = 0;
const RELAY_CORE: u32 = 1;

fn start_relay(dir: &std::path::Path, standby: Option<SocketAddr>, forwarder: bool, port: u16) -> Arc<Relay> {
    let mut cfg = RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], port)), dir);
    cfg.standby = standby.map(Into::into);
    cfg.forwarder = forwarder;
    cfg.core = Some(RELAY_CORE);
    cfg.segment_bytes = 1 << 20;
    Relay::start(cfg).expect("relay starts")
}

fn volume(name: &str, relays: Vec<SocketAddr>, policy: AckPolicy, down: OnRelayDown) -> Arc<ReplicatedVolume> {
    let base = engine::bdev::malloc::create(&format!("{name}_base"), 4096, 4096, None).unwrap();
    let mut cfg = VolumeConfig::new(name, relays);
    cfg.ack_policy = policy;
    cfg.on_relay_down = down;
    cfg.relay_down_timeout_ms = 300;
    cfg.core = Some(VOLUME_CORE);
    ReplicatedVolume::create(cfg, base).expect("volume")
}

fn dead_addr() -> SocketAddr {
    // Bind then drop: nothing listens there afterwards.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn oks(v: &[WriteResult]) -> usize {
    v.iter().filter(|r| matches!(r, WriteResult::Ok(_))).count()
}

fn relay_durable(r: &Relay, vol: &str) -> u64 {
    r.status()
        .volumes
        .iter()
        .find(|v| v.name == vol)
        .map_or(0, |v| v.durable_lsn)
}

#[test]
fn replication_scenarios() {
    let _ = env_logger_init();
    let reactors = Reactors::start(ReactorOpts {
        cores: vec![VOLUME_CORE, RELAY_CORE],
        pin: false,
        idle: IdleMode::Poll,
    })
    .unwrap();
    let root = TempDir::new("/dev/shm", "inproc");

    // 1. Two relays (forwarder + backup) -> sink: every acknowledged write reaches the sink
    //    once, in LSN order; both journals hold everything; a restart point follows.
    let sink = Sink::start();
    let r1 = start_relay(&root.0.join("r1"), Some(sink.addr), true, 0);
    let r2 = start_relay(&root.0.join("r2"), Some(sink.addr), false, 0);
    // vol1 also sends direct heartbeats to a "standby host" (a UDP socket here).
    let hb_rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    hb_rx.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let v = {
        let base = engine::bdev::malloc::create("vol1_base", 4096, 4096, None).unwrap();
        let mut cfg = VolumeConfig::new("vol1", vec![r1.listen_addr(), r2.listen_addr()]);
        cfg.relay_down_timeout_ms = 300;
        cfg.core = Some(VOLUME_CORE);
        cfg.standby_heartbeat = Some(hb_rx.local_addr().unwrap());
        cfg.standby_heartbeat_interval_ms = 10;
        ReplicatedVolume::create(cfg, base).expect("volume")
    };
    const N: u64 = 2000;
    let rx = drive_writes(VOLUME_CORE, v.clone(), 8, N, Arc::new(AtomicBool::new(false)));
    let res = collect(&rx, N, WAIT, "vol1 writes");
    assert_eq!(
        oks(&res),
        N as usize,
        "every write completes: {:?}",
        res.iter().find(|r| matches!(r, WriteResult::Failed(_)))
    );
    wait_until(WAIT, "both relays durable to N", || {
        relay_durable(&r1, "vol1") >= N && relay_durable(&r2, "vol1") >= N
    });
    // Acks and frames are read when epoll reports the socket, not by the 1 ms safety net:
    // a broken readiness set would still pass every other check here, only slowly.
    std::thread::sleep(Duration::from_millis(50)); // status snapshots are 10 ms old at most
    for l in &v.status().relays {
        assert!(
            l.late_reads * 4 <= l.frames_sent + 8,
            "relay {}: {} of {} frames' acks read late",
            l.addr,
            l.late_reads,
            l.frames_sent
        );
    }
    for r in [&r1, &r2] {
        let st = r.status();
        let vs = st.volumes.iter().find(|x| x.name == "vol1").unwrap();
        assert!(
            vs.primary_late_reads * 4 <= vs.journal_records + 8,
            "{} of {} frames read late",
            vs.primary_late_reads,
            vs.journal_records
        );
    }
    let rp = v.declare_restart_point_wait(b"app-state-1", WAIT).unwrap();
    assert_eq!((rp.epoch, rp.lsn, rp.last_lsn), (1, N + 1, N));
    sink.wait_delivered(|s| s.delivered.len() as u64 > N, WAIT, "N writes + restart point");
    {
        let s = sink.state.lock().unwrap();
        for (i, d) in s.delivered.iter().enumerate() {
            assert_eq!(d.lsn, i as u64 + 1, "LSN order");
        }
        // One channel: LSN order is submission order, so write i carries stamp i.
        for d in &s.delivered[..N as usize] {
            assert_eq!((d.kind, d.stamp), (1, d.lsn), "write data at LSN {}", d.lsn);
        }
        assert_eq!(s.delivered[N as usize].kind, 4, "restart point delivered");
        // The backup pushes nothing: the long-distance link does not carry every byte twice.
        assert!(s.duplicates < N / 2, "{} duplicates for {N} ops", s.duplicates);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
    }
    // Direct heartbeats carry the volume's state: restart point epoch 1, LSN N + 1.
    let mut buf = [0u8; 256];
    wait_until(WAIT, "a direct heartbeat at epoch 1 / LSN N+1", || {
        let Ok((n, _)) = hb_rx.recv_from(&mut buf) else {
            return false;
        };
        let hb = rdma_transport::liveness::decode(&buf[..n]).expect("valid heartbeat");
        assert_eq!((hb.volume, hb.generation, hb.interval_ms), ("vol1", 1, 10));
        hb.epoch == 1 && hb.last_lsn == N + 1
    });
    assert!(v.heartbeats_sent() > 0);
    // The relays tell the standby they hear the primary.
    sink.wait_delivered(
        |s| s.liveness_reports >= 2 && s.last_liveness.is_some_and(|l| l.connected && l.primary_lsn > N),
        WAIT,
        "PrimaryLiveness reports from the relays",
    );
    {
        let l = sink.state.lock().unwrap().last_liveness.unwrap();
        assert_ne!(l.primary_age_ms, rdma_transport::wire::PRIMARY_AGE_NEVER);
    }
    wait_until(WAIT, "status shows both relays acked the restart point", || {
        let st = v.status();
        st.relays.len() == 2 && st.relays.iter().all(|r| r.connected && r.acked_lsn == N + 1)
    });
    // SafeUpTo released segments on both relays (1 MiB segments, ~8 MiB written).
    wait_until(WAIT, "relays release after SafeUpTo", || {
        r1.status().volumes[0].safe_lsn > N && r2.status().volumes[0].safe_lsn > N
    });

    // 2. Any-one policy with one relay dead: writes complete on the live one.
    let dead = dead_addr();
    let v2 = volume("vol2", vec![r1.listen_addr(), dead], AckPolicy::Any, OnRelayDown::Block);
    let rx = drive_writes(VOLUME_CORE, v2.clone(), 4, 200, Arc::new(AtomicBool::new(false)));
    assert_eq!(oks(&collect(&rx, 200, WAIT, "vol2 writes")), 200);
    wait_until(WAIT, "r1 holds vol2", || relay_durable(&r1, "vol2") >= 200);

    // 3. All-of-two, block, one relay dead: once it is marked down, new writes fail with
    //    an error naming the cause; the state shows it.
    let v3 = volume("vol3", vec![r1.listen_addr(), dead], AckPolicy::All, OnRelayDown::Block);
    wait_until(WAIT, "vol3 writes blocked", || v3.status().writes_blocked);
    let st = v3.status();
    assert!(st.relays.iter().any(|r| r.down), "{st:?}");
    let rx = drive_writes(VOLUME_CORE, v3.clone(), 2, 3, Arc::new(AtomicBool::new(false)));
    let res = collect(&rx, 3, WAIT, "vol3 writes");
    assert_eq!(oks(&res), 0, "block mode fails new writes: {res:?}");

    // 4. Quorum 2 of 3 with one dead: writes complete.
    let v4 = volume(
        "vol4",
        vec![r1.listen_addr(), r2.listen_addr(), dead],
        AckPolicy::Quorum(2),
        OnRelayDown::Block,
    );
    let rx = drive_writes(VOLUME_CORE, v4.clone(), 4, 100, Arc::new(AtomicBool::new(false)));
    assert_eq!(oks(&collect(&rx, 100, WAIT, "vol4 writes")), 100);

    // 5. Degraded: a relay stops mid-stream; writes go on; it restarts on the same port and
    //    journal and catches up from the primary's retention ring.
    let r3_dir = root.0.join("r3");
    let r3 = start_relay(&r3_dir, None, true, 0);
    let r3_addr = r3.listen_addr();
    let v5 = volume(
        "vol5",
        vec![r1.listen_addr(), r3_addr],
        AckPolicy::All,
        OnRelayDown::Degraded,
    );
    let rx = drive_writes(VOLUME_CORE, v5.clone(), 4, 300, Arc::new(AtomicBool::new(false)));
    assert_eq!(oks(&collect(&rx, 300, WAIT, "vol5 first writes")), 300);
    r3.stop(WAIT).unwrap();
    drop(r3);
    let rx = drive_writes(VOLUME_CORE, v5.clone(), 4, 300, Arc::new(AtomicBool::new(false)));
    assert_eq!(oks(&collect(&rx, 300, WAIT, "vol5 writes with r3 down")), 300);
    wait_until(WAIT, "ops r3 lacks are retained", || v5.status().retained_ops > 0);
    let r3 = start_relay(&r3_dir, None, true, r3_addr.port());
    wait_until(WAIT, "r3 catches up", || {
        v5.status().relays.iter().all(|r| r.acked_lsn >= 600)
    });
    wait_until(WAIT, "r3 journal holds vol5", || relay_durable(&r3, "vol5") >= 600);
    wait_until(WAIT, "retention trimmed", || v5.status().retained_ops == 0);

    // 6. A relay whose journal fails (its directory removed: the next segment cannot be
    //    made) does not leave the primary waiting for Acks that never come: it closes the
    //    connection and refuses the volume (`Unavailable`), the primary marks it down, and
    //    in degraded mode the writes go on with the other relay holding every one.
    let r4_dir = root.0.join("r4");
    let r4 = start_relay(&r4_dir, None, false, 0);
    let v6 = volume(
        "vol6",
        vec![r1.listen_addr(), r4.listen_addr()],
        AckPolicy::All,
        OnRelayDown::Degraded,
    );
    let rx = drive_writes(VOLUME_CORE, v6.clone(), 4, 100, Arc::new(AtomicBool::new(false)));
    assert_eq!(oks(&collect(&rx, 100, WAIT, "vol6 first writes")), 100);
    std::fs::remove_dir_all(r4_dir.join("vol6")).unwrap();
    // 4 KiB writes: 600 of them roll the 1 MiB segment over at least twice.
    let rx = drive_writes(VOLUME_CORE, v6.clone(), 4, 600, Arc::new(AtomicBool::new(false)));
    assert_eq!(
        oks(&collect(&rx, 600, WAIT, "vol6 writes with r4's journal failed")),
        600
    );
    let st = r4.status();
    let j = st.volumes.iter().find(|v| v.name == "vol6").expect("r4 has vol6");
    assert!(j.journal_failed, "r4 reports its failed journal: {j:?}");
    assert!(j.last_error.contains("journal"), "{}", j.last_error);
    // The status is a snapshot: a frame r4 sent before its journal failed can mark it
    // answering again for a moment, until the down timeout passes once more.
    let r4_status = || {
        v6.status()
            .relays
            .into_iter()
            .find(|r| r.addr == r4.listen_addr().to_string())
            .unwrap()
    };
    wait_until(WAIT, "the primary marks r4 down", || r4_status().down);
    let r4_link = r4_status();
    assert!(r4_link.last_error.contains("Unavailable"), "{}", r4_link.last_error);
    wait_until(WAIT, "r1 holds every vol6 write", || relay_durable(&r1, "vol6") >= 700);

    for v in [&v, &v2, &v3, &v4, &v5, &v6] {
        v.stop(WAIT).unwrap();
    }
    for r in [&r1, &r2, &r3, &r4] {
        r.stop(WAIT).unwrap();
    }
    drop(sink);
    reactors.shutdown();
    reactors.wait();
}

fn env_logger_init() -> Option<()> {
    None
}
