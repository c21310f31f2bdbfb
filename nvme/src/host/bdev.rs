//! A bdev backed by a remote NVMe/TCP namespace: `spdk_nvme_perf -r` through the engine's
//! bdev layer, so anything that drives a bdev (the perf harness with its verification,
//! histograms and per-core figures; a replicated volume's base) can drive a remote target.
//!
//! Threads: [`connect`] (management) connects the admin queue, identifies the namespace and
//! starts a keep-alive thread that owns the admin queue's polling. Each channel is one I/O
//! queue pair (one TCP connection) owned and polled by the reactor that opened it: submit
//! encodes the command into the queue pair's send buffer, poll moves bytes and reports
//! completions, nothing locks or allocates per I/O (buffers move through by value). Queue
//! pairs are connected ahead of time with [`NvmeHostBdev::preconnect`] so that opening a
//! channel on a reactor does not block it; a channel opened without one connects inline
//! (blocking that reactor for the handshake, logged).
//!
//! A lost controller (admin queue or an I/O queue pair failed: target gone, killed,
//! starved) is reconnected by the keep-alive thread as SPDK's `bdev_nvme` does, under
//! [`ReconnectOpts`] (`ctrlr_loss_timeout_sec`, `reconnect_delay_sec`,
//! `fast_io_fail_timeout_sec`; the rules are in `reconnect.rs`); the channels keep the
//! I/O the dead queue pairs never answered and resubmit it on new queue pairs
//! (`channel.rs`). With the default (`ctrlr_loss_timeout_sec` 0) a failed queue pair
//! completes everything in flight with an I/O error and every later request too.

use super::channel::{HostChannel, Shared};
pub use super::reconnect::ReconnectOpts;
use super::reconnect::{Recovery, Step};
use super::trid::TransportId;
use super::{Controller, HostError, HostOpts, Qpair};
use crate::spec::fabrics;
use crate::spec::log::SUBTYPE_NVME;
use engine::bdev::{Bdev, BdevChannel, BdevError, Geometry, IoOp, IoStats, StatsSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Keep-alive thread period.
const TICK: Duration = Duration::from_millis(100);

const OPS: [IoOp; 5] = IoOp::ALL;

/// Settings of [`connect`].
#[derive(Clone, Debug)]
pub struct HostBdevOpts {
    /// Host options (digests, timeouts, host NQN).
    pub host: HostOpts,
    /// Entries per I/O queue pair (capped at the controller's MQES + 1).
    pub queue_entries: u16,
    /// Reconnecting a lost controller (default: never, as in SPDK).
    pub reconnect: ReconnectOpts,
}

impl Default for HostBdevOpts {
    fn default() -> Self {
        HostBdevOpts {
            host: HostOpts::default(),
            queue_entries: 1024,
            reconnect: ReconnectOpts::default(),
        }
    }
}

/// The NVMe/TCP-backed bdev. See the module docs.
pub struct NvmeHostBdev {
    name: String,
    uuid: [u8; 16],
    nsid: u32,
    block_size: u32,
    num_blocks: u64,
    subnqn: String,
    addr: SocketAddr,
    /// `None` once dropped (disconnected).
    ctrlr: Arc<Mutex<Option<Controller>>>,
    spare: Mutex<Vec<Qpair>>,
    stats: StatsSet,
    stop: Arc<AtomicBool>,
    ka: Mutex<Option<std::thread::JoinHandle<()>>>,
    shared: Arc<Shared>,
    reconnect: ReconnectOpts,
}

/// Connects to the namespace `trid` names (through the discovery service when it names no
/// subsystem: the first NVM subsystem of the log, as `spdk_nvme_perf` does; the first active
/// namespace when it names none) and returns it as bdev `name` (not registered). Blocks.
pub fn connect(name: &str, trid: &TransportId, opts: &HostBdevOpts) -> Result<Arc<NvmeHostBdev>, HostError> {
    let mut host = opts.host.clone();
    if let Some(h) = &trid.hostnqn {
        host.hostnqn = h.clone();
    }
    let addr = trid.socket_addr().map_err(|e| HostError::Invalid(e.to_string()))?;
    opts.reconnect
        .validate()
        .map_err(|e| HostError::Invalid(e.to_string()))?;
    let (addr, subnqn) = match &trid.subnqn {
        Some(n) => (addr, n.clone()),
        None => {
            let log = super::discover(addr, &host)?;
            let e = log
                .iter()
                .find(|e| e.subtype == SUBTYPE_NVME && e.subnqn != fabrics::DISCOVERY_NQN)
                .ok_or_else(|| HostError::Invalid(format!("the discovery log of {addr} lists no NVM subsystem")))?;
            let a = e
                .socket_addr()
                .ok_or_else(|| HostError::Invalid(format!("unusable address {}:{}", e.traddr, e.trsvcid)))?;
            log::info!("{addr}: discovered {} at {a}", e.subnqn);
            (a, e.subnqn.clone())
        }
    };
    let mut c = Controller::connect(addr, &subnqn, &host)?;
    let nsid = match trid.nsid {
        Some(n) => n,
        None => *c
            .active_namespaces()?
            .first()
            .ok_or_else(|| HostError::Invalid(format!("{subnqn} has no active namespace")))?,
    };
    let ns = c.identify_namespace(nsid)?;
    if ns.nsze == 0 {
        return Err(HostError::Invalid(format!("{subnqn}: namespace {nsid} is not active")));
    }
    let fmt = ns.lbaf[usize::from(ns.flbas & 0xF)];
    let lbads = (fmt >> 16) & 0xFF;
    if !(9..=16).contains(&lbads) {
        return Err(HostError::Invalid(format!(
            "{subnqn}: namespace {nsid} has an unusable block size 2^{lbads}"
        )));
    }
    let mqes = (c.cap & 0xFFFF) as u16;
    c.opts.io_queue_entries = opts.queue_entries.min(mqes.saturating_add(1)).max(2);
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&ns.nguid);
    if uuid == [0; 16] {
        uuid = engine::bdev::new_uuid();
    }
    let queue_entries = c.opts.io_queue_entries;
    let ctrlr = Arc::new(Mutex::new(Some(c)));
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared::default());
    let ka = {
        let x = Keeper {
            name: name.to_string(),
            addr,
            subnqn: subnqn.clone(),
            host,
            queue_entries,
            ctrlr: ctrlr.clone(),
            shared: shared.clone(),
            stop: stop.clone(),
            opts: opts.reconnect,
        };
        std::thread::Builder::new()
            .name(format!("{name}-ka"))
            .spawn(move || x.run())
            .map_err(|e| HostError::Io(format!("keep-alive thread: {e}")))?
    };
    Ok(Arc::new(NvmeHostBdev {
        name: name.to_string(),
        uuid,
        nsid,
        block_size: 1 << lbads,
        num_blocks: ns.nsze,
        subnqn,
        addr,
        ctrlr,
        spare: Mutex::new(Vec::new()),
        stats: StatsSet::default(),
        stop,
        ka: Mutex::new(Some(ka)),
        shared,
        reconnect: opts.reconnect,
    }))
}

