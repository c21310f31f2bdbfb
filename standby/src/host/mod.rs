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
//! The standby volumes live on reactors ([`crate::rpc`]); the failover thread reaches them
//! with [`crate::rpc::with_standby`], which blocks this thread, never a reactor for longer
//! than the promotion's own synchronous I/O.
//!
//! The relays' `PrimaryLiveness` reports arrive on the standby's relay connections (the
//! network side, `standby::net`); it calls [`StandbyHost::relay_report`] for each.

mod drain;

pub use drain::{VolumeDrain, DRAIN_NO_RELAY_GRACE_MS, DRAIN_TIMEOUT_MS_DEFAULT};

use crate::failover::{Detector, DetectorConfig, DetectorStatus, FailureCause, FailureDecision};
use engine::clock::now_ns;
use engine::rpc::{Registry, RpcError};
use nvme::nvmf::{SubsystemParams, Target, TargetError};
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the failover thread polls the detector.
pub const MONITOR_PERIOD: Duration = Duration::from_millis(5);
/// Default bound on the rollback after failure is declared.
pub const ROLLBACK_TIMEOUT_MS_DEFAULT: u64 = 60_000;

/// Resolves a restart tag to the path of the execution image to restart from.
pub type ImageResolver = Box<dyn Fn(&[u8]) -> Result<PathBuf, String> + Send>;

/// One standby volume of the application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverVolume {
    /// Name of the primary's replicated volume (in its heartbeats and the relays' Hello).
    pub primary_volume: String,
    /// Name of the standby volume replicating it (`standby_create` name).
    pub standby: String,
    /// Snapshot mode: name of the writable head bdev (default `<standby>_head`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_bdev: Option<String>,
    /// NSID in the exported subsystem (default: the next free one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsid: Option<u32>,
}

/// Where the promoted volumes are exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Subsystem NQN (created if absent).
    pub nqn: String,
    /// NVMe/TCP listen address (port 0: a free port, reported in the status).
    pub listen: SocketAddr,
    /// Let any host connect (default true; otherwise add hosts with `nvmf_subsystem_add_host`).
    #[serde(default = "yes")]
    pub allow_any_host: bool,
}

fn yes() -> bool {
    true
}

/// Settings of the standby host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyHostConfig {
    /// UDP address the primaries' direct heartbeats arrive on (`None`: relays only).
    pub heartbeat_listen: Option<SocketAddr>,
    /// Direct-path silence after which the primary counts as not heard.
    pub timeout_ms: u64,
    /// Relay-path age after which a relay's evidence no longer counts (default `timeout_ms`).
    pub relay_timeout_ms: Option<u64>,
    /// The application's volumes, in order (the first one's restart tag names the image).
    pub volumes: Vec<FailoverVolume>,
    /// NVMe/TCP export of the promoted volumes (`None`: promote only).
    pub export: Option<ExportConfig>,
    /// Shell command that restarts the application (`sh -c`), with `BATON_*` variables.
    pub restart_cmd: Option<String>,
    /// Fail over on a timeout decision (false: detect and report only; an operator
    /// declares with `standby_host_declare_failure`).
    pub auto_failover: bool,
    /// Bound on the rollback of each volume.
    pub rollback_timeout_ms: u64,
    /// Bound on the relay drain before the rollback (0: no drain; restart points held only
    /// at the relays are then lost whenever the standby lags them).
    pub drain_timeout_ms: u64,
    /// What a failover does with a standby that is not a valid failover target (an
    /// initial sync not complete).
    pub syncing_failover: SyncingFailover,
}

/// Policy for failing over to a standby whose initial sync is not complete
/// (`docs/failover.md`, "Syncing standbys").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncingFailover {
    /// Refuse: the failover fails with the reason; a declaration with `force` overrides.
    #[default]
    Refuse,
    /// Promote anyway, with a warning in the report and the log.
    Warn,
}

impl std::str::FromStr for SyncingFailover {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "refuse" => Ok(SyncingFailover::Refuse),
            "warn" => Ok(SyncingFailover::Warn),
            _ => Err(format!("{s:?}: expected refuse or warn")),
        }
    }
}

