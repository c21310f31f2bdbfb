//! An attached NVMe-oF controller, as SPDK's `bdev_nvme` keeps one: the admin queue, a
//! keep-alive thread that owns its polling, the paths to the subsystem (failover order),
//! and one bdev per active namespace (`bdev.rs`), all sharing the controller's I/O queue
//! pairs' recovery (`channel.rs`).
//!
//! A lost controller (admin queue or an I/O queue pair failed, or the path turned
//! inaccessible by ANA) is reconnected by the keep-alive thread under [`ReconnectOpts`]:
//! each attempt tries every path once, starting with the one after the path that failed,
//! and takes the first whose ANA states let it reach the namespaces (a path without ANA
//! reporting always can). With more than one path the first attempt comes at once, not one
//! `reconnect_delay_sec` later: that is the failover.

use super::channel::Shared;
use super::reconnect::{ReconnectOpts, Recovery, Step};
use super::trid::TransportId;
use super::{Controller, HostError, HostOpts, Qpair};
use crate::nvmf::ana::AEN_ANA_CHANGE_DW0;
use crate::spec::cmd::admin_opc;
use crate::spec::fabrics;
use crate::spec::log::SUBTYPE_NVME;
use crate::spec::Sqe;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Keep-alive thread period.
const TICK: Duration = Duration::from_millis(100);
/// Token of the Asynchronous Event Request the keep-alive thread keeps posted.
const AER_TOKEN: u64 = u64::MAX - 2;
/// ANA state codes a path can serve I/O in (optimized, non-optimized).
const ANA_USABLE: [u8; 2] = [0x01, 0x02];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Settings of an attach.
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

/// What the controller and its keep-alive thread share.
pub(crate) struct CtrlrCore {
    pub name: String,
    pub subnqn: String,
    pub host: HostOpts,
    pub queue_entries: u16,
    pub reconnect: ReconnectOpts,
    /// The paths, in failover order; `active` indexes the one in use (or last used).
    pub paths: Mutex<Vec<SocketAddr>>,
    pub active: AtomicUsize,
    /// `None` while reconnecting or once detached.
    pub ctrlr: Mutex<Option<Controller>>,
    /// The namespaces the bdevs drive (their ANA groups decide whether a path serves).
    pub nsids: Mutex<Vec<u32>>,
    pub shared: Arc<Shared>,
    pub stop: AtomicBool,
    /// Paths given up because ANA said they cannot reach the namespaces (counted).
    pub ana_failovers: std::sync::atomic::AtomicU64,
}

impl CtrlrCore {
    /// The address of the path in use.
    pub fn addr(&self) -> SocketAddr {
        let p = lock(&self.paths);
        p[self.active.load(Ordering::Acquire) % p.len()]
    }

    pub fn new_qpair(&self) -> Result<Qpair, HostError> {
        lock(&self.ctrlr).as_mut().ok_or(HostError::Closed)?.create_io_qpair()
    }

    /// Connects through `addr` and checks that the path reaches every namespace by ANA.
    fn connect_path(&self, addr: SocketAddr) -> Result<Controller, HostError> {
        let mut c = Controller::connect(addr, &self.subnqn, &self.host)?;
        c.opts.io_queue_entries = self.queue_entries;
        if let Err(e) = self.check_ana(&mut c) {
            c.disconnect();
            return Err(e);
        }
        post_aer(&mut c)?;
        Ok(c)
    }

    /// Err when ANA says this controller's path cannot serve one of our namespaces.
    fn check_ana(&self, c: &mut Controller) -> Result<(), HostError> {
        if !c.ana_reporting() {
            return Ok(());
        }
        let groups = c.ana_log()?;
        let nsids = lock(&self.nsids).clone();
        for g in groups {
            if !ANA_USABLE.contains(&g.state) && g.nsids.iter().any(|n| nsids.contains(n)) {
                return Err(HostError::Invalid(format!(
                    "{}: ANA group {} is in state {:#x} on {}",
                    self.subnqn, g.anagrpid, g.state, c.addr
                )));
            }
        }
        Ok(())
    }
}

/// Posts the Asynchronous Event Request that brings ANA change notices.
fn post_aer(c: &mut Controller) -> Result<(), HostError> {
    let s = Sqe {
        opc: admin_opc::ASYNC_EVENT_REQUEST,
        ..Sqe::default()
    };
    c.admin.submit(s, super::Data::None, AER_TOKEN).map_err(|e| e.0)?;
    Ok(())
}

