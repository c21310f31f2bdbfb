//! One NVMe/TCP queue pair of the host (initiator): a socket, a PDU receiver and a table of
//! commands in flight. [`super::Qpair`] wraps it (or the RDMA one) for the rest of the host.
//!
//! Set-up (`connect`) blocks; it is management work. After it the queue pair never blocks:
//! [`Qpair::submit`] queues a command capsule (with in-capsule data when it fits),
//! [`Qpair::poll`] writes what is queued, reads what arrived, answers R2Ts with H2CData, copies
//! C2HData into the command's buffer and reports completions. A queue pair is owned by one
//! thread (it may be a reactor) and is not shared. Buffers move in with `submit` and come back
//! in the [`HostCompletion`].

use super::qpair::{connect_fabrics, sync_on, Cids, Data, HostCompletion, Link, QueueSpec};
use super::{HostError, HostOpts};
use crate::spec::cmd::sgl_type;
use crate::spec::{Cqe, Sgl, Sqe, Status};
use crate::tcp::pdu::{self, PduKind, PduReceiver, RxEvent, RxLimits, Side, TxDigests};
use engine::buf::DmaBuf;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Bytes read from the socket per call.
const RX_BUF_BYTES: usize = 256 * 1024;
/// Largest C2HData payload accepted, bytes.
const C2H_DATA_MAX_BYTES: u32 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    None,
    ToCtrl,
    FromCtrl,
}

/// Lifecycle of one command slot (the slot index is the CID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Capsule queued or sent; waiting for R2T / C2HData / response.
    InFlight {
        c2h_received: u32,
    },
}

struct Slot {
    state: SlotState,
    dir: Dir,
    user: u64,
    buf: Option<DmaBuf>,
    /// Data digest failed on C2HData: report a transport error even if the target succeeded.
    data_error: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    None,
    C2H { slot: usize, off: u32, success: bool },
}

/// One queue pair. See the module docs.
pub struct TcpQpair {
    sock: TcpStream,
    peer: SocketAddr,
    rx: PduReceiver,
    rx_buf: Box<[u8]>,
    tx: Vec<u8>,
    tx_pos: usize,
    dg: TxDigests,
    pub qid: u16,
    /// Controller ID this queue belongs to.
    pub cntlid: u16,
    maxh2cdata: u32,
    h2c_chunk: u32,
    in_capsule_max: u32,
    slots: Vec<Slot>,
    sink: Sink,
    pub(crate) cids: Cids,
}

impl TcpQpair {
    /// Opens a TCP connection, runs ICReq/ICResp and Fabrics Connect for queue `qid` with
    /// `entries` slots. `cntlid` is 0xFFFF for an admin queue, the admin queue's controller
    /// ID for an I/O queue. Blocks up to `opts.timeout`; management threads only.
    pub(crate) fn connect(spec: &QueueSpec<'_>, opts: &HostOpts) -> Result<TcpQpair, HostError> {
        let QueueSpec {
            addr,
            qid,
            entries,
            in_capsule_max,
            ..
        } = *spec;
        let io = |e: std::io::Error| HostError::Io(format!("{addr}: {e}"));
        let sock = TcpStream::connect_timeout(&addr, opts.timeout).map_err(io)?;
        sock.set_nodelay(true).map_err(io)?;
        sock.set_nonblocking(true).map_err(io)?;
        let limits = RxLimits {
            in_capsule_data_bytes: 0,
            h2c_data_bytes: 0,
            c2h_data_bytes: C2H_DATA_MAX_BYTES,
        };
        let mut q = TcpQpair {
            sock,
            peer: addr,
            rx: PduReceiver::new(Side::Host, limits),
            rx_buf: vec![0u8; RX_BUF_BYTES].into_boxed_slice(),
            tx: Vec::with_capacity(256 * 1024),
            tx_pos: 0,
            dg: TxDigests::default(),
            qid,
            cntlid: 0,
            maxh2cdata: 0,
            h2c_chunk: opts.h2c_chunk_bytes.unwrap_or(u32::MAX),
            in_capsule_max,
            slots: (0..entries)
                .map(|_| Slot {
                    state: SlotState::Free,
                    dir: Dir::None,
                    user: 0,
                    buf: None,
                    data_error: false,
                })
                .collect(),
            sink: Sink::None,
            cids: Cids::new(usize::from(entries)),
        };
        pdu::encode_ic_req(&mut q.tx, 0, opts.hdgst, opts.ddgst, 0);
        let deadline = Instant::now() + opts.timeout;
        while q.maxh2cdata == 0 {
            q.poll_io()?;
            if Instant::now() > deadline {
                return Err(HostError::Timeout("ICResp"));
            }
            std::thread::yield_now();
        }
        // Connect data always travels in-capsule (targets may refuse it through R2T).
        q.in_capsule_max = in_capsule_max.max(1024);
        q.cntlid = connect_fabrics(&mut q, spec, opts)?;
        q.in_capsule_max = in_capsule_max;
        Ok(q)
    }

