//! A relay opens a new volume's journal off its reactor: while one volume's journal is
//! being opened (held open here by the test hook, as a large preallocation or a long
//! recovery would hold it), every other volume on the relay goes on replicating, and the
//! waiting primary's Hello is answered once the journal is open. No timed assertions:
//! the open is held until the test has counted the other volume's writes.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::*;
use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use relay::relay::{JournalOpenHook, Relay, RelayConfig};
use relay::volume::{AckPolicy, ReplicatedVolume, VolumeConfig};

const WAIT: Duration = Duration::from_secs(30);
const VOLUME_CORE: u32 = 0;
const RELAY_CORE: u32 = 1;

/// A gate the journal-opening thread waits at for volume `held` until the test opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
    }
    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

fn volume(name: &str, relay: SocketAddr) -> Arc<ReplicatedVolume> {
    let base = engine::bdev::malloc::create(&format!("{name}_base"), 4096, 4096, None).unwrap();
    let mut cfg = VolumeConfig::new(name, vec![relay]);
    cfg.ack_policy = AckPolicy::All;
    cfg.core = Some(VOLUME_CORE);
    ReplicatedVolume::create(cfg, base).expect("volume")
}

fn write_n(v: &Arc<ReplicatedVolume>, n: u64, what: &str) {
    let rx = drive_writes(VOLUME_CORE, v.clone(), 4, n, Arc::new(AtomicBool::new(false)));
    let res = collect(&rx, n, WAIT, what);
    let ok = res.iter().filter(|r| matches!(r, WriteResult::Ok(_))).count() as u64;
    assert_eq!(ok, n, "{what}: every write acknowledged: {res:?}");
}

#[test]
fn a_journal_being_opened_holds_up_no_other_volume() {
    let _reactors = Reactors::start(ReactorOpts {
        cores: vec![VOLUME_CORE, RELAY_CORE],
        pin: false,
        idle: IdleMode::Poll,
    })
    .unwrap();
    let root = TempDir::new("/dev/shm", "journal-open");
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    let mut cfg = RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), &root.0);
    cfg.core = Some(RELAY_CORE);
    cfg.segment_bytes = 1 << 20;
    cfg.journal_open_hook = Some(JournalOpenHook(Arc::new(move |name: &str| {
        if name == "held" {
            g.wait();
        }
    })));
    let relay = Relay::start(cfg).expect("relay");
    let addr = relay.listen_addr();

    let running = volume("running", addr);
    write_n(&running, 50, "before the second volume");

    let held = volume("held", addr);
    wait_until(WAIT, "the relay shows the held journal opening", || {
        relay.status().journals_opening == ["held"]
    });
    // The journal thread is parked at the gate: the relay's reactor is free, and the
    // running volume's writes are acknowledged by it meanwhile.
    write_n(&running, 200, "while the other journal opens");
    let st = relay.status();
    assert_eq!(st.journals_opening, ["held"], "still held open: {st:?}");
    assert!(
        st.volumes.iter().all(|v| v.name != "held"),
        "not a volume of the relay before its journal is open: {st:?}"
    );

    gate.release();
    wait_until(WAIT, "the held volume's relay is up", || {
        held.status().relays.iter().all(|r| r.state == "up")
    });
    write_n(&held, 100, "once its journal is open");
    write_n(&running, 10, "after");
    wait_until(WAIT, "both journals durable", || {
        let st = relay.status();
        st.journals_opening.is_empty()
            && st.volumes.iter().any(|v| v.name == "held" && v.durable_lsn >= 100)
            && st.volumes.iter().any(|v| v.name == "running" && v.durable_lsn >= 260)
    });
    relay.stop(WAIT).unwrap();
}
