//! Negative tests: malformed, truncated, out-of-order and oversized PDUs, bad digests,
//! unknown opcodes, hosts not allowed. Each gets the specified status or C2HTermReq, and the
//! target keeps serving other connections (checked after every case).

mod common;

use common::*;
use nvme::host::{Controller, HostError, HostOpts};
use nvme::spec::cmd::{admin_opc, io_opc, sgl_type};
use nvme::spec::fabrics::{fctype, ConnectCmd, ConnectData};
use nvme::spec::{put_str, Cqe, Plain, Sgl, Sqe, Status};
use nvme::tcp::pdu::{self, fes, Pdu, PduKind, PduReceiver, RxEvent, RxLimits, Side, TxDigests};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

/// A hand-driven NVMe/TCP host: writes whatever bytes a test wants, parses what comes back.
struct Raw {
    s: TcpStream,
    rx: PduReceiver,
    dg: TxDigests,
    pending: Vec<u8>,
}

enum Got {
    /// Header, data, data digest correct.
    Pdu(Pdu, Vec<u8>, #[allow(dead_code)] bool),
    Eof,
}

impl Raw {
    fn new(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let limits = RxLimits {
            in_capsule_data_bytes: 0,
            h2c_data_bytes: 0,
            c2h_data_bytes: 1 << 20,
        };
        Raw {
            s,
            rx: PduReceiver::new(Side::Host, limits),
            dg: TxDigests::default(),
            pending: Vec::new(),
        }
    }

    fn send(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b);
    }

    fn recv(&mut self) -> Got {
        let mut cur: Option<(Pdu, Vec<u8>)> = None;
        loop {
            while !self.pending.is_empty() || cur.is_some() {
                let (n, ev) = self.rx.advance(&self.pending).expect("target sent a malformed PDU");
                let ev = ev.map(|e| match e {
                    RxEvent::Header(p) => (0, Some(p), Vec::new(), true),
                    RxEvent::Data(d) => (1, None, d.to_vec(), true),
                    RxEvent::DataEnd { digest_ok } => (2, None, Vec::new(), digest_ok),
                });
                self.pending.drain(..n);
                match ev {
                    None => break,
                    Some((0, Some(p), _, _)) => {
                        if p.data_len == 0 {
                            return Got::Pdu(p, Vec::new(), true);
                        }
                        cur = Some((p, Vec::new()));
                    }
                    Some((1, _, d, _)) => cur.as_mut().unwrap().1.extend_from_slice(&d),
                    Some((_, _, _, ok)) => {
                        let (p, d) = cur.take().unwrap();
                        return Got::Pdu(p, d, ok);
                    }
                }
            }
            let mut b = vec![0u8; 65536];
            match self.s.read(&mut b) {
                Ok(0) => return Got::Eof,
                Err(e) => {
                    eprintln!("raw read error: {e}");
                    return Got::Eof;
                }
                Ok(n) => self.pending.extend_from_slice(&b[..n]),
            }
        }
    }

    fn ic(&mut self, hd: bool, dd: bool) {
        let mut b = Vec::new();
        pdu::encode_ic_req(&mut b, 0, hd, dd, 0);
        self.send(&b);
        match self.recv() {
            Got::Pdu(
                Pdu {
                    kind:
                        PduKind::IcResp {
                            hdgst,
                            ddgst,
                            maxh2cdata,
                            ..
                        },
                    ..
                },
                _,
                _,
            ) => {
                assert_eq!((hdgst, ddgst), (hd, dd));
                assert_eq!(maxh2cdata, 128 * 1024);
            }
            _ => panic!("no ICResp"),
        }
        self.rx.set_digests(hd, dd);
        self.dg = TxDigests {
            hdgst: hd,
            ddgst: dd,
            data_align: 0,
        };
    }

    /// Sends a command; returns its response (C2H data collected on the way).
    fn cmd(&mut self, sqe: Sqe, data: &[u8]) -> (Cqe, Vec<u8>) {
        let mut b = Vec::new();
        pdu::encode_capsule_cmd(&mut b, &sqe, data, self.dg);
        self.send(&b);
        self.response()
    }

