//! The standby host: detects primary failure ([`crate::failover::Detector`]) and runs the
//! failover sequence: roll every standby volume of the application back to its last
//! restart point, promote it (generation bump: fencing), export it over NVMe/TCP, resolve
//! the application's execution image for that restart point and start the application.
//! See `docs/failover.md`.
//!
//! Threads (management plane; none is a reactor, none is on the data path):
//! - `hb_listen`: receives the primaries' direct UDP heartbeats
//!   ([`rdma_transport::liveness`]) and feeds the detector;
//! - `failover`: polls the detector every [`MONITOR_PERIOD`], runs the failover when it
//!   decides (or when an operator declares failure), then watches the application.
//!
//! The standby volumes live on reactors ([`crate::registry`]); the failover thread reaches
//! them with [`crate::registry::with_standby`], which blocks this thread, never a reactor for longer
//! than the promotion's own synchronous I/O.
//!
//! The relays' `PrimaryLiveness` reports arrive on the standby's relay connections (the
//! network side, `standby::net`); it calls [`StandbyHost::relay_report`] for each.
//!
//! Files: `config.rs` (settings), `report.rs` (status and failover report), `drain.rs`
//! (step 0, the relay drain), `sequence.rs` (the failover steps), `rpc.rs` (methods).

mod config;
mod drain;
mod report;
mod rpc;
mod sequence;

pub use config::{ExportConfig, FailoverVolume, StandbyHostConfig, SyncingFailover, ROLLBACK_TIMEOUT_MS_DEFAULT};
pub use drain::{VolumeDrain, DRAIN_NO_RELAY_GRACE_MS, DRAIN_TIMEOUT_MS_DEFAULT};
pub use report::{AppStatus, FailoverReport, FailoverState, HostStatus, PromotedVolume};
pub use rpc::{register_rpcs, register_rpcs_for, DeclareParams};

use crate::failover::{Detector, DetectorConfig, FailureDecision};
use engine::clock::now_ns;
use nvme::nvmf::{Target, TargetError};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the failover thread polls the detector.
pub const MONITOR_PERIOD: Duration = Duration::from_millis(5);

/// Resolves a restart tag to the path of the execution image to restart from.
pub type ImageResolver = Box<dyn Fn(&[u8]) -> Result<PathBuf, String> + Send>;

/// Errors of the standby host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("standby {standby}: {why}")]
    Volume { standby: String, why: String },
    #[error("export: {0}")]
    Export(#[from] TargetError),
    #[error("image for restart tag {tag}: {why}")]
    Image { tag: String, why: String },
    #[error("failover already ran")]
    AlreadyFailedOver,
}

struct HostState {
    pending: Option<FailureDecision>,
    forced: bool,
    /// The operator overrode the syncing refusal (`force`).
    force_syncing: bool,
    ran: bool,
    report: Option<FailoverReport>,
    child: Option<Child>,
}

/// A running standby host. See the module docs.
pub struct StandbyHost {
    cfg: StandbyHostConfig,
    target: Arc<Target>,
    detector: Mutex<Detector>,
    state: Mutex<HostState>,
    resolver: Mutex<Option<ImageResolver>>,
    heartbeat_addr: Option<SocketAddr>,
    bad_datagrams: AtomicU64,
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static GLOBAL: Mutex<Option<Arc<StandbyHost>>> = Mutex::new(None);

/// The process's standby host (what [`register_rpcs`]'s methods act on), if started.
pub fn global() -> Option<Arc<StandbyHost>> {
    lock(&GLOBAL).clone()
}

impl StandbyHost {
    /// Starts the host exporting through the process's NVMe-oF target
    /// ([`nvme::rpc::global`]) and makes it the process's host ([`global`]).
    pub fn start(cfg: StandbyHostConfig, resolver: Option<ImageResolver>) -> Result<Arc<StandbyHost>, HostError> {
        let h = Self::start_with_target(cfg, resolver, nvme::rpc::global().clone())?;
        *lock(&GLOBAL) = Some(h.clone());
        Ok(h)
    }

