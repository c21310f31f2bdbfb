//! Block-device methods with SPDK's names, params and result shapes:
//! `bdev_get_bdevs`, `bdev_get_iostat`, `bdev_{malloc,null,uring}_{create,delete}`,
//! `bdev_wait_for_examine`, and the "bdev" config provider for `save_config`.
//!
//! Handlers run on the management thread and use the bdev registry's management
//! functions (which take a lock, never used per I/O); they touch no reactor.
//! Errors carry SPDK's negative errno codes (`-17 File exists`, `-19 No such
//! device`, `-22 Invalid argument`) with the bdev layer's detail appended.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::bdev::{self, Bdev, BdevError, IoOp};
use crate::rpc::error::RpcError;
use crate::rpc::registry::{ConfigEntry, Registry, Reply};

/// Longest `bdev_get_bdevs` `timeout` honoured, in milliseconds.
pub const GET_BDEVS_TIMEOUT_MS_MAX: u64 = 60_000;

fn bdev_err(e: BdevError) -> RpcError {
    RpcError::errno_detail(e.errno(), e)
}

fn no_such_bdev(name: &str) -> RpcError {
    RpcError::errno_detail(libc::ENODEV, format!("no bdev named {name:?}"))
}

fn parse_uuid(uuid: Option<&str>) -> Result<Option<[u8; 16]>, RpcError> {
    uuid.map(bdev::uuid_parse).transpose().map_err(bdev_err)
}

/// Reject an SPDK parameter baton accepts for compatibility but does not
/// implement, unless it has the value that means "off".
fn only_default<T: PartialEq + std::fmt::Debug>(param: &str, value: Option<T>, default: T) -> Result<(), RpcError> {
    match value {
        Some(v) if v != default => Err(RpcError::errno_detail(
            libc::EOPNOTSUPP,
            format!("{param} = {v:?} is not supported (only {default:?})"),
        )),
        _ => Ok(()),
    }
}

fn register_new(b: Arc<dyn Bdev>) -> Result<String, RpcError> {
    let name = b.name().to_string();
    bdev::register(b).map_err(bdev_err)?;
    Ok(name)
}

fn check_absent(name: &str) -> Result<(), RpcError> {
    match bdev::lookup(name) {
        Some(_) => Err(bdev_err(BdevError::Exists(name.to_string()))),
        None => Ok(()),
    }
}

/// `bdev_malloc_create` params (SPDK's full list; DIF/metadata options must be off).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MallocCreateParams {
    /// Name; default `MallocN` with the lowest free N.
    pub name: Option<String>,
    pub num_blocks: u64,
    pub block_size: u32,
    pub uuid: Option<String>,
    pub physical_block_size: Option<u32>,
    pub optimal_io_boundary: Option<u32>,
    pub md_size: Option<u32>,
    pub md_interleave: Option<bool>,
    pub dif_type: Option<i32>,
    pub dif_is_head_of_md: Option<bool>,
    pub dif_pi_format: Option<u32>,
    pub numa_id: Option<i32>,
}

/// `bdev_null_create` params (SPDK's full list; DIF/metadata options must be off).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullCreateParams {
    pub name: String,
    pub num_blocks: u64,
    pub block_size: u32,
    pub uuid: Option<String>,
    pub physical_block_size: Option<u32>,
    pub md_size: Option<u32>,
    pub dif_type: Option<i32>,
    pub dif_is_head_of_md: Option<bool>,
    pub dif_pi_format: Option<u32>,
    pub preferred_write_alignment: Option<u32>,
    pub preferred_write_granularity: Option<u32>,
    pub optimal_write_size: Option<u32>,
    pub preferred_unmap_alignment: Option<u32>,
    pub preferred_unmap_granularity: Option<u32>,
}

/// `bdev_uring_create` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UringCreateParams {
    pub name: String,
    pub filename: PathBuf,
    /// Default: the device's logical block size (512 for a regular file).
    pub block_size: Option<u32>,
    pub uuid: Option<String>,
}

/// `bdev_aio_create` params (SPDK's names).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AioCreateParams {
    pub name: String,
    pub filename: PathBuf,
    pub block_size: Option<u32>,
    pub uuid: Option<String>,
    /// Sent by SPDK's rpc.py as false by default; true is refused by name.
    pub readonly: Option<bool>,
    pub fallocate: Option<bool>,
    pub nowait: Option<bool>,
}

/// `bdev_*_delete` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    pub name: String,
}

/// `bdev_get_bdevs` params.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetBdevsParams {
    pub name: Option<String>,
    /// With `name`: wait up to this many ms for the bdev to appear.
    pub timeout: Option<u64>,
}

/// `bdev_get_iostat` params: `name` (older SPDK) or `names` (newer).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetIostatParams {
    pub name: Option<String>,
    pub names: Option<Vec<String>>,
    pub per_channel: Option<bool>,
    pub reset_mode: Option<String>,
}

