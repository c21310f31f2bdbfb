//! The direct heartbeat a replicated volume sends to its standby host (`docs/failover.md`).
//!
//! Where it sits: one small management-plane thread per replicated volume that has
//! `VolumeConfig::standby_heartbeat` set. Every `interval_ms` it asks its source for the
//! volume's state and sends one UDP datagram ([`rdma_transport::liveness`]) to the standby
//! host. It never touches a reactor: the source reads the status snapshot the link reactor
//! publishes every 10 ms (the reactor only ever `try_lock`s it), and answers `None` when
//! that snapshot is stale, so a stuck link reactor falls silent like a dead process would.
//!
//! Why UDP: a heartbeat is worth something only when it is fresh. A lost datagram is
//! replaced by the next one an interval later; TCP would add connection state, head-of-line
//! blocking behind a dead peer and retransmissions of stale news, and a blocked `send`
//! that a liveness signal must never have.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdma_transport::liveness::{self, PrimaryHeartbeat};

/// Default interval between heartbeats.
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 100;

/// What one heartbeat reports (the source's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatState {
    pub generation: u64,
    pub last_lsn: u64,
    pub epoch: u64,
}

/// Counters of a sender (tests, status).
#[derive(Debug, Default)]
pub struct SenderStats {
    /// Datagrams sent.
    pub sent: AtomicU64,
    /// Intervals skipped because the source had nothing (stale or stopped).
    pub skipped: AtomicU64,
    /// `send_to` failures.
    pub errors: AtomicU64,
}

/// A running heartbeat sender; stops (and joins) on [`HeartbeatSender::stop`] or drop.
pub struct HeartbeatSender {
    stop: Arc<AtomicBool>,
    stats: Arc<SenderStats>,
    thread: Option<JoinHandle<()>>,
}

impl HeartbeatSender {
    /// Starts sending heartbeats for `volume` to `target` every `interval_ms`. `source` is
    /// called once per interval on the sender's thread; `None` skips that heartbeat.
    pub fn start(
        volume: &str,
        target: SocketAddr,
        interval_ms: u64,
        source: impl Fn() -> Option<HeartbeatState> + Send + 'static,
    ) -> std::io::Result<HeartbeatSender> {
        if volume.is_empty() || volume.len() > rdma_transport::wire::VOLUME_NAME_BYTES_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("volume name {volume:?} must be 1..=64 bytes"),
            ));
        }
        let interval_ms = interval_ms.clamp(1, u32::MAX as u64);
        let bind: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let sock = UdpSocket::bind(bind)?;
        sock.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(SenderStats::default());
        let (st, ss, name) = (stop.clone(), stats.clone(), volume.to_string());
        let thread = std::thread::Builder::new()
            .name(format!("hb_{volume}"))
            .spawn(move || run(&name, &sock, target, interval_ms, &source, &st, &ss))?;
        Ok(HeartbeatSender {
            stop,
            stats,
            thread: Some(thread),
        })
    }

    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// Stops the thread and waits for it (at most one interval slice).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HeartbeatSender {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn run(
    volume: &str,
    sock: &UdpSocket,
    target: SocketAddr,
    interval_ms: u64,
    source: &dyn Fn() -> Option<HeartbeatState>,
    stop: &AtomicBool,
    stats: &SenderStats,
) {
    let interval = Duration::from_millis(interval_ms);
    let slice = interval.min(Duration::from_millis(20));
    let mut buf = Vec::with_capacity(liveness::HEARTBEAT_BYTES_MAX);
    let mut seq = 0u64;
    let mut next = Instant::now();
    let mut warned = false;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(slice));
            continue;
        }
        next += interval;
        if next < now {
            // Fell behind (descheduled): do not send a burst to catch up.
            next = now + interval;
        }
        let Some(s) = source() else {
            stats.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        seq += 1;
        let hb = PrimaryHeartbeat {
            volume,
            interval_ms: interval_ms as u32,
            seq,
            generation: s.generation,
            last_lsn: s.last_lsn,
            epoch: s.epoch,
            time_ns: wall_ns(),
        };
        if liveness::encode(&hb, &mut buf).is_err() {
            return;
        }
        match sock.send_to(&buf, target) {
            Ok(_) => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                warned = false;
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                if !warned {
                    log::warn!("volume {volume}: heartbeat to standby host {target}: {e}");
                    warned = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn sends_decodable_heartbeats_and_skips_when_source_is_silent() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let silent = Arc::new(AtomicBool::new(false));
        let s2 = silent.clone();
        let mut tx = HeartbeatSender::start("volA", rx.local_addr().unwrap(), 5, move || {
            (!s2.load(Ordering::Acquire)).then_some(HeartbeatState {
                generation: 4,
                last_lsn: 17,
                epoch: 2,
            })
        })
        .unwrap();
        let mut buf = [0u8; 256];
        let mut seqs = Vec::new();
        for _ in 0..3 {
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            let hb = liveness::decode(&buf[..n]).unwrap();
            assert_eq!(hb.volume, "volA");
            assert_eq!((hb.generation, hb.last_lsn, hb.epoch, hb.interval_ms), (4, 17, 2, 5));
            seqs.push(hb.seq);
        }
        assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
        silent.store(true, Ordering::Release);
        // Once silent, skipped grows while sent stays put (bounded wait).
        let sent = tx.stats().sent.load(Ordering::Relaxed);
        let mut ok = false;
        for _ in 0..500 {
            std::thread::sleep(Duration::from_millis(2));
            if tx.stats().skipped.load(Ordering::Relaxed) >= 3 {
                ok = true;
                break;
            }
        }
        assert!(ok, "source silence was not noticed");
        assert!(tx.stats().sent.load(Ordering::Relaxed) <= sent + 1);
        tx.stop();
        assert!(HeartbeatSender::start("", rx.local_addr().unwrap(), 5, || None).is_err());
    }
}
