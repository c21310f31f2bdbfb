//! The workload engine: one worker per reactor keeps its queue full.
//!
//! A worker is a poller. Each call it (1) reaps completions, (2) takes one
//! timestamp and charges every reaped I/O its latency, (3) refills the queue
//! to the configured depth with new requests stamped with one timestamp.
//! Phases: warm-up (I/O runs, nothing is recorded), measure, drain (no new
//! I/O; waits for what is in flight), done.
//!
//! Verification (`verify`): every block written carries a header (magic,
//! LBA, generation) and a fill derived from them; reads check each block
//! against the generation the worker last wrote to that region, so a write
//! that landed at the wrong LBA, or a read that returns stale data, is
//! caught and counted. Regions in flight are never issued twice at once, and
//! each core works on its own slice of the device, so the expectation is
//! exact.

use crate::report::CoreResult;
use crate::PerfError;
use engine::bdev::{Bdev, BdevChannel, IoCompletion, IoOp, IoRequest};
use engine::buf::{BufPool, DmaBuf};
use engine::clock::now_ns;
use engine::metrics::LatencyHistogram;
use engine::reactor::{register_poller, unregister_poller, PollStatus, Reactors};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Deepest queue a worker keeps.
pub const QUEUE_DEPTH_MAX: u32 = 1024;
/// Largest I/O size the harness issues.
pub const IO_SIZE_BYTES_MAX: u32 = 4 << 20;
/// How long the drain after a run waits for outstanding I/O before the run fails.
pub const DRAIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
const VERIFY_MAGIC: u64 = u64::from_le_bytes(*b"BATONPRF");

/// What a worker needs from the thing under test. A bdev channel is one; the
/// NVMe/TCP host queue pair and the replicated volume implement it too.
pub trait IoQueue {
    fn block_size(&self) -> u32;
    fn num_blocks(&self) -> u64;
    fn submit(&mut self, io: IoRequest) -> Result<(), IoRequest>;
    fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize;
}

/// Opens a worker's queue on its reactor, given the worker's index.
pub type QueueOpener = Arc<dyn Fn(usize) -> Result<Box<dyn IoQueue>, PerfError> + Send + Sync>;

/// A bdev channel with the bdev's size, as an [`IoQueue`].
pub struct BdevQueue {
    pub ch: BdevChannel,
}

impl IoQueue for BdevQueue {
    fn block_size(&self) -> u32 {
        self.ch.geometry().block_size
    }
    fn num_blocks(&self) -> u64 {
        self.ch.geometry().num_blocks
    }
    #[inline]
    fn submit(&mut self, io: IoRequest) -> Result<(), IoRequest> {
        self.ch.submit(io)
    }
    #[inline]
    fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        self.ch.poll(f)
    }
}

/// Access pattern, as `-w` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    Read,
    Write,
    RandRead,
    RandWrite,
    Rw,
    RandRw,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, PerfError> {
        Ok(match s {
            "read" => Pattern::Read,
            "write" => Pattern::Write,
            "randread" => Pattern::RandRead,
            "randwrite" => Pattern::RandWrite,
            "rw" => Pattern::Rw,
            "randrw" => Pattern::RandRw,
            _ => {
                return Err(PerfError::InvalidOption {
                    option: "-w",
                    why: format!("{s:?} is not one of read, write, randread, randwrite, rw, randrw"),
                })
            }
        })
    }

    pub fn random(self) -> bool {
        matches!(self, Pattern::RandRead | Pattern::RandWrite | Pattern::RandRw)
    }

    /// Share of reads in percent, given `-M` for mixed patterns.
    pub fn read_pct(self, mixed: u8) -> u8 {
        match self {
            Pattern::Read | Pattern::RandRead => 100,
            Pattern::Write | Pattern::RandWrite => 0,
            Pattern::Rw | Pattern::RandRw => mixed,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pattern::Read => "read",
            Pattern::Write => "write",
            Pattern::RandRead => "randread",
            Pattern::RandWrite => "randwrite",
            Pattern::Rw => "rw",
            Pattern::RandRw => "randrw",
        }
    }
}

