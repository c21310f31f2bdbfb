//! JSON-RPC methods of the standby role: parse the parameters, reach the volume through
//! the process's standby registry ([`crate::registry`]), answer.
//!
//! Threading: handlers run on the management thread. Each standby volume
//! lives on one reactor (chosen at creation, `core`), in that reactor's
//! thread-local table, polled by its own poller; a handler reaches it by
//! message ([`engine::reactor::send_msg`]) and answers with [`Reply::Later`],
//! which the server polls until the reactor has replied. Nothing here blocks
//! a reactor except creation/recovery and promotion, which do synchronous
//! I/O on the volume's reactor by design (management operations).
//!
//! Methods (parameters are typed; unknown ones are refused by name):
//! `standby_create`, `standby_delete`, `standby_get_status`, `snapshot_list`,
//! `snapshot_delete`, `snapshot_export`, `standby_declare_failure`,
//! `standby_promote`; and the `standby` config subsystem for `save_config`
//! (replays `standby_create`, which recovers instead of formatting).

use crate::delayed::DelayedOpts;
use crate::registry::{self, owner};
use crate::snapshot::SnapshotOpts;
use crate::{ModeConfig, StandbyConfig, StandbyError, StandbyVolume};
use engine::bdev;
use engine::reactor::{self, PollStatus};
use engine::rpc::registry::{ConfigEntry, Registry, Reply, RpcResult};
use engine::rpc::RpcError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;

pub use crate::registry::{CreateParams, ModeParam};

/// Parameters naming one standby.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameParams {
    pub name: String,
}

/// `standby_get_status` parameters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusParams {
    #[serde(default)]
    pub name: Option<String>,
}

/// `snapshot_delete` parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotParams {
    pub name: String,
    pub epoch: u64,
}

/// `snapshot_export` parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    pub name: String,
    pub epoch: u64,
    /// Name of the read-only bdev to register (default `<name>_snap<epoch>`).
    #[serde(default)]
    pub bdev_name: Option<String>,
}

/// `standby_promote` parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteParams {
    pub name: String,
    /// Snapshot mode: name of the writable head bdev (default `<name>_head`).
    #[serde(default)]
    pub bdev_name: Option<String>,
    /// Promote even a standby that is not a valid failover target (initial sync not
    /// complete: the image is no restart point of the primary's).
    #[serde(default)]
    pub force: bool,
}

fn err(e: StandbyError) -> RpcError {
    let errno = match &e {
        StandbyError::NoSnapshot(_) => libc::ENOENT,
        StandbyError::SnapshotBusy { .. } | StandbyError::Promoted(_) | StandbyError::NotFailedOver => libc::EBUSY,
        StandbyError::Mode(_) | StandbyError::WrongMode { .. } | StandbyError::Geometry(_) => libc::EINVAL,
        StandbyError::NoSpace { .. } | StandbyError::MetadataFull(_) => libc::ENOSPC,
        _ => libc::EIO,
    };
    RpcError::errno_detail(errno, e)
}

/// Runs `f` on the standby's reactor; the answer comes back through the server's poll.
fn on_volume(name: &str, f: impl FnOnce(&mut StandbyVolume) -> RpcResult + Send + 'static) -> Reply {
    let core = match owner(name) {
        Ok(c) => c,
        Err(e) => return Reply::Ready(Err(e)),
    };
    let (tx, rx) = mpsc::channel();
    let n = name.to_string();
    let sent = reactor::send_msg(core, move || {
        let r = registry::with_local(&n, f).unwrap_or_else(|| Err(registry::no_standby(&n)));
        let _ = tx.send(r);
    });
    if let Err(e) = sent {
        return Reply::Ready(Err(RpcError::errno_detail(libc::EAGAIN, e)));
    }
    Reply::Later(Box::new(move || match rx.try_recv() {
        Ok(r) => Some(r),
        Err(mpsc::TryRecvError::Empty) => None,
        Err(mpsc::TryRecvError::Disconnected) => Some(Err(RpcError::internal("the reactor dropped the request"))),
    }))
}

fn lookup(name: &Option<String>, param: &str) -> Result<std::sync::Arc<dyn bdev::Bdev>, RpcError> {
    let n = name
        .as_deref()
        .ok_or_else(|| RpcError::invalid_params(format!("{param} is required for this mode")))?;
    bdev::lookup(n).ok_or_else(|| RpcError::errno_detail(libc::ENODEV, format!("{param}: no bdev named {n:?}")))
}

