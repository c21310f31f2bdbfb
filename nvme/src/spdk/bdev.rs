//! The `spdk-nvme` bdev: one namespace of a controller attached with SPDK's NVMe driver,
//! driven from baton's reactors. Each channel is one SPDK I/O queue pair, allocated on
//! the reactor that opens it and used only there; the channel's `poll` (called by the
//! channel's user from its reactor poller) runs `spdk_nvme_qpair_process_completions`.
//! The first channel also registers a slow poller on its reactor for the controller's
//! admin queue (keep-alive, events). No thread of its own, no lock on the I/O path.

use super::ffi::{self, Cmd, Ctrlr, Ns, Qpair};
use super::recover::{Recovery, QPAIR_RETRY_NS};
use super::SpdkError;
use crate::host::reconnect::ReconnectOpts;
use engine::bdev::{
    BdevChannel, BdevError, BdevInfo, ChannelBackend, Geometry, IoCompletion, IoOp, IoRequest, StatsSet,
    CHANNEL_QUEUE_DEPTH_MAX,
};
use engine::reactor::{self, PollStatus, PollerId};
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the admin poller runs.
const ADMIN_POLL_PERIOD: Duration = Duration::from_millis(100);

/// Options of an attach.
#[derive(Debug, Clone)]
pub struct SpdkNvmeOpts {
    /// Namespace to expose (`None`: the first active one).
    pub nsid: Option<u32>,
    /// I/O queue entries asked of the controller (it may grant fewer).
    pub io_queue_size: u32,
    /// Keep-alive timeout asked for, ms (0: none). The admin poller sends them.
    pub keep_alive_ms: u32,
    /// SPDK's I/O error resiliency options (`recover.rs`); None: reconnect forever and
    /// fail I/O at once while the controller is down.
    pub reconnect: Option<ReconnectOpts>,
}

impl Default for SpdkNvmeOpts {
    fn default() -> Self {
        SpdkNvmeOpts {
            nsid: None,
            io_queue_size: 256,
            keep_alive_ms: 10_000,
            reconnect: None,
        }
    }
}

/// One namespace of a controller attached through SPDK.
pub struct SpdkNvmeBdev {
    info: BdevInfo,
    trid: String,
    ctrlr: Arc<Ctrlr>,
    ns: Ns,
    /// What its channels validate against (dword-aligned buffers).
    geometry: Geometry,
    model: String,
    serial: String,
    stats: StatsSet,
    /// Some channel runs the admin poller.
    admin_polled: Arc<AtomicBool>,
    /// Controller resets after a loss (`recover.rs`).
    recovery: Arc<Recovery>,
    /// As attached (for `save_config`).
    opts: SpdkNvmeOpts,
}

/// Attaches the controller `trid` names (`trtype:TCP adrfam:IPv4 traddr:.. trsvcid:..
/// subnqn:..` or `trtype:PCIe traddr:0000:04:00.0`) and makes bdev `name` of one of its
/// namespaces. Management path: blocks while connecting.
pub fn attach(name: &str, trid: &str, opts: &SpdkNvmeOpts) -> Result<Arc<SpdkNvmeBdev>, SpdkError> {
    if name.is_empty() {
        return Err(SpdkError::Param("name must not be empty".into()));
    }
    if let Some(r) = &opts.reconnect {
        r.validate().map_err(|e| SpdkError::Param(e.to_string()))?;
    }
    let ctrlr = Arc::new(Ctrlr::connect(trid, opts.io_queue_size, opts.keep_alive_ms)?);
    let active = ctrlr.active_namespaces();
    let nsid = match opts.nsid {
        Some(n) => n,
        None => *active
            .first()
            .ok_or_else(|| SpdkError::NoNamespace(trid.to_string(), 0))?,
    };
    let ns = ctrlr
        .namespace(nsid)
        .filter(|_| active.contains(&nsid))
        .ok_or_else(|| SpdkError::NoNamespace(trid.to_string(), nsid))?;
    let mut ops = vec![IoOp::Read, IoOp::Write];
    if ns.supports_flush() {
        ops.push(IoOp::Flush);
    }
    if ns.supports_write_zeroes() {
        ops.push(IoOp::WriteZeroes);
    }
    // Dword alignment is all SPDK's PCIe PRP/SGL building needs; fabrics need none.
    let geometry = Geometry::new(ns.block_size, ns.num_blocks, 4, &ops);
    let (model, serial) = ctrlr.model_serial();
    let uuid = ns.uuid.filter(|u| *u != [0; 16]).unwrap_or_else(engine::bdev::new_uuid);
    Ok(Arc::new(SpdkNvmeBdev {
        info: BdevInfo::new(
            name,
            "SPDK NVMe disk",
            "spdk_nvme",
            uuid,
            ns.block_size,
            ns.num_blocks,
            &ops,
        ),
        trid: trid.to_string(),
        ctrlr,
        ns,
        geometry,
        model,
        serial,
        stats: StatsSet::default(),
        admin_polled: Arc::new(AtomicBool::new(false)),
        recovery: Arc::new(Recovery::new(opts.reconnect)),
        opts: opts.clone(),
    }))
}

