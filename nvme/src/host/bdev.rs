//! A bdev backed by a remote NVMe/TCP namespace: `spdk_nvme_perf -r` through the engine's
//! bdev layer, so anything that drives a bdev (the perf harness with its verification,
//! histograms and per-core figures; a replicated volume's base) can drive a remote target.
//!
//! Threads: [`connect`] (management) attaches a controller ([`NvmeCtrlr`], `attach.rs`: the
//! admin queue, a keep-alive thread that owns its polling, the paths) and identifies the
//! namespace; [`NvmeCtrlr::namespace_bdevs`] gives every namespace of a controller as a bdev
//! (`<name>n<nsid>`, SPDK's naming), all sharing the controller. Each channel is one I/O
//! queue pair (one TCP connection) owned and polled by the reactor that opened it: submit
//! encodes the command into the queue pair's send buffer, poll moves bytes and reports
//! completions, nothing locks or allocates per I/O (buffers move through by value). Queue
//! pairs are connected ahead of time with [`NvmeHostBdev::preconnect`] so that opening a
//! channel on a reactor does not block it; a channel opened without one connects inline
//! (blocking that reactor for the handshake, logged).
//!
//! A lost controller (admin queue or an I/O queue pair failed: target gone, killed,
//! starved; or a path ANA closed) is reconnected or failed over to its next path by the
//! keep-alive thread as SPDK's `bdev_nvme` does, under
//! [`ReconnectOpts`] (`ctrlr_loss_timeout_sec`, `reconnect_delay_sec`,
//! `fast_io_fail_timeout_sec`; the rules are in `reconnect.rs`); the channels keep the
//! I/O the dead queue pairs never answered and resubmit it on new queue pairs
//! (`channel.rs`). With the default (`ctrlr_loss_timeout_sec` 0) a failed queue pair
//! completes everything in flight with an I/O error and every later request too.

