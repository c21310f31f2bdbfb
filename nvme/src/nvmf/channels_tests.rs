//! Unit tests of `channels.rs`: the namespace table and its refresh, ANA, restart point
//! sinks, and submit / poll / retry on RAM bdevs (no reactor: channels are polled here).

use super::*;
use crate::nvmf::ana::{AnaState, ListenerAna};
use crate::nvmf::restart::{RestartPointDone, SinkToken};
use crate::nvmf::{SubsystemParams, Target, TransportOpts};
use engine::bdev::CHANNEL_QUEUE_DEPTH_MAX;
use std::sync::atomic::AtomicU32;

const BLOCKS: u64 = 64;
const BLOCK_SIZE: u32 = 512;

/// A target whose subsystem has one RAM namespace (NSID 1) over a bdev of its own.
struct Fixture {
    target: Arc<Target>,
    nqn: String,
    bdev: String,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let target = Target::new();
        let nqn = format!("nqn.2016-06.io.baton:channels-{tag}");
        target
            .create_subsystem(SubsystemParams {
                nqn: nqn.clone(),
                allow_any_host: true,
                ..Default::default()
            })
            .unwrap();
        let f = Fixture {
            target,
            nqn,
            bdev: Fixture::malloc(&format!("ChannelsTest-{tag}-0")),
        };
        f.target.add_namespace(&f.nqn, &f.bdev, Some(1), None).unwrap();
        f
    }

    /// Registers a RAM bdev named `name`.
    fn malloc(name: &str) -> String {
        let b = engine::bdev::malloc::create(name, BLOCKS, BLOCK_SIZE, None).unwrap();
        engine::bdev::register(b).unwrap();
        name.to_string()
    }

    fn subsys(&self) -> Arc<Subsystem> {
        self.target.subsystem(&self.nqn).unwrap()
    }

    /// A controller of the subsystem, through a listener whose groups are in `ana` (None:
    /// no ANA states, every group optimized).
    fn ctrlr(&self, ana: Option<AnaState>) -> Controller {
        let ana = ana.map(|st| Arc::new(ListenerAna::new(([127, 0, 0, 1], 4420).into(), 4, st)));
        Controller::new(
            1,
            self.subsys(),
            "nqn.host".into(),
            [0; 16],
            0,
            TransportOpts::default(),
            ana,
        )
    }
}

fn zeroes(user_data: u64) -> IoRequest {
    IoRequest {
        op: IoOp::WriteZeroes,
        offset_blocks: 0,
        num_blocks: 1,
        buf: None,
        user_data,
    }
}

/// Polls `qc` once; returns the user data of what completed, in order.
fn poll(qc: &mut QueueChannels) -> Vec<u64> {
    let mut got = Vec::new();
    QueueChannels::poll(
        &mut (qc, &mut got),
        |o| &mut *o.0,
        |o, done| {
            o.1.extend(done.drain(..).map(|c| {
                assert!(c.result.is_ok(), "{:?}", c.result);
                c.user_data
            }))
        },
    );
    got
}

#[test]
fn namespace_lookup_refreshes_and_checks_ana() {
    let f = Fixture::new("lookup");
    let c = f.ctrlr(None);
    let mut qc = QueueChannels::new(16);
    // Empty table at generation 0: the first lookup builds it.
    let (geo, chan) = qc.namespace(&c, 1).unwrap();
    assert_eq!((geo.block_size, geo.num_blocks, chan), (BLOCK_SIZE, BLOCKS, 0));
    assert_eq!(qc.namespace(&c, 2), Err(Status::INVALID_NAMESPACE));
    assert_eq!(qc.geometry(0), Some(geo));
    assert_eq!(qc.geometry(1), None);
    assert!(qc.supports(0, IoOp::WriteZeroes));
    assert!(!qc.supports(7, IoOp::Read), "no such channel");

    let inaccessible = f.ctrlr(Some(AnaState::Inaccessible));
    assert_eq!(qc.namespace(&inaccessible, 1), Err(Status::ANA_INACCESSIBLE));
    let loss = f.ctrlr(Some(AnaState::PersistentLoss));
    assert_eq!(qc.namespace(&loss, 1), Err(Status::ANA_PERSISTENT_LOSS));
    assert_eq!(qc.namespace(&loss, 9), Err(Status::INVALID_NAMESPACE));
}

