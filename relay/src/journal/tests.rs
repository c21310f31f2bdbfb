//! Unit tests of the journal: group commit, padding, read-back, back-pressure, release.

use super::*;
use engine::buf::DmaBuf;
use record::RecordKind;
use std::time::{Duration, Instant};

pub(crate) use engine::testing::TempDir;

fn wait_durable(j: &mut Journal, lsn: u64) {
    let start = Instant::now();
    while j.poll().unwrap() < lsn {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "LSN {lsn} never became durable"
        );
        std::thread::yield_now();
    }
}

fn payload(lsn: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (lsn as usize * 31 + i) as u8).collect()
}

fn cfg(dir: &TempDir) -> JournalConfig {
    JournalConfig::new(&dir.0)
}

#[test]
fn group_commit_makes_a_burst_durable_with_one_sync() {
    for base in ["/dev/shm", "/var/tmp"] {
        let d = TempDir::new(base, "burst");
        let (mut j, rep) = Journal::open(cfg(&d)).unwrap();
        assert_eq!(rep.records, 0);
        for lsn in 1..=100 {
            j.append(lsn, lsn, &[&payload(lsn, 4096 + 48)]).unwrap();
        }
        assert_eq!(j.durable_lsn(), 0, "nothing is durable before a poll");
        wait_durable(&mut j, 100);
        let st = j.stats();
        assert_eq!(
            st.batches_committed, 1,
            "{base}: 100 appends between polls must share one sync"
        );
        assert_eq!(st.records_committed, 100);
        if j.direct_io() {
            assert_eq!(
                j.used_bytes() % DIRECT_ALIGN_BYTES as u64,
                0,
                "O_DIRECT batch not padded"
            );
        }
        let mut seen = Vec::new();
        j.read_range(1, 100, &mut |r| {
            assert_eq!(r.payload, &payload(r.lsn_first, 4096 + 48)[..]);
            seen.push(r.lsn_first);
        })
        .unwrap();
        assert_eq!(seen, (1..=100).collect::<Vec<_>>());
    }
}

#[test]
fn appends_during_a_commit_go_into_the_next_batch() {
    let d = TempDir::new("/var/tmp", "pipeline");
    let (mut j, _) = Journal::open(cfg(&d)).unwrap();
    j.append(1, 1, &[b"one"]).unwrap();
    j.poll().unwrap(); // batch 1 in flight
    j.append(2, 3, &[b"two", b"three"]).unwrap();
    wait_durable(&mut j, 3);
    assert_eq!(j.stats().batches_committed, 2);
    let mut got = Vec::new();
    j.read_range(2, 2, &mut |r| got.push((r.lsn_first, r.lsn_last, r.payload.to_vec())))
        .unwrap();
    assert_eq!(got, vec![(2, 3, b"twothree".to_vec())]);
}

#[test]
fn lsn_rules_are_enforced() {
    let d = TempDir::new("/dev/shm", "lsn");
    let (mut j, _) = Journal::open(cfg(&d)).unwrap();
    j.append(5, 7, &[b"x"]).unwrap();
    assert!(matches!(
        j.append(7, 8, &[b"x"]),
        Err(JournalError::LsnOrder { last: 7, lsn_first: 7 })
    ));
    assert!(matches!(j.append(9, 8, &[b"x"]), Err(JournalError::BadLsnRange { .. })));
    assert!(matches!(j.append(0, 0, &[b"x"]), Err(JournalError::BadLsnRange { .. })));
    let big = vec![0u8; RECORD_PAYLOAD_BYTES_MAX + 1];
    assert!(matches!(
        j.append(10, 10, &[&big]),
        Err(JournalError::RecordTooLarge { .. })
    ));
}

#[test]
fn staging_exhaustion_is_busy_not_loss() {
    let d = TempDir::new("/dev/shm", "busy");
    let (mut j, _) = Journal::open(cfg(&d)).unwrap();
    let big = vec![7u8; RECORD_PAYLOAD_BYTES_MAX];
    let mut lsn = 0;
    // Without polling, the staging buffers fill and appends are refused, none dropped.
    let busy = loop {
        match j.append(lsn + 1, lsn + 1, &[&big]) {
            Ok(_) => lsn += 1,
            Err(JournalError::Busy) => break true,
            Err(e) => panic!("{e}"),
        }
        assert!(lsn < 100, "staging never filled");
    };
    assert!(busy && lsn >= STAGING_BUFFERS as u64);
    wait_durable(&mut j, lsn);
    j.append(lsn + 1, lsn + 1, &[&big]).unwrap();
    wait_durable(&mut j, lsn + 1);
    assert_eq!(j.read_range(1, u64::MAX, &mut |_| {}).unwrap() as u64, lsn + 1);
}

