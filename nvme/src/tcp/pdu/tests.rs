//! PDU codec tests: layouts, round trips with every chunking, each rejection, and the
//! deterministic mutation run of `fuzz_pdu`.

use super::*;
use crate::spec::{Cqe, Sqe, Status};
use core::mem::offset_of;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const LIMITS: RxLimits = RxLimits {
    in_capsule_data_bytes: 8192,
    h2c_data_bytes: 65536,
    c2h_data_bytes: 131072,
};
const DG: TxDigests = TxDigests {
    hdgst: true,
    ddgst: true,
    data_align: 0,
};

/// Feeds `bytes` in chunks of `chunk` and collects (header, data) pairs.
fn collect(rx: &mut PduReceiver, bytes: &[u8], chunk: usize) -> Result<Vec<(Pdu, Vec<u8>, bool)>, PduError> {
    let mut out: Vec<(Pdu, Vec<u8>, bool)> = Vec::new();
    for piece in bytes.chunks(chunk) {
        let mut p = piece;
        loop {
            let (n, ev) = rx.advance(p)?;
            p = &p[n..];
            match ev {
                None => break,
                Some(RxEvent::Header(h)) => out.push((h, Vec::new(), true)),
                Some(RxEvent::Data(d)) => out.last_mut().unwrap().1.extend_from_slice(d),
                Some(RxEvent::DataEnd { digest_ok }) => out.last_mut().unwrap().2 = digest_ok,
            }
        }
    }
    Ok(out)
}

fn ready(side: Side, hd: bool, dd: bool) -> PduReceiver {
    let mut rx = PduReceiver::new(side, LIMITS);
    rx.set_digests(hd, dd);
    rx
}

fn sqe(cid: u16) -> Sqe {
    Sqe {
        opc: 0x01,
        cid,
        nsid: 1,
        cdw10: 5,
        cdw12: 7,
        ..Sqe::default()
    }
}

#[test]
fn pdu_header_layouts_match_spec() {
    assert_eq!(offset_of!(CommonHeader, hlen), 2);
    assert_eq!(offset_of!(CommonHeader, pdo), 3);
    assert_eq!(offset_of!(CommonHeader, plen), 4);
    assert_eq!(offset_of!(IcReqHdr, pfv), 8);
    assert_eq!(offset_of!(IcReqHdr, hpda), 10);
    assert_eq!(offset_of!(IcReqHdr, dgst), 11);
    assert_eq!(offset_of!(IcReqHdr, maxr2t), 12);
    assert_eq!(offset_of!(IcRespHdr, maxh2cdata), 12);
    assert_eq!(offset_of!(TermReqHdr, fes), 8);
    assert_eq!(offset_of!(TermReqHdr, fei), 10);
    assert_eq!(offset_of!(CapsuleCmdHdr, sqe), 8);
    assert_eq!(offset_of!(CapsuleRespHdr, cqe), 8);
    assert_eq!(offset_of!(DataHdr, cccid), 8);
    assert_eq!(offset_of!(DataHdr, ttag), 10);
    assert_eq!(offset_of!(DataHdr, offset), 12);
    assert_eq!(offset_of!(DataHdr, length), 16);
}

#[test]
fn ic_req_and_resp_round_trip_and_gate_on_negotiation() {
    let mut b = Vec::new();
    encode_ic_req(&mut b, 0, true, false, 0);
    assert_eq!(b.len(), 128);
    assert_eq!(&b[..8], &[0, 0, 128, 0, 128, 0, 0, 0]);
    // A command pipelined right behind the ICReq is not parsed until negotiation.
    encode_capsule_cmd(
        &mut b,
        &sqe(1),
        &[],
        TxDigests {
            hdgst: true,
            ..TxDigests::default()
        },
    );
    let mut rx = PduReceiver::new(Side::Target, LIMITS);
    let (n, ev) = rx.advance(&b).unwrap();
    assert_eq!(n, 128);
    assert_eq!(
        ev,
        Some(RxEvent::Header(Pdu {
            kind: PduKind::IcReq {
                hpda: 0,
                hdgst: true,
                ddgst: false,
                maxr2t: 0
            },
            data_len: 0
        }))
    );
    assert_eq!(rx.advance(&b[n..]).unwrap(), (0, None));
    rx.set_digests(true, false);
    let (m, ev) = rx.advance(&b[n..]).unwrap();
    assert_eq!(m, 76);
    assert!(matches!(
        ev,
        Some(RxEvent::Header(Pdu {
            kind: PduKind::CapsuleCmd { .. },
            data_len: 0
        }))
    ));

    let mut r = Vec::new();
    encode_ic_resp(&mut r, 0, true, true, 131072);
    let mut hrx = PduReceiver::new(Side::Host, LIMITS);
    let got = collect(&mut hrx, &r, 7).unwrap();
    assert_eq!(
        got[0].0.kind,
        PduKind::IcResp {
            cpda: 0,
            hdgst: true,
            ddgst: true,
            maxh2cdata: 131072
        }
    );
}

