//! In-process implementation of [`Connection`]: two bounded lock-free rings per direction,
//! with fault injection, for deterministic tests of primary, relay and standby logic.
//!
//! Where it sits: replaces the TCP connection in tests that run several roles in one process
//! (one thread each, or all on one thread polled in turn). A sent [`OutFrame`] moves through
//! a `crossbeam_queue::ArrayQueue` to the peer; the peer's `poll_recv` gathers its header and
//! data into a preallocated scratch buffer, runs `wire::parse` on it exactly as the TCP
//! receiver would, delivers it, and pushes the buffers back through the completion ring: so
//! the send completion fires once the peer consumed the frame (as an RDMA send completion
//! fires once the peer's receive took it). A sender holds at most `capacity` frames in flight
//! (queued or awaiting completion): beyond it `send` returns `Full`, so neither ring can
//! overflow.

use core::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use crate::transport::{ConnState, ConnStats, Connection, OutFrame, SendCompletion, SendError, TransportError};
use crate::wire::{self, Frame, HeaderBuf, FRAME_BYTES_MAX};

/// Most frames delivered per `poll_recv`.
pub const RECV_FRAMES_PER_POLL_MAX: usize = 64;

/// Faults a test can inject into one direction of a pair.
#[derive(Default)]
pub struct DirectionFaults {
    /// While set, the receiver delivers nothing (a stalled network or peer).
    held: AtomicBool,
    /// The receiver skips this many of its next polls (a delay counted in polls).
    delay_polls: AtomicU32,
    /// Corrupt one byte of the next frame delivered (at this offset from its end, + 1).
    corrupt_next_from_end: AtomicUsize,
}

impl DirectionFaults {
    /// Holds (true) or releases (false) delivery in this direction.
    pub fn hold(&self, held: bool) {
        self.held.store(held, Ordering::Release);
    }
    /// Delays delivery by `polls` receiver polls.
    pub fn delay_polls(&self, polls: u32) {
        self.delay_polls.store(polls, Ordering::Release);
    }
    /// Flips a bit of the next frame's byte at `from_end` bytes before its end (0 = last byte),
    /// after the sender computed its CRC: the receiver must reject it.
    pub fn corrupt_next(&self, from_end: usize) {
        self.corrupt_next_from_end.store(from_end + 1, Ordering::Release);
    }
}

/// The faults of a pair: each direction's, and dropping the whole connection.
#[derive(Default)]
pub struct Faults {
    dropped: AtomicBool,
    /// Faults of frames from end A to end B.
    pub a_to_b: DirectionFaults,
    /// Faults of frames from end B to end A.
    pub b_to_a: DirectionFaults,
}

impl Faults {
    /// Drops the connection: both ends fail with `InjectedDrop` at their next poll, frames in
    /// flight come back unsent.
    pub fn drop_connection(&self) {
        self.dropped.store(true, Ordering::Release);
    }
}

/// One direction: frames travelling, and completions travelling back.
struct Pipe<B> {
    frames: ArrayQueue<OutFrame<B>>,
    done: ArrayQueue<SendCompletion<B>>,
    /// Set when the sending end closes or is dropped (the receiver sees PeerClosed once
    /// `frames` is empty). Release on close, Acquire in the receiver: frames pushed before the
    /// close are seen before it.
    sender_closed: AtomicBool,
}

impl<B> Pipe<B> {
    fn new(cap: usize) -> Self {
        Self {
            frames: ArrayQueue::new(cap),
            done: ArrayQueue::new(cap),
            sender_closed: AtomicBool::new(false),
        }
    }
}

/// One end of an in-process connection. Owned by one thread (it is `Send`, not shared).
pub struct InprocConnection<B> {
    tx: Arc<Pipe<B>>,
    rx: Arc<Pipe<B>>,
    faults: Arc<Faults>,
    is_a: bool,
    cap: usize,
    in_flight: usize,
    state: ConnState,
    error_reported: bool,
    scratch: Box<[u8]>,
    stats: ConnStats,
}