    /// Starts the host exporting through `target`.
    pub fn start_with_target(
        cfg: StandbyHostConfig,
        resolver: Option<ImageResolver>,
        target: Arc<Target>,
    ) -> Result<Arc<StandbyHost>, HostError> {
        if cfg.volumes.is_empty() {
            return Err(HostError::Config("no volumes to fail over".into()));
        }
        if cfg.timeout_ms == 0 || cfg.relay_timeout_ms == Some(0) {
            return Err(HostError::Config("timeouts must be greater than 0".into()));
        }
        for (i, v) in cfg.volumes.iter().enumerate() {
            if cfg.volumes[..i]
                .iter()
                .any(|o| o.standby == v.standby || o.primary_volume == v.primary_volume)
            {
                return Err(HostError::Config(format!(
                    "volume {:?} / standby {:?} is listed twice",
                    v.primary_volume, v.standby
                )));
            }
        }
        let dcfg = DetectorConfig {
            timeout_ms: cfg.timeout_ms,
            relay_timeout_ms: cfg.relay_timeout_ms.unwrap_or(cfg.timeout_ms),
        };
        let detector = Detector::new(dcfg, cfg.volumes.iter().map(|v| v.primary_volume.clone()));
        let sock = match cfg.heartbeat_listen {
            Some(a) => {
                let s = UdpSocket::bind(a).map_err(|source| HostError::Io {
                    what: format!("heartbeat listen {a}"),
                    source,
                })?;
                s.set_read_timeout(Some(Duration::from_millis(20)))
                    .map_err(|source| HostError::Io {
                        what: "heartbeat socket".into(),
                        source,
                    })?;
                Some(s)
            }
            None => None,
        };
        let host = Arc::new(StandbyHost {
            heartbeat_addr: sock.as_ref().and_then(|s| s.local_addr().ok()),
            cfg,
            target,
            detector: Mutex::new(detector),
            state: Mutex::new(HostState {
                pending: None,
                forced: false,
                force_syncing: false,
                ran: false,
                report: None,
                child: None,
            }),
            resolver: Mutex::new(resolver),
            bad_datagrams: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
        });
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|source| HostError::Io {
                    what: format!("thread {name}"),
                    source,
                })
        };
        let mut threads = Vec::new();
        if let Some(s) = sock {
            let h = Arc::downgrade(&host);
            threads.push(spawn("hb_listen", Box::new(move || listen_loop(h, s)))?);
        }
        let h = Arc::downgrade(&host);
        threads.push(spawn("failover", Box::new(move || monitor_loop(h)))?);
        *lock(&host.threads) = threads;
        Ok(host)
    }

    pub fn config(&self) -> &StandbyHostConfig {
        &self.cfg
    }

    /// Where direct heartbeats are received (the bound address).
    pub fn heartbeat_addr(&self) -> Option<SocketAddr> {
        self.heartbeat_addr
    }

    /// Feeds one decoded direct heartbeat (the listener does this; also for other
    /// transports of the same datagram).
    pub fn heartbeat(&self, hb: &rdma_transport::liveness::PrimaryHeartbeat<'_>) {
        lock(&self.detector).heartbeat(hb, now_ns());
    }

    /// A relay's `PrimaryLiveness` report for `volume` (the primary volume named in that
    /// relay connection's Hello). Called by the network side for each frame; never blocks
    /// for long (one mutex, no I/O).
    pub fn relay_report(&self, relay: SocketAddr, volume: &str, primary_age_ms: u64, connected: bool) {
        lock(&self.detector).relay_report(relay, volume, primary_age_ms, connected, now_ns());
    }

    /// Declares the primary failed now (operator, RPC): the failover runs even with
    /// `auto_failover` off. `force` also fails over to standbys that are not valid
    /// targets (initial sync not complete), and may retry a failover that failed. Err if a
    /// failover already ran (and did not fail, or `force` is off).
    pub fn declare_failure(&self, reason: &str, force: bool) -> Result<(), HostError> {
        let mut st = lock(&self.state);
        if st.ran {
            let failed = st.report.as_ref().is_some_and(|r| r.state == FailoverState::Failed);
            if !(failed && force) {
                return Err(HostError::AlreadyFailedOver);
            }
            st.ran = false;
        }
        st.forced = true;
        st.force_syncing |= force;
        drop(st);
        lock(&self.detector).declare(reason);
        Ok(())
    }

    pub fn status(&self) -> HostStatus {
        let detector = lock(&self.detector).status(now_ns());
        let failover = {
            let mut st = lock(&self.state);
            reap(&mut st);
            st.report.clone()
        };
        HostStatus {
            heartbeat_listen: self.heartbeat_addr.map(|a| a.to_string()),
            auto_failover: self.cfg.auto_failover,
            bad_datagrams: self.bad_datagrams.load(Ordering::Relaxed),
            detector,
            failover,
        }
    }

    /// Waits (bounded) until a failover has finished (done or failed); its report.
    pub fn wait_failover(&self, timeout: Duration) -> Option<FailoverReport> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(r) = lock(&self.state).report.as_ref() {
                if r.state != FailoverState::Running {
                    return Some(r.clone());
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    /// Waits (bounded) for the application to exit; its status.
    pub fn wait_app_exit(&self, timeout: Duration) -> Option<AppStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            let mut st = lock(&self.state);
            reap(&mut st);
            if let Some(a) = st.report.as_ref().and_then(|r| r.app.clone()) {
                if !a.running {
                    return Some(a);
                }
            }
            drop(st);
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }

    /// Stops the host's threads (the application, if started, keeps running).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
        let mut g = lock(&GLOBAL);
        if g.as_ref().is_some_and(|h| std::ptr::eq(Arc::as_ptr(h), self)) {
            *g = None;
        }
    }
}