/// Connects the first path that answers (in order) and starts the keep-alive thread.
pub(crate) fn start(
    name: &str,
    subnqn: &str,
    paths: Vec<SocketAddr>,
    host: HostOpts,
    opts: &HostBdevOpts,
) -> Result<(Arc<CtrlrCore>, std::thread::JoinHandle<()>), HostError> {
    opts.reconnect
        .validate()
        .map_err(|e| HostError::Invalid(e.to_string()))?;
    let mut core = CtrlrCore {
        name: name.to_string(),
        subnqn: subnqn.to_string(),
        host,
        queue_entries: opts.queue_entries,
        reconnect: opts.reconnect,
        paths: Mutex::new(paths.clone()),
        active: AtomicUsize::new(0),
        ctrlr: Mutex::new(None),
        nsids: Mutex::new(Vec::new()),
        shared: Arc::new(Shared::default()),
        stop: AtomicBool::new(false),
        ana_failovers: Default::default(),
    };
    let mut last = HostError::Invalid("no path".into());
    let mut got = None;
    for (i, a) in paths.iter().enumerate() {
        match Controller::connect(*a, subnqn, &core.host) {
            Ok(c) => {
                got = Some((i, c));
                break;
            }
            Err(e) => last = e,
        }
    }
    let (i, mut c) = got.ok_or(last)?;
    let mqes = (c.cap & 0xFFFF) as u16;
    core.queue_entries = opts.queue_entries.min(mqes.saturating_add(1)).max(2);
    c.opts.io_queue_entries = core.queue_entries;
    post_aer(&mut c)?;
    core.active.store(i, Ordering::Release);
    *lock(&core.ctrlr) = Some(c);
    let core = Arc::new(core);
    let k = Keeper { core: core.clone() };
    let h = std::thread::Builder::new()
        .name(format!("{name}-ka"))
        .spawn(move || k.run())
        .map_err(|e| HostError::Io(format!("keep-alive thread: {e}")))?;
    Ok((core, h))
}

/// The keep-alive thread: ticks the admin queue, notices a lost controller or a path ANA
/// closed, fails over or reconnects under the [`ReconnectOpts`], and connects queue pairs
/// for the channels waiting for one.
struct Keeper {
    core: Arc<CtrlrCore>,
}

impl Keeper {
    fn run(self) {
        let c = &self.core;
        let mut rec = Recovery::new(c.reconnect);
        let mut warned = false;
        while !c.stop.load(Ordering::Relaxed) {
            let now = engine::clock::now_ns();
            if rec.is_lost() {
                self.recover(&mut rec, now);
            } else if let Err(why) = self.tick() {
                if c.reconnect.reconnects() {
                    let n = lock(&c.paths).len();
                    log::warn!(
                        "bdev {}: controller lost ({why}); {} every {} s for up to {} s",
                        c.name,
                        if n > 1 {
                            "failing over to the next of its paths, then trying"
                        } else {
                            "reconnecting"
                        },
                        c.reconnect.reconnect_delay_sec,
                        c.reconnect.ctrlr_loss_timeout_sec
                    );
                    if let Some(ctl) = lock(&c.ctrlr).take() {
                        ctl.admin.close(); // no CC.SHN: the controller is gone
                    }
                    self.drop_replacements();
                    rec.lost(now);
                    if n > 1 {
                        rec.attempt_at(now);
                    }
                } else if !warned {
                    log::warn!("bdev {}: admin queue: {why}", c.name);
                    warned = true;
                }
            }
            std::thread::sleep(TICK);
        }
    }

    /// Keep-alive and AENs; connects queue pairs for waiting channels. Err: the controller
    /// is lost (admin queue failed, a channel's queue pair of this controller did, or an ANA
    /// change closed this path to one of our namespaces).
    fn tick(&self) -> Result<(), String> {
        let c = &self.core;
        let mut g = lock(&c.ctrlr);
        let Some(ctl) = g.as_mut() else { return Ok(()) };
        ctl.tick().map_err(|e| e.to_string())?;
        let events = std::mem::take(&mut ctl.events);
        for e in events.iter().filter(|e| e.user == AER_TOKEN) {
            if e.cqe.dw0 == AEN_ANA_CHANGE_DW0 {
                if let Err(why) = c.check_ana(ctl) {
                    c.ana_failovers.fetch_add(1, Ordering::Relaxed);
                    return Err(why.to_string());
                }
            }
            if e.status().is_success() {
                post_aer(ctl).map_err(|e| e.to_string())?;
            }
        }
        if c.shared.qpair_failed.swap(false, Ordering::AcqRel) {
            return Err("an I/O queue pair failed".into());
        }
        let gen = c.shared.generation.load(Ordering::Acquire);
        let wanted = c.shared.wanted.load(Ordering::Acquire);
        let have = lock(&c.shared.replacements).len();
        for _ in have..wanted {
            let q = ctl
                .create_io_qpair()
                .map_err(|e| format!("I/O queue pair connect: {e}"))?;
            lock(&c.shared.replacements).push((gen, q));
        }
        Ok(())
    }

