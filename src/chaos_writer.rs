//! The self-checking writer of `baton chaos` and the checks made from its record.
//!
//! The writer drives the primary's namespace over NVMe/TCP at a queue depth: each write
//! covers one extent (`io_blocks` blocks) and stamps every block with a magic, its LBA,
//! the write's sequence number, the writer id and a pattern derived from them, so a block
//! read back names exactly the write that put it there (or shows it is torn or foreign).
//! Two writes to one extent are never in flight together, so the last acknowledged write
//! of an extent is what the extent holds. Every `rp_every` writes it lets the queue drain
//! and declares a restart point in band (NVMe vendor command 81h) with the tag
//! `chaos w<id> rp <k>`: the point covers exactly the writes acknowledged before it.
//!
//! Its record is a text log, synced after every batch of completions and around every
//! restart point, so a kill of its peer loses nothing of it:
//!
//! | line | meaning |
//! |---|---|
//! | `A <seq> <extent>` | write acknowledged |
//! | `F <seq> <extent> <status>` | write failed (the extent is written again before the next point) |
//! | `R <k>` | restart point k submitted: it covers every `A` above |
//! | `P <k> <epoch>` | restart point k acknowledged with that epoch |
//! | `X <k> <error>` | restart point k failed (it may still have reached the relays) |
//! | `E <error>` | the writer stopped (its queue broke: the primary died) |
//!
//! The driver arms a [`Moment`]; when the writer reaches it, it syncs its log, reports
//! [`Note::Fired`] and waits for [`Ctl::Resume`], so a kill lands exactly there.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use engine::buf::DmaBuf;
use nvme::host::{cmd, Controller, Data, HostOpts, Qpair};

/// First bytes of every stamped block.
const MAGIC: &[u8; 8] = b"BATONCHS";
/// Token of the restart point command (writes use their sequence numbers, from 1).
const RP_TOKEN: u64 = u64::MAX - 3;
/// Longest wait for one restart point's completion (the target answers within 25 s).
const RP_WAIT: Duration = Duration::from_secs(60);
/// Consecutive failed writes after which the writer gives up.
const FAILS_MAX: u32 = 20_000;

/// What the writer does.
#[derive(Debug, Clone)]
pub struct WriterCfg {
    pub addr: SocketAddr,
    pub nqn: String,
    pub nsid: u32,
    /// Blocks per write (one extent).
    pub io_blocks: u32,
    pub qd: usize,
    /// Writes between restart points.
    pub rp_every: u64,
    pub seed: u64,
    pub writer_id: u64,
    pub log: PathBuf,
}

/// A moment the driver acts at, counted in the writer's events: each comes once at
/// least `n` more writes were acknowledged after it was armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// Right after the n-th acknowledged write.
    Writes(u64),
    /// Right after the next restart point is sent (its answer not yet in).
    Point(u64),
    /// Right after the next restart point is acknowledged.
    AfterPoint(u64),
}

impl Moment {
    fn writes(self) -> u64 {
        match self {
            Moment::Writes(n) | Moment::Point(n) | Moment::AfterPoint(n) => n,
        }
    }
}

/// Driver -> writer.
#[derive(Debug)]
pub enum Ctl {
    Arm(Moment),
    Resume,
    /// Finish the writes in flight, declare one more restart point, then only keep alive.
    Quiesce,
    Stop,
}

/// The writer's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub acked: u64,
    pub failed: u64,
    pub rp_submitted: u64,
    pub rp_acked: u64,
    /// Epoch of the last acknowledged restart point.
    pub last_epoch: u64,
}

/// Writer -> driver.
#[derive(Debug)]
pub enum Note {
    Fired(Moment, Progress),
    /// Quiesced: nothing in flight, the last restart point's outcome is in `Progress`.
    Quiesced(Progress),
    /// The writer ended (error text; empty when stopped).
    Ended(Progress, String),
}