/// One `bdev_get_bdevs` element (SPDK's shape; fields baton has no notion of yet
/// carry SPDK's neutral values: no aliases, no rate limits, not claimed, not zoned).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BdevInfo {
    pub name: String,
    pub aliases: Vec<String>,
    pub product_name: String,
    pub block_size: u32,
    pub num_blocks: u64,
    pub uuid: String,
    pub assigned_rate_limits: Value,
    pub claimed: bool,
    pub zoned: bool,
    pub supported_io_types: Value,
    pub driver_specific: Value,
}

/// The `bdev_get_bdevs` element for `b`.
pub fn bdev_info(b: &dyn Bdev) -> BdevInfo {
    BdevInfo {
        name: b.name().to_string(),
        aliases: Vec::new(),
        product_name: b.product_name().to_string(),
        block_size: b.block_size(),
        num_blocks: b.num_blocks(),
        uuid: bdev::uuid_to_string(&b.uuid()),
        assigned_rate_limits: json!({
            "rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0,
            "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0,
        }),
        claimed: false,
        zoned: false,
        supported_io_types: json!({
            "read": b.supports(IoOp::Read),
            "write": b.supports(IoOp::Write),
            "unmap": b.supports(IoOp::Unmap),
            "flush": b.supports(IoOp::Flush),
            "write_zeroes": b.supports(IoOp::WriteZeroes),
            "reset": false,
            "compare": false,
            "compare_and_write": false,
            "abort": false,
            "nvme_admin": false,
            "nvme_io": false,
        }),
        driver_specific: b.driver_specific(),
    }
}

fn iostat_entry(b: &dyn Bdev) -> Value {
    let s = b.io_stats();
    json!({
        "name": b.name(),
        "bytes_read": s.bytes_read,
        "num_read_ops": s.num_read_ops,
        "bytes_written": s.bytes_written,
        "num_write_ops": s.num_write_ops,
        "bytes_unmapped": s.bytes_unmapped,
        "num_unmap_ops": s.num_unmap_ops,
        "bytes_copied": 0,
        "num_copy_ops": 0,
        "bytes_write_zeroes": s.bytes_write_zeroes,
        "num_write_zeroes_ops": s.num_write_zeroes_ops,
        "num_flush_ops": s.num_flush_ops,
        "num_errors": s.num_errors,
    })
}

fn delete_driver(name: &str, driver: &str) -> Result<bool, RpcError> {
    let b = bdev::lookup(name).ok_or_else(|| no_such_bdev(name))?;
    if b.driver() != driver {
        return Err(RpcError::errno_detail(
            libc::ENODEV,
            format!("bdev {name:?} is a {} bdev, not {driver}", b.driver()),
        ));
    }
    bdev::unregister(name).map_err(bdev_err)?;
    Ok(true)
}

fn first_free_malloc_name() -> String {
    (0u64..)
        .map(|n| format!("Malloc{n}"))
        .find(|n| bdev::lookup(n).is_none())
        .expect("some MallocN is free")
}

/// The "bdev" subsystem's config: one create call per bdev that can say how it
/// was made (`Bdev::config`), in name order.
pub fn bdev_config() -> Vec<ConfigEntry> {
    bdev::list()
        .iter()
        .flat_map(|b| b.config_entries())
        .map(|(method, params)| ConfigEntry {
            method: method.to_string(),
            params: Some(params),
        })
        .collect()
}