#[test]
fn segments_roll_and_release_reclaims_them() {
    let d = TempDir::new("/var/tmp", "roll");
    let mut c = cfg(&d);
    c.segment_bytes = 64 * 1024;
    let (mut j, _) = Journal::open(c).unwrap();
    for lsn in 1..=40u64 {
        loop {
            match j.append(lsn, lsn, &[&payload(lsn, 8000)]) {
                Ok(_) => break,
                Err(JournalError::Busy) => {
                    j.poll().unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        j.poll().unwrap();
    }
    wait_durable(&mut j, 40);
    let segs = j.segment_count();
    assert!(segs >= 4, "expected several segments, got {segs}");
    let used = j.used_bytes();
    let freed = j.release(20).unwrap();
    assert!(freed > 0 && j.used_bytes() == used - freed);
    // Every LSN above 20 is still there; released ones may be gone.
    let mut seen = Vec::new();
    j.read_range(1, 40, &mut |r| seen.push(r.lsn_first)).unwrap();
    assert!((21..=40).all(|l| seen.contains(&l)));
    assert!(seen.len() < 40);
    // Releasing everything keeps the active segment.
    j.release(u64::MAX).unwrap();
    assert_eq!(j.segment_count(), 1);
}

/// Reads everything from `lsn` on through the io_uring read path, as a forwarder does.
fn forward_all(j: &mut Journal, lsn: u64) -> Vec<(u64, Vec<u8>)> {
    let mut cursor = j.read_cursor(lsn);
    let mut buf = Some(DmaBuf::alloc(READ_BUF_BYTES_MIN));
    let mut out = Vec::new();
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(20), "forwarding stuck");
        if let Some(b) = buf.take() {
            match j.submit_read(&mut cursor, b, 7) {
                Ok(Some(_)) => return out, // caught up with the durable end
                Ok(None) => {}
                Err((_, e)) => panic!("{e}"),
            }
        }
        j.poll().unwrap();
        j.poll_reads(&mut |d| {
            assert_eq!(d.user_data, 7);
            cursor = d
                .for_each_record(lsn, &mut |r| out.push((r.lsn_first, r.payload.to_vec())))
                .unwrap();
            buf = Some(d.buf);
        });
    }
}

#[test]
fn forwarding_reads_through_io_uring_cross_segments() {
    for base in ["/dev/shm", "/var/tmp"] {
        let d = TempDir::new(base, "fwd");
        let mut c = cfg(&d);
        c.segment_bytes = 256 * 1024;
        let (mut j, _) = Journal::open(c).unwrap();
        // Records of varied sizes, some larger than a direct block, over several segments.
        for lsn in 1..=300u64 {
            loop {
                match j.append(lsn, lsn, &[&payload(lsn, 100 + (lsn as usize * 611) % 9000)]) {
                    Ok(_) => break,
                    Err(JournalError::Busy) => {
                        j.poll().unwrap();
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            if lsn % 3 == 0 {
                j.poll().unwrap();
            }
        }
        // Some may still be in flight: the reader sees only durable ones, in order.
        let early = forward_all(&mut j, 1);
        let durable = j.durable_lsn();
        assert!(early.iter().all(|(l, _)| *l <= durable));
        wait_durable(&mut j, 300);
        assert!(j.segment_count() > 3);
        let all = forward_all(&mut j, 1);
        assert_eq!(all.len(), 300, "{base}");
        for (i, (lsn, p)) in all.iter().enumerate() {
            assert_eq!(*lsn, i as u64 + 1);
            assert_eq!(p, &payload(*lsn, 100 + (*lsn as usize * 611) % 9000));
        }
        // From the middle, and after a release under the reader.
        let tail = forward_all(&mut j, 250);
        assert_eq!(tail.first().map(|t| t.0), Some(250));
        assert_eq!(tail.len(), 51);
        j.release(200).unwrap();
        let after = forward_all(&mut j, 1);
        assert!(after.first().unwrap().0 > 1 && after.first().unwrap().0 <= 201);
        assert_eq!(after.last().unwrap().0, 300);
    }
}

#[test]
fn on_tmpfs_a_batch_is_stored_inline_and_survives_reopen() {
    let d = TempDir::new("/dev/shm", "memory");
    let (mut j, rep) = Journal::open(cfg(&d)).unwrap();
    assert!(rep.memory_media && j.memory_media(), "/dev/shm is tmpfs");
    assert!(!j.direct_io(), "no O_DIRECT (and no 4 KiB padding) on memory media");
    for lsn in 1..=10 {
        j.append(lsn, lsn, &[&payload(lsn, 4096 + 48)]).unwrap();
    }
    // No fdatasync and no io_uring round trip: durable by the end of the first poll.
    assert_eq!(j.poll().unwrap(), 10);
    assert_eq!(j.stats().batches_committed, 1);
    j.append(11, 11, &[&payload(11, 100)]).unwrap();
    assert_eq!(j.poll().unwrap(), 11);
    drop(j);
    let (mut j, rep) = Journal::open(cfg(&d)).unwrap();
    assert_eq!((rep.records, rep.lsn_first, rep.lsn_last), (11, 1, 11));
    assert!(rep.torn_tail.is_none());
    let mut seen = Vec::new();
    j.read_range(1, 11, &mut |r| {
        let len = if r.lsn_first == 11 { 100 } else { 4096 + 48 };
        assert_eq!(r.payload, &payload(r.lsn_first, len)[..]);
        seen.push(r.lsn_first);
    })
    .unwrap();
    assert_eq!(seen, (1..=11).collect::<Vec<_>>());
    // The reopened journal goes on appending where it was.
    j.append(12, 12, &[&payload(12, 64)]).unwrap();
    assert_eq!(j.poll().unwrap(), 12);
}

#[test]
fn off_tmpfs_the_journal_still_syncs() {
    let d = TempDir::new("/var/tmp", "disk");
    let (j, rep) = Journal::open(cfg(&d)).unwrap();
    if engine::is_memory_fs(&File::open(&d.0).unwrap()) {
        return; // /var/tmp on tmpfs: nothing to check here
    }
    assert!(!rep.memory_media && !j.memory_media());
}

fn append_retry(j: &mut Journal, lsn: u64, len: usize) {
    let start = Instant::now();
    loop {
        match j.append(lsn, lsn, &[&payload(lsn, len)]) {
            Ok(_) => return,
            Err(JournalError::Busy) => {
                j.poll().unwrap();
            }
            Err(e) => panic!("{e}"),
        }
        assert!(start.elapsed() < Duration::from_secs(20), "append of {lsn} stuck");
    }
}

fn files(dir: &Path, prefix: &str, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// Appends `from..=to` with payloads of varied sizes, polling as a reactor does.
fn fill(j: &mut Journal, from: u64, to: u64) {
    for lsn in from..=to {
        append_retry(j, lsn, 500 + (lsn as usize * 977) % 7000);
        if lsn.is_multiple_of(4) {
            j.poll().unwrap();
        }
    }
    wait_durable(j, to);
}

fn assert_range(j: &mut Journal, from: u64, to: u64) {
    let mut seen = Vec::new();
    j.read_range(from, to, &mut |r| {
        assert_eq!(
            r.payload,
            &payload(r.lsn_first, 500 + (r.lsn_first as usize * 977) % 7000)[..]
        );
        seen.push(r.lsn_first);
    })
    .unwrap();
    assert_eq!(seen, (from..=to).collect::<Vec<_>>());
}

#[test]
fn released_segments_are_reused_and_recovery_stops_at_their_old_bytes() {
    for base in ["/dev/shm", "/var/tmp"] {
        let d = TempDir::new(base, "recycle");
        let mut c = cfg(&d);
        c.segment_bytes = 64 * 1024;
        c.spare_segments = 16;
        let (mut j, _) = Journal::open(c.clone()).unwrap();
        fill(&mut j, 1, 100);
        let segs = j.segment_count();
        assert!(segs >= 5, "{base}: several segments");
        // The standby confirmed everything so far: the old segments become spares.
        j.release(100).unwrap();
        assert_eq!(j.spare_count(), segs - 1, "{base}: all but the active one kept");
        assert_eq!(files(&d.0, "spare-", ".bjs").len(), segs - 1);
        // The next segments reuse them; their old bytes lie after the new records.
        let created = j.stats().segments_created;
        fill(&mut j, 101, 180);
        let st = j.stats();
        assert!(st.segments_recycled >= 3, "{base}: {st:?}");
        assert_eq!(st.segments_created, created, "{base}: no new file while spares last");
        assert!(!files(&d.0, "seg-", "-r.bjl").is_empty());
        assert_range(&mut j, 101, 180);
        drop(j);
        // Reopen: every record is found, none of the old bytes is taken for one, and the
        // end of a reused file is not reported as a torn tail.
        let (mut j, rep) = Journal::open(c.clone()).unwrap();
        assert!(rep.torn_tail.is_none(), "{base}: {rep:?}");
        assert!(rep.recycled_tail_bytes > 0, "{base}: {rep:?}");
        assert_eq!(rep.lsn_last, 180, "{base}");
        assert_range(&mut j, 101, 180);
        // And it goes on after the reopen.
        fill(&mut j, 181, 200);
        drop(j);
        let (mut j, rep) = Journal::open(c).unwrap();
        assert!(rep.torn_tail.is_none());
        assert_range(&mut j, 101, 200);
    }
}

#[test]
fn a_torn_record_in_a_reused_segment_is_still_cut_and_reported() {
    let d = TempDir::new("/dev/shm", "recycle-torn");
    let mut c = cfg(&d);
    c.segment_bytes = 64 * 1024;
    let (mut j, _) = Journal::open(c.clone()).unwrap();
    fill(&mut j, 1, 40);
    j.release(40).unwrap();
    fill(&mut j, 41, 60);
    let last = j.active().path.clone();
    assert!(last.to_str().unwrap().ends_with("-r.bjl"), "{last:?}");
    drop(j);
    // Flip a payload byte of the last record of the newest (reused) segment.
    let mut bytes = std::fs::read(&last).unwrap();
    let pos = (0..bytes.len() - RECORD_HDR_BYTES)
        .rev()
        .find(|&i| record::check(&bytes[i..]).is_ok_and(|(h, _)| h.kind == RecordKind::Frame && h.lsn_first == 60))
        .unwrap();
    bytes[pos + RECORD_HDR_BYTES + 10] ^= 0x40;
    std::fs::write(&last, &bytes).unwrap();
    let (mut j, rep) = Journal::open(c).unwrap();
    let torn = rep.torn_tail.expect("a torn record of this segment is reported");
    assert_eq!(torn.offset, pos as u64);
    assert!(matches!(torn.reason, CutReason::Record(RecordError::Crc { .. })));
    assert_eq!(rep.lsn_last, 59);
    assert_range(&mut j, 41, 59);
}

#[test]
fn preallocated_spares_are_made_once_adopted_at_reopen_and_bounded() {
    let d = TempDir::new("/dev/shm", "prealloc");
    let mut c = cfg(&d);
    c.segment_bytes = 64 * 1024;
    c.preallocate_bytes = 5 * 64 * 1024 - 1; // rounds up to 5 segments
    c.journal_bytes_max = 4 * 64 * 1024; // but only 4 fit
    let (mut j, rep) = Journal::open(c.clone()).unwrap();
    // One of the four became the active segment.
    assert_eq!(rep.spare_segments, 4);
    assert_eq!(j.spare_count(), 3);
    assert_eq!(j.stats().segments_recycled, 1);
    for f in files(&d.0, "spare-", ".bjs") {
        assert_eq!(std::fs::metadata(d.0.join(f)).unwrap().len(), 64 * 1024);
    }
    fill(&mut j, 1, 20);
    assert_eq!(j.stats().segments_created, 0, "appends went to preallocated files only");
    drop(j);
    let (mut j, rep) = Journal::open(c).unwrap();
    assert!(rep.torn_tail.is_none(), "{rep:?}");
    assert_range(&mut j, 1, 20);
}

#[test]
fn on_tmpfs_records_go_into_mapped_segments_of_any_record_size() {
    let d = TempDir::new("/dev/shm", "mapped");
    let mut c = cfg(&d);
    c.segment_bytes = 16 * 1024;
    let (mut j, _) = Journal::open(c.clone()).unwrap();
    // Records larger than a segment (the first into the empty active segment, others after
    // smaller ones), and small ones, over many roll-overs.
    let size = |lsn: u64| {
        if lsn.is_multiple_of(5) {
            40_000
        } else {
            300 + lsn as usize * 97 % 5000
        }
    };
    for lsn in 1..=60 {
        j.append(lsn, lsn, &[&payload(lsn, size(lsn))]).unwrap();
        if lsn.is_multiple_of(7) {
            assert_eq!(j.poll().unwrap(), lsn, "durable by the next poll");
        }
    }
    assert_eq!(j.durable_lsn(), 56, "nothing after the last poll is reported durable");
    assert_eq!(j.poll().unwrap(), 60);
    assert!(j.segment_count() > 10);
    let check = |j: &mut Journal| {
        let mut seen = Vec::new();
        j.read_range(1, 60, &mut |r| {
            assert_eq!(r.payload, &payload(r.lsn_first, size(r.lsn_first))[..]);
            seen.push(r.lsn_first);
        })
        .unwrap();
        assert_eq!(seen, (1..=60).collect::<Vec<_>>());
    };
    check(&mut j);
    // The forwarding read path sees the same bytes as the mapping wrote.
    let fwd = forward_all(&mut j, 1);
    assert_eq!(fwd.len(), 60);
    drop(j);
    // The zeroes after each segment's records are its end, not a torn tail.
    let (mut j, rep) = Journal::open(c).unwrap();
    assert!(rep.torn_tail.is_none(), "{rep:?}");
    assert_eq!(rep.lsn_last, 60);
    check(&mut j);
}

#[test]
fn a_frame_is_sealed_from_its_envelope_crc_and_reads_back_checked() {
    use rdma_transport::wire::{self, BatchEncoder};
    for base in ["/dev/shm", "/var/tmp"] {
        let d = TempDir::new(base, "frame-crc");
        let (mut j, _) = Journal::open(cfg(&d)).unwrap();
        let mut frames = Vec::new();
        for lsn in 1..=20u64 {
            let data = payload(lsn, 4096 * (1 + lsn as usize % 3));
            let mut e = BatchEncoder::ops(1, 4096);
            e.write(lsn, lsn * 8, (data.len() / 4096) as u32, data.len()).unwrap();
            let hdr = e.finish(&[&data]).unwrap();
            let mut f = Vec::new();
            wire::frame_to_vec(&hdr, &[&data], &mut f);
            // As the relay passes it: the encoded header, then the data slices.
            j.append_frame(lsn, lsn, &[hdr.as_bytes(), &data]).unwrap();
            frames.push(f);
        }
        // Not a whole frame: appended like `append` (CRC over the bytes).
        j.append_frame(21, 21, &[b"not a frame"]).unwrap();
        wait_durable(&mut j, 21);
        let check = |j: &mut Journal| {
            let mut n = 0;
            j.read_range(1, 21, &mut |r| {
                if r.lsn_first <= 20 {
                    assert_eq!(r.payload, &frames[r.lsn_first as usize - 1][..]);
                    assert!(wire::parse(r.payload).is_ok());
                } else {
                    assert_eq!(r.payload, b"not a frame");
                }
                n += 1;
            })
            .unwrap();
            assert_eq!(n, 21);
        };
        check(&mut j);
        assert_eq!(
            forward_all(&mut j, 1).len(),
            21,
            "{base}: the forwarding read path checks the CRCs too"
        );
        drop(j);
        let (mut j, rep) = Journal::open(cfg(&d)).unwrap();
        assert!(rep.torn_tail.is_none(), "{base}: {rep:?}");
        check(&mut j);
    }
}

#[test]
fn a_frame_whose_envelope_crc_lies_is_never_taken_for_good() {
    use rdma_transport::wire::BatchEncoder;
    let d = TempDir::new("/dev/shm", "frame-lie");
    let (mut j, _) = Journal::open(cfg(&d)).unwrap();
    let data = payload(1, 4096);
    let mut e = BatchEncoder::ops(1, 4096);
    e.write(1, 0, 1, 4096).unwrap();
    let hdr = e.finish(&[&data]).unwrap();
    j.append_frame(1, 1, &[hdr.as_bytes(), &data]).unwrap();
    // Same envelope (same body CRC), other data: the record's derived CRC cannot match.
    let mut other = data.clone();
    other[100] ^= 1;
    j.append_frame(2, 2, &[hdr.as_bytes(), &other]).unwrap();
    wait_durable(&mut j, 2);
    drop(j);
    let (mut j, rep) = Journal::open(cfg(&d)).unwrap();
    let torn = rep.torn_tail.expect("the bad record is cut");
    assert!(matches!(torn.reason, CutReason::Record(RecordError::Crc { .. })));
    assert_eq!(rep.lsn_last, 1);
    assert_eq!(j.read_range(1, 2, &mut |_| {}).unwrap(), 1);
}

#[test]
fn a_torn_record_on_tmpfs_reports_exactly_the_bytes_written() {
    // Records of 4280 bytes of 0xA5: span 4328, no padding, last byte non-zero.
    const LEN: usize = 4280;
    let span = record::span(LEN) as u64;
    assert_eq!(span, 4328);
    /// Name, how the last record is torn, bytes of it still written after the tear.
    type Tear = (&'static str, fn(&mut [u8]), u64);
    let tears: [Tear; 2] = [
        // Written whole, one payload byte flipped (a bad medium, or a copy torn in place).
        ("flipped", |r| r[RECORD_HDR_BYTES + 10] ^= 0x40, span),
        // The copy stopped half-way through the payload (kill -9 during `append`): the rest
        // of the record is still the fresh mapping's zeroes.
        (
            "half",
            |r| r[RECORD_HDR_BYTES + LEN / 2..].fill(0),
            (RECORD_HDR_BYTES + LEN / 2) as u64,
        ),
    ];
    for (name, tear, expect_cut) in tears {
        let d = TempDir::new("/dev/shm", &format!("torn-exact-{name}"));
        let mut c = cfg(&d);
        c.segment_bytes = 1 << 20;
        let (mut j, rep) = Journal::open(c.clone()).unwrap();
        assert!(rep.memory_media, "/dev/shm is a memory file system");
        for lsn in 1..=10u64 {
            j.append(lsn, lsn, &[&[0xA5; LEN]]).unwrap();
        }
        assert_eq!(j.poll().unwrap(), 10);
        let path = j.active().path.clone();
        drop(j);
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 1 << 20, "{name}: the segment is sized whole");
        let at = 9 * span as usize; // the tenth record
        assert!(record::check(&bytes[at..]).is_ok_and(|(h, _)| h.lsn_first == 10));
        tear(&mut bytes[at..at + span as usize]);
        std::fs::write(&path, &bytes).unwrap();
        let (mut j, rep) = Journal::open(c).unwrap();
        let torn = rep.torn_tail.expect("the torn record is cut");
        assert_eq!(torn.offset, at as u64, "{name}");
        assert_eq!(
            torn.bytes_cut, expect_cut,
            "{name}: only written bytes count, not the segment's unwritten zeroes"
        );
        assert_eq!(torn.segments_dropped, 0);
        assert_eq!(rep.lsn_last, 9, "{name}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            at as u64,
            "{name}: truncated at the cut"
        );
        let mut seen = Vec::new();
        j.read_range(1, 10, &mut |r| {
            assert_eq!(r.payload, &[0xA5; LEN][..]);
            seen.push(r.lsn_first);
        })
        .unwrap();
        assert_eq!(seen, (1..=9).collect::<Vec<_>>(), "{name}");
    }
}

#[test]
fn a_journal_directory_is_opened_by_one_journal_at_a_time() {
    let d = TempDir::new("/dev/shm", "locked");
    let (mut j, _) = Journal::open(cfg(&d)).unwrap();
    j.append(1, 1, &[b"first"]).unwrap();
    assert_eq!(j.poll().unwrap(), 1);
    let segments = files(&d.0, "seg-", ".bjl");
    // A second open (a second relay, or two volumes given one directory) is refused before
    // it recovers, cuts or creates anything; flock locks belong to the open file
    // description, so this conflicts inside one process as between two.
    match Journal::open(cfg(&d)) {
        Err(e @ JournalError::InUse { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
            assert!(msg.contains(&d.0.display().to_string()), "{msg}");
        }
        Err(e) => panic!("second open: {e}"),
        Ok(_) => panic!("a second journal opened a live journal's directory"),
    }
    assert_eq!(
        files(&d.0, "seg-", ".bjl"),
        segments,
        "nothing created by the refused open"
    );
    // The first goes on, then frees the directory when dropped.
    j.append(2, 2, &[b"second"]).unwrap();
    assert_eq!(j.poll().unwrap(), 2);
    drop(j);
    let (mut j, rep) = Journal::open(cfg(&d)).unwrap();
    assert_eq!(rep.lsn_last, 2);
    let mut seen = Vec::new();
    j.read_range(1, 2, &mut |r| seen.push(r.payload.to_vec())).unwrap();
    assert_eq!(seen, [b"first".to_vec(), b"second".to_vec()]);
}