/// Starts the writer thread.
pub fn spawn(cfg: WriterCfg, ctl: Receiver<Ctl>, note: Sender<Note>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("chaos-writer".into()).spawn(move || {
        let note2 = note.clone();
        match Writer::connect(cfg, ctl, note) {
            Ok(mut w) => {
                let r = w.run();
                let why = r.err().unwrap_or_default();
                if !why.is_empty() {
                    w.line(&format!("E {why}"));
                }
                let _ = w.commit();
                let _ = w.note.send(Note::Ended(w.prog, why));
            }
            Err(e) => {
                let _ = note2.send(Note::Ended(Progress::default(), e));
            }
        }
    })
}

struct Writer {
    cfg: WriterCfg,
    ctrl: Controller,
    q: Qpair,
    bs: usize,
    extents: u64,
    log: BufWriter<File>,
    dirty: bool,
    prog: Progress,
    inflight: HashMap<u64, u64>,
    busy: Vec<bool>,
    retry: VecDeque<u64>,
    free: Vec<DmaBuf>,
    next_seq: u64,
    fresh_in_epoch: u64,
    rng: u64,
    armed: Option<(Moment, u64)>,
    quiescing: bool,
    quiesced: bool,
    stop: bool,
    fails_in_row: u32,
    ctl: Receiver<Ctl>,
    note: Sender<Note>,
}

impl Writer {
    fn connect(cfg: WriterCfg, ctl: Receiver<Ctl>, note: Sender<Note>) -> Result<Writer, String> {
        let opts = HostOpts {
            kato_ms: 10_000,
            ..HostOpts::default()
        };
        let mut ctrl = Controller::connect(cfg.addr, &cfg.nqn, &opts).map_err(|e| format!("connect: {e}"))?;
        let ns = ctrl
            .identify_namespace(cfg.nsid)
            .map_err(|e| format!("identify: {e}"))?;
        let lbaf = ns.lbaf[usize::from(ns.flbas & 0xF)];
        let bs = 1usize << ((lbaf >> 16) & 0xFF);
        let extents = ns.nsze / u64::from(cfg.io_blocks.max(1));
        if extents < 2 * cfg.qd as u64 {
            return Err(format!(
                "{extents} extents of {} blocks: too few for queue depth {}",
                cfg.io_blocks, cfg.qd
            ));
        }
        let q = ctrl.create_io_qpair().map_err(|e| format!("I/O queue: {e}"))?;
        let log = BufWriter::new(File::create(&cfg.log).map_err(|e| format!("{}: {e}", cfg.log.display()))?);
        Ok(Writer {
            rng: cfg.seed | 1,
            busy: vec![false; extents as usize],
            cfg,
            ctrl,
            q,
            bs,
            extents,
            log,
            dirty: false,
            prog: Progress::default(),
            inflight: HashMap::new(),
            retry: VecDeque::new(),
            free: Vec::new(),
            next_seq: 1,
            fresh_in_epoch: 0,
            armed: None,
            quiescing: false,
            quiesced: false,
            stop: false,
            fails_in_row: 0,
            ctl,
            note,
        })
    }

    fn line(&mut self, l: &str) {
        let _ = writeln!(self.log, "{l}");
        self.dirty = true;
    }

    fn commit(&mut self) -> Result<(), String> {
        if self.dirty {
            self.log.flush().map_err(|e| format!("log: {e}"))?;
            self.log.get_ref().sync_data().map_err(|e| format!("log: {e}"))?;
            self.dirty = false;
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), String> {
        while !self.stop {
            self.control(None)?;
            if self.quiesced {
                self.control(Some(Duration::from_millis(50)))?;
                self.ctrl.tick().map_err(|e| format!("keep alive: {e}"))?;
                continue;
            }
            self.fill()?;
            let n = self.reap()?;
            self.ctrl.tick().map_err(|e| format!("keep alive: {e}"))?;
            let epoch_done = self.fresh_in_epoch >= self.cfg.rp_every || self.quiescing;
            if self.inflight.is_empty() && self.retry.is_empty() && epoch_done {
                self.restart_point()?;
                if self.quiescing {
                    self.quiesced = true;
                    let _ = self.note.send(Note::Quiesced(self.prog));
                }
            } else if n == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(())
    }

    /// Takes the driver's messages; waits up to `wait` for one when given.
    fn control(&mut self, wait: Option<Duration>) -> Result<(), String> {
        let first = match wait {
            Some(w) => match self.ctl.recv_timeout(w) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Ctl::Stop),
            },
            None => None,
        };
        let rest = std::iter::from_fn(|| self.ctl.try_recv().ok());
        let msgs: Vec<Ctl> = first.into_iter().chain(rest).collect();
        for m in msgs {
            match m {
                Ctl::Arm(m) => self.armed = Some((m, self.prog.acked)),
                Ctl::Quiesce => self.quiescing = true,
                Ctl::Stop => self.stop = true,
                Ctl::Resume => {}
            }
        }
        Ok(())
    }