impl SpdkNvmeBdev {
    pub fn nsid(&self) -> u32 {
        self.ns.nsid
    }
    pub fn trid(&self) -> &str {
        &self.trid
    }
    /// Largest transfer SPDK sends as one command (larger I/O is split by SPDK).
    pub fn max_io_bytes(&self) -> u32 {
        self.ns.max_xfer
    }
    /// Controller resets and queue pair reconnects so far.
    pub fn recovery(&self) -> super::recover::RecoveryStats {
        self.recovery.stats()
    }
}

impl engine::bdev::Bdev for SpdkNvmeBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        let slots = CHANNEL_QUEUE_DEPTH_MAX as u32;
        let qp = Qpair::alloc(&self.ctrlr, self.ns, slots).map_err(|e| BdevError::Channel(e.to_string()))?;
        let admin = start_admin_poller(&self.ctrlr, &self.admin_polled, &self.recovery, &self.info.name);
        let ch = SpdkChannel {
            qp,
            ctrlr: self.ctrlr.clone(),
            recovery: self.recovery.clone(),
            next_try_ns: 0,
            unproven: false,
            reset_gen: 0,
            slots: (0..slots).map(|_| None).collect(),
            free: (0..slots).rev().collect(),
            failed: VecDeque::with_capacity(CHANNEL_QUEUE_DEPTH_MAX),
            // Requests held from submission (at most `slots`) plus those in flight when
            // the connection dropped (at most `slots`): never grows on the I/O path.
            held: VecDeque::with_capacity(2 * slots as usize),
            admin,
            admin_polled: self.admin_polled.clone(),
            name: self.info.name.clone(),
            qpair_failed: false,
        };
        Ok(BdevChannel::new(
            &self.info.name,
            self.geometry,
            self.stats.new_channel(),
            Box::new(ch),
        ))
    }
    fn io_stats(&self) -> engine::bdev::IoStats {
        self.stats.sum()
    }
    fn config(&self) -> Option<(&'static str, serde_json::Value)> {
        let p = super::rpc::AttachParams {
            name: self.info.name.clone(),
            trid: self.trid.clone(),
            nsid: Some(self.ns.nsid),
            io_queue_size: Some(self.opts.io_queue_size),
            keep_alive_timeout_ms: Some(self.opts.keep_alive_ms),
            ctrlr_loss_timeout_sec: self.opts.reconnect.map(|r| r.ctrlr_loss_timeout_sec),
            reconnect_delay_sec: self.opts.reconnect.map(|r| r.reconnect_delay_sec),
            fast_io_fail_timeout_sec: self.opts.reconnect.map(|r| r.fast_io_fail_timeout_sec),
        };
        Some(("bdev_spdk_nvme_attach", serde_json::to_value(p).ok()?))
    }
    fn driver_specific(&self) -> serde_json::Value {
        let r = self.recovery.stats();
        serde_json::json!({
            "spdk_nvme": {
                "trid": self.trid,
                "nsid": self.ns.nsid,
                "model_number": self.model,
                "serial_number": self.serial,
                "max_io_xfer_size": self.ns.max_xfer,
                "recovery": {
                    "resets": r.resets,
                    "reset_failures": r.reset_failures,
                    "qpair_reconnects": r.qpair_reconnects,
                    "resetting": r.resetting,
                    "given_up": r.given_up,
                },
            }
        })
    }
}