    fn response(&mut self) -> (Cqe, Vec<u8>) {
        let mut got = Vec::new();
        loop {
            match self.recv() {
                Got::Pdu(
                    Pdu {
                        kind: PduKind::CapsuleResp { cqe },
                        ..
                    },
                    _,
                    _,
                ) => return (cqe, got),
                Got::Pdu(
                    Pdu {
                        kind: PduKind::C2HData { success, cccid, .. },
                        ..
                    },
                    d,
                    _,
                ) => {
                    got.extend_from_slice(&d);
                    if success {
                        return (
                            Cqe {
                                cid: cccid,
                                ..Cqe::default()
                            },
                            got,
                        );
                    }
                }
                Got::Pdu(p, _, _) => panic!("unexpected PDU {p:?}"),
                Got::Eof => panic!("connection closed while waiting for a response"),
            }
        }
    }

    fn connect_sqe(qid: u16) -> Sqe {
        let mut s = Sqe {
            opc: admin_opc::FABRICS,
            nsid: u32::from(fctype::CONNECT),
            cid: 1,
            ..Sqe::default()
        };
        ConnectCmd {
            recfmt: 0,
            qid,
            sqsize: 31,
            cattr: 0,
            kato_ms: 0,
        }
        .to_sqe(&mut s);
        s.set_sgl_psdt();
        s.sgl = Sgl {
            addr: 0,
            length: 1024,
            rsvd: [0; 3],
            sgl_type: sgl_type::DATA_BLOCK_OFFSET,
        };
        s
    }

    fn connect(&mut self, nqn: &str, hostnqn: &str, qid: u16, cntlid: u16) -> Cqe {
        let mut cd = ConnectData::zeroed();
        cd.cntlid = cntlid;
        put_str(&mut cd.subnqn, nqn, 0);
        put_str(&mut cd.hostnqn, hostnqn, 0);
        self.cmd(Raw::connect_sqe(qid), cd.as_bytes()).0
    }

    /// Expects a C2HTermReq and then the end of the connection; returns (FES, FEI).
    fn expect_term(&mut self) -> (u16, u32) {
        let r = match self.recv() {
            Got::Pdu(
                Pdu {
                    kind: PduKind::TermReq { fes, fei },
                    ..
                },
                _,
                _,
            ) => (fes, fei),
            Got::Pdu(p, _, _) => panic!("expected C2HTermReq, got {p:?}"),
            Got::Eof => panic!("expected C2HTermReq, got end of connection"),
        };
        assert!(
            matches!(self.recv(), Got::Eof),
            "connection not closed after C2HTermReq"
        );
        r
    }
}

fn default_host() -> String {
    HostOpts::default().hostnqn
}

/// An admin queue + enabled controller + I/O queue 1, all raw.
fn raw_io_queue(f: &Fixture, hd: bool, dd: bool) -> (Raw, Raw) {
    let mut a = Raw::new(f.addr);
    a.ic(false, false);
    let c = a.connect(&f.nqn, &default_host(), 0, 0xFFFF);
    assert!(c.status().is_success());
    let cntlid = c.dw0 as u16;
    let mut ps = Sqe {
        opc: admin_opc::FABRICS,
        nsid: u32::from(fctype::PROPERTY_SET),
        cid: 2,
        cdw11: 0x14,
        cdw12: 1 | (6 << 16) | (4 << 20),
        ..Sqe::default()
    };
    ps.set_sgl_psdt();
    assert!(a.cmd(ps, &[]).0.status().is_success());
    let mut q = Raw::new(f.addr);
    q.ic(hd, dd);
    let c = q.connect(&f.nqn, &default_host(), 1, cntlid);
    assert!(c.status().is_success(), "I/O connect: {}", c.status());
    (a, q)
}

/// The target still serves a well-behaved host.
fn still_serving(f: &Fixture) {
    let (c, mut q) = connect(f, &opts());
    write_read(&mut q, 11, 2, 0x5A);
    c.disconnect();
}