/// Makes a connected pair (end A, end B) whose sends hold at most `capacity` frames in
/// flight, and the handle to inject faults. Setup path: allocates the rings and two
/// [`FRAME_BYTES_MAX`] scratch buffers.
pub fn pair<B: Deref<Target = [u8]>>(capacity: usize) -> (InprocConnection<B>, InprocConnection<B>, Arc<Faults>) {
    let cap = capacity.max(1);
    let ab = Arc::new(Pipe::new(cap));
    let ba = Arc::new(Pipe::new(cap));
    let faults = Arc::new(Faults::default());
    let mk = |tx: &Arc<Pipe<B>>, rx: &Arc<Pipe<B>>, is_a| InprocConnection {
        tx: tx.clone(),
        rx: rx.clone(),
        faults: faults.clone(),
        is_a,
        cap,
        in_flight: 0,
        state: ConnState::Open,
        error_reported: false,
        scratch: vec![0u8; FRAME_BYTES_MAX].into_boxed_slice(),
        stats: ConnStats::default(),
    };
    let a = mk(&ab, &ba, true);
    let b = mk(&ba, &ab, false);
    (a, b, faults)
}

impl<B> InprocConnection<B> {
    fn rx_faults(&self) -> &DirectionFaults {
        if self.is_a {
            &self.faults.b_to_a
        } else {
            &self.faults.a_to_b
        }
    }
    fn dropped(&self) -> bool {
        self.faults.dropped.load(Ordering::Acquire)
    }
    /// Fails the connection with `e` once; later calls get `Closed`.
    fn report(&mut self, e: TransportError) -> TransportError {
        if self.state == ConnState::Open {
            self.state = ConnState::Failed;
        }
        self.tx.sender_closed.store(true, Ordering::Release);
        if self.error_reported {
            TransportError::Closed
        } else {
            self.error_reported = true;
            e
        }
    }
}

impl<B> Drop for InprocConnection<B> {
    fn drop(&mut self) {
        self.tx.sender_closed.store(true, Ordering::Release);
    }
}

impl<B: Deref<Target = [u8]>> Connection<B> for InprocConnection<B> {
    fn send(&mut self, frame: OutFrame<B>) -> Result<(), SendError<B>> {
        if self.state != ConnState::Open || self.dropped() {
            return Err(SendError::Closed(frame));
        }
        if !frame.is_consistent() {
            return Err(SendError::Inconsistent(frame));
        }
        if self.in_flight >= self.cap {
            self.stats.send_full += 1;
            return Err(SendError::Full(frame));
        }
        self.stats.send_calls += 1;
        // Cannot be full: at most `cap` frames are in flight.
        match self.tx.frames.push(frame) {
            Ok(()) => {
                self.in_flight += 1;
                Ok(())
            }
            Err(f) => Err(SendError::Full(f)),
        }
    }

    fn send_capacity(&self) -> usize {
        if self.state != ConnState::Open {
            return 0;
        }
        self.cap - self.in_flight
    }

    fn poll_send(&mut self, done: &mut dyn FnMut(SendCompletion<B>)) -> Result<usize, TransportError> {
        let mut n = 0;
        while let Some(c) = self.tx.done.pop() {
            self.in_flight -= 1;
            if c.sent {
                self.stats.frames_sent += 1;
            }
            done(c);
            n += 1;
        }
        let peer_closed = self.rx.sender_closed.load(Ordering::Acquire);
        if self.state != ConnState::Open || self.dropped() || peer_closed {
            // Take back what the peer will never consume.
            while let Some(f) = self.tx.frames.pop() {
                self.in_flight -= 1;
                done(SendCompletion {
                    user_data: f.user_data,
                    data: f.data,
                    sent: false,
                });
            }
            let e = if self.dropped() {
                TransportError::InjectedDrop
            } else if self.state == ConnState::Open {
                TransportError::PeerClosed
            } else {
                TransportError::Closed
            };
            return Err(self.report(e));
        }
        Ok(n)
    }