#[test]
fn every_pdu_round_trips_with_any_chunking_and_digests() {
    let mut rng = Rng(0x9E3779B97F4A7C15);
    for &(hd, dd) in &[(false, false), (true, false), (false, true), (true, true)] {
        let d = TxDigests {
            hdgst: hd,
            ddgst: dd,
            data_align: 0,
        };
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let mut to_target = Vec::new();
        encode_capsule_cmd(&mut to_target, &sqe(3), &data[..4096], d);
        encode_capsule_cmd(&mut to_target, &sqe(4), &[], d);
        encode_h2c_data(&mut to_target, 4, 9, 0, &data, true, d);
        encode_term_req(
            &mut to_target,
            Side::Host,
            fes::INVALID_HEADER_FIELD,
            fei::HLEN,
            &data[..30],
        );
        let mut to_host = Vec::new();
        encode_capsule_resp(&mut to_host, &Cqe::new(3, Status::LBA_OUT_OF_RANGE, 0), d);
        encode_r2t(&mut to_host, 4, 9, 0, 5000, d);
        encode_c2h_data(&mut to_host, 5, 4096, &data[..100], true, true, d);
        for chunk in [1, 2, 3, 7, 64, 1000, 100_000, (rng.below(300) + 1) as usize] {
            let got = collect(&mut ready(Side::Target, hd, dd), &to_target, chunk).unwrap();
            assert_eq!(got.len(), 4);
            assert_eq!(
                got[0].0,
                Pdu {
                    kind: PduKind::CapsuleCmd { sqe: sqe(3) },
                    data_len: 4096
                }
            );
            assert_eq!(got[0].1, &data[..4096]);
            assert!(got[0].2);
            assert_eq!(got[1].0.data_len, 0);
            assert_eq!(
                got[2].0.kind,
                PduKind::H2CData {
                    cccid: 4,
                    ttag: 9,
                    datao: 0,
                    last: true
                }
            );
            assert_eq!(got[2].1, data);
            assert_eq!(
                got[3].0.kind,
                PduKind::TermReq {
                    fes: fes::INVALID_HEADER_FIELD,
                    fei: fei::HLEN
                }
            );
            assert_eq!(got[3].1, &data[..30]);
            let got = collect(&mut ready(Side::Host, hd, dd), &to_host, chunk).unwrap();
            assert_eq!(got.len(), 3);
            assert_eq!(
                got[0].0.kind,
                PduKind::CapsuleResp {
                    cqe: Cqe::new(3, Status::LBA_OUT_OF_RANGE, 0)
                }
            );
            assert_eq!(
                got[1].0.kind,
                PduKind::R2T {
                    cccid: 4,
                    ttag: 9,
                    r2to: 0,
                    r2tl: 5000
                }
            );
            assert_eq!(
                got[2].0.kind,
                PduKind::C2HData {
                    cccid: 5,
                    datao: 4096,
                    last: true,
                    success: true
                }
            );
            assert_eq!(got[2].1, &data[..100]);
        }
    }
}

#[test]
fn data_alignment_pads_to_pdo() {
    let mut b = Vec::new();
    encode_c2h_data(
        &mut b,
        1,
        0,
        &[0xAB; 10],
        true,
        false,
        TxDigests {
            hdgst: true,
            ddgst: false,
            data_align: 32,
        },
    );
    assert_eq!(b[3], 32);
    assert_eq!(b.len(), 42);
    let got = collect(&mut ready(Side::Host, true, false), &b, 5).unwrap();
    assert_eq!(got[0].1, vec![0xAB; 10]);
}

fn first_error(side: Side, hd: bool, dd: bool, bytes: &[u8]) -> PduError {
    collect(&mut ready(side, hd, dd), bytes, bytes.len().max(1)).unwrap_err()
}

#[test]
fn header_digest_mismatch_is_fatal_and_sticky() {
    let mut b = Vec::new();
    encode_capsule_cmd(&mut b, &sqe(1), &[], DG);
    b[20] ^= 1;
    let mut rx = ready(Side::Target, true, true);
    let e = rx.advance(&b).unwrap_err();
    assert!(matches!(e, PduError::HeaderDigest { .. }));
    assert_eq!(e.fes(), fes::HEADER_DIGEST_ERROR);
    assert!(rx.advance(&b).is_err());
}