impl StandbyHostConfig {
    /// Defaults (1 s timeout, automatic failover, no export, no command) for `volumes`.
    pub fn new(volumes: Vec<FailoverVolume>) -> StandbyHostConfig {
        StandbyHostConfig {
            heartbeat_listen: None,
            timeout_ms: crate::failover::PRIMARY_TIMEOUT_MS_DEFAULT,
            relay_timeout_ms: None,
            volumes,
            export: None,
            restart_cmd: None,
            auto_failover: true,
            rollback_timeout_ms: ROLLBACK_TIMEOUT_MS_DEFAULT,
            drain_timeout_ms: DRAIN_TIMEOUT_MS_DEFAULT,
            syncing_failover: SyncingFailover::Refuse,
        }
    }
}

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

/// Progress of a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverState {
    Running,
    Done,
    Failed,
}

/// A promoted volume.
#[derive(Debug, Clone, Serialize)]
pub struct PromotedVolume {
    pub primary_volume: String,
    pub standby: String,
    pub bdev: String,
    /// Generation after promotion.
    pub generation: u64,
    /// Restart point the volume shows.
    pub epoch: u64,
    pub last_lsn: u64,
    /// Its tag, hex.
    pub tag: String,
    /// NSID when exported.
    pub nsid: Option<u32>,
}

/// The started application.
#[derive(Debug, Clone, Serialize)]
pub struct AppStatus {
    pub pid: u32,
    pub running: bool,
    /// Exit code once it ended (None while running or when killed by a signal).
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// Timeline and outcome of the failover; step times are µs after detection.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    pub state: FailoverState,
    pub cause: FailureCause,
    /// Wall clock of the detection, ms since the UNIX epoch.
    pub detected_unix_ms: u64,
    /// The relays were drained (or the drain gave up), µs after detection.
    pub drained_us: Option<u64>,
    /// Per volume: what the drain brought (`docs/failover.md`); empty when disabled.
    pub drain: Vec<VolumeDrain>,
    pub rolled_back_us: Option<u64>,
    pub promoted_us: Option<u64>,
    pub exported_us: Option<u64>,
    pub image_resolved_us: Option<u64>,
    pub app_started_us: Option<u64>,
    /// Detection -> application started (the part of the RTO after detection).
    pub rto_us: Option<u64>,
    pub volumes: Vec<PromotedVolume>,
    pub nqn: Option<String>,
    pub traddr: Option<String>,
    pub trsvcid: Option<u16>,
    pub image: Option<String>,
    pub app: Option<AppStatus>,
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

/// `standby_host_get_status`.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    pub heartbeat_listen: Option<String>,
    pub auto_failover: bool,
    /// Datagrams on the heartbeat port that were not valid heartbeats.
    pub bad_datagrams: u64,
    pub detector: DetectorStatus,
    pub failover: Option<FailoverReport>,
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

    fn update(&self, f: impl FnOnce(&mut FailoverReport)) {
        if let Some(r) = lock(&self.state).report.as_mut() {
            f(r);
        }
    }

    /// Runs the failover sequence for `d` on the calling (failover) thread.
    fn run_failover(&self, d: FailureDecision) {
        let t0 = Instant::now();
        let us = move || t0.elapsed().as_micros() as u64;
        log::warn!("standby host: primary failure ({:?}): failing over", d.cause);
        lock(&self.state).report = Some(FailoverReport {
            state: FailoverState::Running,
            cause: d.cause.clone(),
            detected_unix_ms: unix_ms(),
            drained_us: None,
            drain: Vec::new(),
            rolled_back_us: None,
            promoted_us: None,
            exported_us: None,
            image_resolved_us: None,
            app_started_us: None,
            rto_us: None,
            volumes: Vec::new(),
            nqn: None,
            traddr: None,
            trsvcid: None,
            image: None,
            app: None,
            error: None,
            warnings: Vec::new(),
        });
        let r = self.sequence(&us);
        self.update(|rep| match r {
            Ok(()) => rep.state = FailoverState::Done,
            Err(e) => {
                log::error!("standby host: failover failed: {e}");
                rep.state = FailoverState::Failed;
                rep.error = Some(e.to_string());
            }
        });
        if let Some(rep) = lock(&self.state).report.as_ref() {
            log::warn!(
                "standby host: failover {:?}: rolled back +{:?} us, promoted +{:?} us, exported +{:?} us, application started +{:?} us",
                rep.state,
                rep.rolled_back_us,
                rep.promoted_us,
                rep.exported_us,
                rep.app_started_us
            );
        }
    }

