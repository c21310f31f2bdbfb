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
//! What happens to I/O while the controller is down, and how long reconnecting goes on,
//! follows SPDK's `bdev_nvme` options when the attach gives them ([`ReconnectOpts`]:
//! `ctrlr_loss_timeout_sec`, `reconnect_delay_sec`, `fast_io_fail_timeout_sec`; the
//! rules are in [`Recovery::fail_io`] and [`Recovery::failed`]). Without them (the
//! default), reconnecting goes on forever, a reset at most every [`RESET_RETRY_NS`], and
//! I/O fails at once with the transport's error (SPDK aborts what was queued and refuses
//! new commands on a failed queue pair).

use super::ffi::Ctrlr;
use crate::host::reconnect::ReconnectOpts;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

/// Least time between two reset attempts.
pub(crate) const RESET_RETRY_NS: u64 = 1_000_000_000;
/// Least time between a failed channel's reconnect attempts of its queue pair.
pub(crate) const QPAIR_RETRY_NS: u64 = 10_000_000;

/// Longest a disconnect may take before the reset is given up and started again.
const DISCONNECT_TIMEOUT_NS: u64 = 10_000_000_000;

const SEC: u64 = 1_000_000_000;
/// `lost_ns` when the controller is not lost.
const NOT_LOST: u64 = u64::MAX;

const IDLE: u8 = 0;
const DISCONNECTING: u8 = 1;
const RECONNECTING: u8 = 2;

/// The reset state of one controller, shared by its bdev, channels and admin poller.
#[derive(Debug)]
pub(crate) struct Recovery {
    /// SPDK's I/O error resiliency options; None: reconnect forever, fail I/O at once.
    opts: Option<ReconnectOpts>,
    /// `engine::clock` ns when the controller was found lost ([`NOT_LOST`]: it is not).
    lost_ns: AtomicU64,
    /// `ctrlr_loss_timeout_sec` passed (or a reset failed with reconnects off): no more
    /// resets, every I/O fails.
    given_up: AtomicBool,
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
    /// Reconnecting was given up (`ctrlr_loss_timeout_sec` passed).
    pub given_up: bool,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery::new(None)
    }
}

impl Recovery {
    pub(crate) fn new(opts: Option<ReconnectOpts>) -> Recovery {
        Recovery {
            opts,
            lost_ns: AtomicU64::new(NOT_LOST),
            given_up: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            state: AtomicU8::new(IDLE),
            next_reset_ns: AtomicU64::new(0),
            started_ns: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            reset_failures: AtomicU64::new(0),
            qpair_reconnects: AtomicU64::new(0),
        }
    }