/// One workload, the same on every core.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkloadOpts {
    pub queue_depth: u32,
    pub io_size_bytes: u32,
    pub pattern: Pattern,
    /// Reads in percent for `rw`/`randrw` (`-M`).
    pub read_pct: u8,
    pub time: Duration,
    pub warmup: Duration,
    pub verify: bool,
    pub seed: u64,
    /// The drain waits this long for outstanding I/O; then the run fails with
    /// [`PerfError::DrainTimeout`] instead of waiting for ever.
    pub drain_timeout: Duration,
    /// After I/O completes, the core submits nothing more for this long (`--think-us`):
    /// with `-q 1` every I/O then reaches a target that has been idle this long.
    pub think: Duration,
}

impl WorkloadOpts {
    pub fn new(pattern: Pattern, queue_depth: u32, io_size_bytes: u32, time: Duration) -> WorkloadOpts {
        WorkloadOpts {
            queue_depth,
            io_size_bytes,
            pattern,
            read_pct: 50,
            time,
            warmup: Duration::ZERO,
            verify: false,
            seed: 0x5eed,
            drain_timeout: DRAIN_TIMEOUT_DEFAULT,
            think: Duration::ZERO,
        }
    }

    pub fn validate(&self, block_size: u32, num_blocks: u64, cores: usize) -> Result<(), PerfError> {
        if self.queue_depth == 0 || self.queue_depth > QUEUE_DEPTH_MAX {
            return Err(PerfError::InvalidOption {
                option: "-q",
                why: format!("{} is not within 1..={QUEUE_DEPTH_MAX}", self.queue_depth),
            });
        }
        if self.io_size_bytes == 0
            || self.io_size_bytes > IO_SIZE_BYTES_MAX
            || !self.io_size_bytes.is_multiple_of(block_size)
        {
            return Err(PerfError::InvalidOption {
                option: "-o",
                why: format!(
                    "{} bytes is not a multiple of the {block_size}-byte block size up to {IO_SIZE_BYTES_MAX}",
                    self.io_size_bytes
                ),
            });
        }
        if self.read_pct > 100 {
            return Err(PerfError::InvalidOption {
                option: "-M",
                why: format!("{} is not a percentage", self.read_pct),
            });
        }
        let units = num_blocks / (self.io_size_bytes / block_size) as u64;
        let need = if self.verify || !self.pattern.random() {
            cores as u64 * self.queue_depth as u64
        } else {
            1
        };
        if units < need {
            return Err(PerfError::InvalidOption {
                option: "-o",
                why: format!(
                    "the device holds {units} I/Os of {} bytes; this workload needs at least {need}",
                    self.io_size_bytes
                ),
            });
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup,
    Measure,
    Drain,
    /// The drain timed out; the error was reported. Keeps reaping, never submits.
    Stuck,
    Done,
}

struct Slot {
    buf: Option<DmaBuf>,
    submit_ns: u64,
    op: IoOp,
    unit: u64,
    ok: bool,
}

/// One core's worker: owns its queue, buffers, histogram and counters.
struct Worker {
    q: Box<dyn IoQueue>,
    core: u32,
    opts: WorkloadOpts,
    blocks_per_io: u32,
    block_size: usize,
    unit_base: u64,
    unit_count: u64,
    seq_next: u64,
    rng: u64,
    slots: Vec<Slot>,
    free: Vec<u32>,
    reaped: Vec<u32>,
    /// No submission before this (`WorkloadOpts::think`).
    think_until_ns: u64,
    gen: Vec<u32>,
    busy: Vec<bool>,
    hist: LatencyHistogram,
    phase: Phase,
    start_ns: u64,
    measure_start_ns: u64,
    measure_end_ns: u64,
    /// The harness thread's CPU time over the measured phase, taken when it ends (0 until
    /// then): the drain after it, which can wait out a stuck device, is not in it.
    cpu_measured_ns: u64,
    cpu_start_ns: u64,
    ios: u64,
    reads: u64,
    writes: u64,
    errors: u64,
    verify_failures: u64,
    first_error: Option<String>,
    progress: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    #[inline]
    fn next_rand(&mut self) -> u64 {
        // xorshift64*: fast, good enough for offsets and read/write mix.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick_unit(&mut self) -> Option<u64> {
        for _ in 0..8 {
            let u = if self.opts.pattern.random() {
                self.next_rand() % self.unit_count
            } else {
                let u = self.seq_next;
                self.seq_next = (self.seq_next + 1) % self.unit_count;
                u
            };
            if !self.opts.verify || !self.busy[u as usize] {
                return Some(u);
            }
        }
        None
    }

    fn stamp(&self, buf: &mut [u8], unit: u64, gen: u32) {
        let bs = self.block_size;
        let first_lba = (self.unit_base + unit) * self.blocks_per_io as u64;
        for (i, blk) in buf.chunks_mut(bs).enumerate() {
            let lba = first_lba + i as u64;
            let fill = lba.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ gen as u64;
            for (j, w) in blk.chunks_exact_mut(8).enumerate() {
                let v = match j {
                    0 => VERIFY_MAGIC,
                    1 => lba,
                    2 => gen as u64,
                    _ => fill.wrapping_add(j as u64),
                };
                w.copy_from_slice(&v.to_le_bytes());
            }
        }
    }

    /// Checks a read of `unit` against the generation last written there.
    fn check(&self, buf: &[u8], unit: u64) -> Result<(), String> {
        let gen = self.gen[unit as usize];
        let bs = self.block_size;
        let first_lba = (self.unit_base + unit) * self.blocks_per_io as u64;
        for (i, blk) in buf.chunks(bs).enumerate() {
            let lba = first_lba + i as u64;
            let word = |j: usize| u64::from_le_bytes(blk[j * 8..j * 8 + 8].try_into().expect("8 bytes"));
            let magic = word(0) == VERIFY_MAGIC;
            if gen == 0 {
                if magic {
                    return Err(format!(
                        "LBA {lba}: never written here, holds data stamped for LBA {}",
                        word(1)
                    ));
                }
                continue;
            }
            if !magic {
                return Err(format!("LBA {lba}: expected generation {gen}, found unstamped data"));
            }
            if word(1) != lba {
                return Err(format!(
                    "LBA {lba}: holds data written for LBA {} (misplaced write)",
                    word(1)
                ));
            }
            if word(2) != gen as u64 {
                return Err(format!("LBA {lba}: generation {} is stale, expected {gen}", word(2)));
            }
            let fill = lba.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ gen as u64;
            for j in 3..bs / 8 {
                if word(j) != fill.wrapping_add(j as u64) {
                    return Err(format!("LBA {lba}: payload corrupt at byte {}", j * 8));
                }
            }
        }
        Ok(())
    }

    // One piece on purpose: the worker's whole iteration on the measured path, its three
    // numbered steps (reap, phase changes, refill) in the order they must run, sharing the
    // slots and counters they update.
    fn poll(&mut self) -> PollStatus {
        // 1. Reap.
        let slots = &mut self.slots;
        let reaped = &mut self.reaped;
        let n = self.q.poll(&mut |c| {
            let s = &mut slots[c.user_data as usize];
            s.buf = c.buf;
            s.ok = c.result.is_ok();
            if let Err(e) = c.result {
                log::debug!("I/O error: {e}");
            }
            reaped.push(c.user_data as u32);
        });
        let now = now_ns();
        let recording = self.phase == Phase::Measure || self.phase == Phase::Drain;
        for k in 0..self.reaped.len() {
            let i = self.reaped[k] as usize;
            let (op, unit, ok, submit_ns) = {
                let s = &self.slots[i];
                (s.op, s.unit, s.ok, s.submit_ns)
            };
            if self.opts.verify {
                self.busy[unit as usize] = false;
                if ok && op == IoOp::Read {
                    let buf = self.slots[i].buf.take().expect("completed read returns its buffer");
                    if let Err(e) = self.check(&buf, unit) {
                        self.verify_failures += 1;
                        if self.first_error.is_none() {
                            self.first_error = Some(format!("verify: {e}"));
                        }
                    }
                    self.slots[i].buf = Some(buf);
                }
            }
            if recording && submit_ns >= self.measure_start_ns {
                self.hist.record_ns(now.saturating_sub(submit_ns));
                self.ios += 1;
                if op == IoOp::Read {
                    self.reads += 1;
                } else {
                    self.writes += 1;
                }
                if !ok {
                    self.errors += 1;
                    if self.first_error.is_none() {
                        self.first_error = Some(format!("{} of unit {unit} failed", op.name()));
                    }
                }
            }
            self.free.push(i as u32);
        }
        self.reaped.clear();
        if n > 0 {
            self.progress.store(self.ios, Ordering::Relaxed);
            self.think_until_ns = now + self.opts.think.as_nanos() as u64;
        }

        // 2. Phase changes.
        match self.phase {
            Phase::Warmup if now >= self.start_ns + self.opts.warmup.as_nanos() as u64 => {
                self.phase = Phase::Measure;
                self.measure_start_ns = now;
                self.cpu_start_ns = crate::sys::thread_cpu_ns();
            }
            Phase::Measure
                if now >= self.measure_start_ns + self.opts.time.as_nanos() as u64
                    || self.stop.load(Ordering::Relaxed) =>
            {
                self.phase = Phase::Drain;
                self.measure_end_ns = now;
                self.cpu_measured_ns = crate::sys::thread_cpu_ns().saturating_sub(self.cpu_start_ns);
            }
            Phase::Drain if self.free.len() == self.slots.len() => {
                self.phase = Phase::Done;
                return PollStatus::Busy;
            }
            Phase::Drain if now.saturating_sub(self.measure_end_ns) >= self.opts.drain_timeout.as_nanos() as u64 => {
                self.phase = Phase::Stuck;
            }
            _ => {}
        }
        if matches!(self.phase, Phase::Drain | Phase::Stuck | Phase::Done) {
            return if n > 0 { PollStatus::Busy } else { PollStatus::Idle };
        }

        // 3. Refill (after the think time, if any).
        if now < self.think_until_ns {
            return if n > 0 { PollStatus::Busy } else { PollStatus::Idle };
        }
        let mut submitted = 0;
        let stamp_ns = now;
        let read_pct = self.opts.pattern.read_pct(self.opts.read_pct) as u64;
        while let Some(&i) = self.free.last() {
            let Some(unit) = self.pick_unit() else { break };
            let op = if read_pct == 100 || (read_pct > 0 && self.next_rand() % 100 < read_pct) {
                IoOp::Read
            } else {
                IoOp::Write
            };
            let mut buf = self.slots[i as usize].buf.take().expect("free slot holds its buffer");
            if self.opts.verify {
                self.busy[unit as usize] = true;
                if op == IoOp::Write {
                    let g = self.gen[unit as usize].wrapping_add(1).max(1);
                    self.gen[unit as usize] = g;
                    self.stamp(&mut buf, unit, g);
                }
            }
            let req = IoRequest {
                op,
                offset_blocks: (self.unit_base + unit) * self.blocks_per_io as u64,
                num_blocks: self.blocks_per_io,
                buf: Some(buf),
                user_data: i as u64,
            };
            match self.q.submit(req) {
                Ok(()) => {
                    self.free.pop();
                    let s = &mut self.slots[i as usize];
                    s.op = op;
                    s.unit = unit;
                    s.submit_ns = stamp_ns;
                    submitted += 1;
                }
                Err(back) => {
                    if self.opts.verify {
                        self.busy[unit as usize] = false;
                    }
                    self.slots[i as usize].buf = back.buf;
                    break;
                }
            }
        }
        if n > 0 || submitted > 0 {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    fn result(&self) -> CoreResult {
        let elapsed = self.measure_end_ns.saturating_sub(self.measure_start_ns);
        CoreResult {
            core: self.core,
            ios: self.ios,
            reads: self.reads,
            writes: self.writes,
            bytes: self.ios * self.opts.io_size_bytes as u64,
            errors: self.errors,
            verify_failures: self.verify_failures,
            first_error: self.first_error.clone(),
            elapsed_ns: elapsed,
            harness_cpu_ns: self.cpu_measured_ns,
            hist: self.hist.clone(),
        }
    }
}

static POOLS: Mutex<Option<HashMap<usize, &'static BufPool>>> = Mutex::new(None);
const POOL_BUFFERS: usize = 2048;

/// Takes `n` buffers of `size` bytes: from a shared pool per size (so
/// io_uring sees registered buffers), or the heap when the pool is short.
fn buffers(n: usize, size: usize) -> Vec<DmaBuf> {
    let cap = size.div_ceil(engine::buf::BUF_ALIGN_BYTES) * engine::buf::BUF_ALIGN_BYTES;
    let pool = if cap <= 128 * 1024 {
        let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
        let map = pools.get_or_insert_with(HashMap::new);
        match map.get(&cap) {
            Some(p) => Some(*p),
            None => BufPool::new(&format!("perf-{cap}"), POOL_BUFFERS, cap)
                .ok()
                .inspect(|p| {
                    map.insert(cap, p);
                }),
        }
    } else {
        None
    };
    (0..n)
        .map(|_| {
            let mut b = pool.and_then(|p| p.get()).unwrap_or_else(|| DmaBuf::alloc(cap));
            b.set_len(size);
            b
        })
        .collect()
}

/// Runs `opts` on every core of `reactors`, one worker each over the queue
/// `open(core_index)` returns on that core. `stop` ends the measurement
/// early (Ctrl-C); `progress(elapsed, ios_so_far)` is called about once a
/// second from this thread.
pub fn run(
    reactors: &Reactors,
    open: QueueOpener,
    opts: &WorkloadOpts,
    stop: Arc<AtomicBool>,
    progress: impl FnMut(Duration, u64),
) -> Result<Vec<CoreResult>, PerfError> {
    run_on(reactors, &reactors.cores(), open, opts, stop, progress)
}

/// [`run`] on a subset of the reactors' cores (the others stay free for
/// what the workload drives: a target, relays).
pub fn run_on(
    reactors: &Reactors,
    cores: &[u32],
    open: QueueOpener,
    opts: &WorkloadOpts,
    stop: Arc<AtomicBool>,
    progress: impl FnMut(Duration, u64),
) -> Result<Vec<CoreResult>, PerfError> {
    let cores = cores.to_vec();
    if cores.is_empty() || cores.iter().any(|c| !reactors.cores().contains(c)) {
        return Err(PerfError::InvalidOption {
            option: "-m",
            why: format!(
                "worker cores {cores:?} are not all among the reactors {:?}",
                reactors.cores()
            ),
        });
    }
    let (tx, rx) = mpsc::channel::<(u32, Result<CoreResult, PerfError>)>();
    let counters: Vec<Arc<AtomicU64>> = cores.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    for (idx, &core) in cores.iter().enumerate() {
        let tx = tx.clone();
        let open = open.clone();
        let opts = opts.clone();
        let progress = counters[idx].clone();
        let stop = stop.clone();
        let ncores = cores.len();
        reactors
            .send_msg(core, move || {
                let w = open(idx).and_then(|q| Worker::new(q, core, idx, ncores, opts, progress, stop));
                match w {
                    Ok(w) => register_worker(w, tx),
                    Err(e) => {
                        let _ = tx.send((core, Err(e)));
                    }
                }
            })
            .map_err(|e| PerfError::Reactor(e.into()))?;
    }
    drop(tx);
    collect_results(&cores, &rx, &counters, progress)
}

/// Results sent by a worker: its core and what it measured (or why it failed).
type ResultSender = mpsc::Sender<(u32, Result<CoreResult, PerfError>)>;

impl Worker {
    /// The worker `idx` of `ncores` on `core`, over queue `q`: its slice of the device
    /// (sequential and verifying workers each own one; random ones share the whole
    /// device, as spdk_nvme_perf does), its buffers and its counters.
    fn new(
        q: Box<dyn IoQueue>,
        core: u32,
        idx: usize,
        ncores: usize,
        opts: WorkloadOpts,
        progress: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
    ) -> Result<Worker, PerfError> {
        let (bs, nb) = (q.block_size(), q.num_blocks());
        opts.validate(bs, nb, ncores)?;
        let blocks_per_io = opts.io_size_bytes / bs;
        let units_total = nb / blocks_per_io as u64;
        // Sequential and verifying workers each own a slice; random
        // ones share the whole device, as spdk_nvme_perf does.
        let (unit_base, unit_count) = if opts.verify || !opts.pattern.random() {
            let per = units_total / ncores as u64;
            (per * idx as u64, per)
        } else {
            (0, units_total)
        };
        let qd = opts.queue_depth as usize;
        let slots = buffers(qd, opts.io_size_bytes as usize)
            .into_iter()
            .map(|b| Slot {
                buf: Some(b),
                submit_ns: 0,
                op: IoOp::Read,
                unit: 0,
                ok: true,
            })
            .collect();
        let verify = opts.verify;
        let now = now_ns();
        Ok(Worker {
            q,
            core,
            blocks_per_io,
            block_size: bs as usize,
            unit_base,
            unit_count,
            seq_next: 0,
            rng: opts.seed.wrapping_mul(idx as u64 + 1) | 1,
            slots,
            free: (0..qd as u32).rev().collect(),
            reaped: Vec::with_capacity(qd),
            think_until_ns: 0,
            gen: if verify {
                vec![0; unit_count as usize]
            } else {
                Vec::new()
            },
            busy: if verify {
                vec![false; unit_count as usize]
            } else {
                Vec::new()
            },
            hist: LatencyHistogram::new(),
            phase: if opts.warmup.is_zero() {
                Phase::Measure
            } else {
                Phase::Warmup
            },
            start_ns: now,
            measure_start_ns: now,
            measure_end_ns: now,
            cpu_measured_ns: 0,
            cpu_start_ns: crate::sys::thread_cpu_ns(),
            ios: 0,
            reads: 0,
            writes: 0,
            errors: 0,
            verify_failures: 0,
            first_error: None,
            progress,
            stop,
            opts,
        })
    }
}

/// Registers worker `w`'s poller on the calling reactor; it sends the core's result (or
/// why it is stuck) on `tx` and unregisters itself when done.
fn register_worker(mut w: Worker, tx: ResultSender) {
    let id = std::rc::Rc::new(std::cell::Cell::new(None));
    let id2 = id.clone();
    let mut tx = Some(tx);
    let pid = register_poller("perf_worker", None, move || {
        if w.phase == Phase::Done {
            return PollStatus::Idle;
        }
        let r = w.poll();
        if w.phase == Phase::Stuck {
            if let Some(tx) = tx.take() {
                let e = PerfError::DrainTimeout {
                    core: w.core,
                    in_flight: w.slots.len() - w.free.len(),
                    waited_ms: w.opts.drain_timeout.as_millis() as u64,
                };
                let _ = tx.send((w.core, Err(e)));
            }
        }
        if w.phase == Phase::Done {
            if let Some(tx) = tx.take() {
                let _ = tx.send((w.core, Ok(w.result())));
            }
            if let Some(id) = id2.get() {
                unregister_poller(id);
            }
        }
        r
    });
    id.set(Some(pid));
}

/// Waits for every core's result, calling `progress` about once a second with the time
/// elapsed and the I/Os completed so far.
fn collect_results(
    cores: &[u32],
    rx: &mpsc::Receiver<(u32, Result<CoreResult, PerfError>)>,
    counters: &[Arc<AtomicU64>],
    mut progress: impl FnMut(Duration, u64),
) -> Result<Vec<CoreResult>, PerfError> {
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    let mut next_tick = Duration::from_secs(1);
    while results.len() < cores.len() {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((_, r)) => results.push(r?),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if started.elapsed() >= next_tick {
                    next_tick += Duration::from_secs(1);
                    progress(
                        started.elapsed(),
                        counters.iter().map(|c| c.load(Ordering::Relaxed)).sum(),
                    );
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let missing = cores
                    .iter()
                    .copied()
                    .find(|c| !results.iter().any(|r: &CoreResult| r.core == *c))
                    .unwrap_or(0);
                return Err(PerfError::WorkerLost(missing));
            }
        }
    }
    results.sort_by_key(|r| r.core);
    Ok(results)
}

/// Runs `opts` against `bdev` on every core of `reactors`.
pub fn run_bdev(
    reactors: &Reactors,
    bdev: Arc<dyn Bdev>,
    opts: &WorkloadOpts,
    stop: Arc<AtomicBool>,
    progress: impl FnMut(Duration, u64),
) -> Result<Vec<CoreResult>, PerfError> {
    run_bdev_on(reactors, &reactors.cores(), bdev, opts, stop, progress)
}

/// Runs `opts` against `bdev` on `cores` (a subset of the reactors' cores).
pub fn run_bdev_on(
    reactors: &Reactors,
    cores: &[u32],
    bdev: Arc<dyn Bdev>,
    opts: &WorkloadOpts,
    stop: Arc<AtomicBool>,
    progress: impl FnMut(Duration, u64),
) -> Result<Vec<CoreResult>, PerfError> {
    let open: QueueOpener = Arc::new(move |_| {
        Ok(Box::new(BdevQueue {
            ch: bdev.open_channel()?,
        }) as Box<dyn IoQueue>)
    });
    run_on(reactors, cores, open, opts, stop, progress)
}
