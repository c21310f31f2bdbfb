//! The harness reports what it did, catches misplaced writes in verify
//! mode, and its JSON agrees with its table.

use engine::bdev::{
    self, Bdev, BdevChannel, BdevError, BdevInfo, ChannelBackend, Geometry, IoCompletion, IoOp, IoRequest, IoStats,
    StatsSet,
};
use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use perf::report::Report;
use perf::{Pattern, WorkloadOpts};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

fn reactors(n: u32) -> Reactors {
    Reactors::start(ReactorOpts {
        cores: (0..n).collect(),
        pin: false,
        idle: IdleMode::Poll,
    })
    .unwrap()
}

fn opts(p: Pattern, qd: u32, ms: u64) -> WorkloadOpts {
    WorkloadOpts::new(p, qd, 4096, Duration::from_millis(ms))
}

#[test]
fn io_count_matches_what_the_bdev_counted() {
    let r = reactors(2);
    for (name, b) in [
        ("null", bdev::null::create("h-null", 1 << 18, 512, None).unwrap()),
        ("malloc", bdev::malloc::create("h-malloc", 1 << 16, 512, None).unwrap()),
    ] {
        let o = opts(Pattern::RandRw, 16, 300);
        let res = perf::run_bdev(&r, b.clone(), &o, Arc::new(AtomicBool::new(false)), |_, _| {}).unwrap();
        let rep = Report::new(name, &o, res);
        let st = b.io_stats();
        assert!(rep.total.ios > 0, "{name}: no I/O measured");
        assert_eq!(rep.total.reads, st.num_read_ops, "{name}: reads");
        assert_eq!(rep.total.writes, st.num_write_ops, "{name}: writes");
        assert_eq!(rep.total.bytes, st.bytes_read + st.bytes_written, "{name}: bytes");
        assert_eq!(rep.total.hist.count(), rep.total.ios, "{name}: every I/O has a latency");
        assert_eq!(rep.cores.len(), 2);
        assert_eq!(rep.total.errors, 0);
    }
}

#[test]
fn warmup_is_excluded() {
    let r = reactors(1);
    let b = bdev::null::create("h-warm", 1 << 18, 512, None).unwrap();
    let mut o = opts(Pattern::RandRead, 8, 200);
    o.warmup = Duration::from_millis(200);
    let res = perf::run_bdev(&r, b.clone(), &o, Arc::new(AtomicBool::new(false)), |_, _| {}).unwrap();
    let rep = Report::new("warm", &o, res);
    assert!(rep.total.ios > 0);
    assert!(
        rep.total.ios < b.io_stats().num_read_ops,
        "warm-up I/O must not be counted"
    );
}

/// A bdev that sends every `every`-th write one I/O further than asked, and from the
/// `swallow_from`-th write on takes writes and never completes them.
struct Misplacing {
    info: BdevInfo,
    inner: Arc<dyn Bdev>,
    every: u64,
    swallow_from: u64,
    stats: StatsSet,
}

impl Misplacing {
    fn new(inner: Arc<dyn Bdev>, every: u64, swallow_from: u64) -> Misplacing {
        Misplacing {
            info: BdevInfo {
                uuid: [0; 16],
                ..BdevInfo::wrapping(&*inner, "misplacing", "test", "test")
            },
            inner,
            every,
            swallow_from,
            stats: StatsSet::default(),
        }
    }
}

struct MisplacingChannel {
    inner: BdevChannel,
    every: u64,
    swallow_from: u64,
    swallowed: Vec<IoRequest>,
    writes: u64,
    limit: u64,
}

impl ChannelBackend for MisplacingChannel {
    fn submit(&mut self, mut io: IoRequest) -> Result<(), IoRequest> {
        if io.op == IoOp::Write {
            self.writes += 1;
            if self.writes >= self.swallow_from {
                self.swallowed.push(io);
                return Ok(());
            }
            if self.writes.is_multiple_of(self.every) && io.offset_blocks + 2 * io.num_blocks as u64 <= self.limit {
                io.offset_blocks += io.num_blocks as u64;
            }
        }
        self.inner.submit(io)
    }
    fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        self.inner.poll(f)
    }
}

impl Bdev for Misplacing {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        Ok(BdevChannel::new(
            "misplacing",
            Geometry::new(self.block_size(), self.num_blocks(), 1, &IoOp::ALL),
            self.stats.new_channel(),
            Box::new(MisplacingChannel {
                inner: self.inner.open_channel()?,
                every: self.every,
                swallow_from: self.swallow_from,
                swallowed: Vec::new(),
                writes: 0,
                limit: self.num_blocks(),
            }),
        ))
    }
    fn io_stats(&self) -> IoStats {
        self.stats.sum()
    }
}