    fn poll_recv(&mut self, on_frame: &mut dyn FnMut(Frame<'_>)) -> Result<usize, TransportError> {
        if self.state != ConnState::Open {
            return Err(self.report(TransportError::Closed));
        }
        if self.dropped() {
            return Err(self.report(TransportError::InjectedDrop));
        }
        let faults = if self.is_a {
            &self.faults.b_to_a
        } else {
            &self.faults.a_to_b
        };
        if faults.held.load(Ordering::Acquire) {
            return Ok(0);
        }
        let delay = faults.delay_polls.load(Ordering::Acquire);
        if delay > 0 {
            faults.delay_polls.store(delay - 1, Ordering::Release);
            return Ok(0);
        }
        let mut delivered = 0;
        while delivered < RECV_FRAMES_PER_POLL_MAX {
            self.stats.recv_calls += 1;
            let closed = self.rx.sender_closed.load(Ordering::Acquire);
            let Some(f) = self.rx.frames.pop() else {
                // Frames delivered in this poll are reported first; the close at the next poll.
                if closed && delivered == 0 {
                    return Err(self.report(TransportError::PeerClosed));
                }
                break;
            };
            // Gather into the scratch buffer: the receiver sees the bytes TCP would carry.
            let len = f.wire_len().min(self.scratch.len());
            let mut at = 0;
            for seg in core::iter::once(f.header.as_bytes()).chain(f.data.iter().map(|d| &**d)) {
                let n = seg.len().min(len - at);
                self.scratch[at..at + n].copy_from_slice(&seg[..n]);
                at += n;
            }
            let corrupt = self.rx_faults().corrupt_next_from_end.swap(0, Ordering::AcqRel);
            if corrupt > 0 && corrupt <= len {
                self.scratch[len - corrupt] ^= 0x01;
            }
            let result = match wire::parse(&self.scratch[..len]) {
                Ok(frame) => {
                    on_frame(frame);
                    Ok(())
                }
                Err(e) => Err(e),
            };
            let ok = result.is_ok();
            // Cannot be full: the sender keeps at most `cap` frames in flight.
            let _ = self.rx.done.push(SendCompletion {
                user_data: f.user_data,
                data: f.data,
                sent: ok,
            });
            if let Err(e) = result {
                return Err(self.report(e.into()));
            }
            delivered += 1;
            self.stats.frames_received += 1;
            self.stats.bytes_received += len as u64;
        }
        Ok(delivered)
    }

    fn state(&self) -> ConnState {
        self.state
    }

    fn close(&mut self) {
        self.state = ConnState::Closed;
        self.tx.sender_closed.store(true, Ordering::Release);
    }

    fn stats(&self) -> ConnStats {
        self.stats
    }

    fn send_last(&mut self, header: HeaderBuf) -> bool {
        let mut sent = false;
        if !self.dropped() && self.in_flight < self.cap {
            sent = self.tx.frames.push(OutFrame::control(header, u64::MAX)).is_ok();
            if sent {
                self.in_flight += 1;
            }
        }
        self.close();
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_heartbeat, BatchEncoder, Heartbeat, WireError};

    type Conn = InprocConnection<Vec<u8>>;

    fn hb(n: u64) -> OutFrame<Vec<u8>> {
        OutFrame::control(
            encode_heartbeat(&Heartbeat {
                nonce: n,
                time_ns: 0,
                is_reply: false,
            }),
            n,
        )
    }

    fn write(lsn: u64) -> OutFrame<Vec<u8>> {
        let data = vec![lsn as u8; 512];
        let mut e = BatchEncoder::ops(1, 512);
        e.write(lsn, 0, 1, 512).unwrap();
        let mut f = OutFrame::control(e.finish(&[&data]).unwrap(), lsn);
        f.data.push(data);
        f
    }

    fn nonces(c: &mut Conn) -> Result<Vec<u64>, TransportError> {
        let mut v = Vec::new();
        c.poll_recv(&mut |f| match f {
            Frame::Heartbeat(h) => v.push(h.nonce),
            Frame::Ops(b) => v.push(b.lsn_first().unwrap_or(0)),
            _ => {}
        })?;
        Ok(v)
    }

    #[test]
    fn frames_arrive_in_order_and_buffers_come_back() {
        let (mut a, mut b, _) = pair::<Vec<u8>>(4);
        a.send(write(1)).unwrap();
        a.send(hb(2)).unwrap();
        assert_eq!(nonces(&mut b).unwrap(), vec![1, 2]);
        let mut back = Vec::new();
        a.poll_send(&mut |c| back.push((c.user_data, c.sent, c.data.len())))
            .unwrap();
        assert_eq!(back, vec![(1, true, 1), (2, true, 0)]);
        assert_eq!(a.send_capacity(), 4);
    }

    #[test]
    fn in_flight_bound_is_back_pressure() {
        let (mut a, mut b, _) = pair::<Vec<u8>>(2);
        a.send(hb(1)).unwrap();
        a.send(hb(2)).unwrap();
        assert!(matches!(a.send(hb(3)), Err(SendError::Full(f)) if f.user_data == 3));
        // Consumed but not yet reaped by the sender: still in flight.
        nonces(&mut b).unwrap();
        assert!(matches!(a.send(hb(3)), Err(SendError::Full(_))));
        a.poll_send(&mut |_| {}).unwrap();
        a.send(hb(3)).unwrap();
        assert_eq!(a.stats().send_full, 2);
    }

    #[test]
    fn corruption_is_caught_by_the_crc() {
        let (mut a, mut b, faults) = pair::<Vec<u8>>(4);
        faults.a_to_b.corrupt_next(10);
        a.send(write(1)).unwrap();
        assert!(matches!(
            nonces(&mut b),
            Err(TransportError::Wire(WireError::BodyCrcMismatch { .. }))
        ));
        let mut sent = None;
        let r = a.poll_send(&mut |c| sent = Some(c.sent));
        assert_eq!(sent, Some(false));
        assert!(matches!(r, Err(TransportError::PeerClosed)));
    }

    #[test]
    fn hold_and_delay_then_deliver() {
        let (mut a, mut b, faults) = pair::<Vec<u8>>(4);
        faults.a_to_b.hold(true);
        a.send(hb(1)).unwrap();
        assert!(nonces(&mut b).unwrap().is_empty());
        faults.a_to_b.hold(false);
        faults.a_to_b.delay_polls(2);
        assert!(nonces(&mut b).unwrap().is_empty());
        assert!(nonces(&mut b).unwrap().is_empty());
        assert_eq!(nonces(&mut b).unwrap(), vec![1]);
    }

    #[test]
    fn dropped_connection_fails_both_ends_and_returns_buffers() {
        let (mut a, mut b, faults) = pair::<Vec<u8>>(4);
        a.send(write(1)).unwrap();
        a.send(write(2)).unwrap();
        faults.drop_connection();
        assert!(matches!(nonces(&mut b), Err(TransportError::InjectedDrop)));
        let mut back = Vec::new();
        let r = a.poll_send(&mut |c| back.push((c.user_data, c.sent)));
        assert!(matches!(r, Err(TransportError::InjectedDrop)));
        assert_eq!(back, vec![(1, false), (2, false)]);
        assert!(matches!(a.send(hb(3)), Err(SendError::Closed(_))));
        assert_eq!(a.state(), ConnState::Failed);
    }

    #[test]
    fn peer_drop_is_peer_closed_after_queued_frames() {
        let (mut a, mut b, _) = pair::<Vec<u8>>(4);
        a.send(hb(1)).unwrap();
        drop(a);
        assert_eq!(nonces(&mut b).unwrap(), vec![1]);
        assert!(matches!(nonces(&mut b), Err(TransportError::PeerClosed)));
    }

    #[test]
    fn ends_run_on_two_threads() {
        let (mut a, mut b, _) = pair::<Vec<u8>>(8);
        let n = 2_000u64;
        let t = std::thread::spawn(move || {
            let mut got = Vec::with_capacity(n as usize);
            while (got.len() as u64) < n {
                got.extend(nonces(&mut b).unwrap());
            }
            got
        });
        let mut next = 1;
        while next <= n {
            a.poll_send(&mut |_| {}).unwrap();
            if a.send(hb(next)).is_ok() {
                next += 1;
            }
        }
        let got = t.join().unwrap();
        assert_eq!(got, (1..=n).collect::<Vec<_>>());
    }
}