fn write_sqe(cid: u16, slba: u64, nlb: u32, in_capsule: bool) -> Sqe {
    let mut s = Sqe {
        opc: io_opc::WRITE,
        cid,
        nsid: 1,
        cdw10: slba as u32,
        cdw12: nlb - 1,
        ..Sqe::default()
    };
    s.set_sgl_psdt();
    let len = nlb * BLOCK;
    s.sgl = Sgl {
        addr: 0,
        length: len,
        rsvd: [0; 3],
        sgl_type: if in_capsule {
            sgl_type::DATA_BLOCK_OFFSET
        } else {
            sgl_type::TRANSPORT_DATA_BLOCK
        },
    };
    s
}

#[test]
fn capsule_before_icreq_is_a_sequence_error() {
    let f = fixture();
    let mut r = Raw::new(f.addr);
    let mut b = Vec::new();
    pdu::encode_capsule_cmd(&mut b, &Raw::connect_sqe(0), &[0; 1024], TxDigests::default());
    r.send(&b);
    assert_eq!(r.expect_term(), (fes::PDU_SEQUENCE_ERROR, 0));
    still_serving(&f);
}

#[test]
fn unknown_pdu_type_and_bad_hlen_are_invalid_header_fields() {
    let f = fixture();
    let mut r = Raw::new(f.addr);
    r.ic(false, false);
    r.send(&[0x0B, 0, 24, 0, 24, 0, 0, 0]);
    assert_eq!(r.expect_term(), (fes::INVALID_HEADER_FIELD, 0));
    let mut r = Raw::new(f.addr);
    r.ic(false, false);
    let mut b = Vec::new();
    pdu::encode_capsule_cmd(&mut b, &Raw::connect_sqe(0), &[], TxDigests::default());
    b[2] = 70;
    r.send(&b);
    assert_eq!(r.expect_term(), (fes::INVALID_HEADER_FIELD, 2));
    // A controller-to-host PDU type sent by the host.
    let mut r = Raw::new(f.addr);
    r.ic(false, false);
    let mut b = Vec::new();
    pdu::encode_r2t(&mut b, 1, 1, 0, 512, TxDigests::default());
    r.send(&b);
    assert_eq!(r.expect_term().0, fes::INVALID_HEADER_FIELD);
    still_serving(&f);
}

#[test]
fn truncated_pdu_then_disconnect_leaves_target_serving() {
    let f = fixture();
    for cut in [3usize, 8, 50, 80] {
        let mut r = Raw::new(f.addr);
        r.ic(false, false);
        let mut b = Vec::new();
        pdu::encode_capsule_cmd(&mut b, &Raw::connect_sqe(0), &[0; 1024], TxDigests::default());
        r.send(&b[..cut]);
        drop(r);
    }
    still_serving(&f);
}

#[test]
fn header_digest_error_terminates() {
    let f = fixture();
    let mut r = Raw::new(f.addr);
    r.ic(true, false);
    let mut b = Vec::new();
    pdu::encode_capsule_cmd(&mut b, &Raw::connect_sqe(0), &[0; 1024], r.dg);
    b[72] ^= 0xFF; // first byte of the header digest
    r.send(&b);
    assert_eq!(r.expect_term().0, fes::HEADER_DIGEST_ERROR);
    // Digest flag missing although negotiated.
    let mut r = Raw::new(f.addr);
    r.ic(true, false);
    let mut b = Vec::new();
    pdu::encode_capsule_cmd(&mut b, &Raw::connect_sqe(0), &[0; 1024], TxDigests::default());
    r.send(&b);
    assert_eq!(r.expect_term(), (fes::INVALID_HEADER_FIELD, 1));
    still_serving(&f);
}

