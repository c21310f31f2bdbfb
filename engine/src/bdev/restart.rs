//! Restart points declared through a bdev: the hook between whoever receives them (the
//! NVMe/TCP target's vendor command, `nvme::nvmf::restart`) and whatever bdev can declare one
//! (the replicated volume of the `relay` crate), so neither crate depends on the other.
//!
//! A bdev that can take restart points registers a [`RestartPointSink`] under its bdev name
//! ([`register`]); an I/O queue looks the sink up by its namespace's bdev name when it
//! builds its namespace table and again whenever the registry changed ([`generation`], one
//! atomic load per Restart Point or Flush command; the lock is taken only after a change).
//! The NVMe target's vendor-specific I/O command (opcode 81h) then calls [`RestartPointSink::declare`]; the sink runs `done` from any
//! thread once the point is replicated, and the queue's reactor completes the command (the
//! result travels to it by `engine::reactor::send_msg`). Wire format and semantics:
//! `docs/restart-points.md`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use thiserror::Error;

/// Largest restart point tag, bytes (the replication wire's limit).
pub const RESTART_TAG_BYTES_MAX: u32 = 256;
/// How long the target waits for a sink's answer unless the sink says otherwise.
pub const RESTART_POINT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Why a restart point was not declared (the NVMe target maps each to a status).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RestartPointError {
    /// The replication acknowledgement policy cannot be met now (relays down): retryable.
    /// NVMe status: Namespace Not Ready (00h/82h, DNR clear).
    #[error("acknowledgement policy not met: {0}")]
    PolicyUnmet(String),
    /// The tag was refused (too long). NVMe status: Invalid Field in Command (00h/02h).
    #[error("invalid tag: {0}")]
    InvalidTag(String),
    /// Anything else (volume deleted, control ring full, ...). NVMe status: Internal Error
    /// (00h/06h, DNR clear).
    #[error("{0}")]
    Failed(String),
}

/// Called once with the epoch the restart point closed, or why it failed. Any thread.
pub type RestartPointDone = Box<dyn FnOnce(Result<u64, RestartPointError>) + Send>;

/// Something that can declare a restart point ordered after every write that completed
/// before the call (a replicated volume).
pub trait RestartPointSink: Send + Sync {
    /// Declares a restart point with application tag `tag` (at most
    /// [`RESTART_TAG_BYTES_MAX`] bytes). Must not block; `done` runs exactly once (it may run
    /// before `declare` returns, on any thread) once the point meets the sink's durability
    /// policy, with its epoch.
    fn declare(&self, tag: &[u8], done: RestartPointDone);

    /// Whether an NVMe Flush on this namespace also declares a restart point (empty tag)
    /// and completes only once it is replicated.
    fn flush_is_restart_point(&self) -> bool {
        false
    }

    /// How long the target waits for `done` before it completes the command with
    /// Namespace Not Ready (the point may still be declared later).
    fn timeout(&self) -> Duration {
        RESTART_POINT_TIMEOUT_DEFAULT
    }
}

/// Identifies one registration (so a stale owner cannot remove a newer sink of the name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkToken(u64);

struct Entry {
    token: u64,
    sink: Arc<dyn RestartPointSink>,
}

static SINKS: Mutex<BTreeMap<String, Entry>> = Mutex::new(BTreeMap::new());
static GENERATION: AtomicU64 = AtomicU64::new(1);
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn sinks() -> MutexGuard<'static, BTreeMap<String, Entry>> {
    SINKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes `sink` the restart point sink of bdev `bdev_name` (replacing any earlier one).
/// Management path. I/O queues pick it up on their next Restart Point or Flush command.
pub fn register(bdev_name: &str, sink: Arc<dyn RestartPointSink>) -> SinkToken {
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    sinks().insert(bdev_name.to_string(), Entry { token, sink });
    GENERATION.fetch_add(1, Ordering::Release);
    SinkToken(token)
}

/// Removes the sink of `bdev_name` if it is still the one `token` registered. Returns
/// whether it was removed. Management path.
pub fn unregister(bdev_name: &str, token: SinkToken) -> bool {
    let mut s = sinks();
    if s.get(bdev_name).is_some_and(|e| e.token == token.0) {
        s.remove(bdev_name);
        drop(s);
        GENERATION.fetch_add(1, Ordering::Release);
        true
    } else {
        false
    }
}

/// The sink registered for `bdev_name`, if any. Takes the registry lock.
pub fn lookup(bdev_name: &str) -> Option<Arc<dyn RestartPointSink>> {
    sinks().get(bdev_name).map(|e| e.sink.clone())
}

/// Bumped on every registration change (I/O queues compare it before trusting their copy).
#[inline]
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop;
    impl RestartPointSink for Nop {
        fn declare(&self, _tag: &[u8], done: RestartPointDone) {
            done(Ok(7));
        }
    }

    #[test]
    fn registry_replaces_and_only_the_owner_unregisters() {
        let g0 = generation();
        let t1 = register("restart_unit_a", Arc::new(Nop));
        assert!(generation() > g0);
        assert!(lookup("restart_unit_a").is_some());
        assert!(lookup("restart_unit_b").is_none());
        let t2 = register("restart_unit_a", Arc::new(Nop));
        assert_ne!(t1, t2);
        assert!(!unregister("restart_unit_a", t1), "a stale token removes nothing");
        assert!(lookup("restart_unit_a").is_some());
        let g1 = generation();
        assert!(unregister("restart_unit_a", t2));
        assert!(generation() > g1);
        assert!(lookup("restart_unit_a").is_none());
        assert!(!unregister("restart_unit_a", t2));
    }
}
