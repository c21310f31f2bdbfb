//! The lifecycle every replication link shares, as one small state machine polled by a
//! reactor: down, connecting, Hello sent and awaiting its reply, up; a lost link or a
//! failed connect goes back to down with the next attempt scheduled by a back-off (initial
//! delay, doubling up to a cap, reset when a Hello is accepted); a refused Hello waits a
//! longer, fixed pause (`docs/replication.md`, "Link lifecycle").
//!
//! [`Reconnect`] only keeps the state: the caller dials, sends the Hello, reads the reply
//! and tells it what happened. It takes no lock, starts no thread and allocates nothing
//! per poll (the last error's buffer is reused); time is the caller's `now` in
//! nanoseconds, so tests count events instead of waiting.

use std::fmt;
use std::ops::Deref;

use crate::transport::OutFrame;
use crate::wire::{self, Heartbeat};

/// The answer every link gives a peer's heartbeat: the same heartbeat marked as the reply
/// (nonce and time echoed). `None` for a reply, which is not answered.
pub fn heartbeat_echo<B: Deref<Target = [u8]>>(h: &Heartbeat) -> Option<OutFrame<B>> {
    (!h.is_reply).then(|| OutFrame::control(wire::encode_heartbeat(&Heartbeat { is_reply: true, ..*h }), 0))
}

/// Where a link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No connection; the next attempt is due at [`Reconnect::next_attempt_ns`].
    Down,
    /// A connection is being made.
    Connecting,
    /// Connected, the Hello sent: waiting for its reply.
    AwaitHello,
    /// The Hello was accepted: the link carries traffic.
    Up,
    /// The peer refused the Hello (stale generation, unknown volume, ...): asked again
    /// after the refusal pause.
    Refused,
}

/// Delays between connection attempts: `initial_ns` after the first failure, doubled
/// after each further one up to `cap_ns`. `initial_ns == cap_ns` is a fixed delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial_ns: u64,
    pub cap_ns: u64,
}

impl Backoff {
    /// The same delay after every failure.
    pub const fn fixed_ms(ms: u64) -> Self {
        Self {
            initial_ns: ms * 1_000_000,
            cap_ns: ms * 1_000_000,
        }
    }

    /// `initial_ms`, doubling up to `cap_ms`.
    pub const fn doubling_ms(initial_ms: u64, cap_ms: u64) -> Self {
        Self {
            initial_ns: initial_ms * 1_000_000,
            cap_ns: cap_ms * 1_000_000,
        }
    }
}

/// How a link redials: its back-off, and the pause after a refused Hello. A link that
/// never dials (the accepting side) has no schedule ([`Reconnect::accepted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub backoff: Backoff,
    pub refused_retry_ns: u64,
}

/// One link's lifecycle: phase, back-off, next attempt, counters, last error.
#[derive(Debug, Clone)]
pub struct Reconnect {
    phase: Phase,
    schedule: Option<Schedule>,
    /// Delay the next failure schedules.
    delay_ns: u64,
    next_at_ns: u64,
    /// The link was up at least once (later attempts are reconnects).
    was_up: bool,
    connects: u64,
    reconnects: u64,
    failures: u64,
    ups: u64,
    last_error: String,
}

impl Reconnect {
    /// A link that dials: down, its first attempt due at `now`.
    pub fn new(schedule: Schedule, now: u64) -> Self {
        Self {
            phase: Phase::Down,
            schedule: Some(schedule),
            delay_ns: schedule.backoff.initial_ns,
            next_at_ns: now,
            was_up: false,
            connects: 0,
            reconnects: 0,
            failures: 0,
            ups: 0,
            last_error: String::new(),
        }
    }