/// On a reactor, and when no other channel of the bdev does it yet: a poller running
/// the controller's admin completions every [`ADMIN_POLL_PERIOD`]. It unregisters itself
/// once the returned flag is set (the channel closing): a channel may be dropped while
/// the reactor removes pollers, when unregistering another one is not possible.
fn start_admin_poller(
    ctrlr: &Arc<Ctrlr>,
    flag: &Arc<AtomicBool>,
    recovery: &Arc<Recovery>,
    name: &str,
) -> Option<Rc<Cell<bool>>> {
    reactor::current_core()?;
    if flag.swap(true, Ordering::AcqRel) {
        return None;
    }
    let (c, rec, name) = (ctrlr.clone(), recovery.clone(), name.to_string());
    let stop = Rc::new(Cell::new(false));
    let me: Rc<Cell<Option<PollerId>>> = Rc::new(Cell::new(None));
    let (stop2, me2) = (stop.clone(), me.clone());
    let mut warned = false;
    let id = reactor::register_poller("spdk_nvme_admin", Some(ADMIN_POLL_PERIOD), move || {
        if stop2.get() {
            if let Some(id) = me2.take() {
                reactor::unregister_poller(id);
            }
            return PollStatus::Idle;
        }
        let now = engine::clock::now_ns();
        if rec.resetting() {
            rec.step(&c, &name, now);
            return PollStatus::Idle;
        }
        // Skipped while a channel runs a reset step: never wait for it.
        let Some(rc) = rec.exclusive(|| c.process_admin()) else {
            return PollStatus::Idle;
        };
        if rc < 0 || c.is_failed() {
            if !warned {
                warned = true;
                log::warn!("{name}: admin queue failed (errno {})", -rc);
            }
            rec.step(&c, &name, now);
            return PollStatus::Idle;
        }
        warned = false;
        if rc > 0 {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    });
    me.set(Some(id));
    Some(stop)
}

/// A request in flight (its buffer held until the completion; the rest kept so the
/// request can wait for a reconnect and go out again).
type InFlight = IoRequest;

/// One reactor's queue pair and the requests in flight on it.
struct SpdkChannel {
    qp: Qpair,
    /// In-flight requests by slot: their user data and buffer.
    slots: Box<[Option<InFlight>]>,
    free: Vec<u32>,
    /// Requests SPDK refused at submission (not ENOMEM), completed by the next poll.
    failed: VecDeque<IoCompletion>,
    /// Requests waiting for the controller to come back (SPDK's resiliency options:
    /// `Recovery::fail_io` says no yet); room for every slot, preallocated.
    held: VecDeque<IoRequest>,
    /// Set to stop this channel's admin poller, if it runs one.
    admin: Option<Rc<Cell<bool>>>,
    admin_polled: Arc<AtomicBool>,
    name: String,
    qpair_failed: bool,
    ctrlr: Arc<Ctrlr>,
    recovery: Arc<Recovery>,
    /// While the queue pair is failed: when to try reconnecting it next.
    next_try_ns: u64,
    /// Reconnected (or tried to) and no I/O has succeeded on it since.
    unproven: bool,
    /// `Recovery::generation` at the last reconnect.
    reset_gen: u64,
}

/// Whether a raw completion status (`status_raw`) is an error: SC (bits 1..9) or SCT
/// (bits 9..12) non-zero.
#[inline]
fn status_is_error(status: u16) -> bool {
    (status >> 1) & 0x7ff != 0
}

/// Whether a failed command may go out again after a reconnect, as SPDK's `bdev_nvme`
/// retries: aborted because its queue was deleted (what SPDK completes in-flight
/// commands of a failed queue pair with) or a path error, and Do Not Retry (bit 15) clear.
#[inline]
fn status_is_retryable(status: u16) -> bool {
    const SCT_GENERIC: u16 = 0;
    const SCT_PATH: u16 = 3;
    const SC_ABORTED_SQ_DELETION: u16 = 0x08;
    let (sc, sct, dnr) = ((status >> 1) & 0xff, (status >> 9) & 0x7, status >> 15 != 0);
    !dnr && (sct == SCT_PATH || (sct == SCT_GENERIC && sc == SC_ABORTED_SQ_DELETION))
}

impl ChannelBackend for SpdkChannel {
    fn submit(&mut self, io: IoRequest) -> Result<(), IoRequest> {
        self.submit_inner(io, false)
    }

    #[inline]
    fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        let mut n = 0;
        while let Some(c) = self.failed.pop_front() {
            n += 1;
            f(c);
        }
        let (slots, free, name, unproven, held, recovery) = (
            &mut self.slots,
            &mut self.free,
            &self.name,
            &mut self.unproven,
            &mut self.held,
            &self.recovery,
        );
        let rc = self.qp.poll(&mut |slot, status| {
            let Some(io) = slots[slot as usize].take() else {
                log::error!("{name}: completion for idle slot {slot}");
                return;
            };
            free.push(slot);
            let result = if status_is_error(status) {
                // Aborted by a lost connection while I/O may wait for the reconnect: it
                // waits (the clock is read on errors only, not on the I/O path).
                if status_is_retryable(status) && !recovery.fail_io(engine::clock::now_ns()) {
                    // Room: `held` holds twice as many as there are slots.
                    held.push_back(io);
                    return;
                }
                Err(BdevError::Io(format!("{name}: {}", ffi::status_string(status))))
            } else {
                *unproven = false;
                Ok(())
            };
            n += 1;
            f(IoCompletion {
                user_data: io.user_data,
                result,
                buf: io.buf,
            });
        });
        if rc < 0 && !self.qpair_failed {
            self.qpair_failed = true;
            self.next_try_ns = 0;
            self.recovery.lost(engine::clock::now_ns());
            log::error!("{}: SPDK queue pair failed (errno {})", self.name, -rc);
        }
        if self.qpair_failed {
            self.try_reconnect();
        }
        if self.held.is_empty() {
            n
        } else {
            n + self.drain_held(engine::clock::now_ns(), f)
        }
    }
}

