//! Device tests of the verbs wrapper's one-sided operations and rdma_cm rejects with private
//! data, which the NVMe/RDMA target's data path needs (docs/nvme-rdma.md): RDMA READ from
//! and RDMA WRITE into a peer's registered region under its rkey, many in flight at once,
//! the ordering of a WRITE before a SEND on one queue pair, an access outside the peer's
//! registration failing with a completion error (not a crash), and a reject whose private
//! data reaches the active side. Need an RDMA device and `BATON_RDMA_ADDR` (an address of
//! its interface); otherwise they print `SKIPPED` and pass. `ci/rdma-e2e.sh` runs them in
//! its Soft-RoCE guest.

use super::verbs::rdma_device_present;
use super::verbs::{cm_event, Channel, CmId, Mem, Qp, QpSizes, RdmaOp, Wc};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A hang guard only: every wait below ends on an event, not on a time.
const WAIT: Duration = Duration::from_secs(60);
const DATA: usize = 64 * 1024;
const MSG: usize = 256;

fn test_addr(test: &str) -> Option<SocketAddr> {
    use std::io::Write;
    let why = if !rdma_device_present() {
        "no RDMA device (/sys/class/infiniband is empty); ci/rdma-e2e.sh runs it on Soft-RoCE".to_string()
    } else {
        match std::env::var("BATON_RDMA_ADDR").map(|a| format!("{a}:0").parse()) {
            Ok(Ok(a)) => return Some(a),
            _ => "set BATON_RDMA_ADDR to an IPv4 address of an RDMA-capable interface".to_string(),
        }
    };
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    None
}

fn sizes() -> QpSizes {
    QpSizes {
        send_wr: 128,
        recv_wr: 16,
        send_bytes: 16 * MSG,
        recv_bytes: 16 * MSG,
        ctl_bytes: 64,
        data_bytes: DATA,
        send_sge: 1,
    }
}

/// Both ends of one connection, polled by this thread. Field order is drop order: queue
/// pairs, then ids, then channels.
struct Pair {
    act_qp: Qp,
    pas_qp: Qp,
    _act_id: CmId,
    _pas_id: CmId,
    _listener: CmId,
    _act_ch: Channel,
    _lis_ch: Channel,
}

enum Outcome {
    Up(Box<Pair>),
    /// The active side saw REJECTED, with this private data.
    Rejected(Vec<u8>),
}

/// Connects to a fresh listener on `addr`; the passive side accepts, or rejects with
/// `reject` as private data.
fn connect(addr: SocketAddr, reject: Option<&[u8]>) -> Outcome {
    let lis_ch = Channel::new().unwrap();
    let listener = CmId::new(&lis_ch).unwrap();
    listener.listen(addr, 8).unwrap();
    let dst = listener.local_addr().unwrap();
    let act_ch = Channel::new().unwrap();
    let act_id = CmId::new(&act_ch).unwrap();
    act_id.resolve_addr(dst, 2000).unwrap();
    let (mut act_qp, mut pas_id, mut pas_qp) = (None, None, None);
    let (mut act_up, mut pas_up) = (false, false);
    let start = Instant::now();
    while !(act_up && pas_up) {
        assert!(start.elapsed() < WAIT, "connection setup made no progress");
        while let Some(ev) = act_ch.poll().unwrap() {
            match ev.kind {
                cm_event::RDMA_CM_EVENT_ADDR_RESOLVED => act_id.resolve_route(2000).unwrap(),
                cm_event::RDMA_CM_EVENT_ROUTE_RESOLVED => {
                    let mut q = Qp::new(&act_id, sizes()).unwrap();
                    for s in 0..16 {
                        q.post_recv(s, s as usize * MSG, MSG).unwrap();
                    }
                    act_qp = Some(q);
                    act_id.connect(b"request").unwrap();
                }
                cm_event::RDMA_CM_EVENT_ESTABLISHED => act_up = true,
                cm_event::RDMA_CM_EVENT_REJECTED => return Outcome::Rejected(ev.private.to_vec()),
                k => panic!("unexpected active-side event {k}"),
            }
        }
        while let Some(mut ev) = lis_ch.poll().unwrap() {
            match ev.kind {
                cm_event::RDMA_CM_EVENT_CONNECT_REQUEST => {
                    assert_eq!(&ev.private[..7], b"request");
                    let id = ev.new_id.take().unwrap();
                    if let Some(r) = reject {
                        id.reject_with(r);
                        pas_id = Some(id);
                        continue;
                    }
                    let mut q = Qp::new(&id, sizes()).unwrap();
                    for s in 0..16 {
                        q.post_recv(s, s as usize * MSG, MSG).unwrap();
                    }
                    id.accept(b"accept").unwrap();
                    pas_qp = Some(q);
                    pas_id = Some(id);
                }
                cm_event::RDMA_CM_EVENT_ESTABLISHED => pas_up = true,
                k => panic!("unexpected passive-side event {k}"),
            }
        }
    }
    Outcome::Up(Box::new(Pair {
        act_qp: act_qp.unwrap(),
        pas_qp: pas_qp.unwrap(),
        _act_id: act_id,
        _pas_id: pas_id.unwrap(),
        _listener: listener,
        _act_ch: act_ch,
        _lis_ch: lis_ch,
    }))
}

