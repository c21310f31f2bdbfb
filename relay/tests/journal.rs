//! Journal behaviour across processes and damage: kill -9 after acknowledgement, a corrupt
//! tail cut and reported, a full journal pushing back, release reclaiming space.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use relay::journal::{CutReason, Journal, JournalConfig, JournalError};

use engine::testing::TempDir;

/// Deterministic payload of a record, so a reader can check every byte.
fn payload(lsn: u64) -> Vec<u8> {
    let len = 512 + (lsn as usize * 977) % 9000;
    (0..len)
        .map(|i| (lsn as usize).wrapping_mul(131).wrapping_add(i) as u8)
        .collect()
}

fn wait_durable(j: &mut Journal, lsn: u64) {
    let start = Instant::now();
    while j.poll().unwrap() < lsn {
        assert!(start.elapsed() < Duration::from_secs(30), "LSN {lsn} never durable");
        std::thread::yield_now();
    }
}

fn append_retry(j: &mut Journal, lsn: u64) {
    loop {
        match j.append(lsn, lsn, &[&payload(lsn)]) {
            Ok(_) => return,
            Err(JournalError::Busy) => {
                j.poll().unwrap();
            }
            Err(e) => panic!("append {lsn}: {e}"),
        }
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bjl"))
        .collect();
    v.sort();
    v
}

/// Checks that every LSN in `1..=upto` is present once, in order, with its exact payload.
fn assert_all_present(j: &mut Journal, upto: u64) {
    let mut next = 1;
    j.read_range(1, upto, &mut |r| {
        if r.lsn_first > upto {
            return;
        }
        assert_eq!(r.lsn_first, next, "LSN missing or out of order");
        assert_eq!(
            r.payload,
            &payload(r.lsn_first)[..],
            "payload of LSN {} differs",
            r.lsn_first
        );
        next += 1;
    })
    .unwrap();
    assert_eq!(next, upto + 1, "acknowledged LSNs {next}..={upto} lost");
}

const CHILD_ENV: &str = "BATON_JOURNAL_CHILD_DIR";

/// Child half of `acknowledged_records_survive_kill_9`: appends forever, printing each LSN
/// once it is durable (the moment a relay would acknowledge it). Does nothing in a normal run.
#[test]
fn child_appender() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let (mut j, _) = Journal::open(JournalConfig::new(dir)).unwrap();
    let mut out = std::io::stdout().lock();
    let mut acked = j.durable_lsn();
    let mut lsn = j.appended_lsn();
    for _ in 0..1_000_000 {
        // Bursts of a few appends between polls: several batches in flight at the kill.
        for _ in 0..(lsn % 7 + 1) {
            lsn += 1;
            match j.append(lsn, lsn, &[&payload(lsn)]) {
                Ok(_) => {}
                Err(JournalError::Busy) => {
                    lsn -= 1;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let durable = j.poll().unwrap();
        if durable > acked {
            acked = durable;
            writeln!(out, "ACK {acked}").unwrap();
            out.flush().unwrap();
        }
    }
}

fn kill_9_round(base: &str) {
    let d = TempDir::new(base, "kill9");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_appender", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &d.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = 0u64;
    let lines = BufReader::new(child.stdout.take().unwrap());
    for line in lines.lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("ACK ") {
            acked = n.parse().unwrap();
            if acked >= 3000 {
                break;
            }
        }
    }
    // SIGKILL while appends are in flight.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(acked >= 3000, "child stopped early at {acked}");

    let (mut j, report) = Journal::open(JournalConfig::new(&d.0)).unwrap();
    eprintln!("{base}: acked {acked} before kill -9, recovered {report:?}");
    assert!(
        report.lsn_last >= acked,
        "{base}: recovered up to {} but {acked} was acknowledged",
        report.lsn_last
    );
    assert_all_present(&mut j, acked);
    // The journal goes on after recovery.
    let next = j.appended_lsn() + 1;
    append_retry(&mut j, next);
    wait_durable(&mut j, next);
}

#[test]
fn acknowledged_records_survive_kill_9() {
    kill_9_round("/var/tmp");
    kill_9_round("/dev/shm");
}

#[test]
fn corrupt_tail_is_cut_and_reported_never_replayed() {
    let d = TempDir::new("/var/tmp", "tail");
    {
        let (mut j, _) = Journal::open(JournalConfig::new(&d.0)).unwrap();
        for lsn in 1..=50 {
            append_retry(&mut j, lsn);
            if lsn % 10 == 0 {
                wait_durable(&mut j, lsn);
            }
        }
        wait_durable(&mut j, 50);
    }
    // Flip a byte inside the payload of the last record and add half a record of garbage.
    let seg = segment_files(&d.0).into_iter().next().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let last_len = payload(50).len();
    let len_before = bytes.len();
    // The last batch ends with a pad record of at most 2 x 4096 bytes; search back for LSN 50.
    let pos = (0..bytes.len() - 48)
        .rev()
        .find(|&i| bytes[i..i + 4] == *b"BTJN" && bytes[i + 24..i + 32] == 50u64.to_le_bytes())
        .unwrap();
    bytes[pos + 48 + last_len / 2] ^= 0x10;
    bytes.extend_from_slice(&[0xA5; 100]);
    std::fs::write(&seg, &bytes).unwrap();

    let (mut j, report) = Journal::open(JournalConfig::new(&d.0)).unwrap();
    let torn = report.torn_tail.expect("corruption must be reported");
    assert_eq!(torn.offset, pos as u64, "cut exactly where the bad record starts");
    assert_eq!(torn.bytes_cut, (len_before + 100 - pos) as u64);
    assert_eq!(torn.segments_dropped, 0);
    assert!(matches!(
        torn.reason,
        CutReason::Record(relay::journal::record::RecordError::Crc { .. })
    ));
    assert_eq!((report.records, report.lsn_last), (49, 49));
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        pos as u64,
        "tail truncated on disk"
    );
    // LSN 50 is not replayed; the primary's resend is accepted again.
    let mut saw_50 = false;
    j.read_range(1, 100, &mut |r| saw_50 |= r.lsn_last >= 50).unwrap();
    assert!(!saw_50);
    assert_all_present(&mut j, 49);
    append_retry(&mut j, 50);
    wait_durable(&mut j, 50);
    drop(j);
    let (mut j, report) = Journal::open(JournalConfig::new(&d.0)).unwrap();
    assert!(report.torn_tail.is_none(), "a cut journal reopens clean");
    assert_all_present(&mut j, 50);
}

#[test]
fn corruption_in_an_older_segment_drops_what_follows() {
    let d = TempDir::new("/dev/shm", "middle");
    let mut cfg = JournalConfig::new(&d.0);
    cfg.segment_bytes = 32 * 1024;
    {
        let (mut j, _) = Journal::open(cfg.clone()).unwrap();
        for lsn in 1..=40 {
            append_retry(&mut j, lsn);
            j.poll().unwrap();
        }
        wait_durable(&mut j, 40);
    }
    let files = segment_files(&d.0);
    assert!(files.len() >= 4);
    // Damage the second segment's first record header.
    let mut b = std::fs::read(&files[1]).unwrap();
    b[20] ^= 1;
    std::fs::write(&files[1], &b).unwrap();
    let (mut j, report) = Journal::open(cfg).unwrap();
    let torn = report.torn_tail.unwrap();
    assert_eq!(torn.offset, 0);
    assert_eq!(torn.segments_dropped, files.len() - 2);
    let kept = report.lsn_last;
    assert!((1..40).contains(&kept));
    assert_all_present(&mut j, kept);
    // Only the first segment and the new active one remain.
    assert_eq!(segment_files(&d.0).len(), 2);
}

#[test]
fn full_journal_pushes_back_and_release_makes_room() {
    let d = TempDir::new("/var/tmp", "full");
    let mut cfg = JournalConfig::new(&d.0);
    cfg.segment_bytes = 64 * 1024;
    cfg.journal_bytes_max = 512 * 1024;
    let (mut j, _) = Journal::open(cfg).unwrap();
    let mut lsn = 0;
    let full = loop {
        match j.append(lsn + 1, lsn + 1, &[&payload(lsn + 1)]) {
            Ok(_) => lsn += 1,
            Err(JournalError::Busy) => {
                j.poll().unwrap();
            }
            Err(JournalError::Full {
                used_bytes,
                need_bytes,
                max_bytes,
            }) => break (used_bytes, need_bytes, max_bytes),
            Err(e) => panic!("{e}"),
        }
        j.poll().unwrap();
        assert!(lsn < 10_000, "journal never filled");
    };
    assert_eq!(full.2, 512 * 1024);
    assert!(full.0 + full.1 > full.2 && full.0 <= full.2);
    assert!(j.used_bytes() <= 512 * 1024);
    // Pushback, not loss: every record accepted before is there.
    wait_durable(&mut j, lsn);
    assert_all_present(&mut j, lsn);
    // Still full until the standby confirms.
    assert!(matches!(
        j.append(lsn + 1, lsn + 1, &[&payload(lsn + 1)]),
        Err(JournalError::Full { .. })
    ));
    let files_before = segment_files(&d.0).len();
    let freed = j.release(lsn / 2).unwrap();
    assert!(freed > 0);
    assert!(
        segment_files(&d.0).len() < files_before,
        "release deleted no segment file"
    );
    append_retry(&mut j, lsn + 1);
    wait_durable(&mut j, lsn + 1);
    let mut first = None;
    j.read_range(1, u64::MAX, &mut |r| {
        first.get_or_insert(r.lsn_first);
    })
    .unwrap();
    let first = first.unwrap();
    assert!(
        first > 1 && first <= lsn / 2 + 1,
        "released range still readable or too much released: {first}"
    );
}