impl SpdkChannel {
    /// Submits `io`, or holds it while the controller is down and I/O may wait for it
    /// (`from_held`: it comes from `held`, so it does not queue behind it again).
    fn submit_inner(&mut self, mut io: IoRequest, from_held: bool) -> Result<(), IoRequest> {
        if self.failed.len() == self.failed.capacity() {
            return Err(io);
        }
        if self.qpair_failed || (!from_held && !self.held.is_empty()) || self.recovery.given_up() {
            let now = engine::clock::now_ns();
            if !self.recovery.fail_io(now) {
                // Waits for the reconnect (in order behind what already waits).
                return if self.held.len() < self.slots.len() {
                    self.held.push_back(io);
                    Ok(())
                } else {
                    Err(io)
                };
            }
            if self.recovery.given_up() {
                self.failed.push_back(IoCompletion {
                    user_data: io.user_data,
                    result: Err(BdevError::Io(format!(
                        "{}: controller lost: ctrlr_loss_timeout_sec passed",
                        self.name
                    ))),
                    buf: io.buf,
                });
                return Ok(());
            }
        }
        let cmd = match io.op {
            IoOp::Read => Cmd::Read(io.buf.as_mut().map_or(std::ptr::null_mut(), |b| b.as_mut_ptr())),
            IoOp::Write => Cmd::Write(io.buf.as_mut().map_or(std::ptr::null_mut(), |b| b.as_mut_ptr())),
            IoOp::Flush => Cmd::Flush,
            IoOp::WriteZeroes => Cmd::WriteZeroes,
            IoOp::Unmap => {
                // Not in the geometry, so the channel wrapper refuses it before this.
                self.failed.push_back(IoCompletion {
                    user_data: io.user_data,
                    result: Err(BdevError::Unsupported {
                        bdev: self.name.clone(),
                        op: io.op.name(),
                    }),
                    buf: io.buf,
                });
                return Ok(());
            }
        };
        let Some(slot) = self.free.pop() else {
            return Err(io);
        };
        match self.qp.submit(slot, cmd, io.offset_blocks, io.num_blocks) {
            Ok(()) => {
                self.slots[slot as usize] = Some(io);
                Ok(())
            }
            Err(libc::ENOMEM) => {
                self.free.push(slot);
                Err(io)
            }
            Err(errno) => {
                // ENXIO: the queue pair failed (its poll may not have said so yet).
                if errno == libc::ENXIO && !self.qpair_failed {
                    self.qpair_failed = true;
                    self.next_try_ns = 0;
                    self.recovery.lost(engine::clock::now_ns());
                }
                self.free.push(slot);
                if errno == libc::ENXIO && !self.recovery.fail_io(engine::clock::now_ns()) {
                    self.held.push_back(io);
                    return Ok(());
                }
                self.failed.push_back(IoCompletion {
                    user_data: io.user_data,
                    result: Err(BdevError::Io(format!(
                        "{}: SPDK refused the {} (errno {errno})",
                        self.name,
                        io.op.name()
                    ))),
                    buf: io.buf,
                });
                Ok(())
            }
        }
    }

