//! Replication with real processes on loopback: `baton relay` processes with journals, a
//! primary (this test binary re-run as a child: a replicated volume over a RAM bdev and a
//! write driver printing `ACK <seq>` for every acknowledged write), and the test sink as
//! the standby. Processes are killed with SIGKILL; every wait is bounded.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rdma_transport::wire::{self, Frame, Op};
use relay::journal::{Journal, JournalConfig};
use support::common::*;
use support::*;

/// The primary child: this binary, running `primary_child`.
struct Primary {
    child: Child,
    lines: mpsc::Receiver<String>,
    acked: Vec<u64>,
    failed: Vec<u64>,
    caught_up: bool,
}

impl Primary {
    fn start(relays: &[String], policy: &str, down: &str, count: u64) -> Primary {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "primary_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("BATON_PRIMARY_RELAYS", relays.join(","))
            .env("BATON_PRIMARY_POLICY", policy)
            .env("BATON_PRIMARY_DOWN", down)
            .env("BATON_PRIMARY_COUNT", count.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = lines_of(out);
        Primary {
            child,
            lines,
            acked: Vec::new(),
            failed: Vec::new(),
            caught_up: false,
        }
    }
    fn take(&mut self, l: &str) {
        if let Some(s) = l.strip_prefix("ACK ") {
            self.acked.push(s.parse().unwrap());
        } else if let Some(s) = l.strip_prefix("FAIL ") {
            self.failed.push(s.parse().unwrap());
        } else if l.starts_with("CAUGHTUP") {
            self.caught_up = true;
        }
    }
    /// Reads output until `pred` holds (bounded).
    fn until(&mut self, what: &str, pred: impl Fn(&Primary) -> bool) {
        let start = Instant::now();
        while !pred(self) {
            let left = WAIT.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(l) => self.take(&l),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    assert!(
                        start.elapsed() < WAIT,
                        "primary: {what} not reached within {WAIT:?} ({} acked, {} failed)",
                        self.acked.len(),
                        self.failed.len()
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("primary exited before {what} ({} acked)", self.acked.len())
                }
            }
        }
    }
    /// SIGKILL, then read what it printed before dying.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.take(&l);
        }
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every write stamp held in the journal under `dir/<vol>` (opened after the relay died).
fn journal_stamps(dir: &Path, vol: &str) -> (Vec<u64>, relay::journal::RecoveryReport) {
    let (mut j, rep) = Journal::open(JournalConfig::new(dir.join(vol))).expect("journal opens");
    let mut stamps = Vec::new();
    j.read_range(1, u64::MAX, &mut |rec| {
        let Ok(Frame::Ops(b)) = wire::parse(rec.payload) else {
            panic!("record {} is not an Ops frame", rec.seq)
        };
        for op in &b.ops {
            if let Op::Write { data, .. } = op {
                stamps.push(u64::from_le_bytes(data[..8].try_into().unwrap()));
            }
        }
    })
    .unwrap();
    stamps.sort_unstable();
    (stamps, rep)
}

fn assert_all_in(acked: &[u64], stamps: &[u64], what: &str) {
    for s in acked {
        assert!(
            stamps.binary_search(s).is_ok(),
            "{what}: acknowledged write {s} missing"
        );
    }
}

