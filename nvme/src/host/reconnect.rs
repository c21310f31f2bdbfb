//! When the host bdev reconnects a lost controller, and when it gives up: SPDK's
//! `bdev_nvme_attach_controller` I/O error resiliency options (`ctrlr_loss_timeout_sec`,
//! `reconnect_delay_sec`, `fast_io_fail_timeout_sec`) as a pure policy with explicit clocks
//! (nanoseconds of `engine::clock`), so the rules are tested without waiting.
//!
//! - `ctrlr_loss_timeout_sec`: how long after the loss reconnect attempts go on; -1 forever,
//!   0 never (the default, as in SPDK: a lost controller fails its I/O at once).
//! - `reconnect_delay_sec`: the wait after the loss and between attempts (SPDK's fixed delay).
//! - `fast_io_fail_timeout_sec`: after this long, I/O stops waiting for the reconnect and
//!   fails (attempts go on); 0 = I/O waits until the controller is back or given up.

use thiserror::Error;

const SEC: u64 = 1_000_000_000;

/// A combination SPDK refuses too; the message names the parameter.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid {param}: {why}")]
pub struct ReconnectOptsError {
    pub param: &'static str,
    pub why: String,
}

/// The three options, with SPDK's names and meaning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconnectOpts {
    pub ctrlr_loss_timeout_sec: i32,
    pub reconnect_delay_sec: u32,
    pub fast_io_fail_timeout_sec: u32,
}

impl ReconnectOpts {
    /// Checks the combination the way SPDK does.
    pub fn validate(&self) -> Result<(), ReconnectOptsError> {
        let bad = |param, why: &str| {
            Err(ReconnectOptsError {
                param,
                why: why.to_string(),
            })
        };
        let (loss, delay, fast) = (
            self.ctrlr_loss_timeout_sec,
            self.reconnect_delay_sec,
            self.fast_io_fail_timeout_sec,
        );
        if loss < -1 {
            return bad("ctrlr_loss_timeout_sec", "must be -1 (forever), 0 (never) or positive");
        }
        if loss == 0 {
            if delay != 0 || fast != 0 {
                return bad(
                    "reconnect_delay_sec",
                    "reconnect_delay_sec and fast_io_fail_timeout_sec need ctrlr_loss_timeout_sec != 0",
                );
            }
            return Ok(());
        }
        if delay == 0 {
            return bad("reconnect_delay_sec", "must be positive when reconnecting");
        }
        if loss > 0 && i64::from(delay) > i64::from(loss) {
            return bad("reconnect_delay_sec", "must not exceed ctrlr_loss_timeout_sec");
        }
        if fast != 0 {
            if loss > 0 && i64::from(fast) > i64::from(loss) {
                return bad("fast_io_fail_timeout_sec", "must not exceed ctrlr_loss_timeout_sec");
            }
            if fast < delay {
                return bad("fast_io_fail_timeout_sec", "must be at least reconnect_delay_sec");
            }
        }
        Ok(())
    }

    /// Whether a lost controller is reconnected at all.
    pub fn reconnects(&self) -> bool {
        self.ctrlr_loss_timeout_sec != 0
    }
}

/// What the recovery loop should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Connected, or waiting for the next attempt.
    Wait,
    /// Try to connect now.
    Attempt,
    /// `ctrlr_loss_timeout_sec` passed: fail everything for good.
    GiveUp,
}

/// The recovery state of one controller.
#[derive(Clone, Debug)]
pub struct Recovery {
    opts: ReconnectOpts,
    /// When the controller was lost (None: connected).
    lost_ns: Option<u64>,
    next_attempt_ns: u64,
    /// Failed attempts since the loss.
    pub attempts: u32,
    /// Successful reconnects so far.
    pub reconnects: u64,
}

impl Recovery {
    pub fn new(opts: ReconnectOpts) -> Recovery {
        Recovery {
            opts,
            lost_ns: None,
            next_attempt_ns: 0,
            attempts: 0,
            reconnects: 0,
        }
    }

    /// Whether the controller is lost (reconnecting or given up).
    pub fn is_lost(&self) -> bool {
        self.lost_ns.is_some()
    }

    /// The controller was lost at `now`; the first attempt comes one delay later.
    pub fn lost(&mut self, now: u64) {
        if self.lost_ns.is_none() {
            self.lost_ns = Some(now);
            self.attempts = 0;
            self.next_attempt_ns = now.saturating_add(u64::from(self.opts.reconnect_delay_sec) * SEC);
        }
    }