    /// Refuses (by policy) a failover to a standby that never held the primary's image at a
    /// restart point; warns about one returning to a point older than the relays reached.
    fn check_readiness(&self) -> Result<(), HostError> {
        let force = lock(&self.state).force_syncing;
        for v in &self.cfg.volumes {
            let r =
                crate::rpc::with_standby(&v.standby, |s| s.failover_readiness()).map_err(|e| HostError::Volume {
                    standby: v.standby.clone(),
                    why: e.message,
                })?;
            match r {
                crate::Readiness::Valid => {}
                crate::Readiness::Stale(why) => self.update(|rep| rep.warnings.push(format!("{}: {why}", v.standby))),
                crate::Readiness::NotValid(why) => {
                    if !force && self.cfg.syncing_failover == SyncingFailover::Refuse {
                        return Err(HostError::Volume {
                            standby: v.standby.clone(),
                            why: format!(
                                "{why}: failover refused (syncing_failover refuse); declare again with force to promote it anyway"
                            ),
                        });
                    }
                    log::error!("standby host: {}: {why}: FAILING OVER ANYWAY", v.standby);
                    self.update(|rep| {
                        rep.warnings.push(format!(
                            "{}: {why}: promoted anyway (the image is no restart point of the primary's)",
                            v.standby
                        ))
                    });
                }
            }
        }
        Ok(())
    }