/// The keep-alive thread: ticks the admin queue, notices a lost controller, reconnects it
/// under the [`ReconnectOpts`], and connects queue pairs for the channels waiting for one.
struct Keeper {
    name: String,
    addr: SocketAddr,
    subnqn: String,
    host: HostOpts,
    queue_entries: u16,
    ctrlr: Arc<Mutex<Option<Controller>>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    opts: ReconnectOpts,
}

impl Keeper {
    fn run(self) {
        let mut rec = Recovery::new(self.opts);
        let mut warned = false;
        while !self.stop.load(Ordering::Relaxed) {
            let now = engine::clock::now_ns();
            if rec.is_lost() {
                self.recover(&mut rec, now);
            } else if let Err(why) = self.tick() {
                if self.opts.reconnects() {
                    log::warn!(
                        "bdev {}: controller lost ({why}); reconnecting every {} s for up to {} s",
                        self.name,
                        self.opts.reconnect_delay_sec,
                        self.opts.ctrlr_loss_timeout_sec
                    );
                    if let Some(c) = self.ctrlr.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        c.admin.close(); // no CC.SHN: the controller is gone
                    }
                    self.drop_replacements();
                    rec.lost(now);
                } else if !warned {
                    log::warn!("bdev {}: admin queue: {why}", self.name);
                    warned = true;
                }
            }
            std::thread::sleep(TICK);
        }
    }

    /// Keep-alive and AENs; connects queue pairs for waiting channels. Err: the controller
    /// is lost (admin queue failed, or a channel's queue pair of this controller did).
    fn tick(&self) -> Result<(), String> {
        let mut g = self.ctrlr.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = g.as_mut() else { return Ok(()) };
        c.tick().map_err(|e| e.to_string())?;
        if self.shared.qpair_failed.swap(false, Ordering::AcqRel) {
            return Err("an I/O queue pair failed".into());
        }
        let gen = self.shared.generation.load(Ordering::Acquire);
        let wanted = self.shared.wanted.load(Ordering::Acquire);
        let have = self.shared.replacements.lock().unwrap_or_else(|e| e.into_inner()).len();
        for _ in have..wanted {
            let q = c
                .create_io_qpair()
                .map_err(|e| format!("I/O queue pair connect: {e}"))?;
            self.shared
                .replacements
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((gen, q));
        }
        Ok(())
    }

    fn drop_replacements(&self) {
        let old: Vec<_> = std::mem::take(&mut *self.shared.replacements.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, q) in old {
            q.close();
        }
    }

    /// Lost: attempt, wait or give up, and tell the channels whether I/O may wait.
    fn recover(&self, rec: &mut Recovery, now: u64) {
        match rec.step(now) {
            Step::Wait => {}
            Step::GiveUp => {
                if !self.shared.dead.swap(true, Ordering::AcqRel) {
                    log::error!(
                        "bdev {}: controller {} at {} not back within ctrlr_loss_timeout_sec ({} s): failing its I/O",
                        self.name,
                        self.subnqn,
                        self.addr,
                        self.opts.ctrlr_loss_timeout_sec
                    );
                }
            }
            Step::Attempt => match Controller::connect(self.addr, &self.subnqn, &self.host) {
                Ok(mut c) => {
                    c.opts.io_queue_entries = self.queue_entries;
                    *self.ctrlr.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
                    self.shared.qpair_failed.store(false, Ordering::Release);
                    self.shared.generation.fetch_add(1, Ordering::AcqRel);
                    self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    log::info!(
                        "bdev {}: reconnected to {} after {} failed attempt(s)",
                        self.name,
                        self.subnqn,
                        rec.attempts
                    );
                    rec.reconnected();
                }
                Err(e) => {
                    rec.attempt_failed(now);
                    log::info!("bdev {}: reconnect attempt {} failed: {e}", self.name, rec.attempts);
                }
            },
        }
        let dead = self.shared.dead.load(Ordering::Acquire);
        self.shared.fail_io.store(dead || rec.fail_io(now), Ordering::Release);
    }
}