#[test]
fn data_digest_error_fails_the_command_not_the_connection() {
    let f = fixture();
    let (_a, mut q) = raw_io_queue(&f, false, true);
    let mut b = Vec::new();
    pdu::encode_capsule_cmd(&mut b, &write_sqe(3, 0, 1, true), &[7u8; 512], q.dg);
    let n = b.len();
    b[n - 1] ^= 0x55;
    q.send(&b);
    let (cqe, _) = q.response();
    assert_eq!(cqe.cid, 3);
    assert!(cqe.status().same_code(Status::TRANSIENT_TRANSPORT_ERROR));
    // Same connection, good digest: works.
    let (cqe, _) = q.cmd(write_sqe(4, 0, 1, true), &[7u8; 512]);
    assert!(cqe.status().is_success());
    still_serving(&f);
}

#[test]
fn oversized_in_capsule_data_is_a_limit_error() {
    let f = fixture();
    let (_a, mut q) = raw_io_queue(&f, false, false);
    let mut b = Vec::new();
    pdu::encode_capsule_cmd(&mut b, &write_sqe(3, 0, 17, true), &[0u8; 17 * 512], q.dg);
    q.send(&b);
    assert_eq!(q.expect_term(), (fes::DATA_LIMIT_EXCEEDED, 4));
    // A PLEN claiming more than the header holds is rejected too.
    let (_a, mut q) = raw_io_queue(&f, false, false);
    let mut b = Vec::new();
    pdu::encode_capsule_cmd(&mut b, &write_sqe(3, 0, 1, false), &[], q.dg);
    b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    q.send(&b);
    assert_eq!(q.expect_term().0, fes::INVALID_HEADER_FIELD);
    still_serving(&f);
}

#[test]
fn h2c_data_out_of_order_unknown_tag_or_out_of_range() {
    let f = fixture();
    for case in 0..4 {
        let (_a, mut q) = raw_io_queue(&f, false, false);
        let mut b = Vec::new();
        pdu::encode_capsule_cmd(&mut b, &write_sqe(9, 0, 8, false), &[], q.dg);
        q.send(&b);
        let (ttag, r2tl) = match q.recv() {
            Got::Pdu(
                Pdu {
                    kind:
                        PduKind::R2T {
                            cccid: 9,
                            ttag,
                            r2to: 0,
                            r2tl,
                        },
                    ..
                },
                _,
                _,
            ) => (ttag, r2tl),
            _ => panic!("expected R2T"),
        };
        assert_eq!(r2tl, 4096);
        let mut b = Vec::new();
        let expect = match case {
            0 => {
                pdu::encode_h2c_data(&mut b, 9, ttag + 1, 0, &[0; 512], false, q.dg);
                (fes::INVALID_HEADER_FIELD, 10)
            }
            1 => {
                pdu::encode_h2c_data(&mut b, 9, ttag, 512, &[0; 512], false, q.dg);
                (fes::DATA_OUT_OF_RANGE, 12)
            }
            2 => {
                pdu::encode_h2c_data(&mut b, 9, ttag, 0, &[0; 8192], true, q.dg);
                (fes::DATA_OUT_OF_RANGE, 16)
            }
            _ => {
                pdu::encode_h2c_data(&mut b, 8, ttag, 0, &[0; 512], false, q.dg);
                (fes::INVALID_HEADER_FIELD, 8)
            }
        };
        q.send(&b);
        assert_eq!(q.expect_term(), expect, "case {case}");
    }
    // H2CData with no R2T outstanding at all.
    let (_a, mut q) = raw_io_queue(&f, false, false);
    let mut b = Vec::new();
    pdu::encode_h2c_data(&mut b, 1, 0, 0, &[0; 512], true, q.dg);
    q.send(&b);
    assert_eq!(q.expect_term(), (fes::INVALID_HEADER_FIELD, 10));
    still_serving(&f);
}

