//! Unit tests of the NVMe/RDMA wire rules (`rdma_proto.rs`).

use super::*;

const LIM: CmLimits = CmLimits {
    max_queue_depth: 128,
    max_aq_depth: 32,
    max_io_qpairs: 64,
};

fn req(qid: u16, hrqsize: u16, hsqsize: u16) -> CmRequest {
    CmRequest {
        recfmt: 0,
        qid,
        hrqsize,
        hsqsize,
        cntlid: 0xFFFF,
    }
}

#[test]
fn request_round_trip_and_linux_shapes_accepted() {
    // What the Linux host sends: admin hrqsize 32 / hsqsize 31, I/O 128 / 127.
    let admin = req(0, 32, 31);
    assert_eq!(CmRequest::decode(&admin.encode()), Ok(admin));
    let q = accept_request(&admin.encode(), LIM).unwrap();
    assert_eq!((q.qid, q.sq_entries, q.host_recv), (0, 32, 32));
    let io = req(3, 128, 127);
    let q = accept_request(&io.encode(), LIM).unwrap();
    assert_eq!((q.qid, q.sq_entries, q.host_recv), (3, 128, 128));
    // Longer (padded) private data is fine.
    let mut long = [0u8; 56];
    long[..32].copy_from_slice(&io.encode());
    assert!(accept_request(&long, LIM).is_ok());
}

#[test]
fn bad_requests_get_the_right_reject_status() {
    use CmRejectStatus::*;
    assert_eq!(accept_request(&[0u8; 31], LIM), Err(InvalidLength));
    assert_eq!(accept_request(&[], LIM), Err(InvalidLength));
    let mut r = req(1, 16, 15);
    r.recfmt = 1;
    assert_eq!(accept_request(&r.encode(), LIM), Err(InvalidRecfmt));
    assert_eq!(accept_request(&req(65, 16, 15).encode(), LIM), Err(InvalidQid));
    assert_eq!(accept_request(&req(0, 64, 63).encode(), LIM), Err(InvalidHsqsize));
    assert_eq!(accept_request(&req(1, 129, 128).encode(), LIM), Err(InvalidHsqsize));
    assert_eq!(accept_request(&req(1, 1, 0).encode(), LIM), Err(InvalidHsqsize));
    assert_eq!(accept_request(&req(1, 15, 15).encode(), LIM), Err(InvalidHrqsize));
    assert_eq!(accept_request(&req(1, 0, 15).encode(), LIM), Err(InvalidHrqsize));
}

#[test]
fn accept_and_reject_encodings() {
    let a = encode_accept(128);
    assert_eq!(&a[..4], &[0, 0, 128, 0]);
    assert!(a[4..].iter().all(|&b| b == 0));
    assert_eq!(decode_accept(&a), Some(128));
    assert_eq!(decode_accept(&[1, 0, 1, 0]), None);
    assert_eq!(encode_reject(CmRejectStatus::InvalidHsqsize), [0, 0, 4, 0]);
    assert_eq!(encode_reject(CmRejectStatus::NoResources), [0, 0, 6, 0]);
}

const SL: SglLimits = SglLimits {
    in_capsule_max: 8192,
    max_io_bytes: 131072,
};

fn keyed(addr: u64, len: u32, key: u32, inv: bool) -> Sqe {
    let mut s = Sqe::default();
    set_keyed(&mut s, addr, len, key, inv);
    s
}

fn offset(addr: u64, len: u32) -> Sqe {
    let mut s = Sqe::default();
    s.sgl.addr = addr;
    s.sgl.length = len;
    s.sgl.sgl_type = 0x01;
    s
}