pub use super::attach::HostBdevOpts;
use super::attach::NvmeCtrlr;
use super::channel::HostChannel;
pub use super::reconnect::ReconnectOpts;
use super::trid::TransportId;
use super::HostError;
use engine::bdev::{Bdev, BdevChannel, BdevError, BdevInfo, IoOp, IoStats, StatsSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const OPS: [IoOp; 5] = IoOp::ALL;

/// One namespace of an attached controller as a bdev. See the module docs.
pub struct NvmeHostBdev {
    info: BdevInfo,
    nsid: u32,
    ctrlr: Arc<NvmeCtrlr>,
    stats: StatsSet,
    /// This bdev carries its controller's attach calls in `save_config` (one per controller).
    saves_config: AtomicBool,
}

/// Connects to the namespace `trid` names (through the discovery service when it names no
/// subsystem: the first NVM subsystem of the log, as `spdk_nvme_perf` does; the first active
/// namespace when it names none) and returns it as bdev `name` (not registered). Blocks.
pub fn connect(name: &str, trid: &TransportId, opts: &HostBdevOpts) -> Result<Arc<NvmeHostBdev>, HostError> {
    let c = NvmeCtrlr::attach(name, trid, opts)?;
    let nsid = match trid.nsid {
        Some(n) => n,
        None => *c
            .active_namespaces()?
            .first()
            .ok_or_else(|| HostError::Invalid(format!("{} has no active namespace", c.subnqn())))?,
    };
    c.namespace_bdev(name, nsid)
}

impl NvmeCtrlr {
    /// Namespace `nsid` as bdev `name` (not registered). Blocks (Identify Namespace).
    pub fn namespace_bdev(self: &Arc<Self>, name: &str, nsid: u32) -> Result<Arc<NvmeHostBdev>, HostError> {
        let subnqn = self.subnqn().to_string();
        let ns = self
            .core
            .ctrlr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .ok_or(HostError::Closed)?
            .identify_namespace(nsid)?;
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
        let mut uuid = ns.nguid;
        if uuid == [0; 16] {
            uuid = engine::bdev::new_uuid();
        }
        let mut nsids = self.core.nsids.lock().unwrap_or_else(|e| e.into_inner());
        if !nsids.contains(&nsid) {
            nsids.push(nsid);
        }
        drop(nsids);
        Ok(Arc::new(NvmeHostBdev {
            info: BdevInfo::new(
                name,
                "NVMe/TCP namespace",
                "nvme_tcp_host",
                uuid,
                1 << lbads,
                ns.nsze,
                &OPS,
            ),
            nsid,
            ctrlr: self.clone(),
            stats: StatsSet::default(),
            saves_config: AtomicBool::new(false),
        }))
    }

    /// Every active namespace as a bdev named `<controller name>n<nsid>` (SPDK's naming).
    pub fn namespace_bdevs(self: &Arc<Self>) -> Result<Vec<Arc<NvmeHostBdev>>, HostError> {
        self.active_namespaces()?
            .into_iter()
            .map(|n| self.namespace_bdev(&format!("{}n{n}", self.name()), n))
            .collect()
    }
}

impl NvmeHostBdev {
    /// Connects `n` I/O queue pairs now (management thread) for the next `n` channels.
    pub fn preconnect(&self, n: usize) -> Result<(), HostError> {
        self.ctrlr.preconnect(n)
    }

    /// The namespace ID driven.
    pub fn nsid(&self) -> u32 {
        self.nsid
    }

    /// The subsystem connected to.
    pub fn subnqn(&self) -> &str {
        self.ctrlr.subnqn()
    }

    /// The address of the path in use.
    pub fn addr(&self) -> SocketAddr {
        self.ctrlr.addr()
    }

    /// Makes this bdev the one whose `save_config` entries re-attach its controller (the
    /// calls given to [`NvmeCtrlr::set_config`]).
    pub fn save_controller_config(&self) {
        self.saves_config.store(true, Ordering::Release);
    }

    /// The controller this namespace belongs to.
    pub fn ctrlr(&self) -> &Arc<NvmeCtrlr> {
        &self.ctrlr
    }

    /// Whether the controller is connected now (false while reconnecting or given up).
    pub fn connected(&self) -> bool {
        self.ctrlr.connected()
    }

    /// Successful reconnects of the controller so far.
    pub fn reconnects(&self) -> u64 {
        self.ctrlr.reconnects()
    }

    /// The reconnect options in force.
    pub fn reconnect_opts(&self) -> ReconnectOpts {
        self.ctrlr.reconnect_opts()
    }

    /// Entries of each I/O queue pair.
    pub fn queue_entries(&self) -> u16 {
        self.ctrlr.queue_entries()
    }
}

impl Bdev for NvmeHostBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        let core = &self.ctrlr.core;
        let spare = self.ctrlr.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let q = match spare {
            Some(q) => Some(q),
            None => {
                log::info!("bdev {}: connecting an I/O queue pair inline", self.info.name);
                match core.new_qpair() {
                    Ok(q) => Some(q),
                    // Reconnecting: the channel waits for a queue pair from the keep-alive thread.
                    Err(_) if core.reconnect.reconnects() && !core.shared.dead.load(Ordering::Acquire) => None,
                    Err(e) => return Err(BdevError::Channel(format!("{}: {e}", core.subnqn))),
                }
            }
        };
        Ok(BdevChannel::new(
            &self.info.name,
            self.info.geometry(1),
            self.stats.new_channel(),
            Box::new(HostChannel::new(
                q,
                self.nsid,
                core.shared.clone(),
                core.reconnect.reconnects(),
            )),
        ))
    }
    fn io_stats(&self) -> IoStats {
        self.stats.sum()
    }
    fn config_entries(&self) -> Vec<(&'static str, serde_json::Value)> {
        if !self.saves_config.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.ctrlr
            .config()
            .into_iter()
            .map(|v| ("bdev_nvme_attach_controller", v))
            .collect()
    }
    fn driver_specific(&self) -> serde_json::Value {
        let addr = self.addr();
        serde_json::json!({
            "nvme_tcp_host": {
                "ctrlr_name": self.ctrlr.name(),
                "subnqn": self.subnqn(),
                "traddr": addr.ip().to_string(),
                "trsvcid": addr.port().to_string(),
                "nsid": self.nsid,
                "paths": self.ctrlr.paths().len(),
            }
        })
    }
}