    /// Held requests: out again once the queue pair is back; failed once
    /// `Recovery::fail_io` says so (fast_io_fail_timeout_sec or the loss timeout passed).
    fn drain_held(&mut self, now: u64, f: &mut dyn FnMut(IoCompletion)) -> usize {
        let mut n = 0;
        if !self.qpair_failed && !self.recovery.given_up() {
            for _ in 0..self.held.len() {
                let Some(io) = self.held.pop_front() else { break };
                if let Err(io) = self.submit_inner(io, true) {
                    self.held.push_front(io);
                    break;
                }
            }
        } else if self.recovery.fail_io(now) {
            let why = if self.recovery.given_up() {
                "controller lost: ctrlr_loss_timeout_sec passed"
            } else {
                "controller reconnecting: fast_io_fail_timeout_sec passed"
            };
            while let Some(io) = self.held.pop_front() {
                n += 1;
                f(IoCompletion {
                    user_data: io.user_data,
                    result: Err(BdevError::Io(format!("{}: {why}", self.name))),
                    buf: io.buf,
                });
            }
        }
        // Failures of the resubmission come back through `failed` at the next poll.
        n
    }

    /// A failed queue pair: reconnect it (what was in flight came back aborted through
    /// the completions). A plain reconnect is tried first (only the I/O connection may
    /// have dropped); when the queue pair fails again before any I/O succeeded on it, and
    /// no one reset the controller meanwhile, the controller is reset first (the target
    /// may have lost it: a restarted target refuses the old controller ID). At most every
    /// [`QPAIR_RETRY_NS`]; resets are rate-limited in `Recovery`.
    fn try_reconnect(&mut self) {
        let now = engine::clock::now_ns();
        // Given up (ctrlr_loss_timeout_sec passed): final, as a deleted controller is in SPDK.
        if now < self.next_try_ns || self.recovery.given_up() {
            return;
        }
        self.next_try_ns = now + QPAIR_RETRY_NS;
        let needs_reset = self.unproven && self.recovery.generation() == self.reset_gen;
        if (self.recovery.resetting() || needs_reset) && !self.recovery.step(&self.ctrlr, &self.name, now) {
            return;
        }
        self.reset_gen = self.recovery.generation();
        match self.qp.reconnect() {
            Ok(()) => {
                self.qpair_failed = false;
                self.unproven = true;
                self.recovery.qpair_reconnected();
                log::info!("{}: queue pair reconnecting", self.name);
            }
            // Not now, or the controller needs a reset: the next try resets it.
            Err(e) => {
                self.unproven = true;
                log::debug!("{}: queue pair reconnect refused (errno {e})", self.name);
            }
        }
    }
}

impl Drop for SpdkChannel {
    fn drop(&mut self) {
        if let Some(stop) = self.admin.take() {
            stop.set(true);
            self.admin_polled.store(false, Ordering::Release);
        }
    }
}