    /// The target's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Largest in-capsule data this queue sends; larger writes go through R2T.
    pub fn set_in_capsule_max(&mut self, bytes: u32) {
        self.in_capsule_max = bytes;
    }

    /// The digests negotiated (for tests that write raw PDUs with `send_raw`).
    pub fn digests(&self) -> TxDigests {
        self.dg
    }

    /// Queues raw bytes on the socket (negative tests).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.tx.extend_from_slice(bytes);
    }

    /// Queues a command. Sets its CID and data descriptor; `data`'s buffer length is the
    /// transfer length. Never blocks; the capsule goes out on the next `poll`. On error the
    /// data is handed back.
    pub fn submit(&mut self, mut sqe: Sqe, data: Data, user: u64) -> Result<u16, (HostError, Data)> {
        if let Some(e) = &self.cids.failed {
            return Err((e.clone(), data));
        }
        let Some(slot) = self.cids.free.pop() else {
            return Err((HostError::QueueFull, data));
        };
        sqe.cid = slot as u16;
        sqe.set_sgl_psdt();
        let (dir, len) = match &data {
            Data::None => (Dir::None, 0),
            Data::ToCtrl(b) => (Dir::ToCtrl, b.len() as u32),
            Data::FromCtrl(b) => (Dir::FromCtrl, b.len() as u32),
        };
        let in_capsule = dir == Dir::ToCtrl && len <= self.in_capsule_max && len > 0;
        sqe.sgl = Sgl {
            addr: 0,
            length: len,
            rsvd: [0; 3],
            sgl_type: if in_capsule {
                sgl_type::DATA_BLOCK_OFFSET
            } else {
                sgl_type::TRANSPORT_DATA_BLOCK
            },
        };
        let buf = data.into_buf();
        let payload: &[u8] = if in_capsule { buf.as_deref().unwrap_or(&[]) } else { &[] };
        pdu::encode_capsule_cmd(&mut self.tx, &sqe, payload, self.dg);
        self.slots[slot] = Slot {
            state: SlotState::InFlight { c2h_received: 0 },
            dir,
            user,
            buf,
            data_error: false,
        };
        Ok(slot as u16)
    }

    /// Moves bytes both ways and reports finished commands through `f`; returns how many.
    /// Never blocks. An error is fatal to the queue pair (the target terminated it, or it
    /// broke the protocol, or the socket failed); commands in flight are lost.
    pub fn poll(&mut self, f: &mut dyn FnMut(HostCompletion)) -> Result<usize, HostError> {
        self.poll_io()?;
        Ok(self.cids.report(f))
    }

    /// Submits one command and polls until it completes (other completions are kept for the
    /// next `poll`). Blocks up to `timeout`: not for reactor threads.
    pub fn sync(&mut self, sqe: Sqe, data: Data, timeout: Duration) -> Result<HostCompletion, HostError> {
        sync_on(self, sqe, data, timeout)
    }

    /// Ends every command in flight with Aborted - SQ Deletion and reports it through `f`
    /// with its buffer, after the queue pair failed (the target will never answer them).
    /// Commands that finished but were not yet reported are reported too. Returns how many
    /// completions `f` saw.
    pub fn abort_outstanding(&mut self, f: &mut dyn FnMut(HostCompletion)) -> usize {
        for slot in 0..self.slots.len() {
            if matches!(self.slots[slot].state, SlotState::InFlight { .. }) {
                let cqe = Cqe {
                    cid: slot as u16,
                    sqid: self.qid,
                    status: Status::ABORTED_SQ_DELETION.to_field(),
                    ..Cqe::default()
                };
                self.finish(slot, cqe);
            }
        }
        self.cids.report(f)
    }

    /// Closes the connection.
    pub fn close(self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    pub(crate) fn poll_io(&mut self) -> Result<(), HostError> {
        if let Some(e) = &self.cids.failed {
            return Err(e.clone());
        }
        self.flush()?;
        loop {
            match self.sock.read(&mut self.rx_buf) {
                Ok(0) => return Err(self.cids.fail(HostError::Closed)),
                Ok(n) => {
                    self.process(n)?;
                    if n < self.rx_buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.cids.fail(HostError::Io(e.to_string()))),
            }
        }
        self.flush()
    }

    fn flush(&mut self) -> Result<(), HostError> {
        while self.tx_pos < self.tx.len() {
            match self.sock.write(&self.tx[self.tx_pos..]) {
                Ok(n) => self.tx_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.cids.fail(HostError::Io(e.to_string()))),
            }
        }
        if self.tx_pos == self.tx.len() {
            self.tx.clear();
            self.tx_pos = 0;
        } else if self.tx_pos > 256 * 1024 {
            self.tx.drain(..self.tx_pos);
            self.tx_pos = 0;
        }
        Ok(())
    }

    fn process(&mut self, n: usize) -> Result<(), HostError> {
        let buf = std::mem::take(&mut self.rx_buf);
        let mut input = &buf[..n];
        let res = loop {
            match self.rx.advance(input) {
                Err(e) => {
                    let hdr = self.rx.header_bytes().to_vec();
                    pdu::encode_term_req(&mut self.tx, Side::Host, e.fes(), e.fei(), &hdr);
                    let _ = self.flush();
                    break Err(HostError::Pdu(e));
                }
                Ok((used, ev)) => {
                    input = &input[used..];
                    match ev {
                        None => break Ok(()),
                        Some(ev) => {
                            if let Err(e) = self.on_event(ev) {
                                break Err(e);
                            }
                        }
                    }
                }
            }
        };
        self.rx_buf = buf;
        res.map_err(|e| self.cids.fail(e))
    }

    fn protocol(&self, what: &'static str) -> HostError {
        HostError::Protocol(what)
    }

    fn on_event(&mut self, ev: RxEvent<'_>) -> Result<(), HostError> {
        match ev {
            RxEvent::Header(p) => match p.kind {
                PduKind::IcResp {
                    cpda,
                    hdgst,
                    ddgst,
                    maxh2cdata,
                } => self.on_icresp(cpda, hdgst, ddgst, maxh2cdata),
                PduKind::TermReq { fes, fei } => Err(HostError::Terminated { fes, fei }),
                PduKind::CapsuleResp { cqe } => self.on_capsule_resp(cqe),
                PduKind::C2HData {
                    cccid,
                    datao,
                    last,
                    success,
                } => self.on_c2h_data(cccid, datao, p.data_len, success && last),
                PduKind::R2T {
                    cccid,
                    ttag,
                    r2to,
                    r2tl,
                } => self.on_r2t(cccid, ttag, r2to, r2tl),
                PduKind::IcReq { .. } | PduKind::CapsuleCmd { .. } | PduKind::H2CData { .. } => {
                    Err(self.protocol("controller-bound PDU received"))
                }
            },
            RxEvent::Data(d) => {
                if let Sink::C2H { slot, off, .. } = &mut self.sink {
                    let o = *off as usize;
                    if let Some(b) = self.slots[*slot].buf.as_mut() {
                        b[o..o + d.len()].copy_from_slice(d);
                    }
                    *off += d.len() as u32;
                }
                Ok(())
            }
            RxEvent::DataEnd { digest_ok } => {
                self.on_data_end(digest_ok);
                Ok(())
            }
        }
    }

    /// ICResp: the controller's digests, data alignment and largest H2CData.
    fn on_icresp(&mut self, cpda: u8, hdgst: bool, ddgst: bool, maxh2cdata: u32) -> Result<(), HostError> {
        if maxh2cdata < 4096 || !maxh2cdata.is_multiple_of(4) {
            return Err(self.protocol("ICResp MAXH2CDATA below 4096 or unaligned"));
        }
        self.dg = TxDigests {
            hdgst,
            ddgst,
            data_align: (usize::from(cpda) + 1) * 4,
        };
        self.rx.set_digests(hdgst, ddgst);
        self.maxh2cdata = maxh2cdata;
        Ok(())
    }

    /// A response capsule completes its command (a data digest error seen on its C2HData
    /// turns a success into a transient transport error).
    fn on_capsule_resp(&mut self, mut cqe: Cqe) -> Result<(), HostError> {
        let slot = usize::from(cqe.cid);
        match self.slots.get(slot).map(|s| s.state) {
            Some(SlotState::InFlight { .. }) => {}
            _ => return Err(self.protocol("response for a command not in flight")),
        }
        if self.slots[slot].data_error && cqe.status().is_success() {
            cqe.status = Status::TRANSIENT_TRANSPORT_ERROR.to_field();
        }
        self.finish(slot, cqe);
        Ok(())
    }

    /// C2HData header: checks it continues the command's data in order and within its
    /// buffer, and points the data that follows there.
    fn on_c2h_data(&mut self, cccid: u16, datao: u32, data_len: u32, success: bool) -> Result<(), HostError> {
        let slot = usize::from(cccid);
        let Some(s) = self.slots.get(slot) else {
            return Err(self.protocol("C2HData for an unknown command"));
        };
        let SlotState::InFlight { c2h_received } = s.state else {
            return Err(self.protocol("C2HData for a command not in flight"));
        };
        if s.dir != Dir::FromCtrl {
            return Err(self.protocol("C2HData for a command that reads no data"));
        }
        let cap = s.buf.as_ref().map(|b| b.len() as u64).unwrap_or(0);
        if datao != c2h_received || u64::from(datao) + u64::from(data_len) > cap {
            return Err(self.protocol("C2HData outside the command's buffer"));
        }
        self.sink = Sink::C2H {
            slot,
            off: datao,
            success,
        };
        Ok(())
    }

    /// R2T: sends the requested range of the command's data as H2CData PDUs no larger than
    /// the controller's MAXH2CDATA.
    fn on_r2t(&mut self, cccid: u16, ttag: u16, r2to: u32, r2tl: u32) -> Result<(), HostError> {
        let slot = usize::from(cccid);
        let Some(s) = self.slots.get(slot) else {
            return Err(self.protocol("R2T for an unknown command"));
        };
        if !matches!(s.state, SlotState::InFlight { .. }) || s.dir != Dir::ToCtrl {
            return Err(self.protocol("R2T for a command with no data to send"));
        }
        let len = s.buf.as_ref().map(|b| b.len() as u64).unwrap_or(0);
        if r2tl == 0 || u64::from(r2to) + u64::from(r2tl) > len {
            return Err(self.protocol("R2T outside the command's data"));
        }
        let chunk = self.maxh2cdata.min(self.h2c_chunk).max(1);
        let mut off = r2to;
        let end = r2to + r2tl;
        while off < end {
            let n = chunk.min(end - off);
            let b = self.slots[slot].buf.as_deref().unwrap_or(&[]);
            pdu::encode_h2c_data(
                &mut self.tx,
                cccid,
                ttag,
                off,
                &b[off as usize..(off + n) as usize],
                off + n == end,
                self.dg,
            );
            off += n;
        }
        Ok(())
    }

    /// The end of a C2HData PDU's data: records how far the command's data came and, when
    /// the PDU had SUCCESS set (no response capsule follows), completes the command.
    fn on_data_end(&mut self, digest_ok: bool) {
        let Sink::C2H { slot, off, success } = std::mem::replace(&mut self.sink, Sink::None) else {
            return;
        };
        if !digest_ok {
            self.slots[slot].data_error = true;
        }
        self.slots[slot].state = SlotState::InFlight { c2h_received: off };
        if success {
            let status = if self.slots[slot].data_error {
                Status::TRANSIENT_TRANSPORT_ERROR
            } else {
                Status::SUCCESS
            };
            let cqe = Cqe {
                cid: slot as u16,
                sqid: self.qid,
                status: status.to_field(),
                ..Cqe::default()
            };
            self.finish(slot, cqe);
        }
    }

    fn finish(&mut self, slot: usize, cqe: Cqe) {
        let s = &mut self.slots[slot];
        s.state = SlotState::Free;
        let buf = s.buf.take();
        self.cids.done.push(HostCompletion { user: s.user, cqe, buf });
        self.cids.free.push(slot);
    }
}

impl Link for TcpQpair {
    fn submit(&mut self, sqe: Sqe, data: Data, user: u64) -> Result<u16, (HostError, Data)> {
        TcpQpair::submit(self, sqe, data, user)
    }
    fn poll_io(&mut self) -> Result<(), HostError> {
        TcpQpair::poll_io(self)
    }
    fn take_done(&mut self, cid: u16, user: u64) -> Option<HostCompletion> {
        self.cids.take(cid, user)
    }
}
