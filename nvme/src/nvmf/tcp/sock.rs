//! The connection's socket I/O, with as few copies of the payload as the kernel allows
//! (`docs/nvme-tcp.md`, "Copies per byte"):
//!
//! - **Receive**: headers and small payloads go through the receive buffer and the
//!   [`PduReceiver`](crate::tcp::pdu::PduReceiver). Once the receiver is inside the data
//!   of a PDU whose bytes go to a request's buffer (in-capsule data, H2CData), the rest of
//!   that data is read from the socket straight into the request's buffer; the receiver
//!   only accounts for it (digest, end of PDU). One copy, the kernel's.
//! - **Send**: PDU headers, responses and small read data are encoded into the send buffer
//!   `tx`. A large read's data is not copied there: its buffer is pinned in [`TxData`] and
//!   placed between the bytes of `tx` by position, and the writer hands the kernel both
//!   with one `writev`. The buffer goes back to its pool once the kernel has taken its last
//!   byte. One copy, the kernel's.
//!
//! TLS channels copy as before (the record layer encrypts from a contiguous buffer).

use super::rx::RxSink;
use super::{Conn, TX_INITIAL_BYTES};
use engine::buf::DmaBuf;
use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice, Read, Write};

/// Read data at least this long is sent from its own buffer rather than copied into `tx`.
pub(super) const ZERO_COPY_MIN_BYTES: usize = 16 * 1024;
/// Data still to come in a PDU at least this long is read straight into its request buffer.
const DIRECT_READ_MIN_BYTES: u32 = 4096;
/// Buffers pinned for sending at once per connection; beyond, data is copied into `tx`.
const PINS: usize = 128;
/// Data placements queued at once per connection (a pinned read has one per C2HData PDU).
const REFS: usize = 256;
/// Slices per `writev`.
const IOVS: usize = 64;

/// A run of pinned data placed before byte `at` of `tx` (after every byte before it).
#[derive(Debug, Clone, Copy)]
struct TxRef {
    at: usize,
    pin: u16,
    off: u32,
    len: u32,
    /// The pin's last placement: the buffer is released once it is written.
    last: bool,
}

/// Read data waiting in its own buffer to be written between the bytes of the send buffer.
/// Sized when the connection is made; nothing here allocates afterwards.
pub(super) struct TxData {
    refs: VecDeque<TxRef>,
    /// Bytes of the front placement already written.
    done: u32,
    pins: Vec<Option<DmaBuf>>,
    pin_free: Vec<u16>,
}

impl TxData {
    pub(super) fn new() -> TxData {
        TxData {
            refs: VecDeque::with_capacity(REFS),
            done: 0,
            pins: (0..PINS).map(|_| None).collect(),
            pin_free: (0..PINS as u16).rev().collect(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// Pins `buf` for `chunks` placements, or hands it back when there is no room.
    pub(super) fn pin(&mut self, buf: DmaBuf, chunks: usize) -> Result<u16, DmaBuf> {
        if chunks == 0 || self.refs.len() + chunks > self.refs.capacity() {
            return Err(buf);
        }
        match self.pin_free.pop() {
            Some(p) => {
                self.pins[usize::from(p)] = Some(buf);
                Ok(p)
            }
            None => Err(buf),
        }
    }

    /// The pinned buffer `pin` (its data is read to place it).
    pub(super) fn pinned(&self, pin: u16) -> &[u8] {
        self.pins[usize::from(pin)].as_deref().unwrap_or(&[])
    }

    /// Places `len` bytes at `off` of pinned buffer `pin` before byte `at` of `tx`
    /// (`at` at least that of every earlier placement). Room was checked by `pin`.
    pub(super) fn place(&mut self, at: usize, pin: u16, off: u32, len: u32, last: bool) {
        debug_assert!(self.refs.back().is_none_or(|r| r.at <= at));
        self.refs.push_back(TxRef {
            at,
            pin,
            off,
            len,
            last,
        });
    }

    /// Drops everything queued (the connection is going away); buffers go back to pools.
    pub(super) fn clear(&mut self) {
        while let Some(r) = self.refs.pop_front() {
            if r.last {
                self.unpin(r.pin);
            }
        }
        self.done = 0;
    }

    fn unpin(&mut self, pin: u16) {
        self.pins[usize::from(pin)] = None;
        self.pin_free.push(pin);
    }

    /// Fills `iov` with what is to be written next: `tx[pos..]` with the placements
    /// interleaved; returns how many slices.
    fn gather<'a>(&'a self, tx: &'a [u8], pos: usize, iov: &mut [IoSlice<'a>; IOVS]) -> usize {
        let mut n = 0;
        let mut cur = pos;
        let mut done = self.done as usize;
        for r in &self.refs {
            if n + 2 > IOVS {
                return n;
            }
            if r.at > cur {
                iov[n] = IoSlice::new(&tx[cur..r.at]);
                n += 1;
                cur = r.at;
            }
            let data = self.pinned(r.pin);
            let (s, e) = (r.off as usize + done, (r.off + r.len) as usize);
            iov[n] = IoSlice::new(&data[s.min(data.len())..e.min(data.len())]);
            n += 1;
            done = 0;
        }
        if cur < tx.len() && n < IOVS {
            iov[n] = IoSlice::new(&tx[cur..]);
            n += 1;
        }
        n
    }

    /// Accounts for `n` bytes written from `tx[*pos..]` and the placements, in `gather`
    /// order, releasing buffers whose last byte went.
    fn advance(&mut self, tx_len: usize, pos: &mut usize, mut n: usize) {
        while n > 0 {
            let end = self.refs.front().map_or(tx_len, |r| r.at);
            if *pos < end {
                let k = n.min(end - *pos);
                *pos += k;
                n -= k;
                continue;
            }
            let Some(r) = self.refs.front().copied() else { break };
            let k = n.min((r.len - self.done) as usize);
            self.done += k as u32;
            n -= k;
            if self.done == r.len {
                self.refs.pop_front();
                self.done = 0;
                if r.last {
                    self.unpin(r.pin);
                }
            }
        }
    }

    /// `tx` lost its first `by` bytes (compaction): placements move with it.
    fn shift(&mut self, by: usize) {
        for r in self.refs.iter_mut() {
            r.at -= by;
        }
    }
}

/// What one read of the receive loop got.
#[derive(Debug, Clone, Copy)]
pub(super) struct Got {
    /// Bytes read from the socket (0: the peer closed).
    pub(super) read: usize,
    /// How many of them are in `rx_buf` for the PDU receiver (0 when they went straight
    /// into a request's buffer: the receiver still runs, to end the PDU).
    pub(super) buffered: usize,
    /// The read filled what it was given: more may be waiting.
    pub(super) more: bool,
}

impl Conn {
    /// Reads from the socket into `rx_buf`, through TLS on a secure channel.
    pub(super) fn sock_read(&mut self) -> std::io::Result<usize> {
        match &mut self.tls {
            None => self.sock.read(&mut self.rx_buf),
            Some(tls) => {
                let t = &self.target;
                tls.read(&mut self.sock, &mut self.rx_buf, &mut |id| t.tls_psk_for(id))
            }
        }
    }