    /// A link the peer dialled whose Hello was just accepted: up, and never redialled
    /// (once down, the peer reconnects as a new link).
    pub fn accepted() -> Self {
        Self {
            phase: Phase::Up,
            schedule: None,
            delay_ns: 0,
            next_at_ns: u64::MAX,
            was_up: true,
            connects: 1,
            reconnects: 0,
            failures: 0,
            ups: 1,
            last_error: String::new(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_up(&self) -> bool {
        self.phase == Phase::Up
    }

    pub fn is_refused(&self) -> bool {
        self.phase == Phase::Refused
    }

    /// Whether an attempt is due: down or refused, its time come, and the link dials.
    pub fn should_connect(&self, now: u64) -> bool {
        matches!(self.phase, Phase::Down | Phase::Refused) && self.schedule.is_some() && now >= self.next_at_ns
    }

    /// When the next attempt is due (`u64::MAX`: never).
    pub fn next_attempt_ns(&self) -> u64 {
        self.next_at_ns
    }

    /// An attempt starts.
    pub fn connecting(&mut self) {
        self.phase = Phase::Connecting;
        self.connects += 1;
        if self.was_up {
            self.reconnects += 1;
        }
    }

    /// Connected and the Hello queued.
    pub fn hello_sent(&mut self) {
        self.phase = Phase::AwaitHello;
    }

    /// The Hello was accepted: the back-off starts over and the last error is cleared.
    pub fn up(&mut self) {
        self.phase = Phase::Up;
        self.was_up = true;
        self.ups += 1;
        self.last_error.clear();
        if let Some(s) = self.schedule {
            self.delay_ns = s.backoff.initial_ns;
        }
    }

    /// The attempt failed before a connection was made: down, next attempt after the
    /// back-off (whatever the phase, a refused link included).
    pub fn connect_failed(&mut self, err: impl fmt::Display, now: u64) {
        self.set_error(err);
        self.failures += 1;
        self.phase = Phase::Down;
        self.schedule_next(now);
    }

    /// The connection was lost or closed. A refused link stays refused (its retry time
    /// kept) and its error is kept; any other goes down with the next attempt after the
    /// back-off, `err` (unless empty) its last error. Returns whether `err` was taken.
    pub fn down(&mut self, err: &str, now: u64) -> bool {
        if self.phase == Phase::Refused {
            return false;
        }
        if self.phase != Phase::Down {
            self.failures += 1;
        }
        self.phase = Phase::Down;
        self.schedule_next(now);
        if err.is_empty() {
            return false;
        }
        self.last_error.clear();
        self.last_error.push_str(err);
        true
    }

    /// The peer refused the Hello (`why`): asked again after the refusal pause.
    pub fn refused(&mut self, why: impl fmt::Display, now: u64) {
        self.set_error(why);
        self.failures += 1;
        self.phase = Phase::Refused;
        self.next_at_ns = match self.schedule {
            Some(s) => now.saturating_add(s.refused_retry_ns),
            None => u64::MAX,
        };
    }

    fn schedule_next(&mut self, now: u64) {
        match self.schedule {
            Some(s) => {
                self.next_at_ns = now.saturating_add(self.delay_ns);
                self.delay_ns = self.delay_ns.saturating_mul(2).min(s.backoff.cap_ns);
            }
            None => self.next_at_ns = u64::MAX,
        }
    }

    /// The last error (empty: none since the link was last up).
    pub fn last_error(&self) -> &str {
        &self.last_error
    }

    /// Replaces the last error (reusing its buffer).
    pub fn set_error(&mut self, err: impl fmt::Display) {
        use fmt::Write;
        self.last_error.clear();
        let _ = write!(self.last_error, "{err}");
    }

    pub fn clear_error(&mut self) {
        self.last_error.clear();
    }

    /// Attempts started.
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// Attempts started after the link had been up.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Failed attempts, lost links and refusals.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Hellos accepted.
    pub fn ups(&self) -> u64 {
        self.ups
    }

    /// The phase as the status RPCs name it: `connecting` (down or connecting),
    /// `handshake`, `up` or `refused`.
    pub fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::Down | Phase::Connecting => "connecting",
            Phase::AwaitHello => "handshake",
            Phase::Up => "up",
            Phase::Refused => "refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn sched(initial_ms: u64, cap_ms: u64) -> Schedule {
        Schedule {
            backoff: Backoff::doubling_ms(initial_ms, cap_ms),
            refused_retry_ns: 1_000 * MS,
        }
    }

    /// Fails one attempt at `now` and returns the delay it scheduled.
    fn fail_at(r: &mut Reconnect, now: u64) -> u64 {
        assert!(r.should_connect(now));
        r.connecting();
        r.connect_failed("refused by the kernel", now);
        r.next_attempt_ns() - now
    }

    #[test]
    fn first_attempt_is_due_at_once() {
        let r = Reconnect::new(sched(100, 800), 5);
        assert_eq!(r.phase(), Phase::Down);
        assert!(!r.should_connect(4));
        assert!(r.should_connect(5));
        assert_eq!(r.state_name(), "connecting");
    }

    #[test]
    fn back_off_doubles_up_to_its_cap() {
        let mut r = Reconnect::new(sched(100, 800), 0);
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..6 {
            let d = fail_at(&mut r, now);
            assert!(!r.should_connect(now + d - 1));
            delays.push(d / MS);
            now += d;
        }
        assert_eq!(delays, [100, 200, 400, 800, 800, 800]);
        assert_eq!(r.failures(), 6);
        assert_eq!(r.connects(), 6);
        assert_eq!(r.reconnects(), 0);
    }

    #[test]
    fn fixed_back_off_never_grows() {
        let s = Schedule {
            backoff: Backoff::fixed_ms(200),
            refused_retry_ns: 1_000 * MS,
        };
        let mut r = Reconnect::new(s, 0);
        let mut now = 0;
        for _ in 0..4 {
            let d = fail_at(&mut r, now);
            assert_eq!(d, 200 * MS);
            now += d;
        }
    }

    #[test]
    fn up_resets_the_back_off_and_clears_the_error() {
        let mut r = Reconnect::new(sched(100, 800), 0);
        let mut now = 0;
        for _ in 0..3 {
            now += fail_at(&mut r, now);
        }
        assert_eq!(r.last_error(), "refused by the kernel");
        r.connecting();
        r.hello_sent();
        assert_eq!(r.state_name(), "handshake");
        r.up();
        assert!(r.is_up());
        assert_eq!(r.last_error(), "");
        assert!(!r.should_connect(u64::MAX - 1));
        assert!(r.down("receive: connection reset", now));
        assert_eq!(r.last_error(), "receive: connection reset");
        assert_eq!(r.next_attempt_ns() - now, 100 * MS);
        assert_eq!(r.connects(), 4);
        assert_eq!(r.ups(), 1);
        assert_eq!(r.failures(), 4);
        now += 100 * MS;
        r.connecting();
        assert_eq!(r.reconnects(), 1);
        assert_eq!(fail_after_connecting(&mut r, now), 200 * MS);
    }

    fn fail_after_connecting(r: &mut Reconnect, now: u64) -> u64 {
        r.connect_failed("no route", now);
        r.next_attempt_ns() - now
    }

    #[test]
    fn down_while_connecting_or_awaiting_hello_schedules_a_retry() {
        let mut r = Reconnect::new(sched(100, 800), 0);
        r.connecting();
        assert_eq!(r.phase(), Phase::Connecting);
        assert!(!r.should_connect(0));
        r.down("connection failed", 0);
        assert_eq!(r.phase(), Phase::Down);
        assert_eq!(r.next_attempt_ns(), 100 * MS);
        r.connecting();
        r.hello_sent();
        assert_eq!(r.phase(), Phase::AwaitHello);
        r.down("send: broken pipe", 100 * MS);
        assert_eq!(r.next_attempt_ns(), 300 * MS);
        assert_eq!(r.failures(), 2);
        // A second report of the same loss counts once.
        r.down("", 100 * MS);
        assert_eq!(r.failures(), 2);
    }

    #[test]
    fn down_without_a_reason_keeps_the_last_error() {
        let mut r = Reconnect::new(sched(100, 800), 0);
        r.connecting();
        r.hello_sent();
        r.set_error("volume name too long");
        assert!(!r.down("", 0));
        assert_eq!(r.last_error(), "volume name too long");
    }

    #[test]
    fn a_refusal_waits_its_own_pause_and_survives_the_close() {
        let mut r = Reconnect::new(sched(100, 800), 0);
        r.connecting();
        r.hello_sent();
        r.refused("refused: StaleGeneration", 10);
        assert!(r.is_refused());
        assert_eq!(r.state_name(), "refused");
        // Closing the refused connection keeps the refusal and its retry time.
        assert!(!r.down("connection failed", 20));
        assert!(r.is_refused());
        assert_eq!(r.last_error(), "refused: StaleGeneration");
        assert!(!r.should_connect(10 + 1_000 * MS - 1));
        assert!(r.should_connect(10 + 1_000 * MS));
        // A failed dial from there goes back to the back-off.
        r.connecting();
        r.connect_failed("timed out", 2_000 * MS);
        assert_eq!(r.phase(), Phase::Down);
        assert_eq!(r.next_attempt_ns(), 2_100 * MS);
        assert_eq!(r.failures(), 2);
    }

    #[test]
    fn heartbeats_are_echoed_and_replies_are_not() {
        let h = Heartbeat {
            nonce: 7,
            time_ns: 9,
            is_reply: false,
        };
        let f: OutFrame<Vec<u8>> = heartbeat_echo(&h).expect("a request is answered");
        assert_eq!(
            f.header.as_bytes(),
            wire::encode_heartbeat(&Heartbeat { is_reply: true, ..h }).as_bytes()
        );
        assert!(heartbeat_echo::<Vec<u8>>(&Heartbeat { is_reply: true, ..h }).is_none());
    }

    #[test]
    fn an_accepted_link_never_dials() {
        let mut r = Reconnect::accepted();
        assert!(r.is_up());
        assert_eq!(r.connects(), 1);
        r.down("relay silent for 3000 ms", 7);
        assert_eq!(r.phase(), Phase::Down);
        assert_eq!(r.last_error(), "relay silent for 3000 ms");
        assert!(!r.should_connect(u64::MAX));
        assert_eq!(r.next_attempt_ns(), u64::MAX);
    }
}
