//! Traffic-based keep-alive: commands on any queue keep a controller alive, a silent one is
//! dropped only after KATO plus the grace, an I/O queue Connect for the dropped controller
//! gets the right error, and a fresh admin Connect gets a new controller that answers at
//! once. The assertions count outcomes; the only time bounds are lower bounds (the target
//! must not drop early) and generous limits for things that must happen eventually.

mod common;

use common::*;
use nvme::host::{HostError, HostOpts};
use nvme::nvmf::keepalive::grace_ms;
use nvme::spec::fabrics::connect_invalid_param_fields;
use nvme::spec::identify::IdentifyController;
use nvme::spec::{Plain, Status};
use std::time::{Duration, Instant};

#[test]
fn io_commands_alone_keep_the_controller_alive() {
    let f = fixture();
    let kato = 1000u32;
    let o = HostOpts {
        kato_ms: kato,
        ..opts()
    };
    let (mut c, mut q) = connect(&f, &o);
    // No Keep Alive at all: only reads and writes on the I/O queue, for 2.5 times as long as
    // a silent controller lives (KATO + grace).
    let life = Duration::from_millis(u64::from(kato) + grace_ms(kato));
    let start = Instant::now();
    let mut ios = 0u64;
    while start.elapsed() < life * 5 / 2 {
        write_read(&mut q, ios % 1000, 8, ios as u8);
        ios += 1;
    }
    assert!(ios > 10, "only {ios} I/Os");
    // The admin queue saw nothing all along and still answers.
    c.keep_alive()
        .expect("controller dropped although its I/O queue was busy");
    write_read(&mut q, 1, 1, 1);
    c.disconnect();
}

#[test]
fn identify_advertises_traffic_based_keep_alive() {
    let f = fixture();
    let (mut c, _q) = connect(&f, &opts());
    let id = c.identify(1, 0).unwrap();
    let id = IdentifyController::read_from(&id).unwrap();
    assert_eq!(id.ctratt & (1 << 6), 1 << 6, "CTRATT.TBKAS");
    assert_eq!(id.kas, 1);
    c.disconnect();
}

#[test]
fn silent_controller_dropped_after_grace_then_reconnect_answers() {
    let f = fixture();
    let kato = 300u32;
    let o = HostOpts {
        kato_ms: kato,
        ..opts()
    };
    let (mut c, mut q) = connect(&f, &o);
    let old = c.cntlid();
    // Taken before the last commands are sent: the target hears them later, so its
    // timer restarts after this instant whatever the machine's load (no slack needed).
    let last = Instant::now();
    write_read(&mut q, 3, 2, 7);
    // Silence until the target closes the I/O queue with its controller.
    let limit = last + T;
    while q.poll(&mut |_| {}).is_ok() {
        assert!(Instant::now() < limit, "keep-alive timeout not enforced");
        std::thread::sleep(Duration::from_millis(20));
    }
    let waited = last.elapsed();
    let life = Duration::from_millis(u64::from(kato) + grace_ms(kato));
    assert!(
        waited >= life,
        "dropped after {waited:?}, before KATO + grace ({life:?})"
    );
    assert!(c.keep_alive().is_err());
    // An I/O queue for the vanished controller: Invalid Parameters, IATTR 1, IPO 16 (CNTLID).
    match c.create_io_qpair_with_qid(2) {
        Err(HostError::Connect { status, dw0 }) => {
            assert!(status.same_code(Status::CONNECT_INVALID_PARAMETERS), "{status}");
            assert_eq!(connect_invalid_param_fields(dw0), (true, 16));
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("I/O queue connected to a dropped controller"),
    }
    // A fresh admin Connect: a new controller, answering at once.
    let (mut c2, mut q2) = connect(&f, &o);
    assert_ne!(c2.cntlid(), old);
    c2.keep_alive().unwrap();
    write_read(&mut q2, 3, 2, 8);
    c2.disconnect();
}

#[test]
fn many_drops_and_reconnects_each_get_a_working_controller() {
    // The host's recovery loop in miniature: drop (keep-alive), reconnect, verify I/O.
    let f = fixture();
    // KATO long enough that a test thread starved for a moment on a loaded machine does
    // not lose the controller between its Connect and its first I/O.
    let o = HostOpts {
        kato_ms: 1000,
        ..opts()
    };
    let mut ids = Vec::new();
    for round in 0..3u8 {
        let (c, mut q) = connect(&f, &o);
        ids.push(c.cntlid());
        write_read(&mut q, u64::from(round) * 8, 8, round);
        let limit = Instant::now() + T;
        while q.poll(&mut |_| {}).is_ok() {
            assert!(Instant::now() < limit, "round {round}: not dropped");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(c);
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "controller IDs reused: {ids:?}");
    let (c, mut q) = connect(&f, &opts());
    write_read(&mut q, 0, 8, 0);
    c.disconnect();
}