    /// The armed moment, once enough writes were acknowledged since it was armed.
    fn due(&self) -> Option<Moment> {
        self.armed
            .filter(|(m, base)| self.prog.acked >= base + m.writes())
            .map(|(m, _)| m)
    }

    /// Reports the armed moment and waits for `Resume` (keeping the controller alive).
    fn fire(&mut self, m: Moment) -> Result<(), String> {
        self.commit()?;
        self.armed = None;
        let _ = self.note.send(Note::Fired(m, self.prog));
        loop {
            match self.ctl.recv_timeout(Duration::from_millis(50)) {
                Ok(Ctl::Resume) => return Ok(()),
                Ok(Ctl::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    self.stop = true;
                    return Ok(());
                }
                Ok(Ctl::Quiesce) => self.quiescing = true,
                Ok(Ctl::Arm(a)) => self.armed = Some((a, self.prog.acked)),
                Err(RecvTimeoutError::Timeout) => {}
            }
            // A dead primary shows here; the caller's next poll reports it.
            if self.ctrl.tick().is_err() {
                return Ok(());
            }
        }
    }

    fn pick_extent(&mut self) -> u64 {
        let mut e = crate::procs::rand(&mut self.rng) % self.extents;
        while self.busy[e as usize] {
            e = (e + 1) % self.extents;
        }
        e
    }

