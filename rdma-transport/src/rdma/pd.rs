//! One protection domain per RDMA device, shared by every [`Qp`](super::verbs::Qp) on it
//! whatever reactor owns them, and the engine's buffer pools registered once per device:
//! a process-wide registry keyed by the device context, locked on the setup path only
//! (a connection made or torn down, a new pool first seen, [`pd_stats`]). The pool keys are
//! published as an immutable table each `Qp` holds an `Arc` of, so the per-I/O lookup in
//! `Qp::pool_sge` takes no lock (`docs/rdma.md`, "One protection domain per device").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrayvec::ArrayVec;
use rdma_sys as sys;

use super::verbs::{last_err, VerbsError};

/// An engine buffer pool registered with a device's shared protection domain: the pool's
/// id, its address range and local key.
#[derive(Clone, Copy)]
pub(super) struct PoolKey {
    pub(super) pool: usize,
    pub(super) start: usize,
    pub(super) len: usize,
    pub(super) lkey: u32,
}

/// The engine pools a protection domain has looked at, published whole and never changed
/// afterwards (a new pool publishes a new table): what [`Qp::pool_sge`](super::verbs::Qp::pool_sge) reads, lock-free.
#[derive(Default)]
pub(super) struct PoolTable {
    /// Pools registered, by pool id order.
    pub(super) keys: ArrayVec<PoolKey, { engine::buf::POOLS_MAX }>,
    /// Pools looked at (registered or failed): `engine::buf::pools()[..seen]`.
    pub(super) seen: usize,
}

/// One device's shared protection domain, in [`DEVICES`].
struct DevicePd {
    /// The device context (rdma_cm's `cm_id->verbs`, one per device per process).
    verbs: *mut sys::ibv_context,
    pd: *mut sys::ibv_pd,
    /// Queue pairs on this protection domain.
    users: usize,
    /// The pool registrations, deregistered with the protection domain.
    mrs: ArrayVec<*mut sys::ibv_mr, { engine::buf::POOLS_MAX }>,
    /// Bytes those registrations pin.
    pinned: u64,
    table: Arc<PoolTable>,
}

// SAFETY: the pointers are verbs objects, not tied to a thread; the registry's mutex
// serialises every use of them but `pd` (and the keys), which verbs lets any thread use.
unsafe impl Send for DevicePd {}

/// Every device's protection domain in use: touched when a connection is set up or torn
/// down, when a new pool is first seen, and by [`pd_stats`]; never per I/O.
static DEVICES: Mutex<Vec<DevicePd>> = Mutex::new(Vec::new());

/// Engine pool registrations made since the process started (each pool once per
/// protection domain made).
static POOL_REGS_TOTAL: AtomicU64 = AtomicU64::new(0);

fn devices() -> std::sync::MutexGuard<'static, Vec<DevicePd>> {
    DEVICES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shared protection domains of this process, for status and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PdStats {
    /// Protection domains alive: one per device in use.
    pub pds: usize,
    /// Queue pairs (connections) on them.
    pub users: usize,
    /// Engine pool registrations alive: each pool once per protection domain.
    pub pool_registrations: usize,
    /// Bytes those registrations pin (count against `RLIMIT_MEMLOCK`).
    pub pool_bytes_pinned: u64,
    /// Engine pool registrations made since the process started.
    pub pool_registrations_total: u64,
}

/// Counts the protection domains alive and their pool registrations (management path: takes
/// the registry's lock).
pub fn pd_stats() -> PdStats {
    let d = devices();
    PdStats {
        pds: d.len(),
        users: d.iter().map(|p| p.users).sum(),
        pool_registrations: d.iter().map(|p| p.mrs.len()).sum(),
        pool_bytes_pinned: d.iter().map(|p| p.pinned).sum(),
        pool_registrations_total: POOL_REGS_TOTAL.load(Ordering::Relaxed),
    }
}

/// The shared protection domain of `verbs` and its pool table, made on first use; one more
/// user until [`pd_release`].
pub(super) fn pd_acquire(verbs: *mut sys::ibv_context) -> Result<(*mut sys::ibv_pd, Arc<PoolTable>), VerbsError> {
    let mut d = devices();
    if let Some(p) = d.iter_mut().find(|p| p.verbs == verbs) {
        p.users += 1;
        return Ok((p.pd, p.table.clone()));
    }
    // SAFETY: `verbs` is a valid device context (checked non-null by the caller, owned by
    // rdma_cm for as long as a cm_id on the device lives, which outlives every `Qp`); the
    // result is checked for null and deallocated by `pd_release`.
    let pd = unsafe { sys::ibv_alloc_pd(verbs) };
    if pd.is_null() {
        return Err(last_err("ibv_alloc_pd"));
    }
    let table = Arc::new(PoolTable::default());
    d.push(DevicePd {
        verbs,
        pd,
        users: 1,
        mrs: ArrayVec::new(),
        pinned: 0,
        table: table.clone(),
    });
    Ok((pd, table))
}

/// One user of `verbs`'s protection domain fewer; the last one deregisters the pools and
/// deallocates it. Every queue pair and region of the leaving user must be gone.
pub(super) fn pd_release(verbs: *mut sys::ibv_context) {
    let mut d = devices();
    let Some(i) = d.iter().position(|p| p.verbs == verbs) else {
        return;
    };
    d[i].users -= 1;
    if d[i].users > 0 {
        return;
    }
    let mut p = d.swap_remove(i);
    // SAFETY: no `Qp` uses the protection domain any more (each destroyed its queue pair and
    // regions before releasing it), so no work request can name a pool key: the pool
    // registrations, then the protection domain, are freed once, here.
    unsafe {
        for mr in p.mrs.drain(..) {
            sys::ibv_dereg_mr(mr);
        }
        sys::ibv_dealloc_pd(p.pd);
    }
}

/// Registers with `verbs`'s protection domain every engine pool it has not looked at yet
/// and publishes the new table (or the current one when another connection already did).
pub(super) fn pd_register_pools(verbs: *mut sys::ibv_context) -> Option<Arc<PoolTable>> {
    let mut d = devices();
    let p = d.iter_mut().find(|p| p.verbs == verbs)?;
    if p.table.seen >= engine::buf::pool_count() {
        return Some(p.table.clone());
    }
    let mut t = PoolTable {
        keys: p.table.keys.clone(),
        seen: p.table.seen,
    };
    for pool in engine::buf::pools().into_iter().skip(t.seen) {
        t.seen += 1;
        let (ptr, len) = pool.region();
        if p.mrs.is_full() {
            continue;
        }
        // Read-only for the device: SEND sources need no access flags.
        // SAFETY: `p.pd` is live (it has a user: the caller); the pool's region is mapped for
        // the whole process (pools are never freed), so it outlives the registration, which
        // `pd_release` removes with the protection domain.
        let mr = unsafe { sys::ibv_reg_mr(p.pd, ptr as *mut _, len, 0) };
        if mr.is_null() {
            continue;
        }
        POOL_REGS_TOTAL.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `mr` is a live registration just made.
        let lkey = unsafe { (*mr).lkey };
        p.mrs.push(mr);
        p.pinned += len as u64;
        t.keys.push(PoolKey {
            pool: pool.id(),
            start: ptr as usize,
            len,
            lkey,
        });
    }
    p.table = Arc::new(t);
    Some(p.table.clone())
}