    /// Where the data still to come in the current PDU can be read straight into: the
    /// request slot, the offset in its buffer and how many bytes. None when it goes through
    /// the receive buffer (TLS, short, discarded, or no buffer).
    fn direct_read_target(&self) -> Option<(usize, usize, usize)> {
        if self.tls.is_some() {
            return None;
        }
        let (RxSink::Capsule { slot, off } | RxSink::H2C { slot, off }) = self.sink else {
            return None;
        };
        let rem = self.rx.data_remaining();
        if rem < DIRECT_READ_MIN_BYTES {
            return None;
        }
        let b = self.reqs[slot].buf.as_deref()?;
        let (o, n) = (off as usize, rem as usize);
        (o + n <= b.len()).then_some((slot, o, n))
    }

    /// One socket read for the receive loop: straight into a request's buffer when the
    /// receiver is inside such data (see the module comment), else into `rx_buf`.
    pub(super) fn read_some(&mut self) -> std::io::Result<Got> {
        if let Some((slot, off, len)) = self.direct_read_target() {
            if let Some(b) = self.reqs[slot].buf.as_deref_mut() {
                let dst = &mut b[off..off + len];
                let n = self.sock.read(dst)?;
                if n > 0 {
                    self.rx.consume_data(&dst[..n]);
                    if let RxSink::Capsule { off, .. } | RxSink::H2C { off, .. } = &mut self.sink {
                        *off += n as u32;
                    }
                }
                return Ok(Got {
                    read: n,
                    buffered: 0,
                    more: n == len,
                });
            }
        }
        let n = self.sock_read()?;
        Ok(Got {
            read: n,
            buffered: n,
            more: n == self.rx_buf.len(),
        })
    }

    /// Queues the first `bytes` of the read data of `slot` in C2HData PDUs of at most
    /// `pdu_bytes` each, without copying it: the buffer leaves the slot and is pinned until
    /// written. Returns false (nothing queued) when it has to be copied instead.
    pub(super) fn send_c2h_pinned(&mut self, slot: usize, bytes: usize, pdu_bytes: usize, success: bool) -> bool {
        if self.tls.is_some() || bytes < ZERO_COPY_MIN_BYTES {
            return false;
        }
        let Some(buf) = self.reqs[slot].buf.take() else {
            return false;
        };
        let chunks = bytes.div_ceil(pdu_bytes);
        let pin = match self.tx_data.pin(buf, chunks) {
            Ok(p) => p,
            Err(buf) => {
                self.reqs[slot].buf = Some(buf);
                return false;
            }
        };
        let cid = self.reqs[slot].sqe.cid;
        let mut off = 0;
        while off < bytes {
            let len = pdu_bytes.min(bytes - off);
            let last = off + len == bytes;
            let data = &self.tx_data.pinned(pin)[off..off + len];
            let at = crate::tcp::pdu::encode_c2h_data_header(
                &mut self.tx,
                cid,
                off as u32,
                data,
                last,
                success && last,
                self.dg,
            );
            self.tx_data.place(at, pin, off as u32, len as u32, last);
            off += len;
        }
        true
    }