#[test]
fn refresh_keeps_channel_indexes() {
    let f = Fixture::new("refresh");
    let c = f.ctrlr(None);
    let mut qc = QueueChannels::new(16);
    qc.refresh(&f.subsys());
    assert_eq!(qc.namespace(&c, 1).unwrap().1, 0);
    // A second namespace over another bdev gets a new channel; one over the same bdev
    // shares the first.
    let other = Fixture::malloc("ChannelsTest-refresh-1");
    f.target.add_namespace(&f.nqn, &other, Some(2), None).unwrap();
    f.target.add_namespace(&f.nqn, &f.bdev, Some(3), None).unwrap();
    assert_eq!(qc.namespace(&c, 2).unwrap().1, 1);
    assert_eq!(qc.namespace(&c, 3).unwrap().1, 0);
    // Removing namespace 1 keeps both channels where they are.
    f.target.remove_namespace(&f.nqn, 1).unwrap();
    assert_eq!(qc.namespace(&c, 1), Err(Status::INVALID_NAMESPACE));
    assert_eq!(qc.namespace(&c, 2).unwrap().1, 1);
    assert_eq!(qc.namespace(&c, 3).unwrap().1, 0);
    f.target.remove_namespace(&f.nqn, 3).unwrap();
    assert_eq!(qc.namespace(&c, 2).unwrap().1, 1);
    assert_eq!(qc.geometry(0), None, "channel 0 serves no namespace now");
}

#[test]
fn submit_poll_and_retry_in_order() {
    let f = Fixture::new("retry");
    let mut qc = QueueChannels::new(16);
    qc.refresh(&f.subsys());
    assert!(poll(&mut qc).is_empty());
    for i in 0..CHANNEL_QUEUE_DEPTH_MAX as u64 {
        assert_eq!(qc.submit(0, zeroes(i)), Submitted::Accepted);
    }
    assert!(!qc.retry_pending());
    let full = CHANNEL_QUEUE_DEPTH_MAX as u64;
    assert_eq!(qc.submit(0, zeroes(full)), Submitted::Full);
    assert!(qc.retry_pending());
    // Behind the retried one, untried, even though a poll would make room.
    assert_eq!(qc.submit(0, zeroes(full + 1)), Submitted::Queued);
    let first = poll(&mut qc);
    assert_eq!(first, (0..full).collect::<Vec<_>>());
    assert!(!qc.retry_pending(), "resubmitted after the poll");
    assert_eq!(poll(&mut qc), vec![full, full + 1]);
    assert_eq!(qc.drain(), (0, true));
}

#[test]
fn handler_may_submit_while_polling() {
    let f = Fixture::new("resubmit");
    let mut qc = QueueChannels::new(4);
    qc.refresh(&f.subsys());
    qc.submit(0, zeroes(1));
    let mut seen = Vec::new();
    let busy = QueueChannels::poll(
        &mut (&mut qc, &mut seen),
        |o| &mut *o.0,
        |o, done| {
            for c in done.drain(..) {
                o.1.push(c.user_data);
                assert_eq!(o.0.submit(0, zeroes(c.user_data + 1)), Submitted::Accepted);
            }
        },
    );
    assert!(busy);
    assert_eq!(seen, vec![1]);
    assert_eq!(poll(&mut qc), vec![2]);
}

