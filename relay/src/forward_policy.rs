//! When a forwarder relay may forward (R4): the `--forward` policies and the gate that
//! applies them, pure logic with explicit clocks (no I/O, no clock reads), so every policy
//! is unit-tested here without waiting; `relay.rs` feeds it the reactor's monotonic clock
//! and, for windows, the wall clock.
//!
//! The gate is consulted once per poll while the forwarder is behind and has its read
//! buffer back; when it opens, one journal read (at most `READ_BUF_BYTES_MIN`, 4 MiB) is
//! submitted and forwarded when it completes. So an `interval` opening forwards one read,
//! and a `bandwidth` read may overdraw the bucket by at most one read.

use serde::{Deserialize, Serialize};

use crate::limits::FORWARD_INTERVAL_MS_MAX;

/// When the relay forwards (R4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum ForwardPolicy {
    /// As soon as a record is durable.
    Immediate,
    /// Everything durable, every `interval_ms`.
    Interval {
        /// Period.
        interval_ms: u64,
    },
    /// Only inside the daily UTC windows `"HH:MM-HH:MM"` (a window may wrap midnight).
    Windows {
        /// The windows.
        windows: Vec<String>,
    },
    /// At most `bytes_per_sec` (token bucket, one second of burst).
    Bandwidth {
        /// Cap.
        bytes_per_sec: u64,
    },
}

impl ForwardPolicy {
    /// Parses the command-line form: `immediate`, `interval:MS`, `window:HH:MM-HH:MM[,...]`,
    /// `bandwidth:BYTES_PER_SEC`.
    pub fn parse(s: &str) -> Result<ForwardPolicy, String> {
        let (mode, arg) = s.split_once(':').unwrap_or((s, ""));
        let p = match mode {
            "immediate" => ForwardPolicy::Immediate,
            "interval" => ForwardPolicy::Interval {
                interval_ms: arg
                    .parse()
                    .map_err(|_| format!("interval:{arg}: expected milliseconds"))?,
            },
            "window" | "windows" => ForwardPolicy::Windows {
                windows: arg.split(',').map(str::to_string).collect(),
            },
            "bandwidth" => ForwardPolicy::Bandwidth {
                bytes_per_sec: arg
                    .parse()
                    .map_err(|_| format!("bandwidth:{arg}: expected bytes per second"))?,
            },
            _ => {
                return Err(format!(
                    "{s:?}: expected immediate, interval:MS, window:HH:MM-HH:MM or bandwidth:BPS"
                ))
            }
        };
        p.check()?;
        Ok(p)
    }

    /// Checks the values (named in the error).
    pub fn check(&self) -> Result<(), String> {
        match self {
            ForwardPolicy::Immediate => Ok(()),
            ForwardPolicy::Interval { interval_ms } if !(1..=FORWARD_INTERVAL_MS_MAX).contains(interval_ms) => Err(
                format!("interval_ms ({interval_ms}) must be between 1 and {FORWARD_INTERVAL_MS_MAX} (one day)"),
            ),
            ForwardPolicy::Interval { .. } => Ok(()),
            ForwardPolicy::Bandwidth { bytes_per_sec } if *bytes_per_sec == 0 => {
                Err("bytes_per_sec must be > 0".into())
            }
            ForwardPolicy::Bandwidth { .. } => Ok(()),
            ForwardPolicy::Windows { windows } => {
                if windows.is_empty() {
                    return Err("windows must name at least one HH:MM-HH:MM window".into());
                }
                for w in windows {
                    let (start, end) = parse_window(w)?;
                    if start == end {
                        return Err(format!("windows: {w:?} is empty (start = end): it would never open"));
                    }
                }
                Ok(())
            }
        }
    }
}

fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// `"HH:MM-HH:MM"` to minutes of the day (start, end).
pub fn parse_window(w: &str) -> Result<(u32, u32), String> {
    let bad = || format!("windows: {w:?} is not HH:MM-HH:MM");
    let (a, b) = w.split_once('-').ok_or_else(bad)?;
    Ok((parse_hhmm(a).ok_or_else(bad)?, parse_hhmm(b).ok_or_else(bad)?))
}

/// True when `minute` of the day lies in the window (end exclusive; wraps midnight).
pub fn in_window(minute: u32, (start, end): (u32, u32)) -> bool {
    if start <= end {
        (start..end).contains(&minute)
    } else {
        minute >= start || minute < end
    }
}

/// Minute of the UTC day of `unix_secs` (what windows are matched against).
pub fn utc_minute(unix_secs: u64) -> u32 {
    ((unix_secs % 86_400) / 60) as u32
}