    /// The controller (or one of its queue pairs) was found lost at `now`: the loss and
    /// fast-fail timeouts count from the first such call until it is back.
    pub(crate) fn lost(&self, now: u64) {
        let _ = self
            .lost_ns
            .compare_exchange(NOT_LOST, now, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The controller is back (a reset completed, or a queue pair reconnected).
    fn back(&self) {
        self.lost_ns.store(NOT_LOST, Ordering::Release);
    }

    /// Whether reconnecting was given up: every I/O fails from now on.
    pub(crate) fn given_up(&self) -> bool {
        self.given_up.load(Ordering::Acquire)
    }

    /// Whether I/O meeting a lost controller at `now` fails instead of waiting for the
    /// reconnect. SPDK's rules: it waits only while reconnects are delayed
    /// (`reconnect_delay_sec` > 0) and neither `fast_io_fail_timeout_sec` (when not 0)
    /// nor `ctrlr_loss_timeout_sec` has passed since the loss. Without options: always.
    pub(crate) fn fail_io(&self, now: u64) -> bool {
        let Some(o) = self.opts else { return true };
        if self.given_up() || o.reconnect_delay_sec == 0 {
            return true;
        }
        let lost = self.lost_ns.load(Ordering::Acquire);
        if lost == NOT_LOST {
            return false;
        }
        let fast = u64::from(o.fast_io_fail_timeout_sec);
        fast != 0 && now.saturating_sub(lost) >= fast * SEC
    }

    /// Least time from a failed reset to the next.
    fn retry_gap_ns(&self) -> u64 {
        match self.opts {
            Some(o) if o.reconnect_delay_sec > 0 => u64::from(o.reconnect_delay_sec) * SEC,
            _ => RESET_RETRY_NS,
        }
    }

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
                self.lost(now);
                if self.given_up() || now < self.next_reset_ns.load(Ordering::Relaxed) {
                    return false;
                }
                self.next_reset_ns.store(now + self.retry_gap_ns(), Ordering::Relaxed);
                match ctrlr.disconnect() {
                    Ok(()) => log::warn!("{name}: controller lost; resetting it"),
                    // Already disconnecting inside SPDK: follow that one.
                    Err(e) if e == libc::EBUSY => {}
                    Err(e) => return self.failed(name, "refused", e, now),
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
                    return self.failed(name, "did not disconnect", libc::ETIMEDOUT, now);
                }
                false
            }
            _ => match ctrlr.reset_poll() {
                Ok(false) => false,
                Ok(true) => {
                    self.state.store(IDLE, Ordering::Release);
                    self.back();
                    self.resets.fetch_add(1, Ordering::Release);
                    log::info!("{name}: controller reconnected");
                    true
                }
                Err(e) => self.failed(name, "failed", e, now),
            },
        }
    }

    /// A reset attempt ended at `now` without the controller: count it; the next starts
    /// one retry gap later ([`RESET_RETRY_NS`], or `reconnect_delay_sec`). With options,
    /// SPDK's rules decide whether there is a next: none when reconnects are off
    /// (`ctrlr_loss_timeout_sec` 0 or `reconnect_delay_sec` 0: the one reset after the
    /// loss was it), or once `ctrlr_loss_timeout_sec` has passed since the loss.
    fn failed(&self, name: &str, what: &str, errno: i32, now: u64) -> bool {
        self.state.store(IDLE, Ordering::Release);
        self.reset_failures.fetch_add(1, Ordering::Relaxed);
        self.next_reset_ns
            .store(now.saturating_add(self.retry_gap_ns()), Ordering::Relaxed);
        if let Some(o) = self.opts {
            let lost = self.lost_ns.load(Ordering::Acquire);
            let elapsed = if lost == NOT_LOST { 0 } else { now.saturating_sub(lost) };
            let timed_out = u64::try_from(o.ctrlr_loss_timeout_sec).is_ok_and(|t| t > 0 && elapsed >= t * SEC);
            if !o.reconnects() || o.reconnect_delay_sec == 0 || timed_out {
                if !self.given_up.swap(true, Ordering::AcqRel) {
                    log::error!(
                        "{name}: controller reset {what} (errno {errno}); not reconnecting any more \
                         (ctrlr_loss_timeout_sec {}): its I/O fails from now on",
                        o.ctrlr_loss_timeout_sec
                    );
                }
                return false;
            }
        }
        log::debug!("{name}: controller reset {what} (errno {errno}); retrying");
        false
    }

    /// Resets completed so far: a channel that saw this number change knows the
    /// controller was reset since.
    pub(crate) fn generation(&self) -> u64 {
        self.resets.load(Ordering::Acquire)
    }

    pub(crate) fn qpair_reconnected(&self) {
        self.back();
        self.qpair_reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> RecoveryStats {
        RecoveryStats {
            resets: self.resets.load(Ordering::Relaxed),
            reset_failures: self.reset_failures.load(Ordering::Relaxed),
            qpair_reconnects: self.qpair_reconnects.load(Ordering::Relaxed),
            resetting: self.resetting(),
            given_up: self.given_up(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(loss: i32, delay: u32, fast: u32) -> Option<ReconnectOpts> {
        let o = ReconnectOpts {
            ctrlr_loss_timeout_sec: loss,
            reconnect_delay_sec: delay,
            fast_io_fail_timeout_sec: fast,
        };
        o.validate().unwrap();
        Some(o)
    }

    /// Feeds failed resets at the times given (ns after the loss at t0) and returns how
    /// many were answered with "retry" before reconnecting was given up.
    fn retries_before_giving_up(r: &Recovery, t0: u64, fail_at: &[u64]) -> usize {
        r.lost(t0);
        fail_at
            .iter()
            .take_while(|&&t| {
                r.failed("t", "failed", libc::ECONNREFUSED, t0 + t);
                !r.given_up()
            })
            .count()
    }

    #[test]
    fn without_options_resets_go_on_and_io_fails_at_once() {
        let r = Recovery::default();
        let t0 = 5 * SEC;
        assert!(r.fail_io(t0), "no options: I/O never waits");
        let fails: Vec<u64> = (1..=1000).map(|i| i * SEC).collect();
        assert_eq!(retries_before_giving_up(&r, t0, &fails), 1000);
        assert_eq!(
            r.next_reset_ns.load(Ordering::Relaxed),
            t0 + 1000 * SEC + RESET_RETRY_NS
        );
    }

    #[test]
    fn loss_timeout_ends_the_retries_and_fails_io_for_good() {
        let r = Recovery::new(opts(10, 2, 0));
        let t0 = 7 * SEC;
        // Attempts every 2 s: the ones ending at 2, 4, 6, 8 s are retried; the one ending
        // at 10 s (loss timeout reached) is the last.
        let fails: Vec<u64> = (1..=20).map(|i| 2 * i * SEC).collect();
        assert_eq!(retries_before_giving_up(&r, t0, &fails), 4);
        assert!(r.given_up() && r.stats().given_up);
        assert!(r.fail_io(t0 + 10 * SEC));
        // Just under the timeout does not give up.
        let r = Recovery::new(opts(10, 2, 0));
        assert_eq!(retries_before_giving_up(&r, t0, &[10 * SEC - 1]), 1);
        assert_eq!(
            r.next_reset_ns.load(Ordering::Relaxed),
            t0 + 12 * SEC - 1,
            "one delay after the failure"
        );
    }

    #[test]
    fn io_waits_until_fast_io_fail_then_fails_while_reconnects_go_on() {
        let r = Recovery::new(opts(30, 2, 5));
        let t0 = 100 * SEC;
        assert!(!r.fail_io(t0), "not lost: nothing to fail");
        r.lost(t0);
        r.lost(t0 + 3 * SEC); // a second report does not move the loss
        assert!(!r.fail_io(t0 + 5 * SEC - 1));
        assert!(r.fail_io(t0 + 5 * SEC));
        assert!(!r.given_up());
        // Back: the next loss counts afresh.
        r.qpair_reconnected();
        assert!(!r.fail_io(t0 + 60 * SEC));
        r.lost(t0 + 60 * SEC);
        assert!(!r.fail_io(t0 + 64 * SEC));
        assert!(r.fail_io(t0 + 65 * SEC));
    }

    #[test]
    fn forever_without_fast_fail_holds_io_and_never_gives_up() {
        let r = Recovery::new(opts(-1, 1, 0));
        let fails: Vec<u64> = (1..=10_000).map(|i| i * SEC).collect();
        assert_eq!(retries_before_giving_up(&r, 0, &fails), 10_000);
        assert!(!r.fail_io(10_000 * SEC));
    }

    #[test]
    fn no_reconnect_gives_up_after_the_first_failed_reset() {
        let r = Recovery::new(opts(0, 0, 0));
        assert!(r.fail_io(0), "reconnects off: I/O fails at once");
        assert_eq!(retries_before_giving_up(&r, 0, &[SEC, 2 * SEC]), 0);
        assert!(r.given_up());
    }

    #[test]
    fn exclusive_lets_one_caller_in_and_skips_the_others() {
        let r = Recovery::default();
        let inner = r.exclusive(|| r.exclusive(|| 1));
        assert_eq!(inner, Some(None), "a nested caller is skipped, not blocked");
        assert_eq!(r.exclusive(|| 2), Some(2), "free again afterwards");
    }
}