    fn sequence(&self, us: &dyn Fn() -> u64) -> Result<(), HostError> {
        let vol_err = |standby: &str, why: String| HostError::Volume {
            standby: standby.to_string(),
            why,
        };
        // 0. Drain the relays: what they hold and the standby lacks is taken in first.
        if self.cfg.drain_timeout_ms > 0 {
            let drains = self.drain_relays()?;
            let t = us();
            self.update(|r| {
                r.drained_us = Some(t);
                for d in &drains {
                    if d.relays_unreachable {
                        r.warnings.push(format!(
                            "{}: relays unreachable: restart points held only there may be lost",
                            d.standby
                        ));
                    } else if !d.timed_out && d.progress.relays < d.progress.relays_expected {
                        r.warnings.push(format!(
                            "{}: {} of {} relays connected lately did not come back within {} ms: restart points held only there may be lost",
                            d.standby,
                            d.progress.relays_expected - d.progress.relays,
                            d.progress.relays_expected,
                            DRAIN_NO_RELAY_GRACE_MS.min(self.cfg.drain_timeout_ms)
                        ));
                    } else if d.timed_out {
                        r.warnings.push(format!(
                            "{}: relay drain timed out after {} ms ({} of {} relays drained, LSN {} of {}): restart points held only there may be lost",
                            d.standby,
                            self.cfg.drain_timeout_ms,
                            d.progress.relays_drained,
                            d.progress.relays,
                            d.progress.lsn_reached,
                            d.progress.relay_lsn_max
                        ));
                    }
                }
                r.drain = drains;
            });
        } else {
            self.update(|r| {
                r.warnings
                    .push("relay drain disabled (drain_timeout_ms 0): the standby rolled back to what it held".into())
            });
        }
        // Only now, with everything the relays held taken in: is each standby a valid target?
        self.check_readiness()?;
        // 1. Declare failure on every volume, then wait until each has rolled back.
        for v in &self.cfg.volumes {
            crate::rpc::with_standby(&v.standby, |s| s.declare_failure())
                .map_err(|e| vol_err(&v.standby, e.message))?;
        }
        let deadline = Instant::now() + Duration::from_millis(self.cfg.rollback_timeout_ms);
        for v in &self.cfg.volumes {
            loop {
                let (done, err) =
                    crate::rpc::with_standby(&v.standby, |s| (s.failed_over(), s.error().map(str::to_string)))
                        .map_err(|e| vol_err(&v.standby, e.message))?;
                if let Some(e) = err {
                    return Err(vol_err(&v.standby, format!("stopped on an error: {e}")));
                }
                if done {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(vol_err(
                        &v.standby,
                        format!("not rolled back within {} ms", self.cfg.rollback_timeout_ms),
                    ));
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        let t = us();
        self.update(|r| r.rolled_back_us = Some(t));
        // 2. Promote: generation bump (the relays refuse the old primary from now on).
        let mut promoted = Vec::new();
        for v in &self.cfg.volumes {
            let head = v.head_bdev.clone().unwrap_or_else(|| format!("{}_head", v.standby));
            let r = crate::rpc::with_standby(&v.standby, move |s| -> Result<_, String> {
                let b = if s.promoted() {
                    s.promoted_bdev()
                } else {
                    s.promote_named(&head)
                }
                .map_err(|e| e.to_string())?;
                let name = b.name().to_string();
                if engine::bdev::lookup(&name).is_none() {
                    engine::bdev::register(b).map_err(|e| e.to_string())?;
                }
                let (epoch, last_lsn, _, tag) = s.applied();
                Ok((name, s.generation(), epoch, last_lsn, tag))
            })
            .map_err(|e| vol_err(&v.standby, e.message))?
            .map_err(|e| vol_err(&v.standby, e))?;
            promoted.push((v, r));
        }
        let t = us();
        let tags: Vec<Vec<u8>> = promoted.iter().map(|(_, r)| r.4.clone()).collect();
        self.update(|rep| {
            rep.promoted_us = Some(t);
            for d in &mut rep.drain {
                if let Some((_, r)) = promoted.iter().find(|(v, _)| v.standby == d.standby) {
                    d.restart_points_gained = r.2.saturating_sub(d.progress.epoch_start);
                }
            }
            rep.volumes = promoted
                .iter()
                .map(|(v, (bdev, generation, epoch, last_lsn, tag))| PromotedVolume {
                    primary_volume: v.primary_volume.clone(),
                    standby: v.standby.clone(),
                    bdev: bdev.clone(),
                    generation: *generation,
                    epoch: *epoch,
                    last_lsn: *last_lsn,
                    tag: hex(tag),
                    nsid: None,
                })
                .collect();
            if tags.iter().any(|t| *t != tags[0]) {
                rep.warnings.push(format!(
                    "volumes show different restart tags ({}): the image follows the first volume's",
                    tags.iter().map(|t| hex(t)).collect::<Vec<_>>().join(", ")
                ));
            }
        });
        // 3. Export over NVMe/TCP.
        let mut env: Vec<(&str, String)> = Vec::new();
        if let Some(x) = &self.cfg.export {
            match self.target.create_subsystem(SubsystemParams {
                nqn: x.nqn.clone(),
                serial_number: None,
                model_number: None,
                allow_any_host: x.allow_any_host,
                max_namespaces: None,
                ..Default::default()
            }) {
                Ok(_) | Err(TargetError::SubsystemExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
            let mut nsids = Vec::new();
            for (v, (bdev, ..)) in &promoted {
                let existing = self
                    .target
                    .subsystem(&x.nqn)?
                    .state()
                    .namespaces
                    .values()
                    .find(|n| n.bdev.name() == bdev)
                    .map(|n| n.nsid);
                let nsid = match existing {
                    Some(n) => n,
                    None => self.target.add_namespace(&x.nqn, bdev, v.nsid, None)?,
                };
                nsids.push(nsid);
            }
            let bound = match self.target.add_listener(&x.nqn, x.listen) {
                Ok(a) => a,
                Err(TargetError::ListenerExists { addr, .. }) => addr,
                Err(e) => return Err(e.into()),
            };
            let t = us();
            self.update(|rep| {
                rep.exported_us = Some(t);
                rep.nqn = Some(x.nqn.clone());
                rep.traddr = Some(bound.ip().to_string());
                rep.trsvcid = Some(bound.port());
                for (p, n) in rep.volumes.iter_mut().zip(&nsids) {
                    p.nsid = Some(*n);
                }
            });
            env.push(("BATON_TRADDR", bound.ip().to_string()));
            env.push(("BATON_TRSVCID", bound.port().to_string()));
            env.push(("BATON_SUBNQN", x.nqn.clone()));
            env.push(("BATON_NSID", nsids[0].to_string()));
            env.push((
                "BATON_NSIDS",
                nsids.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
            ));
        }
        // 4. The execution image of the restored restart point.
        let (_, (bdev, generation, epoch, _, tag)) = &promoted[0];
        env.push(("BATON_BDEV", bdev.clone()));
        env.push(("BATON_GENERATION", generation.to_string()));
        env.push(("BATON_EPOCH", epoch.to_string()));
        env.push(("BATON_RESTART_TAG", hex(tag)));
        let Some(cmd) = self.cfg.restart_cmd.clone() else {
            return Ok(());
        };
        if *epoch == 0 {
            return Err(HostError::Image {
                tag: String::new(),
                why: "no restart point was ever applied: nothing to restart from".into(),
            });
        }
        let image = match lock(&self.resolver).as_ref() {
            Some(resolve) => Some(resolve(tag).map_err(|why| HostError::Image { tag: hex(tag), why })?),
            None => None,
        };
        let t = us();
        self.update(|rep| {
            rep.image_resolved_us = Some(t);
            rep.image = image.as_ref().map(|p| p.display().to_string());
        });
        env.push((
            "BATON_IMAGE",
            image.map(|p| p.display().to_string()).unwrap_or_default(),
        ));
        // 5. Start the application.
        let child = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .spawn()
            .map_err(|source| HostError::Io {
                what: format!("starting the restart command {cmd:?}"),
                source,
            })?;
        let t = us();
        let pid = child.id();
        let mut st = lock(&self.state);
        st.child = Some(child);
        if let Some(rep) = st.report.as_mut() {
            rep.app_started_us = Some(t);
            rep.rto_us = Some(t);
            rep.app = Some(AppStatus {
                pid,
                running: true,
                exit_code: None,
                signal: None,
            });
        }
        Ok(())
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

/// `standby_host_declare_failure` parameters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclareParams {
    #[serde(default)]
    pub reason: Option<String>,
    /// Fail over even to standbys that are not valid targets, and retry a failed failover.
    #[serde(default)]
    pub force: bool,
}

fn no_host() -> RpcError {
    RpcError::new(
        engine::rpc::error::INVALID_STATE,
        "this process runs no standby host (start `baton standby` with --failover-nqn / --heartbeat-listen)",
    )
}

fn host_methods(reg: &mut Registry, get: impl Fn() -> Option<Arc<StandbyHost>> + Send + Sync + Clone + 'static) {
    let g = get.clone();
    reg.register(
        "standby_host_get_status",
        "Standby host: failure detector state (direct heartbeats, relay reports) and the failover \
         timeline (detected, rolled back, promoted, exported, application started; RTO)",
        move |_: ()| Ok(g().ok_or_else(no_host)?.status()),
    );
    reg.register(
        "standby_host_declare_failure",
        "Declare the primary failed (optional reason): roll back, promote, export and restart the application",
        move |p: DeclareParams| {
            let h = get().ok_or_else(no_host)?;
            h.declare_failure(p.reason.as_deref().unwrap_or("declared by RPC"), p.force)
                .map_err(|e| RpcError::errno_detail(libc::EALREADY, e))?;
            Ok(true)
        },
    );
}

/// Registers `standby_host_get_status` and `standby_host_declare_failure` acting on the
/// process's host ([`global`], set by [`StandbyHost::start`]).
pub fn register_rpcs(reg: &mut Registry) {
    host_methods(reg, global);
}

/// As [`register_rpcs`], acting on `host` (tests).
pub fn register_rpcs_for(reg: &mut Registry, host: Arc<StandbyHost>) {
    host_methods(reg, move || Some(host.clone()));
}
