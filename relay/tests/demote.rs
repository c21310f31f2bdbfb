//! Demoting a primary for a planned switchover (`relay/src/volume/demote.rs`), in one
//! process over real loopback TCP: writes under way while the demote arrives are either
//! numbered before the final restart point (and acknowledged) or failed (and never
//! numbered); the sink behind the relays gets every acknowledged write before the final
//! point and nothing after it; a quiesced volume's last restart point is reused; restart
//! points and block syncs are refused while demoted; resume lifts it.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use relay::relay::{Relay, RelayConfig};
use relay::volume::{ReplicatedVolume, VolumeConfig, VolumeError};

const WAIT: Duration = Duration::from_secs(30);
const VOLUME_CORE: u32 = 0;
const RELAY_CORE: u32 = 1;
const KIND_RESTART_POINT: u8 = 4;

fn start_relay(dir: &std::path::Path, standby: SocketAddr, forwarder: bool) -> Arc<Relay> {
    let mut cfg = RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), dir);
    cfg.standby = Some(standby.into());
    cfg.forwarder = forwarder;
    cfg.core = Some(RELAY_CORE);
    cfg.segment_bytes = 1 << 20;
    Relay::start(cfg).expect("relay starts")
}

#[test]
fn demote_fences_every_write_behind_the_final_restart_point() {
    let _reactors = Reactors::start(ReactorOpts {
        cores: vec![VOLUME_CORE, RELAY_CORE],
        pin: false,
        idle: IdleMode::Poll,
    })
    .unwrap();
    let root = TempDir::new("/dev/shm", "demote");
    let sink = Sink::start();
    let r1 = start_relay(&root.0.join("r1"), sink.addr, true);
    let r2 = start_relay(&root.0.join("r2"), sink.addr, false);
    let base = engine::bdev::malloc::create("dm_base", 1024, 4096, None).unwrap();
    let mut cfg = VolumeConfig::new("dm", vec![r1.listen_addr(), r2.listen_addr()]);
    cfg.relay_down_timeout_ms = 300;
    cfg.core = Some(VOLUME_CORE);
    let v = ReplicatedVolume::create(cfg, base).expect("volume");

    // 1. A quiesced application: writes, its restart point, nothing after. The demote
    //    reuses that point (the standby keeps the application's own tag).
    let res = collect(
        &drive_writes(VOLUME_CORE, v.clone(), 8, 200, Arc::new(AtomicBool::new(false))),
        200,
        WAIT,
        "first writes",
    );
    assert!(res.iter().all(|r| matches!(r, WriteResult::Ok(_))));
    let app_rp = v.declare_restart_point_wait(b"app-rp-1", WAIT).unwrap();
    let fin = v.demote(b"switchover", WAIT).unwrap();
    assert_eq!(
        fin, app_rp,
        "nothing written since: the application's point is the final one"
    );
    assert!(v.fence_reused() && v.demoted());
    // Writes now fail at once, with the reason; restart points and syncs are refused.
    let res = collect(
        &drive_writes_from(VOLUME_CORE, v.clone(), 4, 1000, 16, Arc::new(AtomicBool::new(false))),
        16,
        WAIT,
        "writes while demoted",
    );
    assert!(res.iter().all(|r| matches!(r, WriteResult::Failed(_))), "{res:?}");
    assert!(matches!(
        v.declare_restart_point_wait(b"late", WAIT),
        Err(VolumeError::Demoted(_))
    ));
    assert!(v.start_sync(true, 0, WAIT).is_err());
    assert!(matches!(v.demote(b"again", WAIT), Err(VolumeError::Busy(_))));

    // 2. Resume, then demote while a writer at QD 16 is running: the writes numbered
    //    before the final point are acknowledged, every later one fails, and the sink
    //    (the standby's side) gets exactly the acknowledged ones before the point.
    v.resume(WAIT).unwrap();
    assert!(!v.demoted());
    let stop = Arc::new(AtomicBool::new(false));
    let rx = drive_writes_from(VOLUME_CORE, v.clone(), 16, 10_000, 1_000_000, stop.clone());
    let early = collect(&rx, 500, WAIT, "writes before the demote");
    assert!(early.iter().all(|r| matches!(r, WriteResult::Ok(_))), "{early:?}");
    let fin = v.demote(b"switchover", WAIT).unwrap();
    assert!(!v.fence_reused(), "writes ran up to the demote: a new final point");
    assert_eq!(fin.epoch, app_rp.epoch + 1);
    // The writer sees failures from now on; stop it and take every result.
    let mut acked: Vec<u64> = early
        .iter()
        .filter_map(|r| match r {
            WriteResult::Ok(s) => Some(*s),
            _ => None,
        })
        .collect();
    let mut failed = 0u64;
    loop {
        match rx.recv_timeout(WAIT).expect("the writer keeps completing") {
            WriteResult::Ok(s) => acked.push(s),
            WriteResult::Failed(_) => {
                failed += 1;
                if failed >= 32 {
                    break;
                }
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Ok(r) = rx.recv_timeout(Duration::from_millis(200)) {
        if let WriteResult::Ok(s) = r {
            acked.push(s);
        }
    }
    sink.wait_delivered(
        |s| s.delivered.iter().any(|d| d.lsn == fin.lsn),
        WAIT,
        "the final point",
    );
    let s = sink.state.lock().unwrap();
    let fin_op = s.delivered.iter().find(|d| d.lsn == fin.lsn).unwrap();
    assert_eq!(fin_op.kind, KIND_RESTART_POINT);
    assert_eq!(fin_op.tag, b"switchover");
    let after: Vec<_> = s.delivered.iter().filter(|d| d.lsn > fin.lsn).collect();
    assert!(after.is_empty(), "ops after the final point: {after:?}");
    let before: std::collections::BTreeSet<u64> = s
        .delivered
        .iter()
        .filter(|d| d.lsn < fin.lsn && d.kind != KIND_RESTART_POINT)
        .map(|d| d.stamp)
        .collect();
    let lost: Vec<u64> = acked.iter().copied().filter(|a| !before.contains(a)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged writes not before the final point: {lost:?}"
    );
    drop(s);
    wait_until(WAIT, "the status shows the fence", || {
        let st = v.status();
        st.demoted && st.fence_lsn == fin.lsn
    });
    v.stop(WAIT).unwrap();
}