/// Builds the open config from create params (management thread).
pub fn config_from(p: &CreateParams) -> Result<StandbyConfig, RpcError> {
    let mode = match p.mode {
        ModeParam::Delayed => ModeConfig::Delayed {
            volume: lookup(&p.volume_bdev, "volume_bdev")?,
            staging: lookup(&p.staging_bdev, "staging_bdev")?,
            opts: DelayedOpts {
                cache_bytes_max: p
                    .cache_mb
                    .map(|m| (m as usize).saturating_mul(1 << 20))
                    .unwrap_or(DelayedOpts::default().cache_bytes_max),
            },
        },
        ModeParam::Snapshot => {
            let data = lookup(&p.data_bdev, "data_bdev")?;
            let volume_blocks = p.volume_blocks.unwrap_or(data.num_blocks());
            if volume_blocks == 0 {
                return Err(RpcError::invalid_params("volume_blocks must be > 0"));
            }
            ModeConfig::Snapshot {
                metadata: lookup(&p.metadata_bdev, "metadata_bdev")?,
                data,
                volume_blocks,
                opts: SnapshotOpts {
                    keep_last: p.keep_last.unwrap_or(SnapshotOpts::default().keep_last).max(1),
                },
            }
        }
    };
    Ok(StandbyConfig {
        name: p.name.clone(),
        mode,
        format: p.format.unwrap_or(false),
    })
}

fn create(p: CreateParams) -> Reply {
    if p.name.is_empty() {
        return Reply::Ready(Err(RpcError::invalid_params("name must not be empty")));
    }
    let cfg = match config_from(&p) {
        Ok(c) => c,
        Err(e) => return Reply::Ready(Err(e)),
    };
    let core = match p.core {
        Some(c) => c,
        None => match reactor::cores().first() {
            Some(&c) => c,
            None => return Reply::Ready(Err(RpcError::errno_detail(libc::EAGAIN, "no reactor is running"))),
        },
    };
    // Reserve the name; released again if the open fails.
    if !registry::reserve(&p, core) {
        return Reply::Ready(Err(RpcError::errno_detail(
            libc::EEXIST,
            format!("standby {:?}", p.name),
        )));
    }
    let (tx, rx) = mpsc::channel();
    let name = p.name.clone();
    let changed_map = p.changed_map.clone().map(std::path::PathBuf::from);
    let sent = reactor::send_msg(core, move || {
        let r = StandbyVolume::open(cfg).map(|mut vol| {
            vol.set_changed_map(changed_map);
            let vol = Rc::new(RefCell::new(vol));
            let v2 = vol.clone();
            // Its work arrives by message, from the network poller on this reactor or as bdev
            // completions (I/O in flight keeps the reactor awake); its timers run on the tick.
            let poller = reactor::register_fd_poller(&format!("standby_{name}"), None, move || {
                let now = engine::clock::now_ns();
                reactor::wake_by(now + crate::net::IDLE_TICK_NS);
                match v2.try_borrow_mut() {
                    Ok(mut v) => v.poll(now),
                    Err(_) => PollStatus::Idle,
                }
            });
            registry::install(name.clone(), vol, poller);
        });
        let _ = tx.send(r);
    });
    if let Err(e) = sent {
        registry::release(&p.name);
        return Reply::Ready(Err(RpcError::errno_detail(libc::EAGAIN, e)));
    }
    let name = p.name;
    Reply::Later(Box::new(move || match rx.try_recv() {
        Ok(Ok(())) => Some(Ok(Value::String(name.clone()))),
        Ok(Err(e)) => {
            registry::release(&name);
            Some(Err(err(e)))
        }
        Err(mpsc::TryRecvError::Empty) => None,
        Err(mpsc::TryRecvError::Disconnected) => {
            registry::release(&name);
            Some(Err(RpcError::internal("the reactor dropped the request")))
        }
    }))
}

fn delete(p: NameParams) -> Reply {
    let core = match owner(&p.name) {
        Ok(c) => c,
        Err(e) => return Reply::Ready(Err(e)),
    };
    let (tx, rx) = mpsc::channel();
    let n = p.name.clone();
    let sent = reactor::send_msg(core, move || {
        registry::uninstall(&n);
        let _ = tx.send(());
    });
    if let Err(e) = sent {
        return Reply::Ready(Err(RpcError::errno_detail(libc::EAGAIN, e)));
    }
    let name = p.name;
    Reply::Later(Box::new(move || match rx.try_recv() {
        Ok(()) | Err(mpsc::TryRecvError::Disconnected) => {
            registry::release(&name);
            Some(Ok(Value::Bool(true)))
        }
        Err(mpsc::TryRecvError::Empty) => None,
    }))
}

fn to_value<T: Serialize>(v: T) -> RpcResult {
    serde_json::to_value(v).map_err(RpcError::internal)
}