#[test]
fn close_drops_retries_and_drain_waits_for_in_flight() {
    let f = Fixture::new("close");
    let mut qc = QueueChannels::new(4);
    qc.refresh(&f.subsys());
    // The channel takes its depth, hands one back (Full), and two more wait behind it
    // untried (Queued): every one of them is either dropped by close or drained, so a
    // count of operations in flight kept from these two returns to zero.
    let submitted = CHANNEL_QUEUE_DEPTH_MAX + 3;
    for i in 0..submitted as u64 {
        qc.submit(0, zeroes(i));
    }
    assert!(qc.retry_pending());
    let dropped = qc.close();
    assert_eq!(dropped, 3);
    assert!(!qc.retry_pending());
    assert_eq!(qc.drain(), (CHANNEL_QUEUE_DEPTH_MAX, true));
    assert_eq!(dropped + CHANNEL_QUEUE_DEPTH_MAX, submitted);
    assert_eq!(qc.drain(), (0, true));
}

struct Sink {
    declared: AtomicU32,
    flush: bool,
}

impl RestartPointSink for Sink {
    fn declare(&self, _tag: &[u8], done: RestartPointDone) {
        self.declared.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        done(Ok(7));
    }
    fn flush_is_restart_point(&self) -> bool {
        self.flush
    }
}

#[test]
fn sinks_follow_the_registry() {
    let f = Fixture::new("sinks");
    let mut qc = QueueChannels::new(4);
    qc.refresh(&f.subsys());
    assert!(qc.current_sink(0).is_none());
    let sink = Arc::new(Sink {
        declared: AtomicU32::new(0),
        flush: true,
    });
    let token: SinkToken = restart::register(&f.bdev, sink.clone());
    // As last looked up until asked for the current one.
    assert!(qc.sink(0).is_none());
    let got = qc.current_sink(0).expect("registered").clone();
    assert!(got.flush_is_restart_point());
    got.declare(b"t", Box::new(|r| assert!(matches!(r, Ok(7)))));
    assert_eq!(sink.declared.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(qc.sink(0).is_some());
    assert!(qc.sink(5).is_none(), "no such channel");
    assert!(restart::unregister(&f.bdev, token));
    assert!(qc.sink(0).is_some(), "stale until looked up again");
    assert!(qc.current_sink(0).is_none());
}

/// DSM range `i` of a buffer: (NLB, SLBA) at bytes 4..8 and 8..16.
fn ranges(r: &[(u32, u64)]) -> Vec<u8> {
    let mut d = vec![0u8; r.len() * 16];
    for (i, (nlb, slba)) in r.iter().enumerate() {
        d[i * 16 + 4..i * 16 + 8].copy_from_slice(&nlb.to_le_bytes());
        d[i * 16 + 8..i * 16 + 16].copy_from_slice(&slba.to_le_bytes());
    }
    d
}

#[test]
fn unmap_ranges_checks_all_before_submitting_any() {
    let f = Fixture::new("unmap");
    let mut qc = QueueChannels::new(4);
    qc.refresh(&f.subsys());
    let ok = ranges(&[(8, 0), (0, 0), (4, BLOCKS - 4)]);
    let n = qc.unmap_ranges(0, &ok, 3, 9).unwrap();
    assert_eq!(n, Unmaps { pending: 2 }, "the empty range is skipped");
    assert_eq!(poll(&mut qc), vec![9, 9]);
    let bad = ranges(&[(8, 0), (2, BLOCKS - 1)]);
    assert_eq!(qc.unmap_ranges(0, &bad, 2, 9), Err(Status::LBA_OUT_OF_RANGE));
    assert_eq!(
        qc.unmap_ranges(0, &ok[..16], 2, 9),
        Err(Status::INVALID_FIELD),
        "short data"
    );
    assert_eq!(qc.unmap_ranges(3, &ok, 1, 9), Err(Status::INVALID_NAMESPACE));
    assert_eq!(qc.unmap_ranges(0, &[], 0, 9), Ok(Unmaps::default()));
    assert!(poll(&mut qc).is_empty(), "nothing submitted");
}