    /// Submits writes up to the queue depth: retries first, then fresh writes of this epoch.
    fn fill(&mut self) -> Result<(), String> {
        while self.inflight.len() < self.cfg.qd {
            let ext = if let Some(e) = self.retry.pop_front() {
                e
            } else if self.fresh_in_epoch < self.cfg.rp_every && !self.quiescing {
                self.fresh_in_epoch += 1;
                let e = self.pick_extent();
                self.busy[e as usize] = true;
                e
            } else {
                break;
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            let len = self.bs * self.cfg.io_blocks as usize;
            let mut buf = match self.free.pop() {
                Some(b) if b.len() == len => b,
                _ => DmaBuf::alloc(len),
            };
            let lba0 = ext * u64::from(self.cfg.io_blocks);
            for (i, b) in buf.chunks_mut(self.bs).enumerate() {
                stamp(b, lba0 + i as u64, seq, self.cfg.writer_id);
            }
            let sqe = cmd::write(self.cfg.nsid, lba0, self.cfg.io_blocks);
            self.q
                .submit(sqe, Data::ToCtrl(buf), seq)
                .map_err(|(e, _)| format!("submit: {e}"))?;
            self.inflight.insert(seq, ext);
        }
        Ok(())
    }

    /// Reaps completions and records them; returns how many.
    fn reap(&mut self) -> Result<usize, String> {
        let mut done = Vec::new();
        self.q
            .poll(&mut |c| done.push((c.user, c.status(), c.buf)))
            .map_err(|e| format!("I/O queue: {e}"))?;
        let n = done.len();
        for (seq, st, buf) in done {
            if let Some(b) = buf {
                self.free.push(b);
            }
            let Some(ext) = self.inflight.remove(&seq) else {
                continue;
            };
            if st.is_success() {
                self.busy[ext as usize] = false;
                self.prog.acked += 1;
                self.fails_in_row = 0;
                self.line(&format!("A {seq} {ext}"));
            } else {
                self.prog.failed += 1;
                self.fails_in_row += 1;
                self.line(&format!("F {seq} {ext} {st:?}"));
                self.retry.push_back(ext);
                if self.fails_in_row >= FAILS_MAX {
                    return Err(format!("{FAILS_MAX} writes failed in a row, the last with {st:?}"));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.commit()?;
        if let Some(m @ Moment::Writes(_)) = self.due() {
            self.fire(m)?;
        }
        Ok(n)
    }

    /// Polls the queue while only the restart point is in flight; its answer goes to `answer`.
    fn poll_point(&mut self, answer: &mut Option<nvme::spec::Cqe>) -> Result<(), String> {
        self.q
            .poll(&mut |c| {
                if c.user == RP_TOKEN {
                    *answer = Some(c.cqe);
                }
            })
            .map(|_| ())
            .map_err(|e| format!("I/O queue: {e}"))
    }

    /// Declares restart point `k` in band and waits for its answer (nothing else in flight).
    fn restart_point(&mut self) -> Result<(), String> {
        let k = self.prog.rp_submitted + 1;
        self.line(&format!("R {k}"));
        self.commit()?;
        let tag = format!("chaos w{:016x} rp {k}", self.cfg.writer_id);
        let mut b = DmaBuf::alloc(tag.len());
        b.copy_from_slice(tag.as_bytes());
        self.q
            .submit(
                cmd::restart_point(self.cfg.nsid, tag.len() as u32),
                Data::ToCtrl(b),
                RP_TOKEN,
            )
            .map_err(|(e, _)| format!("restart point: {e}"))?;
        self.prog.rp_submitted = k;
        self.fresh_in_epoch = 0;
        let mut answer = None;
        self.poll_point(&mut answer)?;
        if let Some(m @ Moment::Point(_)) = self.due() {
            self.fire(m)?;
        }
        let deadline = Instant::now() + RP_WAIT;
        while answer.is_none() {
            self.poll_point(&mut answer)?;
            self.ctrl.tick().map_err(|e| format!("keep alive: {e}"))?;
            if Instant::now() > deadline {
                return Err(format!("restart point {k}: no answer within {RP_WAIT:?}"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let cqe = answer.unwrap_or_default();
        if cqe.status().is_success() {
            let epoch = nvme::host::restart_point_epoch(&cqe);
            self.prog.rp_acked = k;
            self.prog.last_epoch = epoch;
            self.line(&format!("P {k} {epoch}"));
            self.commit()?;
            if let Some(m @ Moment::AfterPoint(_)) = self.due() {
                self.fire(m)?;
            }
        } else {
            self.line(&format!("X {k} {:?}", cqe.status()));
            self.commit()?;
        }
        Ok(())
    }
}

fn pattern(lba: u64, seq: u64, word: usize) -> u64 {
    seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ lba.rotate_left(29) ^ word as u64
}

/// Stamps one block: magic, LBA, sequence, writer id, then the pattern.
fn stamp(b: &mut [u8], lba: u64, seq: u64, wid: u64) {
    b[0..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&lba.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..32].copy_from_slice(&wid.to_le_bytes());
    for (w, c) in b.chunks_exact_mut(8).enumerate().skip(4) {
        c.copy_from_slice(&pattern(lba, seq, w).to_le_bytes());
    }
}

/// The write a block holds: `None` for a block never written (all zeroes).
fn read_stamp(b: &[u8], lba: u64, wid: u64) -> Result<Option<u64>, String> {
    if b.iter().all(|&x| x == 0) {
        return Ok(None);
    }
    let word = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    if b.len() < 32 || &b[0..8] != MAGIC {
        return Err("no stamp (foreign or torn data)".into());
    }
    let (l, seq, w) = (word(1), word(2), word(3));
    if l != lba || w != wid {
        return Err(format!("stamp of lba {l} writer {w:x} (seq {seq})"));
    }
    if let Some(bad) = (4..b.len() / 8).find(|&i| word(i) != pattern(lba, seq, i)) {
        return Err(format!("seq {seq}: torn at byte {}", bad * 8));
    }
    Ok(Some(seq))
}

/// One event of the writer's log.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Ack(u64, u64),
    Fail(u64, u64),
    RpSub(u64),
    RpAck(u64, u64),
}

/// The writer's log, read back.
#[derive(Debug, Default)]
pub struct Record {
    evs: Vec<Ev>,
    pub acked: u64,
    pub last_submitted: u64,
    /// (k, epoch) of the last acknowledged restart point.
    pub last_acked: Option<(u64, u64)>,
    pub end: Option<String>,
}

impl Record {
    pub fn read(path: &Path) -> Result<Record, String> {
        let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut r = Record::default();
        for (i, l) in BufReader::new(f).lines().enumerate() {
            let l = l.map_err(|e| format!("{}: {e}", path.display()))?;
            let w: Vec<&str> = l.split_whitespace().collect();
            let num = |j: usize| -> Result<u64, String> {
                w.get(j)
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| format!("{} line {}: {l:?}", path.display(), i + 1))
            };
            match w.first().copied() {
                Some("A") => {
                    r.evs.push(Ev::Ack(num(1)?, num(2)?));
                    r.acked += 1;
                }
                Some("F") => r.evs.push(Ev::Fail(num(1)?, num(2)?)),
                Some("R") => {
                    r.last_submitted = num(1)?;
                    r.evs.push(Ev::RpSub(num(1)?));
                }
                Some("P") => {
                    r.last_acked = Some((num(1)?, num(2)?));
                    r.evs.push(Ev::RpAck(num(1)?, num(2)?));
                }
                Some("X") => {}
                Some("E") => r.end = Some(l[1..].trim().to_string()),
                _ => return Err(format!("{} line {}: {l:?}", path.display(), i + 1)),
            }
        }
        Ok(r)
    }

    /// Per extent, the writes it may hold at restart point `k` (0: none declared): the
    /// last acknowledged one, then any that failed after it. Empty: never written.
    pub fn model_at(&self, k: u64, extents: u64) -> Vec<Vec<u64>> {
        let mut m = vec![Vec::new(); extents as usize];
        for e in &self.evs {
            match *e {
                Ev::RpSub(j) if j == k => break,
                Ev::Ack(seq, ext) if ext < extents => m[ext as usize] = vec![seq],
                Ev::Fail(seq, ext) if ext < extents => m[ext as usize].push(seq),
                _ => {}
            }
        }
        if k == 0 {
            m.iter_mut().for_each(Vec::clear);
        }
        m
    }

    /// The restart point a write falls in: the first one submitted after its
    /// acknowledgement (`None`: after the last one).
    pub fn point_of(&self, seq: u64) -> Option<u64> {
        let i = self
            .evs
            .iter()
            .position(|e| matches!(*e, Ev::Ack(s, _) | Ev::Fail(s, _) if s == seq))?;
        self.evs[i..].iter().find_map(|e| match *e {
            Ev::RpSub(k) => Some(k),
            _ => None,
        })
    }
}

/// The outcome of a block-by-block comparison.
#[derive(Debug, Default)]
pub struct Compared {
    pub blocks: u64,
    pub mismatched: u64,
    /// The first few mismatches, described.
    pub first: Vec<String>,
}

/// Reads extents `0..extents` of namespace `nsid` at `addr` over NVMe/TCP and compares
/// every block with `model` (from [`Record::model_at`] at restart point `k`).
pub fn compare_volume(
    addr: SocketAddr,
    nqn: &str,
    nsid: u32,
    io_blocks: u32,
    wid: u64,
    rec: &Record,
    k: u64,
) -> Result<Compared, String> {
    let mut ctrl = Controller::connect(addr, nqn, &HostOpts::default()).map_err(|e| format!("connect {addr}: {e}"))?;
    let ns = ctrl.identify_namespace(nsid).map_err(|e| format!("identify: {e}"))?;
    let bs = 1usize << ((ns.lbaf[usize::from(ns.flbas & 0xF)] >> 16) & 0xFF);
    let extents = ns.nsze / u64::from(io_blocks.max(1));
    let model = rec.model_at(k, extents);
    let mut q = ctrl.create_io_qpair().map_err(|e| format!("I/O queue: {e}"))?;
    let mut out = Compared::default();
    for (ext, want) in model.iter().enumerate() {
        let lba0 = ext as u64 * u64::from(io_blocks);
        let buf = DmaBuf::alloc(bs * io_blocks as usize);
        let c = q
            .sync(
                cmd::read(nsid, lba0, io_blocks),
                Data::FromCtrl(buf),
                Duration::from_secs(30),
            )
            .map_err(|e| format!("read lba {lba0}: {e}"))?;
        nvme::host::status_ok(&c.cqe).map_err(|e| format!("read lba {lba0}: {e}"))?;
        let data = c.buf.ok_or("read returned no buffer")?;
        for (i, b) in data.chunks(bs).enumerate() {
            let lba = lba0 + i as u64;
            out.blocks += 1;
            let got = read_stamp(b, lba, wid);
            let ok = match &got {
                Ok(None) => want.is_empty(),
                Ok(Some(s)) => want.contains(s),
                Err(_) => false,
            };
            if ok {
                continue;
            }
            out.mismatched += 1;
            if out.first.len() < 5 {
                let got = match got {
                    Ok(None) => "zeroes (never written)".to_string(),
                    Ok(Some(s)) => match rec.point_of(s) {
                        Some(p) => format!("seq {s} (a write of restart point {p})"),
                        None => format!("seq {s} (written after the last restart point)"),
                    },
                    Err(e) => e,
                };
                let want = match want.first() {
                    None => "zeroes".to_string(),
                    Some(s) => format!("seq {s}"),
                };
                out.first
                    .push(format!("lba {lba}: holds {got}, restart point {k} has {want}"));
            }
        }
    }
    ctrl.disconnect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_catch_torn_and_foreign_blocks() {
        let mut b = vec![0u8; 4096];
        assert_eq!(read_stamp(&b, 7, 1), Ok(None));
        stamp(&mut b, 7, 42, 1);
        assert_eq!(read_stamp(&b, 7, 1), Ok(Some(42)));
        assert!(read_stamp(&b, 8, 1).is_err(), "another LBA's block");
        assert!(read_stamp(&b, 7, 2).is_err(), "another writer's block");
        let mut torn = b.clone();
        torn[2048..].copy_from_slice(&[0u8; 2048]);
        assert!(read_stamp(&torn, 7, 1).unwrap_err().contains("torn"));
        assert!(read_stamp(&[1u8; 4096], 7, 1).is_err());
    }

    #[test]
    fn model_replays_the_log_up_to_a_restart_point() {
        let dir = std::env::temp_dir().join(format!("chaos-log-{}", std::process::id()));
        std::fs::write(
            &dir,
            "A 1 0\nA 2 1\nR 1\nP 1 1\nA 3 0\nF 4 2\nA 5 2\nR 2\nA 6 1\nR 3\nE queue broke\n",
        )
        .unwrap();
        let r = Record::read(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        assert_eq!(r.acked, 5, "A 1, 2, 3, 5, 6 (4 failed)");
        assert_eq!(r.last_submitted, 3);
        assert_eq!(r.last_acked, Some((1, 1)));
        assert_eq!(r.end.as_deref(), Some("queue broke"));
        assert_eq!(r.model_at(0, 3), vec![Vec::<u64>::new(); 3]);
        assert_eq!(r.model_at(1, 3), vec![vec![1], vec![2], vec![]]);
        assert_eq!(r.model_at(2, 3), vec![vec![3], vec![2], vec![5]]);
        assert_eq!(r.model_at(9, 3), vec![vec![3], vec![6], vec![5]]);
        assert_eq!(r.point_of(3), Some(2));
        assert_eq!(r.point_of(6), Some(3));
    }

    #[test]
    fn a_bad_log_line_is_an_error_not_a_panic() {
        let p = std::env::temp_dir().join(format!("chaos-badlog-{}", std::process::id()));
        std::fs::write(&p, "A 1\n").unwrap();
        assert!(Record::read(&p).is_err());
        std::fs::write(&p, "Q\n").unwrap();
        assert!(Record::read(&p).is_err());
        let _ = std::fs::remove_file(&p);
    }
}