/// The per-volume state of a forwarder's policy: when the last interval opened, and the
/// bandwidth bucket.
#[derive(Debug, Clone)]
pub struct ForwardGate {
    /// When the last interval opened (at first: when the gate was made).
    last_interval_ns: u64,
    /// Bytes the bucket holds (negative after a read overdrew it).
    tokens: f64,
    tokens_ns: u64,
}

impl ForwardGate {
    /// A gate created at `now_ns`: the bucket starts empty (it fills at the policy's rate,
    /// up to one second's worth). The first interval opens `interval_ms` after the gate
    /// was made (when the relay took the volume on), the next ones every `interval_ms` after
    /// the previous opening, whatever the relay process's age.
    pub fn new(now_ns: u64) -> ForwardGate {
        ForwardGate {
            last_interval_ns: now_ns,
            tokens: 0.0,
            tokens_ns: now_ns,
        }
    }

    /// Whether a forwarding read may start now, under `policy`, at monotonic time `now_ns`
    /// and wall-clock time `unix_secs` (only windows look at it). An interval opening is
    /// taken by this call: the next one is `interval_ms` later.
    pub fn open(&mut self, policy: &ForwardPolicy, now_ns: u64, unix_secs: u64) -> bool {
        match policy {
            ForwardPolicy::Immediate => true,
            ForwardPolicy::Interval { interval_ms } => {
                if now_ns.saturating_sub(self.last_interval_ns) >= interval_ms.saturating_mul(1_000_000) {
                    self.last_interval_ns = now_ns;
                    true
                } else {
                    false
                }
            }
            ForwardPolicy::Windows { windows } => {
                let minute = utc_minute(unix_secs);
                windows
                    .iter()
                    .filter_map(|w| parse_window(w).ok())
                    .any(|w| in_window(minute, w))
            }
            ForwardPolicy::Bandwidth { bytes_per_sec } => {
                let rate = *bytes_per_sec as f64;
                let dt = now_ns.saturating_sub(self.tokens_ns) as f64 / 1e9;
                self.tokens_ns = now_ns;
                self.tokens = (self.tokens + dt * rate).min(rate);
                self.tokens > 0.0
            }
        }
    }