fn status(p: StatusParams) -> Reply {
    let names: Vec<String> = match p.name {
        Some(n) => vec![n],
        None => registry::names(),
    };
    // One request per volume, gathered in order.
    let mut pending: Vec<Reply> = names
        .iter()
        .map(|n| {
            on_volume(n, |v| {
                let mut val = to_value(v.status())?;
                crate::net::annotate_status(v, &mut val);
                Ok(val)
            })
        })
        .collect();
    let mut out: Vec<Option<Value>> = vec![None; pending.len()];
    Reply::Later(Box::new(move || {
        for (i, r) in pending.iter_mut().enumerate() {
            if out[i].is_some() {
                continue;
            }
            let got = match r {
                Reply::Ready(x) => Some(x.clone()),
                Reply::Later(d) => d.poll(),
            };
            match got {
                Some(Ok(v)) => out[i] = Some(v),
                Some(Err(e)) => return Some(Err(e)),
                None => {}
            }
        }
        if out.iter().all(Option::is_some) {
            Some(Ok(Value::Array(
                out.iter_mut().map(|v| v.take().expect("all some")).collect(),
            )))
        } else {
            None
        }
    }))
}

/// Registers the standby methods and the `standby` config subsystem.
pub fn register_rpcs(reg: &mut Registry) {
    reg.register_deferred(
        "standby_create",
        "Create (or recover) a standby volume: name, mode delayed|snapshot, volume_bdev + staging_bdev (delayed) or data_bdev + metadata_bdev [+ volume_blocks, keep_last] (snapshot), core, format",
        |_: &Registry, p: CreateParams| create(p),
    );
    reg.register_deferred(
        "standby_delete",
        "Stop and forget a standby volume (its bdevs keep its state)",
        |_: &Registry, p: NameParams| delete(p),
    );
    reg.register_deferred(
        "standby_get_status",
        "Status of one (name) or every standby: applied epoch and LSN, lag, staging or snapshots",
        |_: &Registry, p: Option<StatusParams>| status(p.unwrap_or_default()),
    );
    reg.register_deferred(
        "snapshot_list",
        "Formed snapshots of a snapshot-mode standby (name), oldest first",
        |_: &Registry, p: NameParams| on_volume(&p.name, |v| to_value(v.snapshots())),
    );
    reg.register_deferred(
        "snapshot_delete",
        "Delete the snapshot of an epoch (name, epoch); never the latest or an exported one",
        |_: &Registry, p: SnapshotParams| {
            on_volume(&p.name, move |v| {
                v.delete_snapshot(p.epoch).map_err(err)?;
                Ok(Value::Bool(true))
            })
        },
    );
    reg.register_deferred(
        "snapshot_export",
        "Register a read-only bdev showing the snapshot of an epoch (name, epoch, bdev_name)",
        |_: &Registry, p: ExportParams| {
            let bdev_name = p
                .bdev_name
                .clone()
                .unwrap_or_else(|| format!("{}_snap{}", p.name, p.epoch));
            on_volume(&p.name, move |v| {
                let b = v.export_snapshot(p.epoch, &bdev_name).map_err(err)?;
                bdev::register(b).map_err(|e| RpcError::errno_detail(-e.errno(), e))?;
                Ok(Value::String(bdev_name))
            })
        },
    );
    reg.register_deferred(
        "standby_declare_failure",
        "Declare the primary failed: apply every epoch fully received, roll back the rest",
        |_: &Registry, p: NameParams| {
            on_volume(&p.name, |v| {
                v.declare_failure();
                Ok(Value::Bool(true))
            })
        },
    );
    reg.register_deferred(
        "standby_promote",
        "Promote a standby: fail over, bump the generation, return the writable bdev (name, bdev_name)",
        |_: &Registry, p: PromoteParams| {
            on_volume(&p.name.clone(), move |v| {
                let head = p.bdev_name.clone().unwrap_or_else(|| format!("{}_head", p.name));
                if let crate::Readiness::NotValid(why) = v.failover_readiness() {
                    if !p.force {
                        return Err(RpcError::errno_detail(
                            libc::EBUSY,
                            format!("{}: {why} (force: true promotes it anyway)", p.name),
                        ));
                    }
                    log::error!("standby {}: promoted by force although {why}", p.name);
                }
                let b = v.promote_named(&head).map_err(err)?;
                let name = b.name().to_string();
                // Delayed mode hands back the (already registered) volume bdev.
                if bdev::lookup(&name).is_none() {
                    bdev::register(b).map_err(|e| RpcError::errno_detail(-e.errno(), e))?;
                }
                Ok(serde_json::json!({ "bdev_name": name, "generation": v.generation() }))
            })
        },
    );
    reg.register_config_provider("standby", &["bdev"], standby_config);
}

/// The calls that recreate every standby (recovering, not formatting).
pub fn standby_config() -> Vec<ConfigEntry> {
    registry::saved_params()
        .into_iter()
        .map(|p| ConfigEntry {
            method: "standby_create".into(),
            params: serde_json::to_value(p).ok(),
        })
        .collect()
}
