//! The failover sequence, run on the failover thread once failure is decided: drain the
//! relays (step 0, `drain.rs`), check each standby is a valid target, roll back (1),
//! promote (2), export over NVMe/TCP (3), resolve the execution image (4), start the
//! application (5). Each step records its time in the [`FailoverReport`].

use super::{
    hex, lock, unix_ms, AppStatus, ExportConfig, FailoverReport, FailoverState, FailoverVolume, HostError,
    PromotedVolume, StandbyHost, SyncingFailover, VolumeDrain, DRAIN_NO_RELAY_GRACE_MS,
};
use crate::failover::FailureDecision;
use nvme::nvmf::{SubsystemParams, TargetError};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// What promoting one standby volume gave.
struct Promotion {
    bdev: String,
    generation: u64,
    epoch: u64,
    last_lsn: u64,
    tag: Vec<u8>,
}

/// The variables the restart command gets (`BATON_*`).
type Env = Vec<(&'static str, String)>;

fn vol_err(standby: &str, why: String) -> HostError {
    HostError::Volume {
        standby: standby.to_string(),
        why,
    }
}

impl StandbyHost {
    pub(super) fn update(&self, f: impl FnOnce(&mut FailoverReport)) {
        if let Some(r) = lock(&self.state).report.as_mut() {
            f(r);
        }
    }

    /// Runs the failover sequence for `d` on the calling (failover) thread.
    pub(super) fn run_failover(&self, d: FailureDecision) {
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
            let r = crate::registry::with_standby(&v.standby, |s| s.failover_readiness()).map_err(|e| {
                HostError::Volume {
                    standby: v.standby.clone(),
                    why: e.message,
                }
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
        // 0. Drain the relays: what they hold and the standby lacks is taken in first.
        self.drain_step(us)?;
        // Only now, with everything the relays held taken in: is each standby a valid target?
        self.check_readiness()?;
        // 1. Declare failure on every volume, then wait until each has rolled back.
        self.roll_back()?;
        let t = us();
        self.update(|r| r.rolled_back_us = Some(t));
        // 2. Promote: generation bump (the relays refuse the old primary from now on).
        let promoted = self.promote()?;
        let t = us();
        self.report_promoted(&promoted, t);
        // 3. Export over NVMe/TCP.
        let mut env: Env = Vec::new();
        if let Some(x) = &self.cfg.export {
            self.export(x, &promoted, us, &mut env)?;
        }
        // 4. The execution image of the restored restart point.
        let (_, p) = &promoted[0];
        env.push(("BATON_BDEV", p.bdev.clone()));
        env.push(("BATON_GENERATION", p.generation.to_string()));
        env.push(("BATON_EPOCH", p.epoch.to_string()));
        env.push(("BATON_RESTART_TAG", hex(&p.tag)));
        let Some(cmd) = self.cfg.restart_cmd.clone() else {
            return Ok(());
        };
        let image = self.resolve_image(p, us)?;
        env.push((
            "BATON_IMAGE",
            image.map(|p| p.display().to_string()).unwrap_or_default(),
        ));
        // 5. Start the application.
        self.start_app(&cmd, &env, us)
    }

    /// Step 0: drains the relays (unless disabled) and warns where restart points held
    /// only at a relay may be lost.
    fn drain_step(&self, us: &dyn Fn() -> u64) -> Result<(), HostError> {
        if self.cfg.drain_timeout_ms == 0 {
            self.update(|r| {
                r.warnings
                    .push("relay drain disabled (drain_timeout_ms 0): the standby rolled back to what it held".into())
            });
            return Ok(());
        }
        let drains = self.drain_relays()?;
        let t = us();
        self.update(|r| {
            r.drained_us = Some(t);
            r.warnings.extend(drains.iter().filter_map(|d| self.drain_warning(d)));
            r.drain = drains;
        });
        Ok(())
    }

    fn drain_warning(&self, d: &VolumeDrain) -> Option<String> {
        if d.relays_unreachable {
            Some(format!(
                "{}: relays unreachable: restart points held only there may be lost",
                d.standby
            ))
        } else if !d.timed_out && d.progress.relays < d.progress.relays_expected {
            Some(format!(
                "{}: {} of {} relays connected lately did not come back within {} ms: restart points held only there may be lost",
                d.standby,
                d.progress.relays_expected - d.progress.relays,
                d.progress.relays_expected,
                DRAIN_NO_RELAY_GRACE_MS.min(self.cfg.drain_timeout_ms)
            ))
        } else if d.timed_out {
            Some(format!(
                "{}: relay drain timed out after {} ms ({} of {} relays drained, LSN {} of {}): restart points held only there may be lost",
                d.standby,
                self.cfg.drain_timeout_ms,
                d.progress.relays_drained,
                d.progress.relays,
                d.progress.lsn_reached,
                d.progress.relay_lsn_max
            ))
        } else {
            None
        }
    }

    /// Step 1: declares failure on every volume, then waits (bounded by
    /// `rollback_timeout_ms`) until each has rolled back to its last restart point.
    fn roll_back(&self) -> Result<(), HostError> {
        for v in &self.cfg.volumes {
            crate::registry::with_standby(&v.standby, |s| s.declare_failure())
                .map_err(|e| vol_err(&v.standby, e.message))?;
        }
        let deadline = Instant::now() + Duration::from_millis(self.cfg.rollback_timeout_ms);
        for v in &self.cfg.volumes {
            loop {
                let (done, err) =
                    crate::registry::with_standby(&v.standby, |s| (s.failed_over(), s.error().map(str::to_string)))
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
        Ok(())
    }

    /// Step 2: promotes every volume (or takes the one already promoted) and registers
    /// its bdev.
    fn promote(&self) -> Result<Vec<(&FailoverVolume, Promotion)>, HostError> {
        let mut promoted = Vec::new();
        for v in &self.cfg.volumes {
            let head = v.head_bdev.clone().unwrap_or_else(|| format!("{}_head", v.standby));
            let r = crate::registry::with_standby(&v.standby, move |s| -> Result<_, String> {
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
                Ok(Promotion {
                    bdev: name,
                    generation: s.generation(),
                    epoch,
                    last_lsn,
                    tag,
                })
            })
            .map_err(|e| vol_err(&v.standby, e.message))?
            .map_err(|e| vol_err(&v.standby, e))?;
            promoted.push((v, r));
        }
        Ok(promoted)
    }

    fn report_promoted(&self, promoted: &[(&FailoverVolume, Promotion)], t: u64) {
        let tags: Vec<Vec<u8>> = promoted.iter().map(|(_, p)| p.tag.clone()).collect();
        self.update(|rep| {
            rep.promoted_us = Some(t);
            for d in &mut rep.drain {
                if let Some((_, p)) = promoted.iter().find(|(v, _)| v.standby == d.standby) {
                    d.restart_points_gained = p.epoch.saturating_sub(d.progress.epoch_start);
                }
            }
            rep.volumes = promoted
                .iter()
                .map(|(v, p)| PromotedVolume {
                    primary_volume: v.primary_volume.clone(),
                    standby: v.standby.clone(),
                    bdev: p.bdev.clone(),
                    generation: p.generation,
                    epoch: p.epoch,
                    last_lsn: p.last_lsn,
                    tag: hex(&p.tag),
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
    }

    /// Step 3: exports the promoted bdevs as namespaces of the subsystem `x` names
    /// (creating what is missing), and adds the address to `env`.
    fn export(
        &self,
        x: &ExportConfig,
        promoted: &[(&FailoverVolume, Promotion)],
        us: &dyn Fn() -> u64,
        env: &mut Env,
    ) -> Result<(), HostError> {
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
        for (v, p) in promoted {
            let existing = self
                .target
                .subsystem(&x.nqn)?
                .state()
                .namespaces
                .values()
                .find(|n| n.bdev.name() == p.bdev)
                .map(|n| n.nsid);
            let nsid = match existing {
                Some(n) => n,
                None => self.target.add_namespace(&x.nqn, &p.bdev, v.nsid, None)?,
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
        Ok(())
    }

    /// Step 4: the execution image saved with the restart point `p` shows (`None`
    /// without a resolver).
    fn resolve_image(&self, p: &Promotion, us: &dyn Fn() -> u64) -> Result<Option<PathBuf>, HostError> {
        if p.epoch == 0 {
            return Err(HostError::Image {
                tag: String::new(),
                why: "no restart point was ever applied: nothing to restart from".into(),
            });
        }
        let image = match lock(&self.resolver).as_ref() {
            Some(resolve) => Some(resolve(&p.tag).map_err(|why| HostError::Image { tag: hex(&p.tag), why })?),
            None => None,
        };
        let t = us();
        self.update(|rep| {
            rep.image_resolved_us = Some(t);
            rep.image = image.as_ref().map(|p| p.display().to_string());
        });
        Ok(image)
    }

    /// Step 5: starts the restart command with `env`; the detection-to-start time is the
    /// report's RTO.
    fn start_app(&self, cmd: &str, env: &Env, us: &dyn Fn() -> u64) -> Result<(), HostError> {
        let child = Command::new("sh")
            .arg("-c")
            .arg(cmd)
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