impl Drop for StandbyHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Records the application's exit, if it exited.
fn reap(st: &mut HostState) {
    let Some(c) = st.child.as_mut() else { return };
    if let Ok(Some(status)) = c.try_wait() {
        use std::os::unix::process::ExitStatusExt;
        st.child = None;
        if let Some(a) = st.report.as_mut().and_then(|r| r.app.as_mut()) {
            a.running = false;
            a.exit_code = status.code();
            a.signal = status.signal();
        }
    }
}

fn listen_loop(host: std::sync::Weak<StandbyHost>, sock: UdpSocket) {
    let mut buf = [0u8; 512];
    let mut warned_at: Option<Instant> = None;
    loop {
        let r = sock.recv_from(&mut buf);
        let Some(h) = host.upgrade() else { return };
        if h.stop.load(Ordering::Acquire) {
            return;
        }
        let (n, from) = match r {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => {
                log::warn!("standby host: heartbeat socket: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        match rdma_transport::liveness::decode(&buf[..n]) {
            Ok(hb) => h.heartbeat(&hb),
            Err(e) => {
                h.bad_datagrams.fetch_add(1, Ordering::Relaxed);
                if warned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    log::warn!("standby host: datagram from {from}: {e}");
                    warned_at = Some(Instant::now());
                }
            }
        }
    }
}

fn monitor_loop(host: std::sync::Weak<StandbyHost>) {
    loop {
        let Some(h) = host.upgrade() else { return };
        if h.stop.load(Ordering::Acquire) {
            return;
        }
        let decided = lock(&h.detector).poll(now_ns());
        let run = {
            let mut st = lock(&h.state);
            if let Some(d) = decided {
                st.pending = Some(d);
            }
            reap(&mut st);
            let go = !st.ran && st.pending.is_some() && (h.cfg.auto_failover || st.forced);
            if go {
                st.ran = true;
                st.pending.clone()
            } else {
                None
            }
        };
        if let Some(d) = run {
            h.run_failover(d);
        }
        drop(h);
        std::thread::sleep(MONITOR_PERIOD);
    }
}
