//! Keep-alive of one controller, traffic based (NVMe 1.4 TBKAS): a Keep Alive command, a
//! Set Features KATO and any command received on any of the controller's queues restart the
//! timer. The controller is dropped only when KATO *plus a grace* has passed with none of
//! them, so a host whose keep-alives are slow under load (or a target that was not
//! scheduled for a while) does not lose its controller the moment KATO runs out.
//!
//! Every function takes the time explicitly (`engine::clock` nanoseconds), so the rules are
//! tested with made-up clocks. The data path only calls [`TrafficNote::note`]: one local
//! compare per poll batch, and at most one relaxed atomic update per queue per
//! [`TRAFFIC_PUBLISH_NS`].

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Smallest grace past KATO, ms. The grace is `max(KATO, KATO_GRACE_MIN_MS)`: a controller
/// is dropped after at least twice its KATO without a sign of life (SPDK checks once per
/// KATO period, so it drops between 1× and 2× KATO; Linux restarts the timer on traffic).
pub const KATO_GRACE_MIN_MS: u64 = 1000;

/// A queue publishes "commands seen" to its controller at most this often, ns. Bounds the
/// cross-reactor writes; the timer can lag the last command by at most this much.
pub const TRAFFIC_PUBLISH_NS: u64 = 1_000_000;

/// The grace past `kato_ms` before a silent controller is dropped, ms.
pub fn grace_ms(kato_ms: u32) -> u64 {
    u64::from(kato_ms).max(KATO_GRACE_MIN_MS)
}

/// The timer: KATO and the last sign of life. Shared by all queues of a controller.
#[derive(Debug)]
pub struct KeepAlive {
    kato_ms: AtomicU32,
    last_alive_ns: AtomicU64,
}

impl KeepAlive {
    /// A timer with `kato_ms` (0 = disabled), alive at `now_ns` (the Connect).
    pub fn new(kato_ms: u32, now_ns: u64) -> KeepAlive {
        KeepAlive {
            kato_ms: AtomicU32::new(kato_ms),
            last_alive_ns: AtomicU64::new(now_ns),
        }
    }

    /// KATO in ms (0 = disabled).
    pub fn kato_ms(&self) -> u32 {
        self.kato_ms.load(Ordering::Relaxed)
    }

    /// Set Features KATO: the new value applies from `now_ns`.
    pub fn set_kato(&self, kato_ms: u32, now_ns: u64) {
        self.kato_ms.store(kato_ms, Ordering::Relaxed);
        self.alive(now_ns);
    }

    /// A sign of life at `now_ns` (Keep Alive, or commands). Never moves the timer back.
    pub fn alive(&self, now_ns: u64) {
        self.last_alive_ns.fetch_max(now_ns, Ordering::Relaxed);
    }

    /// The last sign of life, ns.
    pub fn last_alive_ns(&self) -> u64 {
        self.last_alive_ns.load(Ordering::Relaxed)
    }

    /// When the controller will be dropped if nothing happens before, ns (None: KATO 0).
    pub fn deadline_ns(&self) -> Option<u64> {
        let kato = self.kato_ms();
        if kato == 0 {
            return None;
        }
        let ms = u64::from(kato) + grace_ms(kato);
        Some(self.last_alive_ns().saturating_add(ms.saturating_mul(1_000_000)))
    }

    /// Whether KATO + grace has passed at `now_ns` without a sign of life.
    pub fn expired(&self, now_ns: u64) -> bool {
        self.deadline_ns().is_some_and(|d| now_ns > d)
    }
}

/// One queue's side of traffic-based keep-alive: remembers when it last published.
#[derive(Debug, Default)]
pub struct TrafficNote {
    published_ns: u64,
}

impl TrafficNote {
    /// The queue received commands in the poll at `now_ns`: tell the controller's timer,
    /// unless this queue already did less than [`TRAFFIC_PUBLISH_NS`] ago. Returns whether
    /// it published.
    #[inline]
    pub fn note(&mut self, ka: &KeepAlive, now_ns: u64) -> bool {
        if self.published_ns != 0 && now_ns.saturating_sub(self.published_ns) < TRAFFIC_PUBLISH_NS {
            return false;
        }
        self.published_ns = now_ns;
        ka.alive(now_ns);
        true
    }
}

