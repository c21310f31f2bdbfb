//! The NVMe/RDMA host's wire rules that need no device (every build, unit-tested): the data
//! descriptor of a command capsule and the decoding of a response capsule. The connection
//! request's private data and the reject's are `nvmf::rdma_proto`'s, shared with the target.

use super::HostError;
use crate::nvmf::rdma_proto;
use crate::spec::cmd::sgl_type;
use crate::spec::{Cqe, Plain, Sgl, Sqe};

/// Bytes of a response capsule: the CQE (NVMe/RDMA responses carry no data).
pub const RESP_BYTES: usize = 16;

/// The SGL descriptor of a command over RDMA: `Some(n)`: `n` bytes of in-capsule data right
/// after the SQE (data block, offset 0); `None`: a keyed data block naming `len` bytes at
/// `addr` under `key`, subtype 0 (address): the target must not invalidate the key, which
/// stays registered for the queue's life.
pub fn rdma_sgl(in_capsule: Option<u32>, addr: u64, len: u32, key: u32) -> Sgl {
    match in_capsule {
        Some(n) => Sgl {
            addr: 0,
            length: n,
            rsvd: [0; 3],
            sgl_type: sgl_type::DATA_BLOCK_OFFSET,
        },
        None => {
            let mut s = Sqe::default();
            rdma_proto::set_keyed(&mut s, addr, len, key, false);
            s.sgl
        }
    }
}

/// Decodes a response capsule that arrived as `byte_len` bytes into `bytes` (the receive
/// slot): the CQE, or why it is unusable.
pub fn parse_response(bytes: &[u8], byte_len: u32) -> Result<Cqe, HostError> {
    if (byte_len as usize) < RESP_BYTES || bytes.len() < RESP_BYTES {
        return Err(HostError::Protocol("short response capsule"));
    }
    Cqe::read_from(&bytes[..RESP_BYTES]).ok_or(HostError::Protocol("short response capsule"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::rdma_proto::{
        decode_reject, encode_reject, parse_sgl, CmRejectStatus, CmRequest, DataDesc, Dir, SglLimits, CM_REQUEST_BYTES,
    };
    use crate::spec::Status;

    fn limits() -> SglLimits {
        SglLimits {
            in_capsule_max: 4096,
            max_io_bytes: 128 * 1024,
        }
    }

    #[test]
    fn keyed_descriptor_is_subtype_address_and_round_trips() {
        let s = rdma_sgl(None, 0x1234_5678_9abc_def0, 128 * 1024, 0xA1B2_C3D4);
        assert_eq!(s.sgl_type, 0x40, "keyed data block, subtype 0: no invalidation asked");
        let sqe = Sqe {
            sgl: s,
            ..Sqe::default()
        };
        let b = sqe.as_bytes();
        assert_eq!(&b[24..32], &0x1234_5678_9abc_def0u64.to_le_bytes());
        assert_eq!(&b[32..35], &[0x00, 0x00, 0x02], "24-bit length 128 KiB");
        assert_eq!(&b[35..39], &0xA1B2_C3D4u32.to_le_bytes(), "key");
        assert_eq!(b[39], 0x40);
        let d = parse_sgl(&sqe, 128 * 1024, Dir::ToCtrl, 0, limits()).unwrap();
        assert_eq!(
            d,
            DataDesc::Keyed {
                addr: 0x1234_5678_9abc_def0,
                len: 128 * 1024,
                key: 0xA1B2_C3D4,
                invalidate: false
            }
        );
    }

    #[test]
    fn in_capsule_descriptor_is_offset_zero() {
        let s = rdma_sgl(Some(4096), 0xdead, 4096, 7);
        assert_eq!((s.sgl_type, s.addr, s.length), (0x01, 0, 4096));
        let sqe = Sqe {
            sgl: s,
            ..Sqe::default()
        };
        let d = parse_sgl(&sqe, 4096, Dir::ToCtrl, 4096, limits()).unwrap();
        assert_eq!(d, DataDesc::InCapsule { offset: 0, len: 4096 });
    }

    #[test]
    fn no_data_is_a_null_keyed_descriptor() {
        let s = rdma_sgl(None, 0, 0, 0);
        assert_eq!((s.sgl_type, s.addr, s.length, s.rsvd), (0x40, 0, 0, [0; 3]));
    }

    #[test]
    fn connection_request_private_data() {
        let r = CmRequest {
            recfmt: 0,
            qid: 3,
            hrqsize: 32,
            hsqsize: 31,
            cntlid: 0x0102,
        };
        let b = r.encode();
        assert_eq!(b.len(), CM_REQUEST_BYTES);
        assert_eq!(&b[..10], &[0, 0, 3, 0, 32, 0, 31, 0, 2, 1]);
        assert!(b[10..].iter().all(|&x| x == 0));
    }

    #[test]
    fn reject_private_data_decodes() {
        let b = encode_reject(CmRejectStatus::InvalidHsqsize);
        assert_eq!(decode_reject(&b), Some(CmRejectStatus::InvalidHsqsize));
        assert_eq!(decode_reject(&[0, 0, 9, 0]), None, "unknown status");
        assert_eq!(decode_reject(&[1, 0, 4, 0]), None, "unknown record format");
        assert_eq!(decode_reject(&[0, 0]), None, "short");
    }

    #[test]
    fn response_parsing() {
        let cqe = Cqe {
            dw0: 0xAB,
            cid: 17,
            sqid: 2,
            status: Status::SUCCESS.to_field(),
            ..Cqe::default()
        };
        let mut slot = [0u8; 64];
        slot[..16].copy_from_slice(cqe.as_bytes());
        let got = parse_response(&slot, 16).unwrap();
        assert_eq!((got.cid, got.dw0, got.sqid), (17, 0xAB, 2));
        assert!(got.status().is_success());
        assert_eq!(
            parse_response(&slot, 15),
            Err(HostError::Protocol("short response capsule"))
        );
        assert_eq!(
            parse_response(&slot[..8], 16),
            Err(HostError::Protocol("short response capsule"))
        );
        assert_eq!(
            parse_response(&slot, 0),
            Err(HostError::Protocol("short response capsule"))
        );
    }
}

/// Without the `rdma` feature an RDMA queue pair is refused by name: an error, not a panic.
#[cfg(all(test, not(feature = "rdma")))]
#[test]
fn rdma_queue_without_the_feature_names_it() {
    use super::{HostOpts, Qpair, Trtype};
    let opts = HostOpts {
        trtype: Trtype::Rdma,
        ..HostOpts::default()
    };
    let addr = "192.0.2.1:4420".parse().expect("address");
    let e = Qpair::connect(addr, "nqn.x", 0, 32, 0xFFFF, 0, &opts)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("`rdma` cargo feature"), "{e}");
}
