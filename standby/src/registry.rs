//! The process's registry of standby volumes: which reactor owns each, how each was
//! created (what `save_config` replays), and the volumes themselves.
//!
//! Two tables: [`OWNERS`] (any thread, behind a mutex; management path only) maps a name to
//! its reactor core and its [`CreateParams`]; each reactor's thread-local `VOLUMES` holds
//! the volumes it owns with the poller that drives each. A name is reserved in `OWNERS`
//! before its volume is opened on the reactor and released when the open fails or the
//! volume is deleted. The RPC methods (`crate::rpc`), the network side (`crate::net`) and
//! the standby host (`crate::host`) all reach volumes through here.

use crate::StandbyVolume;
use engine::reactor::{self, PollerId};
use engine::rpc::RpcError;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard};

/// Mode of a standby volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeParam {
    Delayed,
    Snapshot,
}

/// `standby_create` parameters; the registry keeps them for `save_config`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// Name of the standby volume (unique in the process).
    pub name: String,
    pub mode: ModeParam,
    /// Delayed mode: the bdev that holds the last applied restart point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_bdev: Option<String>,
    /// Delayed mode: the staging bdev (superblock + staging log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging_bdev: Option<String>,
    /// Delayed mode: MiB of staged data kept in memory for apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_mb: Option<u64>,
    /// Snapshot mode: the bdev data blocks are allocated on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bdev: Option<String>,
    /// Snapshot mode: the bdev holding superblock and metadata journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_bdev: Option<String>,
    /// Snapshot mode: logical size of the volume in blocks (default: the data bdev's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_blocks: Option<u64>,
    /// Snapshot mode: snapshots kept (retention, default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<usize>,
    /// Reactor core that owns the volume (default: the first core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core: Option<u32>,
    /// Format even if the bdevs hold a standby (default false: recover it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<bool>,
    /// File persisting the record of blocks changed since promotion (what a failback
    /// sends, `docs/failback.md`); default: memory only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_map: Option<String>,
}

/// Which core owns each standby, and how it was created (for save_config).
static OWNERS: Mutex<BTreeMap<String, (u32, CreateParams)>> = Mutex::new(BTreeMap::new());

struct Owned {
    vol: Rc<RefCell<StandbyVolume>>,
    poller: PollerId,
}

thread_local! {
    static VOLUMES: RefCell<BTreeMap<String, Owned>> = const { RefCell::new(BTreeMap::new()) };
}

fn owners() -> MutexGuard<'static, BTreeMap<String, (u32, CreateParams)>> {
    OWNERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The error for a name the registry does not hold.
pub(crate) fn no_standby(name: &str) -> RpcError {
    RpcError::errno_detail(libc::ENODEV, format!("no standby named {name:?}"))
}

/// Reserves `p.name` for a volume on `core` (any thread); false if the name is taken.
/// The params are kept without `format`, which `save_config` never replays.
pub(crate) fn reserve(p: &CreateParams, core: u32) -> bool {
    let mut owners = owners();
    if owners.contains_key(&p.name) {
        return false;
    }
    let mut saved = p.clone();
    saved.format = None;
    owners.insert(p.name.clone(), (core, saved));
    true
}

/// Forgets `name` (any thread): its open failed, or it was deleted.
pub(crate) fn release(name: &str) {
    owners().remove(name);
}

/// The core that owns standby `name`, if it exists (any thread).
pub(crate) fn owner_core(name: &str) -> Option<u32> {
    owners().get(name).map(|o| o.0)
}

/// The core that owns standby `name`, or the error that names it missing.
pub(crate) fn owner(name: &str) -> Result<u32, RpcError> {
    owner_core(name).ok_or_else(|| no_standby(name))
}

/// The names of every standby, in order (any thread).
pub(crate) fn names() -> Vec<String> {
    owners().keys().cloned().collect()
}

/// The params that recreate every standby on its core (any thread).
pub(crate) fn saved_params() -> Vec<CreateParams> {
    owners()
        .values()
        .map(|(core, p)| {
            let mut p = p.clone();
            p.core = Some(*core);
            p.format = None;
            p
        })
        .collect()
}

/// On the owning reactor: keeps the opened volume and the poller that drives it.
pub(crate) fn install(name: String, vol: Rc<RefCell<StandbyVolume>>, poller: PollerId) {
    VOLUMES.with(|t| t.borrow_mut().insert(name, Owned { vol, poller }));
}

/// On the owning reactor: drops the volume and unregisters its poller.
pub(crate) fn uninstall(name: &str) {
    let gone = VOLUMES.with(|t| t.borrow_mut().remove(name));
    if let Some(o) = gone {
        reactor::unregister_poller(o.poller);
    }
}

/// The standby `name` if the calling reactor owns it.
pub(crate) fn local_volume(name: &str) -> Option<Rc<RefCell<StandbyVolume>>> {
    VOLUMES.with(|v| v.borrow().get(name).map(|o| o.vol.clone()))
}

/// On the owning reactor: runs `f` on standby `name`, if this reactor owns it.
pub(crate) fn with_local<R>(name: &str, f: impl FnOnce(&mut StandbyVolume) -> R) -> Option<R> {
    VOLUMES.with(|v| v.borrow().get(name).map(|o| f(&mut o.vol.borrow_mut())))
}

/// Runs `f` on the reactor that owns standby `name` and waits for its result.
/// Blocks: management threads only (the network side uses it to hand a volume
/// its connections; the standby host and tests use it to reach a volume).
pub fn with_standby<R: Send + 'static>(
    name: &str,
    f: impl FnOnce(&mut StandbyVolume) -> R + Send + 'static,
) -> Result<R, RpcError> {
    let core = owner(name)?;
    let n = name.to_string();
    reactor::run_on(core, move || with_local(&n, f))
        .map_err(|e| RpcError::errno_detail(libc::EAGAIN, e))?
        .ok_or_else(|| no_standby(name))
}
