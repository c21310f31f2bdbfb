//! `bdev_spdk_nvme_attach`: the `spdk-nvme` bdev over JSON-RPC (the same as a
//! `--bdev NAME=spdk-nvme:TRID` spec). Listed by `bdev_get_bdevs` (driver `spdk_nvme`)
//! and kept by `save_config`, like every registered bdev.

use super::{attach, SpdkError, SpdkNvmeOpts};
use crate::host::reconnect::ReconnectOpts;
use engine::rpc::{Registry, RpcError};
use serde::{Deserialize, Serialize};

/// Parameters of `bdev_spdk_nvme_attach`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AttachParams {
    /// The bdev's name.
    pub name: String,
    /// Transport ID in SPDK's syntax (`trtype:TCP adrfam:IPv4 traddr:.. trsvcid:.. subnqn:..`).
    pub trid: String,
    /// Namespace (default: the first active one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsid: Option<u32>,
    /// I/O queue entries asked of the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_queue_size: Option<u32>,
    /// Keep-alive timeout in ms (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_timeout_ms: Option<u32>,
    /// SPDK's `bdev_nvme` I/O error resiliency: how long after a loss reconnecting goes on
    /// (-1 forever, 0 never). Any of the three given turns SPDK's rules on (the others
    /// default to 0, as in SPDK); none given: reconnect forever, fail I/O at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctrlr_loss_timeout_sec: Option<i32>,
    /// Seconds between reconnect attempts (I/O waits for the reconnect only when > 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_delay_sec: Option<u32>,
    /// Seconds after the loss when waiting I/O fails (0: it waits until the loss timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_io_fail_timeout_sec: Option<u32>,
}

impl AttachParams {
    pub(crate) fn opts(&self) -> SpdkNvmeOpts {
        let d = SpdkNvmeOpts::default();
        SpdkNvmeOpts {
            nsid: self.nsid,
            io_queue_size: self.io_queue_size.unwrap_or(d.io_queue_size),
            keep_alive_ms: self.keep_alive_timeout_ms.unwrap_or(d.keep_alive_ms),
            reconnect: (self.ctrlr_loss_timeout_sec.is_some()
                || self.reconnect_delay_sec.is_some()
                || self.fast_io_fail_timeout_sec.is_some())
            .then(|| ReconnectOpts {
                ctrlr_loss_timeout_sec: self.ctrlr_loss_timeout_sec.unwrap_or(0),
                reconnect_delay_sec: self.reconnect_delay_sec.unwrap_or(0),
                fast_io_fail_timeout_sec: self.fast_io_fail_timeout_sec.unwrap_or(0),
            }),
        }
    }
}

fn attach_rpc(p: AttachParams) -> Result<String, RpcError> {
    if engine::bdev::lookup(&p.name).is_some() {
        return Err(RpcError::new(
            -libc::EEXIST,
            format!("bdev {:?} already exists", p.name),
        ));
    }
    let b = attach(&p.name, &p.trid, &p.opts()).map_err(|e| {
        let errno = match e {
            SpdkError::Param(_) | SpdkError::Trid(..) | SpdkError::PciNotAllowed(_) => -libc::EINVAL,
            _ => -libc::EIO,
        };
        RpcError::new(errno, e.to_string())
    })?;
    engine::bdev::register(b).map_err(|e| RpcError::new(e.errno(), e.to_string()))?;
    Ok(p.name)
}

/// Parameters of `bdev_spdk_nvme_detach`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DetachParams {
    /// The bdev's name.
    pub name: String,
}

/// Removes the bdev from the registry; SPDK detaches the controller when the last user
/// of the bdev lets go of it (open channels keep working until they close).
pub fn detach_rpc(p: DetachParams) -> Result<bool, RpcError> {
    let b = engine::bdev::lookup(&p.name)
        .ok_or_else(|| RpcError::new(-libc::ENODEV, format!("no bdev named {:?}", p.name)))?;
    if b.driver() != "spdk_nvme" {
        return Err(RpcError::new(
            -libc::ENODEV,
            format!("bdev {:?} is a {} bdev, not spdk_nvme", p.name, b.driver()),
        ));
    }
    engine::bdev::unregister(&p.name).map_err(|e| RpcError::new(e.errno(), e.to_string()))?;
    Ok(true)
}

/// Registers `bdev_spdk_nvme_attach` and `bdev_spdk_nvme_detach`.
pub fn register_rpcs(reg: &mut Registry) {
    reg.register(
        "bdev_spdk_nvme_detach",
        "Remove an spdk-nvme bdev (name); its controller is detached once no channel uses it",
        detach_rpc,
    );
    reg.register(
        "bdev_spdk_nvme_attach",
        "Attach a controller with SPDK's NVMe driver and make a bdev of one namespace (name, trid; nsid, io_queue_size, keep_alive_timeout_ms, ctrlr_loss_timeout_sec, reconnect_delay_sec, fast_io_fail_timeout_sec)",
        attach_rpc,
    );
}