/// Register the bdev methods and the "bdev" config provider.
// A flat list, one registration per method: long, but with no step to name.
pub fn register_rpcs(reg: &mut Registry) {
    reg.register(
        "bdev_malloc_create",
        "Create a RAM bdev (num_blocks, block_size; optional name, uuid); returns its name",
        |p: MallocCreateParams| {
            only_default("optimal_io_boundary", p.optimal_io_boundary, 0)?;
            only_default("md_size", p.md_size, 0)?;
            only_default("dif_type", p.dif_type, 0)?;
            only_default("dif_pi_format", p.dif_pi_format, 0)?;
            only_default("physical_block_size", p.physical_block_size, p.block_size)?;
            let uuid = parse_uuid(p.uuid.as_deref())?;
            let name = p.name.unwrap_or_else(first_free_malloc_name);
            check_absent(&name)?;
            register_new(bdev::malloc::create(&name, p.num_blocks, p.block_size, uuid).map_err(bdev_err)?)
        },
    );
    reg.register("bdev_malloc_delete", "Delete a RAM bdev (name)", |p: DeleteParams| {
        delete_driver(&p.name, "malloc")
    });

    reg.register(
        "bdev_null_create",
        "Create a null bdev that discards writes and reads zeroes (name, num_blocks, block_size; optional uuid)",
        |p: NullCreateParams| {
            only_default("md_size", p.md_size, 0)?;
            only_default("dif_type", p.dif_type, 0)?;
            only_default("dif_pi_format", p.dif_pi_format, 0)?;
            only_default("physical_block_size", p.physical_block_size, p.block_size)?;
            only_default("preferred_write_alignment", p.preferred_write_alignment, 0)?;
            only_default("preferred_write_granularity", p.preferred_write_granularity, 0)?;
            only_default("optimal_write_size", p.optimal_write_size, 0)?;
            only_default("preferred_unmap_alignment", p.preferred_unmap_alignment, 0)?;
            only_default("preferred_unmap_granularity", p.preferred_unmap_granularity, 0)?;
            let uuid = parse_uuid(p.uuid.as_deref())?;
            check_absent(&p.name)?;
            register_new(bdev::null::create(&p.name, p.num_blocks, p.block_size, uuid).map_err(bdev_err)?)
        },
    );
    reg.register("bdev_null_delete", "Delete a null bdev (name)", |p: DeleteParams| {
        delete_driver(&p.name, "null")
    });

    reg.register(
        "bdev_uring_create",
        "Create an io_uring bdev over a file or block device (name, filename; optional block_size, uuid)",
        |p: UringCreateParams| {
            let uuid = parse_uuid(p.uuid.as_deref())?;
            check_absent(&p.name)?;
            register_new(bdev::uring::create(&p.name, &p.filename, p.block_size, uuid).map_err(bdev_err)?)
        },
    );
    reg.register(
        "bdev_aio_create",
        "Create an aio bdev over a file or block device (filename, name; optional block_size, uuid), served by the io_uring engine",
        |p: AioCreateParams| {
            only_default("readonly", p.readonly, false)?;
            let uuid = parse_uuid(p.uuid.as_deref())?;
            check_absent(&p.name)?;
            register_new(bdev::uring::create_aio(&p.name, &p.filename, p.block_size, uuid).map_err(bdev_err)?)
        },
    );
    reg.register("bdev_aio_delete", "Delete an aio bdev (name)", |p: DeleteParams| {
        delete_driver(&p.name, "aio")
    });
    reg.register(
        "bdev_uring_delete",
        "Delete an io_uring bdev (name)",
        |p: DeleteParams| delete_driver(&p.name, "uring"),
    );

    reg.register_deferred(
        "bdev_get_bdevs",
        "List bdevs, or one (name), waiting up to timeout ms for it to appear",
        |_: &Registry, p: Option<GetBdevsParams>| {
            let p = p.unwrap_or_default();
            let Some(name) = p.name else {
                let all: Vec<BdevInfo> = bdev::list().iter().map(|b| bdev_info(&**b)).collect();
                return Reply::Ready(serde_json::to_value(all).map_err(RpcError::internal));
            };
            let one = |b: Arc<dyn Bdev>| serde_json::to_value(vec![bdev_info(&*b)]).map_err(RpcError::internal);
            if let Some(b) = bdev::lookup(&name) {
                return Reply::Ready(one(b));
            }
            let timeout_ms = p.timeout.unwrap_or(0);
            if timeout_ms == 0 {
                return Reply::Ready(Err(no_such_bdev(&name)));
            }
            let deadline = Instant::now() + Duration::from_millis(timeout_ms.min(GET_BDEVS_TIMEOUT_MS_MAX));
            Reply::Later(Box::new(move || match bdev::lookup(&name) {
                Some(b) => Some(one(b)),
                None if Instant::now() >= deadline => Some(Err(no_such_bdev(&name))),
                None => None,
            }))
        },
    );

    reg.register(
        "bdev_get_iostat",
        "I/O statistics of all bdevs, or of name / names (tick_rate 1e9: ticks are ns)",
        |p: Option<GetIostatParams>| {
            let p = p.unwrap_or_default();
            only_default("per_channel", p.per_channel, false)?;
            only_default("reset_mode", p.reset_mode.as_deref(), "none")?;
            let mut wanted: Vec<String> = p.names.unwrap_or_default();
            wanted.extend(p.name);
            let bdevs: Vec<Arc<dyn Bdev>> = if wanted.is_empty() {
                bdev::list()
            } else {
                wanted
                    .iter()
                    .map(|n| bdev::lookup(n).ok_or_else(|| no_such_bdev(n)))
                    .collect::<Result<_, _>>()?
            };
            Ok(json!({
                "tick_rate": 1_000_000_000u64,
                "ticks": crate::clock::now_ns(),
                "bdevs": bdevs.iter().map(|b| iostat_entry(&**b)).collect::<Vec<_>>(),
            }))
        },
    );

    reg.register(
        "bdev_wait_for_examine",
        "Return true once bdev examination is done (baton examines nothing: at once)",
        |_: ()| Ok(true),
    );

    reg.register_config_provider("bdev", &[], bdev_config);
}