#[test]
fn commands_before_connect_and_unknown_admin_opcodes() {
    let f = fixture();
    let mut r = Raw::new(f.addr);
    r.ic(false, false);
    let (c, _) = r.cmd(
        Sqe {
            opc: admin_opc::IDENTIFY,
            cid: 5,
            cdw10: 1,
            ..Sqe::default()
        },
        &[],
    );
    assert!(c.status().same_code(Status::COMMAND_SEQUENCE_ERROR));
    assert!(r.connect(&f.nqn, &default_host(), 0, 0xFFFF).status().is_success());
    // Before CC.EN, admin commands other than fabrics are refused.
    let (c, _) = r.cmd(
        Sqe {
            opc: admin_opc::IDENTIFY,
            cid: 5,
            cdw10: 1,
            ..Sqe::default()
        },
        &[],
    );
    assert!(c.status().same_code(Status::COMMAND_SEQUENCE_ERROR));
    let mut ps = Sqe {
        opc: admin_opc::FABRICS,
        nsid: u32::from(fctype::PROPERTY_SET),
        cid: 2,
        cdw11: 0x14,
        cdw12: 1,
        ..Sqe::default()
    };
    ps.set_sgl_psdt();
    assert!(r.cmd(ps, &[]).0.status().is_success());
    for opc in [0x01u8, 0x05, 0x7E, 0xC1] {
        let (c, _) = r.cmd(
            Sqe {
                opc,
                cid: 6,
                ..Sqe::default()
            },
            &[],
        );
        assert!(
            c.status().same_code(Status::INVALID_OPCODE),
            "opcode {opc:#x}: {}",
            c.status()
        );
    }
    // Unknown property offset and unknown fabrics command type.
    let mut pg = Sqe {
        opc: admin_opc::FABRICS,
        nsid: u32::from(fctype::PROPERTY_GET),
        cid: 7,
        cdw11: 0x40,
        ..Sqe::default()
    };
    pg.set_sgl_psdt();
    assert!(r.cmd(pg, &[]).0.status().same_code(Status::INVALID_FIELD));
    let (c, _) = r.cmd(
        Sqe {
            opc: admin_opc::FABRICS,
            nsid: 0x33,
            cid: 8,
            ..Sqe::default()
        },
        &[],
    );
    assert!(c.status().same_code(Status::INVALID_OPCODE));
    // Identify with an unsupported CNS.
    let mut id = Sqe {
        opc: admin_opc::IDENTIFY,
        cid: 9,
        cdw10: 0x1F,
        ..Sqe::default()
    };
    id.set_sgl_psdt();
    id.sgl = Sgl {
        addr: 0,
        length: 4096,
        rsvd: [0; 3],
        sgl_type: sgl_type::TRANSPORT_DATA_BLOCK,
    };
    assert!(r.cmd(id, &[]).0.status().same_code(Status::INVALID_FIELD));
    still_serving(&f);
}

#[test]
fn connect_errors_name_the_bad_field() {
    let f = fixture_with(false);
    let mut r = Raw::new(f.addr);
    r.ic(false, false);
    let c = r.connect(&f.nqn, &default_host(), 0, 0xFFFF);
    assert!(c.status().same_code(Status::CONNECT_INVALID_HOST));
    let c = r.connect("nqn.2016-06.io.baton:nope", &default_host(), 0, 0xFFFF);
    assert!(c.status().same_code(Status::CONNECT_INVALID_PARAMETERS));
    // IPO in bits 15:0, IATTR in bit 16, as the Linux target and SPDK answer.
    assert_eq!(c.dw0, (1 << 16) | 256);
    // I/O queue for a controller that does not exist.
    f.target.allow_any_host(&f.nqn, true).unwrap();
    let c = r.connect(&f.nqn, &default_host(), 1, 0x1234);
    assert!(c.status().same_code(Status::CONNECT_INVALID_PARAMETERS));
    assert_eq!(c.dw0, (1 << 16) | 16);
    // Via the host library: not allowed.
    f.target.allow_any_host(&f.nqn, false).unwrap();
    let e = Controller::connect(f.addr, &f.nqn, &opts()).err().unwrap();
    assert!(matches!(e, HostError::Connect { status, .. } if status.same_code(Status::CONNECT_INVALID_HOST)));
    f.target.add_host(&f.nqn, &default_host()).unwrap();
    still_serving(&f);
    // Removing the host disconnects its controllers.
    let (mut c, _q) = connect(&f, &opts());
    f.target.remove_host(&f.nqn, &default_host()).unwrap();
    let deadline = std::time::Instant::now() + T;
    while c.keep_alive().is_ok() {
        assert!(std::time::Instant::now() < deadline, "controller not disconnected");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn io_queue_before_enable_is_refused() {
    let f = fixture();
    let mut a = Raw::new(f.addr);
    a.ic(false, false);
    let c = a.connect(&f.nqn, &default_host(), 0, 0xFFFF);
    let mut q = Raw::new(f.addr);
    q.ic(false, false);
    let c = q.connect(&f.nqn, &default_host(), 1, c.dw0 as u16);
    assert!(c.status().same_code(Status::COMMAND_SEQUENCE_ERROR));
    still_serving(&f);
}

#[test]
fn keep_alive_timeout_fails_the_controller() {
    let f = fixture();
    let o = HostOpts { kato_ms: 200, ..opts() };
    let (mut c, mut q) = connect(&f, &o);
    // Do nothing until the target gives up on us; the I/O queue goes with the controller.
    let deadline = std::time::Instant::now() + T;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        if q.poll(&mut |_| {}).is_err() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "keep-alive timeout not enforced");
    }
    assert!(c.keep_alive().is_err());
    still_serving(&f);
}