#[test]
fn verify_catches_a_misplaced_write() {
    let r = reactors(1);
    // Small device so reads revisit written regions often.
    let inner = bdev::malloc::create("h-mis-inner", 2048, 512, None).unwrap();
    let b: Arc<dyn Bdev> = Arc::new(Misplacing::new(inner, 500, u64::MAX));
    let mut o = opts(Pattern::RandRw, 8, 500);
    o.verify = true;
    let res = perf::run_bdev(&r, b, &o, Arc::new(AtomicBool::new(false)), |_, _| {}).unwrap();
    let rep = Report::new("mis", &o, res);
    assert!(rep.total.verify_failures > 0, "misplaced writes went unnoticed");
    let e = rep.total.first_error.clone().unwrap();
    assert!(e.contains("LBA"), "{e}");

    // The same workload on an honest device verifies clean.
    let honest = bdev::malloc::create("h-honest", 2048, 512, None).unwrap();
    let res = perf::run_bdev(&r, honest, &o, Arc::new(AtomicBool::new(false)), |_, _| {}).unwrap();
    let rep = Report::new("honest", &o, res);
    assert_eq!(rep.total.verify_failures, 0, "{:?}", rep.total.first_error);
    assert!(rep.total.reads > 0 && rep.total.writes > 0);
}

#[test]
fn a_target_that_stops_completing_fails_the_run_instead_of_hanging() {
    let r = reactors(1);
    let inner = bdev::malloc::create("h-stall-inner", 2048, 512, None).unwrap();
    let b: Arc<dyn Bdev> = Arc::new(Misplacing::new(inner, u64::MAX, 1000));
    let mut o = opts(Pattern::RandWrite, 4, 200);
    o.drain_timeout = Duration::from_millis(300);
    let Err(e) = perf::run_bdev(&r, b, &o, Arc::new(AtomicBool::new(false)), |_, _| {}) else {
        panic!("the run reported success although 4 writes never completed");
    };
    assert!(matches!(e, perf::PerfError::DrainTimeout { in_flight: 4, .. }), "{e}");
    assert!(e.to_string().contains("outstanding"), "{e}");
    r.shutdown();
    r.wait();
}

#[test]
fn json_matches_table() {
    let r = reactors(1);
    let b = bdev::null::create("h-json", 1 << 18, 512, None).unwrap();
    let o = opts(Pattern::RandRead, 4, 200);
    let res = perf::run_bdev(&r, b, &o, Arc::new(AtomicBool::new(false)), |_, _| {}).unwrap();
    let rep = Report::new("json", &o, res);
    let text = serde_json::to_string(&rep.json()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["total"]["ios"].as_u64().unwrap(), rep.total.ios);
    let iops = v["total"]["iops"].as_f64().unwrap();
    let table = rep.table(true, true);
    let total_line = table.lines().find(|l| l.starts_with("Total")).unwrap();
    let table_iops: f64 = total_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((table_iops - iops).abs() <= 1.0, "table {table_iops} vs json {iops}");
    let p99 = v["total"]["latency_us"]["p99"].as_f64().unwrap();
    assert!(
        table.contains(&format!("{:.3}", p99)),
        "p99 {p99} missing from -L summary"
    );
    let hist = v["total"]["histogram_us"].as_array().unwrap();
    let counted: u64 = hist.iter().map(|row| row[1].as_u64().unwrap()).sum();
    assert_eq!(counted, rep.total.ios);
    assert_eq!(v["workload"]["pattern"], "randread");
}

#[test]
fn bad_options_are_named() {
    let r = reactors(1);
    let b = bdev::null::create("h-bad", 1024, 512, None).unwrap();
    for (o, flag) in [
        (
            WorkloadOpts::new(Pattern::Read, 0, 4096, Duration::from_millis(10)),
            "-q",
        ),
        (
            WorkloadOpts::new(Pattern::Read, 1, 1000, Duration::from_millis(10)),
            "-o",
        ),
        (
            WorkloadOpts::new(Pattern::Read, 1024, 4096, Duration::from_millis(10)),
            "-o",
        ),
    ] {
        let e = perf::run_bdev(&r, b.clone(), &o, Arc::new(AtomicBool::new(false)), |_, _| {})
            .err()
            .unwrap();
        assert!(e.to_string().contains(flag), "{e}");
    }
    assert!(Pattern::parse("sideways").is_err());
}

#[test]
fn plot_is_svg_with_a_curve_per_report() {
    let r = reactors(1);
    let b = bdev::null::create("h-plot", 1 << 18, 512, None).unwrap();
    let o = opts(Pattern::RandRead, 4, 100);
    let a = Report::new(
        "a",
        &o,
        perf::run_bdev(&r, b.clone(), &o, Arc::new(AtomicBool::new(false)), |_, _| {}).unwrap(),
    );
    let c = Report::new(
        "c",
        &o,
        perf::run_bdev(&r, b, &o, Arc::new(AtomicBool::new(false)), |_, _| {}).unwrap(),
    );
    let svg = perf::report::plot_svg(&[&a, &c]);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2);
    let cmp = perf::report::compare_table(&a, &c);
    assert!(cmp.contains("IOPS") && cmp.contains("b/a"));
}
