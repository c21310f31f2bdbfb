//! `baton standby`: receive relays' streams into standby volumes; optionally serve
//! execution images and run the standby host (failure detection, failover, application
//! restart) with the pruning of images failover can no longer return to.

use super::{serve, Role, RoleArgs, RoleOpts};
use crate::AnyErr;
use clap::Args;
use standby::host::{ExportConfig, FailoverVolume, ImageResolver, StandbyHost, StandbyHostConfig};
use standby::image::{ImageServer, ImageStore};
use standby::net::{NetConfig, StandbyNet};
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the pruner looks at the restart point the first volume has applied.
const PRUNE_PERIOD: Duration = Duration::from_secs(2);
/// How long stopping waits for a prune in progress.
const PRUNE_STOP_WAIT: Duration = Duration::from_secs(1);

#[derive(Args)]
pub(crate) struct StandbyArgs {
    #[command(flatten)]
    role: RoleArgs,
    /// JSON-RPC Unix socket.
    #[arg(short = 'r', long = "rpc-socket", default_value = "/var/tmp/baton-standby.sock")]
    rpc_socket: std::path::PathBuf,
    /// Address relays connect to: IP:PORT (TCP) and/or rdma://IP:PORT (RDMA); give it
    /// twice to take relays over both (the TCP one then defaults as without the option).
    #[arg(long, default_value = standby::net::LISTEN_DEFAULT, value_parser = super::endpoint_arg)]
    listen: Vec<rdma_transport::Endpoint>,
    /// Load an SPDK-format JSON config at start-up (bdevs, standby_create, ...).
    #[arg(long = "json")]
    json: Option<std::path::PathBuf>,
    /// Bdevs to create at start-up, as NAME=SPEC (see `baton perf --bdev`).
    #[arg(long = "bdev")]
    bdevs: Vec<String>,
    /// Standby host: UDP address the primaries' direct heartbeats arrive on.
    #[arg(long)]
    heartbeat_listen: Option<std::net::SocketAddr>,
    /// Primary declared failed after this long unheard directly AND through every relay.
    #[arg(long, default_value_t = standby::failover::PRIMARY_TIMEOUT_MS_DEFAULT)]
    primary_timeout_ms: u64,
    /// Age after which a relay's report of the primary no longer counts (default: --primary-timeout-ms).
    #[arg(long)]
    relay_timeout_ms: Option<u64>,
    /// Volume to fail over: PRIMARY=STANDBY[:HEAD][@NSID], or NAME when both are named alike
    /// (repeatable; the first one's restart point names the execution image).
    #[arg(long = "failover-volume", value_parser = parse_failover_volume)]
    failover_volumes: Vec<FailoverVolume>,
    /// NQN of the subsystem the promoted volumes are exported in.
    #[arg(long, default_value = "nqn.2016-06.io.baton:standby")]
    failover_nqn: String,
    /// NVMe/TCP address the promoted volumes are exported on (none: promote only).
    #[arg(long)]
    failover_listen: Option<std::net::SocketAddr>,
    /// Shell command that restarts the application after failover (BATON_IMAGE, BATON_TRADDR,
    /// BATON_TRSVCID, BATON_SUBNQN, BATON_NSID, BATON_EPOCH, BATON_RESTART_TAG are set).
    #[arg(long)]
    on_failover: Option<String>,
    /// Detect and report only; fail over when `standby_host_declare_failure` is called.
    #[arg(long)]
    no_auto_failover: bool,
    /// At failover, bound on draining the relays (taking in what they hold and the
    /// standby lacks) before rolling back; 0 disables the drain.
    #[arg(long, default_value_t = standby::host::DRAIN_TIMEOUT_MS_DEFAULT)]
    drain_timeout_ms: u64,
    /// At failover, what to do with a standby whose initial sync is not complete (not a
    /// valid failover target): refuse (default; `standby_host_declare_failure` with force
    /// overrides) or warn (promote anyway, loudly).
    #[arg(long, default_value = "refuse")]
    syncing_failover: standby::host::SyncingFailover,
    /// At failover, bound on the rollback of each volume.
    #[arg(long, default_value_t = standby::host::ROLLBACK_TIMEOUT_MS_DEFAULT)]
    rollback_timeout_ms: u64,
    /// Execution-image server address (the primary host's application sends images here).
    #[arg(long)]
    image_listen: Option<std::net::SocketAddr>,
    /// Directory of the execution-image store.
    #[arg(long, default_value = "/var/tmp/baton-images")]
    image_dir: std::path::PathBuf,
    /// Application name whose image is restored on failover.
    #[arg(long, default_value = "ledger")]
    image_app: String,
}

/// What the standby role started besides the standby volumes (which live on the reactors).
struct StandbyRole {
    net: StandbyNet,
    images: Option<ImageServer>,
    host: Option<Arc<StandbyHost>>,
    pruner: Option<ImagePruner>,
}

impl Role for StandbyRole {
    const NAME: &'static str = "standby";
    const TLS_ROLE: rdma_transport::tls::Role = rdma_transport::tls::Role::Standby;
    fn running(&self, rpc_socket: &Path) -> String {
        format!(
            "listening for relays on {}; JSON-RPC on {}",
            self.net.listen_addr(),
            rpc_socket.display()
        )
    }
    fn stop(&mut self) {
        if let Some(h) = self.host.take() {
            h.stop();
        }
        if let Some(p) = self.pruner.take() {
            p.stop();
        }
        self.images = None;
    }
}