#[test]
fn data_digest_mismatch_is_reported_per_pdu() {
    let mut b = Vec::new();
    encode_capsule_cmd(&mut b, &sqe(1), &[1, 2, 3, 4], DG);
    let n = b.len();
    b[n - 1] ^= 0xFF;
    encode_capsule_cmd(&mut b, &sqe(2), &[1, 2, 3, 4], DG);
    let got = collect(&mut ready(Side::Target, true, true), &b, 3).unwrap();
    assert!(!got[0].2);
    assert!(got[1].2);
}

#[test]
fn each_malformed_header_has_its_own_error() {
    let mut good = Vec::new();
    encode_capsule_cmd(&mut good, &sqe(1), &[9; 16], TxDigests::default());

    let mut b = good.clone();
    b[0] = 0x0C;
    assert_eq!(first_error(Side::Target, false, false, &b), PduError::UnknownType(0x0C));
    assert_eq!(
        first_error(Side::Host, false, false, &good),
        PduError::WrongDirection(pdu_type::CAPSULE_CMD)
    );
    let mut b = good.clone();
    b[2] = 71;
    assert!(matches!(
        first_error(Side::Target, false, false, &b),
        PduError::BadHlen { hlen: 71, .. }
    ));
    assert!(matches!(
        first_error(Side::Target, true, false, &good),
        PduError::BadDigestFlags { .. }
    ));
    let mut b = good.clone();
    b[3] = 10;
    assert!(matches!(
        first_error(Side::Target, false, false, &b),
        PduError::BadPdo { pdo: 10, .. }
    ));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&20u32.to_le_bytes());
    assert!(matches!(
        first_error(Side::Target, false, false, &b),
        PduError::BadPlen { plen: 20, .. }
    ));
    let mut big = Vec::new();
    encode_capsule_cmd(&mut big, &sqe(1), &[0; 8193], TxDigests::default());
    let e = first_error(Side::Target, false, false, &big);
    assert_eq!(
        e,
        PduError::DataTooLong {
            ty: pdu_type::CAPSULE_CMD,
            len: 8193,
            max: 8192
        }
    );
    assert_eq!(e.fes(), fes::DATA_LIMIT_EXCEEDED);
    let mut ic = Vec::new();
    encode_ic_req(&mut ic, 0, false, false, 0);
    let e = first_error(Side::Target, false, false, &ic);
    assert!(matches!(e, PduError::OutOfSequence { initialized: true, .. }));
    assert_eq!(e.fes(), fes::PDU_SEQUENCE_ERROR);
    let mut rx = PduReceiver::new(Side::Target, LIMITS);
    assert!(matches!(
        rx.advance(&good),
        Err(PduError::OutOfSequence { initialized: false, .. })
    ));
    let mut ic2 = ic.clone();
    ic2[8] = 1;
    let mut rx = PduReceiver::new(Side::Target, LIMITS);
    assert_eq!(rx.advance(&ic2).unwrap_err(), PduError::UnsupportedPfv(1));
    let mut h2c = Vec::new();
    encode_h2c_data(&mut h2c, 1, 1, 0, &[1; 8], false, TxDigests::default());
    h2c[16] = 9;
    assert_eq!(
        first_error(Side::Target, false, false, &h2c),
        PduError::DatalMismatch { datal: 9, len: 8 }
    );
    let mut c2h = Vec::new();
    encode_c2h_data(&mut c2h, 1, 0, &[1; 8], true, true, TxDigests::default());
    c2h[1] &= !flags::LAST_PDU;
    assert_eq!(
        first_error(Side::Host, false, false, &c2h),
        PduError::SuccessWithoutLast
    );
}

#[test]
fn truncated_input_waits_without_events() {
    let mut b = Vec::new();
    encode_capsule_cmd(&mut b, &sqe(1), &[5; 100], DG);
    for cut in 0..b.len() {
        let mut rx = ready(Side::Target, true, true);
        let got = collect(&mut rx, &b[..cut], 13).unwrap();
        assert!(got.iter().all(|g| !g.1.is_empty() || g.0.data_len == 100 || cut < 76));
        if cut < 76 {
            assert!(got.is_empty());
        }
    }
}