    /// Writes queued bytes from `tx_pos` and the pinned data between them; through TLS on
    /// a secure channel (which never pins).
    fn sock_write(&mut self) -> std::io::Result<usize> {
        match &mut self.tls {
            None if self.tx_data.is_empty() => self.sock.write(&self.tx[self.tx_pos..]),
            None => {
                let mut iov = [IoSlice::new(&[]); IOVS];
                let n = self.tx_data.gather(&self.tx, self.tx_pos, &mut iov);
                self.sock.write_vectored(&iov[..n])
            }
            Some(tls) => tls.write(&mut self.sock, &self.tx[self.tx_pos..]),
        }
    }

    /// Drops everything queued for sending (the socket failed).
    fn drop_tx(&mut self) {
        self.tx.clear();
        self.tx_pos = 0;
        self.tx_data.clear();
    }

    /// Writes queued bytes; returns whether any were written.
    pub(super) fn flush(&mut self) -> bool {
        let mut wrote = false;
        if let Some(tls) = &mut self.tls {
            match tls.flush_out(&mut self.sock) {
                Ok(w) => wrote = w,
                Err(e) => {
                    log::info!("nvmf: write to {} failed: {e}", self.peer);
                    self.drop_tx();
                    self.close("socket error");
                    return false;
                }
            }
        }
        while self.tx_pos < self.tx.len() || !self.tx_data.is_empty() {
            match self.sock_write() {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_data.advance(self.tx.len(), &mut self.tx_pos, n);
                    wrote = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::info!("nvmf: write to {} failed: {e}", self.peer);
                    self.drop_tx();
                    self.close("socket error");
                    return wrote;
                }
            }
        }
        if self.tx_pos == self.tx.len() && self.tx_data.is_empty() {
            self.tx.clear();
            self.tx_pos = 0;
        } else if self.tx_pos > TX_INITIAL_BYTES {
            self.tx.drain(..self.tx_pos);
            self.tx_data.shift(self.tx_pos);
            self.tx_pos = 0;
        }
        wrote
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(fill: impl Fn(usize) -> u8, len: usize) -> DmaBuf {
        let mut b = DmaBuf::alloc(len);
        b.set_len(len);
        for (i, x) in b.iter_mut().enumerate() {
            *x = fill(i);
        }
        b
    }

    /// Writes everything through `gather`/`advance` with writes of at most `step` bytes.
    fn drain(t: &mut TxData, tx: &[u8], step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < tx.len() || !t.is_empty() {
            let mut iov = [IoSlice::new(&[]); IOVS];
            let n = t.gather(tx, pos, &mut iov);
            let mut k = 0;
            for s in &iov[..n] {
                let take = (step - k).min(s.len());
                out.extend_from_slice(&s[..take]);
                k += take;
                if k == step {
                    break;
                }
            }
            t.advance(tx.len(), &mut pos, k);
        }
        out
    }

    #[test]
    fn placements_interleave_with_the_send_buffer_in_order_under_any_write_size() {
        for step in [1, 7, 100, 4096, 1 << 20] {
            let mut t = TxData::new();
            let mut tx = b"H1".to_vec();
            let p = t.pin(buf(|i| i as u8, 300), 2).unwrap();
            t.place(tx.len(), p, 0, 200, false);
            tx.extend_from_slice(b"H2");
            t.place(tx.len(), p, 200, 100, true);
            tx.extend_from_slice(b"RESP");
            let q = t.pin(buf(|_| 0xab, 50), 1).unwrap();
            t.place(tx.len(), q, 0, 50, true);
            let out = drain(&mut t, &tx, step);
            let mut want = b"H1".to_vec();
            want.extend((0..200).map(|i| i as u8));
            want.extend_from_slice(b"H2");
            want.extend((200..300).map(|i| i as u8));
            want.extend_from_slice(b"RESP");
            want.extend([0xab; 50]);
            assert_eq!(out, want, "write size {step}");
            assert_eq!(t.pin_free.len(), PINS, "every pin released");
        }
    }

    #[test]
    fn pins_run_out_and_hand_the_buffer_back() {
        let mut t = TxData::new();
        for _ in 0..PINS {
            t.pin(buf(|_| 0, 8), 1).unwrap();
        }
        let b = t.pin(buf(|_| 7, 8), 1).unwrap_err();
        assert_eq!(b[0], 7);
        t.clear();
        assert!(t.pin(buf(|_| 0, 8), REFS + 1).is_err(), "more placements than room");
    }

    #[test]
    fn compaction_moves_placements_with_the_bytes() {
        let mut t = TxData::new();
        let mut tx = vec![1u8; 10];
        let p = t.pin(buf(|_| 9, 4), 1).unwrap();
        t.place(10, p, 0, 4, true);
        tx.extend_from_slice(&[2u8; 3]);
        let mut pos = 0;
        t.advance(tx.len(), &mut pos, 6);
        tx.drain(..pos);
        t.shift(pos);
        let out = drain(&mut t, &tx, 5);
        assert_eq!(out, [1, 1, 1, 1, 9, 9, 9, 9, 2, 2, 2]);
    }
}