impl NvmeHostBdev {
    fn new_qpair(&self) -> Result<Qpair, HostError> {
        self.ctrlr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .ok_or(HostError::Closed)?
            .create_io_qpair()
    }

    /// Connects `n` I/O queue pairs now (management thread) for the next `n` channels.
    pub fn preconnect(&self, n: usize) -> Result<(), HostError> {
        for _ in 0..n {
            let q = self.new_qpair()?;
            self.spare.lock().unwrap_or_else(|e| e.into_inner()).push(q);
        }
        Ok(())
    }

    /// The namespace ID driven.
    pub fn nsid(&self) -> u32 {
        self.nsid
    }

    /// The subsystem connected to.
    pub fn subnqn(&self) -> &str {
        &self.subnqn
    }

    /// The I/O controller's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the controller is connected now (false while reconnecting or given up).
    pub fn connected(&self) -> bool {
        self.ctrlr.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Successful reconnects of the controller so far.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// The reconnect options in force.
    pub fn reconnect_opts(&self) -> ReconnectOpts {
        self.reconnect
    }

    /// Entries of each I/O queue pair.
    pub fn queue_entries(&self) -> u16 {
        self.ctrlr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |c| c.opts.io_queue_entries)
    }
}

impl Drop for NvmeHostBdev {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.ka.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
        for q in self.spare.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            q.close();
        }
        for (_, q) in self
            .shared
            .replacements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            q.close();
        }
        // Orderly shutdown (CC.SHN); open channels keep their own connections until closed.
        if let Some(c) = self.ctrlr.lock().unwrap_or_else(|e| e.into_inner()).take() {
            c.disconnect();
        }
    }
}

impl Bdev for NvmeHostBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &str {
        "NVMe/TCP namespace"
    }
    fn driver(&self) -> &'static str {
        "nvme_tcp_host"
    }
    fn uuid(&self) -> [u8; 16] {
        self.uuid
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn supports(&self, op: IoOp) -> bool {
        OPS.contains(&op)
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let q = match spare {
            Some(q) => Some(q),
            None => {
                log::info!("bdev {}: connecting an I/O queue pair inline", self.name);
                match self.new_qpair() {
                    Ok(q) => Some(q),
                    // Reconnecting: the channel waits for a queue pair from the keep-alive thread.
                    Err(_) if self.reconnect.reconnects() && !self.shared.dead.load(Ordering::Acquire) => None,
                    Err(e) => return Err(BdevError::Channel(format!("{}: {e}", self.subnqn))),
                }
            }
        };
        Ok(BdevChannel::new(
            &self.name,
            Geometry::new(self.block_size, self.num_blocks, 1, &OPS),
            self.stats.new_channel(),
            Box::new(HostChannel::new(
                q,
                self.nsid,
                self.shared.clone(),
                self.reconnect.reconnects(),
            )),
        ))
    }
    fn io_stats(&self) -> IoStats {
        self.stats.sum()
    }
    fn config(&self) -> Option<(&'static str, serde_json::Value)> {
        None
    }
    fn driver_specific(&self) -> serde_json::Value {
        serde_json::json!({
            "nvme_tcp_host": {
                "subnqn": self.subnqn,
                "traddr": self.addr.ip().to_string(),
                "trsvcid": self.addr.port().to_string(),
                "nsid": self.nsid,
            }
        })
    }
}