/// Polls `qp`'s send (or receive) queue until `n` completions arrived; returns them.
fn reap(qp: &mut Qp, send: bool, n: usize) -> Vec<Wc> {
    let mut out = Vec::new();
    let start = Instant::now();
    while out.len() < n {
        assert!(start.elapsed() < WAIT, "{} of {n} completions", out.len());
        let mut f = |w: Wc| out.push(w);
        if send {
            qp.poll_send_cq(&mut f).unwrap();
        } else {
            qp.poll_recv_cq(&mut f).unwrap();
        }
    }
    out
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn rdma_read_write_into_a_peers_keyed_region() {
    let Some(addr) = test_addr("rdma_read_write_into_a_peers_keyed_region") else {
        return;
    };
    let Outcome::Up(mut p) = connect(addr, None) else {
        panic!("rejected")
    };
    let theirs = pattern(7, DATA);
    p.pas_qp.mem_mut(Mem::Data).copy_from_slice(&theirs);
    let (raddr, rkey) = p.pas_qp.remote_ref(Mem::Data, 0);

    // 64 READs in flight at once, each a different piece of the peer's region.
    let pieces: Vec<(usize, usize)> = (0..64).map(|i| (i * 1000, 24 + i * 13)).collect();
    for (i, &(off, len)) in pieces.iter().enumerate() {
        let remote = (raddr + off as u64, rkey);
        p.act_qp
            .post_rdma(i as u64, RdmaOp::Read, Mem::Data, off, len, remote, true)
            .unwrap();
    }
    let wcs = reap(&mut p.act_qp, true, pieces.len());
    assert!(
        wcs.iter().all(|w| w.ok),
        "READ completions: {:?}",
        wcs.iter().find(|w| !w.ok)
    );
    for &(off, len) in &pieces {
        assert_eq!(&p.act_qp.mem(Mem::Data)[off..off + len], &theirs[off..off + len]);
    }
    // One large READ of the whole region.
    p.act_qp
        .post_rdma(100, RdmaOp::Read, Mem::Data, 0, DATA, (raddr, rkey), true)
        .unwrap();
    assert!(reap(&mut p.act_qp, true, 1)[0].ok);
    assert_eq!(p.act_qp.mem(Mem::Data), &theirs[..]);

    // A WRITE then a SEND on the same queue pair: when the SEND is received, the WRITE's
    // data is in place (RC ordering, what an NVMe/RDMA response after read data relies on).
    let ours = pattern(99, DATA);
    p.act_qp.mem_mut(Mem::Data).copy_from_slice(&ours);
    p.act_qp
        .post_rdma(200, RdmaOp::Write, Mem::Data, 4096, 20000, (raddr + 30000, rkey), false)
        .unwrap();
    p.act_qp.mem_mut(Mem::Send)[..4].copy_from_slice(b"done");
    p.act_qp.post_send(201, 0, 4, true).unwrap();
    let got = reap(&mut p.pas_qp, false, 1);
    assert!(got[0].ok && got[0].byte_len == 4);
    assert_eq!(&p.pas_qp.mem(Mem::Data)[30000..50000], &ours[4096..24096]);
    assert_eq!(&p.pas_qp.mem(Mem::Data)[..30000], &theirs[..30000]);
    let sent = reap(&mut p.act_qp, true, 1);
    assert!(sent[0].ok && sent[0].wr_id == 201);

    // The local side's bounds are checked before posting.
    assert!(p
        .act_qp
        .post_rdma(300, RdmaOp::Read, Mem::Data, DATA - 8, 16, (raddr, rkey), true)
        .is_err());
    // Past the peer's registration: the peer's NIC refuses it, we get a completion error.
    p.act_qp
        .post_rdma(
            301,
            RdmaOp::Read,
            Mem::Data,
            0,
            4096,
            (raddr + DATA as u64 - 8, rkey),
            true,
        )
        .unwrap();
    let bad = reap(&mut p.act_qp, true, 1);
    assert!(
        !bad[0].ok && bad[0].wr_id == 301,
        "an out-of-range READ must fail: {:?}",
        bad[0]
    );
}

#[test]
fn reject_carries_private_data() {
    let Some(addr) = test_addr("reject_carries_private_data") else {
        return;
    };
    // NVMe/RDMA's reject: record format 0, status 4 (invalid HSQSIZE).
    match connect(addr, Some(&[0, 0, 4, 0])) {
        Outcome::Rejected(private) => assert_eq!(&private[..4], &[0, 0, 4, 0]),
        Outcome::Up(_) => panic!("a rejected request opened"),
    }
}