    fn drop_replacements(&self) {
        let old: Vec<_> = std::mem::take(&mut *lock(&self.core.shared.replacements));
        for (_, q) in old {
            q.close();
        }
    }

    /// Lost: attempt (every path once, the next one first), wait or give up, and tell the
    /// channels whether I/O may wait.
    fn recover(&self, rec: &mut Recovery, now: u64) {
        let c = &self.core;
        match rec.step(now) {
            Step::Wait => {}
            Step::GiveUp => {
                if !c.shared.dead.swap(true, Ordering::AcqRel) {
                    log::error!(
                        "bdev {}: controller {} not back on any of its paths within ctrlr_loss_timeout_sec ({} s): failing its I/O",
                        c.name,
                        c.subnqn,
                        c.reconnect.ctrlr_loss_timeout_sec
                    );
                }
            }
            Step::Attempt => {
                let paths = lock(&c.paths).clone();
                let from = c.active.load(Ordering::Acquire);
                let mut why = Vec::new();
                for k in 1..=paths.len() {
                    let i = (from + k) % paths.len();
                    match c.connect_path(paths[i]) {
                        Ok(ctl) => {
                            c.active.store(i, Ordering::Release);
                            *lock(&c.ctrlr) = Some(ctl);
                            c.shared.qpair_failed.store(false, Ordering::Release);
                            c.shared.generation.fetch_add(1, Ordering::AcqRel);
                            c.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                            log::info!(
                                "bdev {}: connected to {} at {} after {} failed attempt(s)",
                                c.name,
                                c.subnqn,
                                paths[i],
                                rec.attempts
                            );
                            rec.reconnected();
                            why.clear();
                            break;
                        }
                        Err(e) => why.push(format!("{}: {e}", paths[i])),
                    }
                }
                if !why.is_empty() {
                    rec.attempt_failed(now);
                    log::info!(
                        "bdev {}: reconnect attempt {} failed: {}",
                        c.name,
                        rec.attempts,
                        why.join("; ")
                    );
                }
            }
        }
        let dead = c.shared.dead.load(Ordering::Acquire);
        c.shared.fail_io.store(dead || rec.fail_io(now), Ordering::Release);
    }
}

/// An attached controller (`bdev_nvme_attach_controller`): hands out one bdev per
/// namespace and stops its keep-alive thread and admin queue when it and every bdev of it
/// are dropped.
pub struct NvmeCtrlr {
    pub(crate) core: Arc<CtrlrCore>,
    ka: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(crate) spare: Mutex<Vec<Qpair>>,
    /// The calls that attached it (one per path), for `save_config`.
    config: Mutex<Vec<serde_json::Value>>,
}

impl NvmeCtrlr {
    /// Connects to the subsystem `trid` names (through the discovery service when it names
    /// none: the first NVM subsystem of the log, as `spdk_nvme_perf` does) and keeps the
    /// controller as `name`. Blocks.
    pub fn attach(name: &str, trid: &TransportId, opts: &HostBdevOpts) -> Result<Arc<NvmeCtrlr>, HostError> {
        let mut host = opts.host.clone();
        if let Some(h) = &trid.hostnqn {
            host.hostnqn = h.clone();
        }
        host.trtype = trid.trtype;
        let addr = trid.socket_addr().map_err(|e| HostError::Invalid(e.to_string()))?;
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
        let (core, ka) = start(name, &subnqn, vec![addr], host, opts)?;
        Ok(Arc::new(NvmeCtrlr {
            core,
            ka: Mutex::new(Some(ka)),
            spare: Mutex::new(Vec::new()),
            config: Mutex::new(Vec::new()),
        }))
    }

