//! The vendor-specific Restart Point command (81h) against the target with a test sink
//! registered for the namespace's bdev: success with the epoch in DW0/DW1, in-capsule and
//! R2T tags, the error statuses, a sink that never answers (the target's deadline), late
//! answers, Flush as a restart point, discovery (Identify VS, Commands Supported log). The
//! replicated volume end to end is in `relay/tests/nvme_restart_point.rs`.

mod common;

use common::*;
use nvme::host::{self, cmd, Data, Qpair};
use nvme::nvmf::ctrlr::RESTART_POINT_VS_MARKER;
use nvme::nvmf::restart::{self, RestartPointDone, RestartPointError, RestartPointSink};
use nvme::spec::cmd::io_opc;
use nvme::spec::log::{effects, lid, COMMANDS_SUPPORTED_IOCS_OFFSET};
use nvme::spec::Status;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Answer at once with the next epoch.
    Now,
    /// Answer from another thread after a short pause.
    Later,
    /// Keep `done` (never answer unless the test does).
    Hold,
    PolicyUnmet,
    Failed,
}

struct TestSink {
    mode: Mutex<Mode>,
    /// Next epoch to hand out.
    epoch: Mutex<u64>,
    tags: Mutex<Vec<Vec<u8>>>,
    held: Mutex<Vec<RestartPointDone>>,
    flush: bool,
    timeout: Duration,
}

impl TestSink {
    fn new(first_epoch: u64, flush: bool, timeout: Duration) -> Arc<TestSink> {
        Arc::new(TestSink {
            mode: Mutex::new(Mode::Now),
            epoch: Mutex::new(first_epoch),
            tags: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            flush,
            timeout,
        })
    }
    fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }
    fn tags(&self) -> Vec<Vec<u8>> {
        self.tags.lock().unwrap().clone()
    }
}

impl RestartPointSink for TestSink {
    fn declare(&self, tag: &[u8], done: RestartPointDone) {
        self.tags.lock().unwrap().push(tag.to_vec());
        let next = || {
            let mut e = self.epoch.lock().unwrap();
            let v = *e;
            *e += 1;
            v
        };
        match *self.mode.lock().unwrap() {
            Mode::Now => done(Ok(next())),
            Mode::Later => {
                let e = next();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    done(Ok(e))
                });
            }
            Mode::Hold => self.held.lock().unwrap().push(done),
            Mode::PolicyUnmet => done(Err(RestartPointError::PolicyUnmet("relay 10.0.0.1:4420 down".into()))),
            Mode::Failed => done(Err(RestartPointError::Failed("volume deleted".into()))),
        }
    }
    fn flush_is_restart_point(&self) -> bool {
        self.flush
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
}

fn rp_status(q: &mut Qpair, tag_len: u32, data: Data) -> (Status, u64) {
    let c = q.sync(cmd::restart_point(1, tag_len), data, T).unwrap();
    (c.status(), host::restart_point_epoch(&c.cqe))
}