    /// The next attempt comes at `now` instead of one delay after the loss (a failover to
    /// another path does not wait).
    pub fn attempt_at(&mut self, now: u64) {
        self.next_attempt_ns = now;
    }

    /// An attempt at `now` failed: the next one comes one delay later.
    pub fn attempt_failed(&mut self, now: u64) {
        self.attempts += 1;
        self.next_attempt_ns = now.saturating_add(u64::from(self.opts.reconnect_delay_sec) * SEC);
    }

    /// An attempt succeeded.
    pub fn reconnected(&mut self) {
        self.lost_ns = None;
        self.attempts = 0;
        self.reconnects += 1;
    }

    /// What to do at `now`.
    pub fn step(&self, now: u64) -> Step {
        let Some(lost) = self.lost_ns else { return Step::Wait };
        if !self.opts.reconnects() {
            return Step::GiveUp;
        }
        if let Ok(loss) = u64::try_from(self.opts.ctrlr_loss_timeout_sec) {
            if now >= lost.saturating_add(loss * SEC) {
                return Step::GiveUp;
            }
        }
        if now >= self.next_attempt_ns {
            Step::Attempt
        } else {
            Step::Wait
        }
    }

    /// Whether I/O should fail instead of waiting at `now` (fast_io_fail_timeout_sec
    /// passed, or no reconnect at all).
    pub fn fail_io(&self, now: u64) -> bool {
        let Some(lost) = self.lost_ns else { return false };
        if !self.opts.reconnects() {
            return true;
        }
        let fast = self.opts.fast_io_fail_timeout_sec;
        fast != 0 && now >= lost.saturating_add(u64::from(fast) * SEC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(loss: i32, delay: u32, fast: u32) -> ReconnectOpts {
        ReconnectOpts {
            ctrlr_loss_timeout_sec: loss,
            reconnect_delay_sec: delay,
            fast_io_fail_timeout_sec: fast,
        }
    }

    #[test]
    fn validation_follows_spdk() {
        assert!(o(0, 0, 0).validate().is_ok());
        assert!(o(-1, 1, 0).validate().is_ok());
        assert!(o(30, 2, 10).validate().is_ok());
        assert_eq!(o(-2, 1, 0).validate().unwrap_err().param, "ctrlr_loss_timeout_sec");
        assert_eq!(o(0, 1, 0).validate().unwrap_err().param, "reconnect_delay_sec");
        assert_eq!(o(10, 0, 0).validate().unwrap_err().param, "reconnect_delay_sec");
        assert_eq!(o(5, 10, 0).validate().unwrap_err().param, "reconnect_delay_sec");
        assert_eq!(o(5, 1, 10).validate().unwrap_err().param, "fast_io_fail_timeout_sec");
        assert_eq!(o(-1, 5, 2).validate().unwrap_err().param, "fast_io_fail_timeout_sec");
    }

    #[test]
    fn attempts_every_delay_until_the_loss_timeout() {
        let mut r = Recovery::new(o(10, 2, 0));
        assert_eq!(r.step(0), Step::Wait);
        r.lost(100);
        let mut attempts = 0;
        let mut t = 100;
        let gave_up = loop {
            match r.step(t) {
                Step::Attempt => {
                    attempts += 1;
                    r.attempt_failed(t);
                }
                Step::GiveUp => break t,
                Step::Wait => {}
            }
            assert!(!r.fail_io(t), "fast_io_fail off: I/O waits");
            t += SEC / 10;
        };
        // Attempts at 2, 4, 6, 8 s after the loss; given up at 10 s.
        assert_eq!(attempts, 4);
        assert_eq!(gave_up, 100 + 10 * SEC);
    }

    #[test]
    fn fast_io_fail_releases_io_but_attempts_go_on() {
        let mut r = Recovery::new(o(-1, 1, 3));
        r.lost(0);
        assert!(!r.fail_io(3 * SEC - 1));
        assert!(r.fail_io(3 * SEC));
        assert_eq!(r.step(1000 * SEC), Step::Attempt, "forever");
        r.reconnected();
        assert!(!r.fail_io(1000 * SEC));
        assert_eq!((r.reconnects, r.is_lost()), (1, false));
    }

    #[test]
    fn no_reconnect_gives_up_at_once_and_fails_io() {
        let mut r = Recovery::new(ReconnectOpts::default());
        r.lost(5);
        assert_eq!(r.step(5), Step::GiveUp);
        assert!(r.fail_io(5));
    }
}