/// `baton standby`: bdevs, then the config (standby volumes recover), then the
/// relay listener, so relays of configured volumes are never refused.
pub(crate) fn standby_cmd(a: StandbyArgs) -> Result<(), AnyErr> {
    let o = RoleOpts {
        role: &a.role,
        rpc_socket: &a.rpc_socket,
        rpc_tcp: None,
        bdevs: &a.bdevs,
        json: a.json.as_deref(),
    };
    serve(&o, || {
        let (listen, listen_rdma) = super::split_listen(&a.listen, standby::net::LISTEN_DEFAULT)?;
        let net = StandbyNet::start(NetConfig {
            listen,
            listen_rdma,
            core: None,
        })?;
        let images = match a.image_listen {
            Some(addr) => {
                let s = ImageServer::start(addr, &a.image_dir)?;
                log::info!(
                    "execution images: listening on {}, store {}",
                    s.addr(),
                    a.image_dir.display()
                );
                Some(s)
            }
            None => None,
        };
        let store = images.as_ref().map(|s| s.store());
        let host = start_standby_host(&a, store.clone())?;
        // Failover never returns further back than the first volume's restart point:
        // images below it can go.
        let pruner = match (&host, store) {
            (Some(h), Some(st)) => Some(ImagePruner::start(
                st,
                a.image_app.clone(),
                h.config().volumes[0].standby.clone(),
            )?),
            _ => None,
        };
        Ok(StandbyRole {
            net,
            images,
            host,
            pruner,
        })
    })
}

/// Parses `PRIMARY=STANDBY[:HEAD][@NSID]` (or `NAME`).
fn parse_failover_volume(s: &str) -> Result<FailoverVolume, String> {
    let (rest, nsid) = match s.rsplit_once('@') {
        Some((r, n)) => (r, Some(n.parse::<u32>().map_err(|e| format!("NSID {n:?}: {e}"))?)),
        None => (s, None),
    };
    let (primary, standby_part) = rest.split_once('=').unwrap_or((rest, rest));
    let (standby, head) = match standby_part.split_once(':') {
        Some((v, h)) => (v, Some(h.to_string())),
        None => (standby_part, None),
    };
    if primary.is_empty() || standby.is_empty() {
        return Err("expected PRIMARY=STANDBY[:HEAD][@NSID]".to_string());
    }
    Ok(FailoverVolume {
        primary_volume: primary.into(),
        standby: standby.into(),
        head_bdev: head,
        nsid,
    })
}

/// The standby host (failure detection, failover, application restart), when volumes
/// to fail over are configured.
fn start_standby_host(a: &StandbyArgs, store: Option<Arc<ImageStore>>) -> Result<Option<Arc<StandbyHost>>, AnyErr> {
    if a.failover_volumes.is_empty() {
        if a.heartbeat_listen.is_some() || a.on_failover.is_some() || a.failover_listen.is_some() {
            return Err("--heartbeat-listen/--on-failover/--failover-listen need --failover-volume".into());
        }
        return Ok(None);
    }
    let mut cfg = StandbyHostConfig::new(a.failover_volumes.clone());
    cfg.heartbeat_listen = a.heartbeat_listen;
    cfg.timeout_ms = a.primary_timeout_ms;
    cfg.relay_timeout_ms = a.relay_timeout_ms;
    cfg.export = a.failover_listen.map(|listen| ExportConfig {
        nqn: a.failover_nqn.clone(),
        listen,
        allow_any_host: true,
    });
    cfg.restart_cmd = a.on_failover.clone();
    cfg.auto_failover = !a.no_auto_failover;
    cfg.drain_timeout_ms = a.drain_timeout_ms;
    cfg.syncing_failover = a.syncing_failover;
    cfg.rollback_timeout_ms = a.rollback_timeout_ms;
    let resolver: Option<ImageResolver> = store.map(|st| {
        let app = a.image_app.clone();
        Box::new(move |tag: &[u8]| st.restore_tag(&app, tag).map_err(|e| e.to_string())) as ImageResolver
    });
    Ok(Some(StandbyHost::start(cfg, resolver)?))
}

/// A thread that prunes `app`'s execution images below the restart point the standby
/// volume `volume` has applied, every [`PRUNE_PERIOD`], until stopped.
struct ImagePruner {
    /// Dropping it wakes and ends the thread.
    stop: mpsc::Sender<()>,
    /// Disconnects when the thread has ended.
    ended: mpsc::Receiver<()>,
    thread: JoinHandle<()>,
}

impl ImagePruner {
    fn start(store: Arc<ImageStore>, app: String, volume: String) -> std::io::Result<ImagePruner> {
        let (stop, stopped) = mpsc::channel::<()>();
        let (ended_tx, ended) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("image-prune".into()).spawn(move || {
            let _ended = ended_tx;
            let mut pruned_below = 0;
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(PRUNE_PERIOD) {
                let Ok(tag) = standby::registry::with_standby(&volume, |sv| sv.applied().3) else {
                    continue;
                };
                if let Some((seq, _)) = standby::image::parse_restart_tag(&tag) {
                    if seq > pruned_below {
                        match store.prune(&app, seq) {
                            Ok(r) => log::debug!("images of {app} below {seq} pruned: {r:?}"),
                            Err(e) => log::warn!("pruning images of {app}: {e}"),
                        }
                        pruned_below = seq;
                    }
                }
            }
        })?;
        Ok(ImagePruner { stop, ended, thread })
    }

    /// Ends the thread. A prune in progress is waited for at most [`PRUNE_STOP_WAIT`]:
    /// one that asked a reactor that has already stopped would never return.
    fn stop(self) {
        drop(self.stop);
        match self.ended.recv_timeout(PRUNE_STOP_WAIT) {
            Err(RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
            }
            _ => log::warn!("image pruner still busy at stop: not waiting for it"),
        }
    }
}
