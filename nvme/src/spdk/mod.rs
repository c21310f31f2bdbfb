//! SPDK's NVMe driver under baton's reactors (cargo feature `spdk`, docs/spdk.md): the
//! `spdk-nvme` bdev attaches a controller by transport ID — NVMe/TCP as an initiator
//! (`trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:...`) or a local PCIe
//! device (`trtype:PCIe traddr:0000:04:00.0`) — and exposes one namespace as a bdev,
//! with one SPDK queue pair per reactor that uses it.
//!
//! - `ffi.rs`: every unsafe call into `spdk_sys` (env, controller, namespace, qpair);
//! - `bdev.rs`: the bdev and its per-reactor channel;
//! - `rpc.rs`: `bdev_spdk_nvme_attach`.
//!
//! SPDK's env runs on baton's DPDK env: the process must run with `--env dpdk`
//! (`BATON_ENV=dpdk`), whose EAL start is followed by `spdk_env_dpdk_post_init`.
//!
//! Bdev spec (`--bdev NAME=SPEC`, `baton perf --bdev SPEC`):
//! `spdk-nvme:TRID[,ns=N][,qsize=N][,kato=MS][,ctrlr_loss_timeout_sec=N]
//! [,reconnect_delay_sec=N][,fast_io_fail_timeout_sec=N]`, the TRID in `spdk_nvme_perf -r`
//! syntax.

mod bdev;
mod ffi;
mod recover;
pub mod rpc;

pub use bdev::{attach, SpdkNvmeBdev, SpdkNvmeOpts};
pub use recover::RecoveryStats;

use engine::bdev::spec::SpecError;
use engine::bdev::Bdev;
use std::sync::Arc;
use thiserror::Error;

/// The spec kind this module registers.
pub const SPEC_KIND: &str = "spdk-nvme";

/// Why SPDK could not attach or serve a controller.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SpdkError {
    #[error("SPDK's NVMe driver needs baton's DPDK env (run with --env dpdk or BATON_ENV=dpdk); the env is {0}")]
    NeedsDpdkEnv(String),
    #[error("spdk_env_dpdk_post_init failed (errno {}): are hugepages reserved (docs/spdk.md)?", -.0)]
    Env(i32),
    #[error("transport ID {0:?} does not parse: {1}")]
    Trid(String, String),
    #[error("spdk_nvme_connect to {0:?} failed (SPDK's log above says why: target not listening, wrong subnqn, PCIe device not bound to vfio-pci or EAL started with --no-pci)")]
    Connect(String),
    #[error("controller {0:?} has no active namespace {1} (0: none at all)")]
    NoNamespace(String, u32),
    #[error("spdk_nvme_ctrlr_alloc_io_qpair failed (controller out of I/O queues or disconnected)")]
    Qpair,
    #[error("invalid spdk-nvme parameter: {0}")]
    Param(String),
    #[error("PCI function {0} is not on the DPDK env's allow-list: start baton with --pci-allow {0} (or BATON_DPDK_PCI_ALLOW={0}), its controller bound to vfio-pci and hugepages reserved (docs/spdk.md)")]
    PciNotAllowed(String),
}

/// The PCI function a `trtype:PCIe` transport ID names, in canonical form; None for
/// other transports. SPDK's syntax: `key:value` or `key=value` pairs separated by
/// white space, keys and the transport type in any case.
pub(crate) fn pcie_traddr(trid: &str) -> Result<Option<String>, SpdkError> {
    let mut pcie = false;
    let mut traddr = None;
    for pair in trid.split_whitespace() {
        let Some(i) = pair.find([':', '=']) else { continue };
        let (k, v) = (&pair[..i], &pair[i + 1..]);
        if k.eq_ignore_ascii_case("trtype") {
            pcie = v.eq_ignore_ascii_case("pcie");
        } else if k.eq_ignore_ascii_case("traddr") {
            traddr = Some(v);
        }
    }
    if !pcie {
        return Ok(None);
    }
    let a = traddr.ok_or_else(|| {
        SpdkError::Trid(
            trid.to_string(),
            "trtype:PCIe needs traddr:BDF (the controller's PCI address)".into(),
        )
    })?;
    engine::env::pci_addr(a)
        .map(Some)
        .map_err(|e| SpdkError::Trid(trid.to_string(), e.to_string()))
}

/// Parses the part of a spec after `spdk-nvme:`: `TRID[,ns=N][,qsize=N][,kato=MS]`
/// and SPDK's three resiliency options (`ctrlr_loss_timeout_sec=N` etc.; any of them
/// turns SPDK's rules on, the others defaulting to 0).
pub fn parse_spec(rest: &str) -> Result<(String, SpdkNvmeOpts), SpdkError> {
    let mut parts = rest.split(',');
    let trid = parts.next().unwrap_or("").trim().to_string();
    if !trid.to_ascii_lowercase().contains("trtype:") {
        return Err(SpdkError::Param(format!(
            "{rest:?}: expected a transport ID first, e.g. spdk-nvme:trtype:TCP adrfam:IPv4 traddr:127.0.0.1 \
             trsvcid:4420 subnqn:nqn.2016-06.io.spdk:cnode1"
        )));
    }
    let mut o = SpdkNvmeOpts::default();
    for p in parts {
        let num = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| SpdkError::Param(format!("{p:?}: {v:?} is not a number")))
        };
        match p.split_once('=') {
            Some(("ns", v)) => o.nsid = Some(num(v)?).filter(|&n| n > 0),
            Some(("qsize", v)) => o.io_queue_size = num(v)?,
            Some(("kato", v)) => o.keep_alive_ms = num(v)?,
            Some(("ctrlr_loss_timeout_sec", v)) => {
                let n = v
                    .trim()
                    .parse::<i32>()
                    .map_err(|_| SpdkError::Param(format!("{p:?}: {v:?} is not a number")))?;
                o.reconnect.get_or_insert_with(Default::default).ctrlr_loss_timeout_sec = n;
            }
            Some(("reconnect_delay_sec", v)) => {
                o.reconnect.get_or_insert_with(Default::default).reconnect_delay_sec = num(v)?;
            }
            Some(("fast_io_fail_timeout_sec", v)) => {
                o.reconnect
                    .get_or_insert_with(Default::default)
                    .fast_io_fail_timeout_sec = num(v)?;
            }
            _ => {
                return Err(SpdkError::Param(format!(
                    "unknown part {p:?} (expected ns=N, qsize=N, kato=MS, ctrlr_loss_timeout_sec=N, \
                     reconnect_delay_sec=N or fast_io_fail_timeout_sec=N)"
                )))
            }
        }
    }
    if let Some(r) = &o.reconnect {
        r.validate().map_err(|e| SpdkError::Param(e.to_string()))?;
    }
    Ok((trid, o))
}

fn create_from_spec(name: &str, rest: &str) -> Result<Arc<dyn Bdev>, SpecError> {
    let (trid, opts) = parse_spec(rest).map_err(|e| SpecError::Invalid(e.to_string()))?;
    let b = attach(name, &trid, &opts).map_err(|e| SpecError::Invalid(format!("{SPEC_KIND}: {e}")))?;
    log::info!(
        "{name}: SPDK NVMe namespace {} at {trid} ({} blocks of {} B)",
        b.nsid(),
        b.num_blocks(),
        b.block_size()
    );
    Ok(b)
}

/// Adds `spdk-nvme:TRID,...` to the bdev specs every role and `baton perf` take.
pub fn register_spec_kind() {
    engine::bdev::spec::register_kind(SPEC_KIND, create_from_spec);
}

#[cfg(test)]
mod tests;