    /// `bytes` of op data were forwarded under `policy`: under a bandwidth cap they come
    /// out of the bucket (bytes forwarded under another policy leave no debt behind for a
    /// later switch to a cap).
    pub fn spent(&mut self, policy: &ForwardPolicy, bytes: u64) {
        if matches!(policy, ForwardPolicy::Bandwidth { .. }) {
            self.tokens -= bytes as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;

    #[test]
    fn forward_policy_parse_and_windows() {
        assert_eq!(ForwardPolicy::parse("immediate").unwrap(), ForwardPolicy::Immediate);
        assert_eq!(
            ForwardPolicy::parse("interval:50").unwrap(),
            ForwardPolicy::Interval { interval_ms: 50 }
        );
        assert_eq!(
            ForwardPolicy::parse("bandwidth:1000000").unwrap(),
            ForwardPolicy::Bandwidth {
                bytes_per_sec: 1_000_000
            }
        );
        assert!(ForwardPolicy::parse("interval:0").is_err());
        assert!(ForwardPolicy::parse("window:25:00-01:00").is_err());
        assert!(ForwardPolicy::parse("sometimes").is_err());
        let w = parse_window("22:00-02:30").unwrap();
        assert!(in_window(23 * 60, w) && in_window(60, w) && !in_window(3 * 60, w));
        let w = parse_window("01:00-02:00").unwrap();
        assert!(in_window(60, w) && !in_window(120, w) && !in_window(59, w));
    }

    #[test]
    fn immediate_is_always_open() {
        let mut g = ForwardGate::new(5 * SEC);
        for t in [0, 5 * SEC, 5 * SEC + 1, 3600 * SEC] {
            assert!(g.open(&ForwardPolicy::Immediate, t, 0));
            g.spent(&ForwardPolicy::Immediate, 4 << 20);
        }
    }

    #[test]
    fn interval_opens_once_per_period() {
        let p = ForwardPolicy::Interval { interval_ms: 250 };
        let t0 = 10 * SEC;
        let mut g = ForwardGate::new(t0 - 250 * MS);
        assert!(g.open(&p, t0, 0), "one interval after the gate was made");
        assert!(!g.open(&p, t0, 0), "an opening is taken by the call that sees it");
        assert!(!g.open(&p, t0 + 249 * MS, 0));
        assert!(g.open(&p, t0 + 250 * MS, 0));
        assert!(!g.open(&p, t0 + 499 * MS, 0));
        // A late look opens once, and the period restarts from it.
        assert!(g.open(&p, t0 + 900 * MS, 0));
        assert!(!g.open(&p, t0 + 1149 * MS, 0));
        assert!(g.open(&p, t0 + 1150 * MS, 0));
        // The process's age plays no part: a gate made late waits its interval all the same.
        let mut g = ForwardGate::new(3600 * SEC);
        assert!(!g.open(&p, 3600 * SEC + 249 * MS, 0));
        assert!(g.open(&p, 3600 * SEC + 250 * MS, 0));
        // Over a simulated minute polled every millisecond: 240 openings, no more.
        let mut g = ForwardGate::new(0);
        let opened = (1..=60_000u64).filter(|ms| g.open(&p, ms * MS, 0)).count();
        assert_eq!(opened, 240);
    }

    fn at(h: u64, m: u64) -> u64 {
        // Some day in 2026, then h:m UTC.
        20_454 * 86_400 + h * 3600 + m * 60 + 17
    }

    #[test]
    fn windows_open_inside_and_wrap_midnight() {
        let p = ForwardPolicy::Windows {
            windows: vec!["23:00-01:30".into(), "12:00-12:01".into()],
        };
        let mut g = ForwardGate::new(0);
        let open = |g: &mut ForwardGate, h, m| g.open(&p, 0, at(h, m));
        assert!(!open(&mut g, 22, 59));
        assert!(open(&mut g, 23, 0));
        assert!(open(&mut g, 23, 59));
        assert!(open(&mut g, 0, 0), "past midnight, still inside");
        assert!(open(&mut g, 1, 29));
        assert!(!open(&mut g, 1, 30), "the end is exclusive");
        assert!(!open(&mut g, 11, 59));
        assert!(open(&mut g, 12, 0));
        assert!(!open(&mut g, 12, 1));
        // The monotonic clock plays no part.
        assert!(g.open(&p, u64::MAX, at(0, 30)));
        assert_eq!(utc_minute(at(23, 59)), 23 * 60 + 59);
        assert_eq!(utc_minute(at(23, 59) + 60), 0);
    }

    #[test]
    fn bandwidth_bucket_starts_empty_and_refills() {
        let rate = 2_000_000;
        let p = ForwardPolicy::Bandwidth { bytes_per_sec: rate };
        let t0 = 100 * SEC;
        let mut g = ForwardGate::new(t0);
        assert!(!g.open(&p, t0, 0), "empty at start");
        assert!(g.open(&p, t0 + MS, 0), "2000 bytes after a millisecond");
        // A 4 MiB read overdraws it: closed until the debt is paid back.
        g.spent(&p, 4 << 20);
        let debt_s = ((4u64 << 20) - 2000) as f64 / rate as f64;
        let paid = t0 + MS + (debt_s * 1e9) as u64;
        assert!(!g.open(&p, paid - MS, 0));
        assert!(g.open(&p, paid + MS, 0));
    }

    #[test]
    fn bandwidth_burst_is_one_second() {
        let rate = 1_000_000;
        let p = ForwardPolicy::Bandwidth { bytes_per_sec: rate };
        let mut g = ForwardGate::new(0);
        // An hour idle still leaves one second of burst: `rate` bytes, then closed.
        assert!(g.open(&p, 3600 * SEC, 0));
        g.spent(&p, rate);
        assert!(!g.open(&p, 3600 * SEC, 0));
    }

    /// Forwarding 64 KiB reads whenever the gate opens, polled every 100 µs for 10 s: the
    /// bytes sent stay within rate x time + one second of burst + one read, and reach at
    /// least rate x time minus one read.
    #[test]
    fn bandwidth_delivers_the_rate_over_time() {
        let rate = 2_000_000u64;
        let read = 64 * 1024;
        let p = ForwardPolicy::Bandwidth { bytes_per_sec: rate };
        let mut g = ForwardGate::new(0);
        let mut sent = 0u64;
        let step = 100_000;
        for k in 1..=100_000u64 {
            let now = k * step;
            if g.open(&p, now, 0) {
                g.spent(&p, read);
                sent += read;
            }
            let secs = now / SEC;
            assert!(sent <= rate * (secs + 2) + read, "{sent} bytes by {now} ns");
        }
        assert!(sent >= rate * 10 - read, "{sent} bytes in 10 s at {rate} B/s");
        assert!(sent <= rate * 10 + read);
    }

    #[test]
    fn bytes_forwarded_under_another_policy_leave_no_bandwidth_debt() {
        let mut g = ForwardGate::new(0);
        assert!(g.open(&ForwardPolicy::Immediate, SEC, 0));
        g.spent(&ForwardPolicy::Immediate, 64 << 20);
        let p = ForwardPolicy::Bandwidth {
            bytes_per_sec: 1_000_000,
        };
        assert!(
            g.open(&p, SEC + MS, 0),
            "a switch to a cap starts with the cap's own bucket"
        );
    }
}