#[test]
fn host_term_req_closes_only_that_connection() {
    let f = fixture();
    let (_a, mut q) = raw_io_queue(&f, false, false);
    let mut b = Vec::new();
    pdu::encode_term_req(&mut b, Side::Host, fes::INVALID_HEADER_FIELD, 0, &[0; 24]);
    q.send(&b);
    assert!(matches!(q.recv(), Got::Eof));
    still_serving(&f);
}

#[test]
fn second_icreq_is_a_sequence_error() {
    let f = fixture();
    let mut r = Raw::new(f.addr);
    r.ic(false, false);
    let mut b = Vec::new();
    pdu::encode_ic_req(&mut b, 0, false, false, 0);
    r.send(&b);
    assert_eq!(r.expect_term(), (fes::PDU_SEQUENCE_ERROR, 0));
    still_serving(&f);
}

#[test]
fn bad_sgl_descriptors_fail_the_command_only() {
    let f = fixture();
    let (_a, mut q) = raw_io_queue(&f, false, false);
    // Read with an in-capsule (offset) descriptor: type invalid for a read.
    let mut s = Sqe {
        opc: io_opc::READ,
        cid: 1,
        nsid: 1,
        ..Sqe::default()
    };
    s.set_sgl_psdt();
    s.sgl = Sgl {
        addr: 0,
        length: 512,
        rsvd: [0; 3],
        sgl_type: sgl_type::DATA_BLOCK_OFFSET,
    };
    assert!(q.cmd(s, &[]).0.status().same_code(Status::SGL_DESCRIPTOR_TYPE_INVALID));
    // Keyed (RDMA) descriptor type.
    s.sgl.sgl_type = 0x40;
    assert!(q.cmd(s, &[]).0.status().same_code(Status::SGL_DESCRIPTOR_TYPE_INVALID));
    // In-capsule data at a non-zero offset.
    let mut w = write_sqe(2, 0, 1, true);
    w.sgl.addr = 16;
    assert!(q.cmd(w, &[0u8; 512]).0.status().same_code(Status::SGL_OFFSET_INVALID));
    // In-capsule length disagreeing with the descriptor.
    let mut w = write_sqe(3, 0, 1, true);
    w.sgl.length = 1024;
    assert!(q
        .cmd(w, &[0u8; 512])
        .0
        .status()
        .same_code(Status::DATA_SGL_LENGTH_INVALID));
    // The queue still works.
    let (cqe, _) = q.cmd(write_sqe(4, 0, 1, true), &[1u8; 512]);
    assert!(cqe.status().is_success());
    still_serving(&f);
}