/// The primary's body when this binary runs as the child (ignored otherwise).
#[test]
#[ignore]
fn primary_child() {
    use engine::reactor::{IdleMode, ReactorOpts, Reactors};
    use relay::volume::{AckPolicy, OnRelayDown, ReplicatedVolume, VolumeConfig};
    use std::io::Write;
    let Ok(relays) = std::env::var("BATON_PRIMARY_RELAYS") else {
        return;
    };
    let relays: Vec<SocketAddr> = relays.split(',').map(|a| a.parse().unwrap()).collect();
    let policy = std::env::var("BATON_PRIMARY_POLICY").unwrap();
    let down = std::env::var("BATON_PRIMARY_DOWN").unwrap();
    let count: u64 = std::env::var("BATON_PRIMARY_COUNT").unwrap().parse().unwrap();
    let reactors = Reactors::start(ReactorOpts {
        cores: vec![0],
        pin: false,
        idle: IdleMode::Poll,
    })
    .unwrap();
    let base = engine::bdev::malloc::create("base", 4096, 4096, Some([7; 16])).unwrap();
    let mut cfg = VolumeConfig::new("vol", relays);
    cfg.ack_policy = match policy.as_str() {
        "all" => AckPolicy::All,
        "any" => AckPolicy::Any,
        q => AckPolicy::Quorum(q.strip_prefix("quorum:").unwrap().parse().unwrap()),
    };
    cfg.on_relay_down = if down == "degraded" {
        OnRelayDown::Degraded
    } else {
        OnRelayDown::Block
    };
    cfg.relay_down_timeout_ms = 500;
    cfg.core = Some(0);
    let v = ReplicatedVolume::create(cfg, base).unwrap();
    let rx = drive_writes(0, v.clone(), 8, count, Arc::new(AtomicBool::new(false)));
    let mut out = std::io::stdout().lock();
    // libtest printed "test primary_child ... " without a newline: end that line first.
    writeln!(out).unwrap();
    for _ in 0..count {
        match rx.recv() {
            Ok(WriteResult::Ok(s)) => writeln!(out, "ACK {s}").unwrap(),
            Ok(WriteResult::Failed(s)) => writeln!(out, "FAIL {s}").unwrap(),
            Err(_) => break,
        }
        out.flush().unwrap();
    }
    // Stay up until every relay holds everything (a restarted relay catches up from us).
    loop {
        let st = v.status();
        if st.relays.iter().all(|r| r.acked_lsn >= st.completed_lsn && r.connected) {
            writeln!(out, "CAUGHTUP {}", st.completed_lsn).unwrap();
            out.flush().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let _ = &reactors;
    }
}

#[test]
fn primary_kill9_acknowledged_writes_are_in_every_relay_journal() {
    let d1 = TempDir::new("/var/tmp", "k9p-r1");
    let d2 = TempDir::new("/dev/shm", "k9p-r2");
    let mut r1 = RelayProc::start(&d1.0, free_port(), &[]);
    let mut r2 = RelayProc::start(&d2.0, free_port(), &[]);
    let mut p = Primary::start(&[r1.addr(), r2.addr()], "all", "block", 1_000_000);
    p.until("500 acks", |p| p.acked.len() >= 500);
    p.kill9();
    assert!(
        p.failed.is_empty(),
        "writes failed: {:?}",
        &p.failed[..p.failed.len().min(5)]
    );
    // Kill the relays too: what they acknowledged must be on disk.
    r1.kill9();
    r2.kill9();
    for (r, what) in [(&r1, "relay 1 (/var/tmp)"), (&r2, "relay 2 (/dev/shm)")] {
        let (stamps, _) = journal_stamps(&r.dir, "vol");
        assert_all_in(&p.acked, &stamps, what);
    }
}

#[test]
fn relay_kill9_under_load_catches_up_and_sink_gets_every_write_once_in_order() {
    let sink = Sink::start();
    let sa = sink.addr.to_string();
    let d1 = TempDir::new("/dev/shm", "k9r-r1");
    let d2 = TempDir::new("/dev/shm", "k9r-r2");
    let port1 = free_port();
    let mut r1 = RelayProc::start(&d1.0, port1, &["--standby", &sa]);
    let r2 = RelayProc::start(&d2.0, free_port(), &["--standby", &sa, "--backup"]);
    const N: u64 = 6000;
    let mut p = Primary::start(&[r1.addr(), r2.addr()], "all", "degraded", N);
    p.until("1000 acks", |p| p.acked.len() >= 1000);
    r1.kill9();
    p.until("2500 acks with relay 1 dead", |p| p.acked.len() >= 2500);
    let r1b = RelayProc::start(&d1.0, port1, &["--standby", &sa]);
    p.until("all writes done and both relays caught up", |p| p.caught_up);
    assert!(p.failed.is_empty(), "degraded mode failed writes: {}", p.failed.len());
    assert_eq!(p.acked.len() as u64, N);
    // The restarted relay holds everything again.
    let durable = || {
        r1b.volume_status("vol")
            .and_then(|v| v["durable_lsn"].as_u64())
            .unwrap_or(0)
    };
    wait_for(
        "the restarted relay holds every write",
        || (durable() >= N).then_some(()),
        || format!("durable to {}", durable()),
    );
    // The sink got every acknowledged write exactly once, in LSN order.
    sink.wait_delivered(|s| s.delivered.len() as u64 >= N, WAIT, "every write at the sink");
    let s = sink.state.lock().unwrap();
    let mut stamps: Vec<u64> = Vec::new();
    for (i, d) in s.delivered.iter().enumerate() {
        assert_eq!(d.lsn, i as u64 + 1, "sink delivered out of LSN order");
        if d.kind == 1 {
            stamps.push(d.stamp);
        }
    }
    let n = stamps.len();
    stamps.sort_unstable();
    stamps.dedup();
    assert_eq!(stamps.len(), n, "a write was delivered twice under two LSNs");
    assert_all_in(&p.acked, &stamps, "sink");
    drop(r2);
}

#[test]
fn corrupt_journal_tail_is_cut_and_reported_at_restart() {
    let d = TempDir::new("/var/tmp", "tail");
    let port = free_port();
    let mut r = RelayProc::start(&d.0, port, &[]);
    let mut p = Primary::start(&[r.addr()], "all", "block", 300);
    p.until("300 acks", |p| p.acked.len() >= 300);
    p.kill9();
    r.kill9();
    // Garbage after the last record of the newest non-empty segment: a torn write.
    let vol_dir = d.0.join("vol");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&vol_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bjl") && p.metadata().unwrap().len() > 0)
        .collect();
    segs.sort();
    let last = segs.last().expect("a segment with records");
    let mut bytes = std::fs::read(last).unwrap();
    let valid_len = bytes.len() as u64;
    bytes.extend_from_slice(&[0xAB; 4096]);
    std::fs::write(last, &bytes).unwrap();
    let r = RelayProc::start(&d.0, port, &[]);
    let v = r.volume_status("vol").expect("volume recovered");
    let cut = &v["torn_tail"];
    assert!(cut.is_object(), "torn tail reported: {v}");
    assert_eq!(cut["offset"].as_u64(), Some(valid_len), "{v}");
    assert_eq!(cut["bytes_cut"].as_u64(), Some(4096), "{v}");
    assert!(
        v["durable_lsn"].as_u64().unwrap() >= 300,
        "acknowledged records kept: {v}"
    );
}

#[test]
fn full_journal_pushes_back_and_loses_nothing_acknowledged() {
    let d = TempDir::new("/dev/shm", "full");
    let mut r = RelayProc::start(
        &d.0,
        free_port(),
        &["--journal-bytes-max", "2M", "--segment-bytes", "256K"],
    );
    // 4000 x 4 KiB cannot fit in 2 MiB and nothing releases (no standby).
    let mut p = Primary::start(&[r.addr()], "all", "block", 4000);
    wait_for(
        "relay reports a full journal",
        || {
            let v = r.volume_status("vol")?;
            (v["journal_full_events"].as_u64().unwrap_or(0) > 0 && v["backpressure"] == true).then_some(())
        },
        || format!("{:?}", r.volume_status("vol")),
    );
    p.kill9();
    r.kill9();
    assert!(p.failed.is_empty(), "writes failed instead of waiting");
    assert!(
        (p.acked.len() as u64) < 4000,
        "more acknowledged than the journal can hold"
    );
    let (stamps, _) = journal_stamps(&r.dir, "vol");
    assert_all_in(&p.acked, &stamps, "full journal");
}

/// Runs `baton relay` expecting it to refuse to start: waits (bounded) for its exit and
/// returns its stderr; panics if it is still running after `WAIT` (then it served).
fn relay_refused(dir: &Path, sock: &Path, extra: &[&str]) -> String {
    let mut child = baton()
        .args(["relay", "-m", "0x1", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("-r")
        .arg(sock)
        .arg("--journal-dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = wait_exit(&mut child, WAIT) else {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(sock);
        panic!("baton relay {extra:?} on {} started instead of refusing", dir.display());
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let _ = std::fs::remove_file(sock);
    assert!(!status.success(), "refused start must exit non-zero: {status}\n{err}");
    err
}

#[test]
fn a_second_relay_on_a_live_journal_dir_refuses_to_start_and_the_first_keeps_serving() {
    let d = TempDir::new("/dev/shm", "lock");
    // Small segments: the live relay rolls over many times after the refused start (the
    // roll-over is where a second relay's segment file used to break it).
    let mut r1 = RelayProc::start(&d.0, free_port(), &["--segment-bytes", "256K"]);
    let mut p = Primary::start(&[r1.addr()], "all", "block", 1_000_000);
    p.until("200 acks", |p| p.acked.len() >= 200);
    let segments_before: Vec<_> = std::fs::read_dir(d.0.join("vol")).unwrap().collect();
    assert!(!segments_before.is_empty());

    let err = relay_refused(&d.0, &d.0.with_extension("sock2"), &["--segment-bytes", "256K"]);
    let pid = r1.child.id();
    assert!(
        err.contains(&format!(
            "journal directory {} is in use by another relay (pid {pid})",
            d.0.display()
        )),
        "stderr names the directory and the holder: {err}"
    );
    assert!(err.contains("--journal-dir"), "{err}");

    // The first relay goes on: 2000 more writes of 4 KiB (30 and more segments of 256 KiB).
    let n = p.acked.len() + 2000;
    p.until("2000 more acks", |p| p.acked.len() >= n);
    assert!(
        r1.child.try_wait().unwrap().is_none(),
        "the live relay is still running"
    );
    let v = r1.volume_status("vol").expect("the live relay still answers");
    assert_eq!(v["journal_failed"], false, "{v}");
    p.kill9();
    // Let the relay journal what was in flight when the primary died: a SIGKILL in the
    // middle of a record would leave a torn tail, which this test is not about.
    let mut last = None;
    for _ in 0..100 {
        let v = r1.volume_status("vol").expect("the live relay still answers");
        let now = (v["appended_lsn"].as_u64(), v["durable_lsn"].as_u64());
        if now.0 == now.1 && last == Some(now) {
            break;
        }
        last = Some(now);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    r1.kill9();
    assert!(
        p.failed.is_empty(),
        "writes failed: {:?}",
        &p.failed[..p.failed.len().min(5)]
    );
    let (stamps, rep) = journal_stamps(&d.0, "vol");
    assert!(rep.torn_tail.is_none(), "{rep:?}");
    assert_all_in(&p.acked, &stamps, "live relay");
    // SIGKILL released the lock with the process: a new relay starts on the directory.
    let r2 = RelayProc::start(&d.0, free_port(), &["--segment-bytes", "256K"]);
    assert!(r2.volume_status("vol").is_some());
}

#[test]
fn out_of_range_relay_settings_are_refused_at_start_naming_them() {
    let d = TempDir::new("/var/tmp", "limits");
    let root = d.0.join("root");
    let sock = d.0.with_extension("sock");
    let err = relay_refused(&root, &sock, &["--segment-bytes", "0"]);
    assert!(
        err.contains("segment_bytes (0 bytes) must be between 64 KiB and 1 GiB"),
        "{err}"
    );
    let err = relay_refused(&root, &sock, &["--journal-bytes-max", "2M", "--segment-bytes", "8M"]);
    assert!(
        err.contains("journal_bytes_max (2 MiB) must hold at least 2 segments of segment_bytes (8 MiB)"),
        "{err}"
    );
    let err = relay_refused(&root, &sock, &["--forward", "interval:0"]);
    assert!(err.contains("interval_ms"), "{err}");
    assert!(!root.exists(), "nothing created before the settings were checked");

    // Over JSON-RPC: invalid params (-32602) with the same message.
    let r = RelayProc::start(&root, free_port(), &[]);
    let err = rpc(
        &r.sock,
        "relay_create_journal",
        Some(serde_json::json!({"volume": "v2", "segment_bytes": 0})),
    )
    .unwrap_err();
    assert!(
        err.contains("-32602") && err.contains("segment_bytes (0 bytes) must be between 64 KiB and 1 GiB"),
        "{err}"
    );
}