    /// Adds `addr` as another path to the same subsystem (SPDK's `multipath: "failover"`):
    /// used, in order, when the path in use is lost or ANA closes it. Not connected now: a
    /// standby site's path may not be exported yet.
    pub fn add_path(&self, addr: SocketAddr) -> Result<(), HostError> {
        let mut p = lock(&self.core.paths);
        if p.contains(&addr) {
            return Err(HostError::Invalid(format!(
                "controller {} already has a path to {addr}",
                self.core.name
            )));
        }
        p.push(addr);
        Ok(())
    }

    /// Removes path `addr`; the path in use cannot be removed while it is the only one.
    pub fn remove_path(&self, addr: SocketAddr) -> Result<(), HostError> {
        let mut p = lock(&self.core.paths);
        let i = p
            .iter()
            .position(|a| *a == addr)
            .ok_or_else(|| HostError::Invalid(format!("controller {} has no path to {addr}", self.core.name)))?;
        if p.len() == 1 {
            return Err(HostError::Invalid(format!(
                "{addr} is the only path of controller {}: detach the controller",
                self.core.name
            )));
        }
        p.remove(i);
        let active = self.core.active.load(Ordering::Acquire);
        if active >= i && active > 0 {
            self.core.active.store(active - 1, Ordering::Release);
        }
        Ok(())
    }

    /// Records the calls that attached this controller (one per path), for `save_config`.
    pub fn set_config(&self, calls: Vec<serde_json::Value>) {
        *lock(&self.config) = calls;
    }

    /// The calls that attached this controller.
    pub fn config(&self) -> Vec<serde_json::Value> {
        lock(&self.config).clone()
    }

    /// The active namespaces now (Identify, active NSID list).
    pub fn active_namespaces(&self) -> Result<Vec<u32>, HostError> {
        lock(&self.core.ctrlr)
            .as_mut()
            .ok_or(HostError::Closed)?
            .active_namespaces()
    }

    /// Connects `n` I/O queue pairs now (management thread) for the next `n` channels.
    pub fn preconnect(&self, n: usize) -> Result<(), HostError> {
        for _ in 0..n {
            let q = self.core.new_qpair()?;
            lock(&self.spare).push(q);
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.core.name
    }
    pub fn subnqn(&self) -> &str {
        &self.core.subnqn
    }
    /// The transport of every queue pair of this controller.
    pub fn trtype(&self) -> super::Trtype {
        self.core.host.trtype
    }
    pub fn hostnqn(&self) -> &str {
        &self.core.host.hostnqn
    }
    /// The address of the path in use (or last used while reconnecting).
    pub fn addr(&self) -> SocketAddr {
        self.core.addr()
    }
    /// Every path, in failover order.
    pub fn paths(&self) -> Vec<SocketAddr> {
        lock(&self.core.paths).clone()
    }
    /// Whether the controller is connected now (false while reconnecting or given up).
    pub fn connected(&self) -> bool {
        lock(&self.core.ctrlr).is_some()
    }
    /// The controller ID the target gave the connection in use (None while reconnecting).
    pub fn cntlid(&self) -> Option<u16> {
        lock(&self.core.ctrlr).as_ref().map(Controller::cntlid)
    }
    /// Successful reconnects (and failovers) so far.
    pub fn reconnects(&self) -> u64 {
        self.core.shared.reconnects.load(Ordering::Relaxed)
    }
    /// Paths given up because an ANA change made them unable to reach a namespace.
    pub fn ana_failovers(&self) -> u64 {
        self.core.ana_failovers.load(Ordering::Relaxed)
    }
    /// The reconnect options in force.
    pub fn reconnect_opts(&self) -> ReconnectOpts {
        self.core.reconnect
    }
    /// Entries of each I/O queue pair.
    pub fn queue_entries(&self) -> u16 {
        self.core.queue_entries
    }
}

impl Drop for NvmeCtrlr {
    fn drop(&mut self) {
        self.core.stop.store(true, Ordering::Relaxed);
        if let Some(h) = lock(&self.ka).take() {
            let _ = h.join();
        }
        for q in lock(&self.spare).drain(..) {
            q.close();
        }
        for (_, q) in lock(&self.core.shared.replacements).drain(..) {
            q.close();
        }
        // Orderly shutdown (CC.SHN); open channels keep their own connections until closed.
        if let Some(c) = lock(&self.core.ctrlr).take() {
            c.disconnect();
        }
    }
}
