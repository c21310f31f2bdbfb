//! Recovery of an `spdk-nvme` controller after a loss (the target restarted, the network
//! dropped the connection): the controller is reset in SPDK's asynchronous steps
//! (`spdk_nvme_ctrlr_disconnect`; admin completions until they report the admin queue
//! disconnected; `_reconnect_async`; `_reconnect_poll_async` until done), then each
//! channel reconnects its own queue pair on its own reactor
//! (`spdk_nvme_ctrlr_reconnect_io_qpair`), as SPDK's `bdev_nvme` does it.
//!
//! Whoever notices drives it: the admin poller (admin completions failed) or a channel
//! whose queue pair failed and will not reconnect. Every call on the controller's admin
//! side (admin completions, reset steps) goes through [`Recovery::exclusive`], a try-flag:
//! a second caller skips its turn instead of waiting, so no reactor ever blocks on
//! another. Resets start at most once per [`RESET_RETRY_NS`]; nothing here allocates.
//!
//! While the controller is down, I/O fails at once with the transport's error (SPDK
//! aborts what was queued and refuses new commands on a failed queue pair); it is not held
//! for the reconnect.

use super::ffi::Ctrlr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

/// Least time between two reset attempts.
pub(crate) const RESET_RETRY_NS: u64 = 1_000_000_000;
/// Least time between a failed channel's reconnect attempts of its queue pair.
pub(crate) const QPAIR_RETRY_NS: u64 = 10_000_000;

/// Longest a disconnect may take before the reset is given up and started again.
const DISCONNECT_TIMEOUT_NS: u64 = 10_000_000_000;

const IDLE: u8 = 0;
const DISCONNECTING: u8 = 1;
const RECONNECTING: u8 = 2;

/// The reset state of one controller, shared by its bdev, channels and admin poller.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Someone is making an admin-side call on the controller now.
    busy: AtomicBool,
    state: AtomicU8,
    /// `engine::clock` ns before which no new reset starts.
    next_reset_ns: AtomicU64,
    /// When the running reset started.
    started_ns: AtomicU64,
    /// Resets that brought the controller back.
    resets: AtomicU64,
    /// Reset attempts that failed (the target did not answer).
    reset_failures: AtomicU64,
    /// Queue pair reconnects SPDK accepted (over a fabric the Connect then runs on).
    qpair_reconnects: AtomicU64,
}

/// Counters for `bdev_get_bdevs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryStats {
    pub resets: u64,
    pub reset_failures: u64,
    pub qpair_reconnects: u64,
    pub resetting: bool,
}

impl Recovery {
    /// Runs `f` if no one else is on the controller's admin side; None when skipped.
    pub(crate) fn exclusive<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        if self.busy.swap(true, Ordering::Acquire) {
            return None;
        }
        let r = f();
        self.busy.store(false, Ordering::Release);
        Some(r)
    }

    pub(crate) fn resetting(&self) -> bool {
        self.state.load(Ordering::Acquire) != IDLE
    }

    /// One step of the controller's reset at `now` (start one if none runs and the last
    /// started long enough ago, else advance it). Returns whether the controller is
    /// enabled at the end of this step (true only when a reset just completed).
    pub(crate) fn step(&self, ctrlr: &Ctrlr, name: &str, now: u64) -> bool {
        self.exclusive(|| self.step_locked(ctrlr, name, now)).unwrap_or(false)
    }

    fn step_locked(&self, ctrlr: &Ctrlr, name: &str, now: u64) -> bool {
        match self.state.load(Ordering::Acquire) {
            IDLE => {
                if now < self.next_reset_ns.load(Ordering::Relaxed) {
                    return false;
                }
                self.next_reset_ns.store(now + RESET_RETRY_NS, Ordering::Relaxed);
                match ctrlr.disconnect() {
                    Ok(()) => log::warn!("{name}: controller lost; resetting it"),
                    // Already disconnecting inside SPDK: follow that one.
                    Err(e) if e == libc::EBUSY => {}
                    Err(e) => return self.failed(name, "refused", e),
                }
                self.started_ns.store(now, Ordering::Relaxed);
                self.state.store(DISCONNECTING, Ordering::Release);
                false
            }
            DISCONNECTING => {
                // Admin completions report the admin queue disconnected with an error.
                if ctrlr.process_admin() < 0 {
                    ctrlr.reconnect_start();
                    self.state.store(RECONNECTING, Ordering::Release);
                } else if now.saturating_sub(self.started_ns.load(Ordering::Relaxed)) > DISCONNECT_TIMEOUT_NS {
                    return self.failed(name, "did not disconnect", libc::ETIMEDOUT);
                }
                false
            }
            _ => match ctrlr.reset_poll() {
                Ok(false) => false,
                Ok(true) => {
                    self.state.store(IDLE, Ordering::Release);
                    self.resets.fetch_add(1, Ordering::Release);
                    log::info!("{name}: controller reconnected");
                    true
                }
                Err(e) => self.failed(name, "failed", e),
            },
        }
    }

    /// A reset attempt ended without the controller: count it; the next starts after
    /// [`RESET_RETRY_NS`] from the last start.
    fn failed(&self, name: &str, what: &str, errno: i32) -> bool {
        self.state.store(IDLE, Ordering::Release);
        self.reset_failures.fetch_add(1, Ordering::Relaxed);
        log::debug!("{name}: controller reset {what} (errno {errno}); retrying");
        false
    }

    /// Resets completed so far: a channel that saw this number change knows the
    /// controller was reset since.
    pub(crate) fn generation(&self) -> u64 {
        self.resets.load(Ordering::Acquire)
    }

    pub(crate) fn qpair_reconnected(&self) {
        self.qpair_reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> RecoveryStats {
        RecoveryStats {
            resets: self.resets.load(Ordering::Relaxed),
            reset_failures: self.reset_failures.load(Ordering::Relaxed),
            qpair_reconnects: self.qpair_reconnects.load(Ordering::Relaxed),
            resetting: self.resetting(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_lets_one_caller_in_and_skips_the_others() {
        let r = Recovery::default();
        let inner = r.exclusive(|| r.exclusive(|| 1));
        assert_eq!(inner, Some(None), "a nested caller is skipped, not blocked");
        assert_eq!(r.exclusive(|| 2), Some(2), "free again afterwards");
    }
}