#[test]
fn keyed_descriptor_fields_are_read_as_the_wire_lays_them_out() {
    // Bytes 8..11 length (24 bits), 11..15 key, 15 type: 0x40 address, 0x4F invalidate.
    let s = keyed(0x1122_3344_5566_7788, 4096, 0xA1B2_C3D4, true);
    let b = crate::spec::Plain::as_bytes(&s);
    assert_eq!(&b[24..32], &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(&b[32..35], &[0x00, 0x10, 0x00]);
    assert_eq!(&b[35..39], &0xA1B2_C3D4u32.to_le_bytes());
    assert_eq!(b[39], 0x4F);
    let d = parse_sgl(&s, 4096, Dir::ToHost, 0, SL);
    assert_eq!(
        d,
        Ok(DataDesc::Keyed {
            addr: 0x1122_3344_5566_7788,
            len: 4096,
            key: 0xA1B2_C3D4,
            invalidate: true
        })
    );
    let d = parse_sgl(&keyed(8, 512, 7, false), 512, Dir::ToCtrl, 0, SL);
    assert_eq!(
        d,
        Ok(DataDesc::Keyed {
            addr: 8,
            len: 512,
            key: 7,
            invalidate: false
        })
    );
}

#[test]
fn keyed_descriptor_checks() {
    // A longer buffer than the command needs is fine; shorter is not; above max_io_size not.
    assert!(matches!(
        parse_sgl(&keyed(0, 8192, 1, false), 4096, Dir::ToHost, 0, SL),
        Ok(DataDesc::Keyed { len: 4096, .. })
    ));
    let e = |s: &Sqe, need, ic| parse_sgl(s, need, Dir::ToCtrl, ic, SL);
    assert_eq!(
        e(&keyed(0, 4095, 1, false), 4096, 0),
        Err(Status::DATA_SGL_LENGTH_INVALID)
    );
    assert_eq!(
        e(&keyed(0, 262144, 1, false), 4096, 0),
        Err(Status::DATA_SGL_LENGTH_INVALID)
    );
    assert_eq!(
        e(&keyed(u64::MAX - 10, 4096, 1, false), 4096, 0),
        Err(Status::DATA_SGL_LENGTH_INVALID)
    );
    // Capsule data beside a keyed descriptor has no meaning.
    assert_eq!(e(&keyed(0, 4096, 1, false), 4096, 16), Err(Status::INVALID_FIELD));
    // No data: the host's null descriptor (keyed, length 0) is accepted, a length is not.
    assert_eq!(e(&keyed(0, 0, 0, false), 0, 0), Ok(DataDesc::None));
    assert_eq!(e(&keyed(0, 16, 0, false), 0, 0), Err(Status::DATA_SGL_LENGTH_INVALID));
    // Subtypes other than address / invalidate.
    for sub in [0x1u8, 0x2, 0x7, 0xE] {
        let mut s = keyed(0, 4096, 1, false);
        s.sgl.sgl_type = 0x40 | sub;
        assert_eq!(e(&s, 4096, 0), Err(Status::SGL_SUBTYPE_INVALID), "subtype {sub:#x}");
    }
}

#[test]
fn in_capsule_descriptor_checks() {
    let w = |s: &Sqe, need, ic| parse_sgl(s, need, Dir::ToCtrl, ic, SL);
    assert_eq!(
        w(&offset(0, 4096), 4096, 4096),
        Ok(DataDesc::InCapsule { offset: 0, len: 4096 })
    );
    assert_eq!(
        w(&offset(16, 512), 512, 1024),
        Ok(DataDesc::InCapsule { offset: 16, len: 512 })
    );
    // Past what arrived, past the limit, or an offset that overflows.
    assert_eq!(w(&offset(0, 4096), 4096, 2048), Err(Status::SGL_OFFSET_INVALID));
    assert_eq!(w(&offset(0, 16384), 16384, 16384), Err(Status::SGL_OFFSET_INVALID));
    assert_eq!(w(&offset(u64::MAX, 2), 2, 4096), Err(Status::SGL_OFFSET_INVALID));
    // A length shorter than the command's transfer; a longer one (Linux's Dataset
    // Management: one range in a 4 KiB payload) is accepted and only the need is used.
    assert_eq!(w(&offset(0, 1024), 4096, 4096), Err(Status::DATA_SGL_LENGTH_INVALID));
    assert_eq!(
        w(&offset(0, 4096), 16, 4096),
        Ok(DataDesc::InCapsule { offset: 0, len: 16 })
    );
    // Reads cannot use it.
    assert_eq!(
        parse_sgl(&offset(0, 4096), 4096, Dir::ToHost, 4096, SL),
        Err(Status::SGL_DESCRIPTOR_TYPE_INVALID)
    );
    // Data block with a subtype other than offset.
    let mut s = offset(0, 4096);
    s.sgl.sgl_type = 0x00;
    assert_eq!(w(&s, 4096, 4096), Err(Status::SGL_SUBTYPE_INVALID));
    // No data needed but data sent.
    assert_eq!(w(&offset(0, 0), 0, 0), Ok(DataDesc::None));
    assert_eq!(w(&offset(0, 16), 0, 16), Err(Status::INVALID_FIELD));
}

#[test]
fn other_descriptor_types_are_refused() {
    // Bit bucket, segment, last segment, transport data block (NVMe/TCP's), vendor.
    for ty in [0x10u8, 0x20, 0x30, 0x5A, 0xF0] {
        let mut s = offset(0, 4096);
        s.sgl.sgl_type = ty;
        assert_eq!(
            parse_sgl(&s, 4096, Dir::ToCtrl, 4096, SL),
            Err(Status::SGL_DESCRIPTOR_TYPE_INVALID),
            "type {ty:#x}"
        );
    }
}

#[test]
fn tsas_names_rc_qps_and_rdma_cm() {
    let t = rdma_tsas();
    assert_eq!(&t[..3], &[1, 1, 1]);
    assert!(t[3..].iter().all(|&b| b == 0));
}

/// The fuzz body over deterministic mutations: no input may panic it.
#[test]
fn fuzz_body_survives_100k_mutations() {
    let mut seed = req(1, 128, 127).encode().to_vec();
    seed.extend_from_slice(&[128, 0, 32, 0, 64, 0]);
    seed.extend_from_slice(crate::spec::Plain::as_bytes(&keyed(4096, 4096, 9, true)));
    for w in [4096u32, 0, 8192, 131072, 1] {
        seed.extend_from_slice(&w.to_le_bytes());
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..100_000 {
        let mut d = seed.clone();
        for _ in 0..1 + i % 4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let pos = (x as usize) % d.len();
            d[pos] = (x >> 32) as u8;
        }
        if i % 97 == 0 {
            d.truncate((x as usize >> 8) % (d.len() + 1));
        }
        fuzz_rdma(&d);
    }
}

#[test]
fn read_depth_is_the_least_of_host_device_and_queue() {
    assert_eq!(read_depth(0, 128, 32), Err(CmRejectStatus::InvalidIrd));
    assert_eq!(read_depth(128, 128, 32), Ok(32));
    assert_eq!(read_depth(16, 128, 32), Ok(16));
    assert_eq!(read_depth(255, 4, 1024), Ok(4));
    assert_eq!(read_depth(255, 255, 1024), Ok(255));
    assert_eq!(read_depth(8, 0, 32), Ok(1), "a device that says 0 still gets one");
    assert_eq!(encode_reject(CmRejectStatus::InvalidIrd), [0, 0, 7, 0]);
    let mut b = [0u8; CM_REJECT_BYTES];
    b[..4].copy_from_slice(&encode_reject(CmRejectStatus::InvalidIrd));
    assert_eq!(decode_reject(&b), Some(CmRejectStatus::InvalidIrd));
}