#[test]
fn restart_point_command_end_to_end_with_a_test_sink() {
    let f = fixture();
    let (mut c, mut q) = connect(&f, &opts());

    // Discovery: Identify Controller's vendor area and the Commands Supported log.
    let vs = &c.id.vs;
    assert_eq!(&vs[..8], RESTART_POINT_VS_MARKER);
    assert_eq!(vs[8], io_opc::RESTART_POINT);
    assert_eq!(u16::from_le_bytes([vs[9], vs[10]]), 256);
    assert_eq!(c.id.lpa & 0x02, 0x02, "LPA advertises the Commands Supported log");
    let log = c.get_log_page(lid::COMMANDS_SUPPORTED, 0, 4096, 0).unwrap();
    let entry = |at: usize| u32::from_le_bytes(log[at..at + 4].try_into().unwrap());
    let io = |opc: u8| entry(COMMANDS_SUPPORTED_IOCS_OFFSET + usize::from(opc) * 4);
    assert_eq!(io(io_opc::RESTART_POINT), effects::CSUPP);
    assert_eq!(io(io_opc::WRITE), effects::CSUPP | effects::LBCC);
    assert_eq!(io(0x80), 0, "unknown opcodes are not listed");
    assert_eq!(entry(0x06 * 4), effects::CSUPP, "Identify is listed");

    // A namespace whose bdev has no sink: Invalid Opcode, and the queue goes on.
    assert_eq!(
        host::declare_restart_point(&mut q, 1, b"tag", T),
        Err(host::HostError::Status(Status::INVALID_OPCODE))
    );
    write_read(&mut q, 0, 8, 1);

    // Register a sink for the namespace's bdev: the same queue picks it up.
    let sink = TestSink::new(1, false, Duration::from_secs(20));
    let token = restart::register(&f.bdev, sink.clone());
    assert_eq!(host::declare_restart_point(&mut q, 1, b"app-1", T), Ok(1));
    assert_eq!(host::declare_restart_point(&mut q, 1, b"", T), Ok(2));
    let big = vec![0xA5u8; 256];
    assert_eq!(host::declare_restart_point(&mut q, 1, &big, T), Ok(3));
    assert_eq!(sink.tags(), vec![b"app-1".to_vec(), Vec::new(), big.clone()]);

    // Answers from another thread, while writes flow on the same queue.
    sink.set(Mode::Later);
    let rp = q
        .submit(cmd::restart_point(1, 4), Data::ToCtrl(buf_from(b"late")), 77)
        .unwrap();
    write_read(&mut q, 100, 4, 2);
    let mut got = None;
    let deadline = std::time::Instant::now() + T;
    while got.is_none() {
        assert!(std::time::Instant::now() < deadline, "restart point never completed");
        q.poll(&mut |c| {
            if c.user == 77 {
                got = Some(c)
            }
        })
        .unwrap();
    }
    let got = got.unwrap();
    assert_eq!(got.cqe.cid, rp);
    assert!(got.status().is_success(), "{}", got.status());
    assert_eq!(host::restart_point_epoch(&got.cqe), 4);
    sink.set(Mode::Now);

    // The epoch's high half is in DW1.
    *sink.epoch.lock().unwrap() = 0x1_0000_0005;
    assert_eq!(host::declare_restart_point(&mut q, 1, b"hi", T), Ok(0x1_0000_0005));

    // Errors: oversize tag, tag length not matching the data (in-capsule); each leaves the
    // queue working.
    assert_eq!(
        rp_status(&mut q, 300, Data::ToCtrl(buf_from(&[1u8; 300]))).0,
        Status::INVALID_FIELD
    );
    write_read(&mut q, 8, 1, 3);
    assert_eq!(
        rp_status(&mut q, 5, Data::ToCtrl(buf_from(&[1u8; 8]))).0,
        Status::INVALID_FIELD
    );
    write_read(&mut q, 9, 1, 4);
    assert_eq!(rp_status(&mut q, 5, Data::None).0, Status::INVALID_FIELD);
    write_read(&mut q, 10, 1, 5);
    let n = sink.tags().len();
    // The sink's own errors.
    sink.set(Mode::PolicyUnmet);
    assert_eq!(
        host::declare_restart_point(&mut q, 1, b"x", T),
        Err(host::HostError::Status(Status::NAMESPACE_NOT_READY))
    );
    sink.set(Mode::Failed);
    assert_eq!(
        host::declare_restart_point(&mut q, 1, b"x", T),
        Err(host::HostError::Status(Status::INTERNAL_ERROR))
    );
    assert_eq!(sink.tags().len(), n + 2, "malformed commands never reached the sink");
    sink.set(Mode::Now);

    // Through R2T (no in-capsule data), and a mismatch there.
    let mut o2 = opts();
    o2.in_capsule_max = Some(0);
    let (_c2, mut q2) = connect(&f, &o2);
    let e = *sink.epoch.lock().unwrap();
    assert_eq!(host::declare_restart_point(&mut q2, 1, b"via-r2t", T), Ok(e));
    assert_eq!(sink.tags().last().unwrap(), b"via-r2t");
    assert_eq!(
        rp_status(&mut q2, 5, Data::ToCtrl(buf_from(&[2u8; 7]))).0,
        Status::INVALID_FIELD
    );
    write_read(&mut q2, 20, 2, 6);

    // Unregistered again: Invalid Opcode.
    assert!(restart::unregister(&f.bdev, token));
    assert_eq!(
        host::declare_restart_point(&mut q, 1, b"t", T),
        Err(host::HostError::Status(Status::INVALID_OPCODE))
    );
    // A plain Flush still works and declares nothing.
    let n = sink.tags().len();
    assert!(q.sync(cmd::flush(1), Data::None, T).unwrap().status().is_success());
    assert_eq!(sink.tags().len(), n);
    c.disconnect();
}

#[test]
fn restart_point_without_an_answer_times_out_and_a_late_answer_is_ignored() {
    let f = fixture();
    let (c, mut q) = connect(&f, &opts());
    let sink = TestSink::new(1, false, Duration::from_millis(200));
    let token = restart::register(&f.bdev, sink.clone());
    sink.set(Mode::Hold);
    assert_eq!(
        host::declare_restart_point(&mut q, 1, b"held", T),
        Err(host::HostError::Status(Status::NAMESPACE_NOT_READY))
    );
    // The queue still works, and the slot can be reused.
    write_read(&mut q, 0, 8, 9);
    sink.set(Mode::Now);
    let late = sink.held.lock().unwrap().pop().expect("the sink kept done");
    late(Ok(99)); // answer for the timed-out command: must not complete anything
    assert_eq!(host::declare_restart_point(&mut q, 1, b"next", T), Ok(1));
    write_read(&mut q, 8, 8, 10);
    // Nothing extra arrived for the late answer.
    let mut extra = 0;
    for _ in 0..50 {
        q.poll(&mut |_| extra += 1).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(extra, 0, "a late answer produced a completion");
    // A queue closing with a restart point outstanding does not disturb the target.
    sink.set(Mode::Hold);
    q.submit(cmd::restart_point(1, 0), Data::None, 5).unwrap();
    q.poll(&mut |_| {}).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    q.close();
    for d in sink.held.lock().unwrap().drain(..) {
        d(Ok(1000));
    }
    let (_c3, mut q3) = connect(&f, &opts());
    write_read(&mut q3, 16, 8, 11);
    restart::unregister(&f.bdev, token);
    c.disconnect();
}

#[test]
fn flush_declares_a_restart_point_when_the_sink_asks() {
    let f = fixture();
    let (c, mut q) = connect(&f, &opts());
    let sink = TestSink::new(1, true, Duration::from_secs(20));
    let token = restart::register(&f.bdev, sink.clone());
    write_read(&mut q, 0, 8, 1);
    let done = q.sync(cmd::flush(1), Data::None, T).unwrap();
    assert!(done.status().is_success(), "{}", done.status());
    assert_eq!(host::restart_point_epoch(&done.cqe), 1, "Flush reports the epoch too");
    assert_eq!(sink.tags(), vec![Vec::<u8>::new()]);
    sink.set(Mode::PolicyUnmet);
    let done = q.sync(cmd::flush(1), Data::None, T).unwrap();
    assert_eq!(done.status(), Status::NAMESPACE_NOT_READY);
    sink.set(Mode::Now);
    assert_eq!(host::declare_restart_point(&mut q, 1, b"after-flush", T), Ok(2));
    restart::unregister(&f.bdev, token);
    c.disconnect();
}