/// A queue's keep-alive duty once per poll, after it read what arrived (commands that
/// waited count before the timer is judged): publishes the poll's traffic (and clears
/// `traffic`) and, on the admin queue (`admin`), fails controller `c` if its timer expired.
/// True then: the caller closes the queue.
pub(crate) fn queue_poll(
    c: &super::ctrlr::Controller,
    note: &mut TrafficNote,
    traffic: &mut bool,
    admin: bool,
    now_ns: u64,
) -> bool {
    if std::mem::take(traffic) {
        note.note(&c.ka, now_ns);
    }
    if admin && c.keep_alive_expired(now_ns) {
        c.fail("keep alive timeout (KATO + grace without a command)");
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn dropped_only_after_kato_plus_grace_without_life() {
        let ka = KeepAlive::new(5000, 100 * MS);
        // KATO 5 s, grace 5 s: alive through 10 s after the Connect, dropped just after.
        assert!(!ka.expired(100 * MS + 5001 * MS));
        assert!(!ka.expired(100 * MS + 10_000 * MS));
        assert!(ka.expired(100 * MS + 10_000 * MS + 1));
        assert_eq!(ka.deadline_ns(), Some(10_100 * MS));
    }

    #[test]
    fn small_kato_gets_the_minimum_grace() {
        assert_eq!(grace_ms(200), KATO_GRACE_MIN_MS);
        assert_eq!(grace_ms(5000), 5000);
        let ka = KeepAlive::new(200, 0);
        assert!(!ka.expired(1200 * MS));
        assert!(ka.expired(1200 * MS + 1));
    }

    #[test]
    fn kato_zero_never_expires() {
        let ka = KeepAlive::new(0, 0);
        assert_eq!(ka.deadline_ns(), None);
        assert!(!ka.expired(u64::MAX));
    }

    #[test]
    fn commands_restart_the_timer_like_keep_alive() {
        // Continuous reads and no Keep Alive at KATO 2 s: never dropped while they flow,
        // dropped 2 s + grace after the last one. Count the publications on the way.
        let ka = KeepAlive::new(2000, 0);
        let mut q = TrafficNote::default();
        let mut published = 0;
        let mut t = 0;
        while t <= 20_000 * MS {
            assert!(!ka.expired(t), "dropped at {} ms with traffic", t / MS);
            if q.note(&ka, t) {
                published += 1;
            }
            t += MS / 4; // a poll with commands every 250 us
        }
        // One publication per TRAFFIC_PUBLISH_NS, not per poll.
        assert_eq!(published, 20_000 * MS / TRAFFIC_PUBLISH_NS + 1);
        let last = ka.last_alive_ns();
        assert!(last >= 20_000 * MS - TRAFFIC_PUBLISH_NS);
        assert!(!ka.expired(last + 4000 * MS));
        assert!(ka.expired(last + 4000 * MS + 1));
    }

    #[test]
    fn queues_on_other_reactors_never_move_the_timer_back() {
        let ka = KeepAlive::new(1000, 0);
        let (mut a, mut b) = (TrafficNote::default(), TrafficNote::default());
        assert!(a.note(&ka, 500 * MS));
        assert!(b.note(&ka, 400 * MS)); // a reactor with an older "now" publishes late
        assert_eq!(ka.last_alive_ns(), 500 * MS);
        ka.set_kato(3000, 600 * MS);
        assert_eq!(ka.deadline_ns(), Some(600 * MS + 6000 * MS));
    }

    #[test]
    fn queue_poll_publishes_traffic_and_only_the_admin_queue_expires() {
        use crate::nvmf::{SubsystemParams, Target, TransportOpts};
        let t = Target::new();
        let nqn = "nqn.2016-06.io.baton:keepalive-queue-poll";
        let s = t
            .create_subsystem(SubsystemParams {
                nqn: nqn.into(),
                ..Default::default()
            })
            .unwrap();
        let c = crate::nvmf::ctrlr::Controller::new(1, s, "h".into(), [0; 16], 1000, TransportOpts::default(), None);
        let start = c.last_alive_ns();
        let (mut note, mut traffic) = (TrafficNote::default(), true);
        assert!(!queue_poll(&c, &mut note, &mut traffic, true, start + MS));
        assert!(!traffic, "taken");
        assert_eq!(c.last_alive_ns(), start + MS);
        // KATO 1 s + 1 s grace later: an I/O queue only publishes, the admin queue fails it.
        let late = start + MS + 2000 * MS + 1;
        assert!(!queue_poll(&c, &mut note, &mut traffic, false, late));
        assert!(!c.failed());
        assert!(queue_poll(&c, &mut note, &mut traffic, true, late));
        assert!(c.failed());
    }
}