/// A stream of valid PDUs for both directions, used as the mutation corpus.
fn corpus(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for side_host in [false, true] {
        for dg in 0..4u8 {
            let d = TxDigests {
                hdgst: dg & 1 != 0,
                ddgst: dg & 2 != 0,
                data_align: 0,
            };
            let mut b = vec![u8::from(side_host) | (dg << 1) | ((rng.below(32) as u8) << 3)];
            if side_host {
                encode_ic_resp(&mut b, 0, d.hdgst, d.ddgst, 65536);
                encode_capsule_resp(&mut b, &Cqe::new(1, Status::SUCCESS, 0), d);
                encode_r2t(&mut b, 1, 2, 0, 4096, d);
                encode_c2h_data(&mut b, 1, 0, &[7; 300], true, true, d);
                encode_term_req(&mut b, Side::Target, fes::INVALID_HEADER_FIELD, fei::PDU_TYPE, &[0; 24]);
            } else {
                encode_ic_req(&mut b, 0, d.hdgst, d.ddgst, 0);
                encode_capsule_cmd(&mut b, &sqe(1), &[3; 200], d);
                encode_capsule_cmd(&mut b, &sqe(2), &[], d);
                encode_h2c_data(&mut b, 2, 0, 0, &[4; 500], true, d);
                encode_term_req(&mut b, Side::Host, fes::PDU_SEQUENCE_ERROR, fei::NONE, &[0; 72]);
            }
            v.push(b);
        }
    }
    v
}

#[test]
fn fuzz_pdu_survives_100k_mutations() {
    let mut rng = Rng(0xD1B54A32D192ED03);
    let base = corpus(&mut rng);
    for b in &base {
        fuzz_pdu(b);
    }
    for _ in 0..100_000 {
        let mut b = base[rng.below(base.len() as u64) as usize].clone();
        match rng.below(4) {
            0 => {
                let cut = rng.below(b.len() as u64) as usize;
                b.truncate(cut);
            }
            1 => {
                for _ in 0..=rng.below(4) {
                    let i = rng.below(b.len() as u64) as usize;
                    b[i] = rng.next() as u8;
                }
            }
            2 => {
                // Mutate a header field that matters: type, flags, hlen, pdo or plen.
                let i = 129 + rng.below(8) as usize;
                if i < b.len() {
                    b[i] = rng.next() as u8;
                }
            }
            _ => {
                let i = rng.below(b.len() as u64) as usize;
                let j = rng.below(b.len() as u64) as usize;
                let (lo, hi) = (i.min(j), i.max(j));
                let seg = b[lo..hi].to_vec();
                b.splice(lo..lo, seg);
            }
        }
        fuzz_pdu(&b);
    }
}

#[test]
fn c2h_header_without_data_splices_to_the_copied_pdu() {
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    for (hdgst, ddgst, data_align) in [
        (false, false, 0),
        (true, true, 0),
        (true, false, 32),
        (false, true, 128),
    ] {
        let d = TxDigests {
            hdgst,
            ddgst,
            data_align,
        };
        for (last, success) in [(false, false), (true, false), (true, true)] {
            let mut whole = vec![0xee];
            encode_c2h_data(&mut whole, 9, 4096, &data, last, success, d);
            let mut split = vec![0xee];
            let at = encode_c2h_data_header(&mut split, 9, 4096, &data, last, success, d);
            split.splice(at..at, data.iter().copied());
            assert_eq!(split, whole, "hdgst {hdgst} ddgst {ddgst} align {data_align}");
        }
    }
}

#[test]
fn data_consumed_in_place_ends_the_pdu_and_checks_its_digest() {
    let payload: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
    for corrupt in [false, true] {
        let mut b = Vec::new();
        encode_h2c_data(&mut b, 3, 4, 0, &payload, true, DG);
        let mut rx = ready(Side::Target, true, true);
        // The header through `advance`; the data read "into place" by the caller.
        let (n, ev) = rx.advance(&b).unwrap();
        assert!(matches!(ev, Some(RxEvent::Header(_))));
        assert_eq!(rx.data_remaining(), payload.len() as u32);
        let mut placed = b[n..n + payload.len()].to_vec();
        if corrupt {
            placed[777] ^= 1;
        }
        rx.consume_data(&placed[..1000]);
        assert_eq!(rx.data_remaining(), payload.len() as u32 - 1000);
        rx.consume_data(&placed[1000..]);
        assert_eq!(rx.data_remaining(), 0);
        // The digest through `advance`, then the end of the PDU.
        let rest = &b[n + payload.len()..];
        let (used, ev) = rx.advance(rest).unwrap();
        assert_eq!(used, rest.len());
        match ev {
            Some(RxEvent::DataEnd { digest_ok }) => assert_eq!(digest_ok, !corrupt),
            other => panic!("expected DataEnd, got {other:?}"),
        }
    }
}
