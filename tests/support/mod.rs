//! Process-level test harness shared by `tests/standby.rs` and `tests/forward_policy.rs`:
//! `baton relay` and `baton standby` processes (killed on drop), the primary child (the test
//! binary re-run with `standby_primary_child`: two replicated volumes `vold`, `vols` over
//! RAM bdevs, driven by commands on its stdin), the primary's image model, RPC and bounded
//! waits. A test binary that uses it declares
//!
//! ```ignore
//! #[path = "../relay/tests/common/mod.rs"]
//! mod common;
//! mod support;
//!
//! #[test]
//! #[ignore]
//! fn standby_primary_child() {
//!     support::primary_child_main();
//! }
//! ```

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::common::fill;
use serde_json::{json, Value};

pub const WAIT: Duration = Duration::from_secs(60);
/// Blocks of each primary volume (4 KiB each).
pub const BLOCKS: u64 = 1024;
pub const BS: usize = 4096;
pub const VOLS: [&str; 2] = ["vold", "vols"];

pub fn baton() -> Command {
    Command::new(env!("CARGO_BIN_EXE_baton"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn rpc(sock: &Path, method: &str, params: Option<Value>) -> Result<Value, String> {
    let mut c = baton();
    c.args(["rpc", "-s"]).arg(sock).arg(method);
    if let Some(p) = params {
        c.arg(p.to_string());
    }
    let out = c.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Polls `f` every 20 ms until it gives `Some`; panics naming `what` (and the last value
/// `show` returns) after `WAIT`.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>, show: impl Fn() -> String) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            start.elapsed() < WAIT,
            "{what}: not reached within {WAIT:?}; last: {}",
            show()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where a child's stderr goes: nowhere, or with `BATON_TEST_STDERR=DIR` set, to a file in
/// DIR named after `dir` (kept after the test, for debugging).
fn stderr_for(dir: &Path) -> Stdio {
    let Some(out) = std::env::var_os("BATON_TEST_STDERR") else {
        return Stdio::null();
    };
    let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
    match std::fs::File::create(Path::new(&out).join(format!("{name}.stderr"))) {
        Ok(f) => f.into(),
        Err(_) => Stdio::null(),
    }
}

/// A `baton relay` process, killed on drop.
pub struct RelayProc {
    pub child: Child,
    pub port: u16,
    /// Its JSON-RPC socket (beside its journal directory).
    pub sock: PathBuf,
}

impl RelayProc {
    pub fn start(dir: &Path, port: u16, standby: SocketAddr, extra: &[&str]) -> RelayProc {
        let sock = dir.with_extension("sock");
        let child = baton()
            .args(["relay", "-m", "0x1", "--listen", &format!("127.0.0.1:{port}")])
            .arg("-r")
            .arg(&sock)
            .arg("--journal-dir")
            .arg(dir)
            .args(["--standby", &standby.to_string(), "--no-direct"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr_for(dir))
            .spawn()
            .unwrap();
        let mut r = RelayProc { child, port, sock };
        wait_for(
            "relay answers RPC",
            || {
                if let Ok(Some(st)) = r.child.try_wait() {
                    panic!("relay on port {port} exited at start: {st}");
                }
                rpc(&r.sock, "relay_get_status", None).ok()
            },
            String::new,
        );
        r
    }
    /// `relay_get_status`'s entry for volume `vol`.
    pub fn volume_status(&self, vol: &str) -> Option<Value> {
        let st = rpc(&self.sock, "relay_get_status", None).ok()?;
        st["volumes"].as_array()?.iter().find(|v| v["name"] == vol).cloned()
    }
    /// Changes the forward policy by RPC (`relay_set_forward_policy`).
    pub fn set_forward_policy(&self, policy: Value) {
        rpc(&self.sock, "relay_set_forward_policy", Some(policy.clone()))
            .unwrap_or_else(|e| panic!("relay_set_forward_policy {policy}: {e}"));
    }
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The `baton standby` process, killed on drop.
pub struct StandbyProc {
    pub child: Child,
    pub sock: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
}

impl StandbyProc {
    pub fn start(dir: &Path, port: u16) -> StandbyProc {
        StandbyProc::start_with(dir, port, &[])
    }
    /// As [`StandbyProc::start`] with more `baton standby` arguments (the standby host's).
    pub fn start_with(dir: &Path, port: u16, extra: &[&str]) -> StandbyProc {
        let cfg = json!({"subsystems": [{"subsystem": "standby", "config": [
            {"method": "standby_create", "params": {"name": "vold", "mode": "delayed",
                "volume_bdev": "dvol", "staging_bdev": "dstg"}},
            {"method": "standby_create", "params": {"name": "vols", "mode": "snapshot",
                "data_bdev": "sdata", "metadata_bdev": "smeta", "volume_blocks": BLOCKS, "keep_last": 2}},
        ]}]});
        let cfg_path = dir.join("standby.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let sock = dir.join("standby.sock");
        let bdev =
            |name: &str, file: &str, size: &str| format!("{name}=uring:{}/{file},size={size},bs=4096", dir.display());
        let child = baton()
            .args(["standby", "-m", "0x1", "--listen", &format!("127.0.0.1:{port}")])
            .arg("-r")
            .arg(&sock)
            .arg("--json")
            .arg(&cfg_path)
            .args(["--bdev", &bdev("dvol", "dvol.img", "4M")])
            .args(["--bdev", &bdev("dstg", "dstg.img", "32M")])
            .args(["--bdev", &bdev("sdata", "sdata.img", "24M")])
            .args(["--bdev", &bdev("smeta", "smeta.img", "4M")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr_for(dir))
            .spawn()
            .unwrap();
        let mut s = StandbyProc {
            child,
            sock,
            dir: dir.to_path_buf(),
            port,
        };
        wait_for(
            "standby answers RPC",
            || {
                if let Ok(Some(st)) = s.child.try_wait() {
                    panic!("standby exited at start: {st}");
                }
                rpc(&s.sock, "standby_get_status", None).ok()
            },
            String::new,
        );
        s
    }
    pub fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }
    pub fn status(&self, vol: &str) -> Option<Value> {
        let v = rpc(&self.sock, "standby_get_status", Some(json!({"name": vol}))).ok()?;
        v.get(0).cloned()
    }
    /// Waits until `vol` shows restart point `epoch` (applied and, delayed mode, quiescent).
    pub fn wait_epoch(&self, vol: &str, epoch: u64) -> Value {
        wait_for(
            &format!("standby {vol} at epoch {epoch}"),
            || {
                let s = self.status(vol)?;
                assert!(s["error"].is_null(), "standby {vol} stopped: {s}");
                let idle = s["delayed"].is_null() || s["delayed"]["apply_phase"] == "idle";
                (s["applied_epoch"].as_u64()? >= epoch && idle).then_some(s)
            },
            || format!("{:?}", self.status(vol)),
        )
    }
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for StandbyProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The primary child, driven line by line on its stdin.
pub struct Primary {
    pub child: Child,
    pub stdin: ChildStdin,
    pub lines: mpsc::Receiver<String>,
}

impl Primary {
    pub fn start(relays: &[String]) -> Primary {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "standby_primary_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("BATON_SP_RELAYS", relays.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut p = Primary { child, stdin, lines };
        p.reply("READY");
        p
    }
    /// Waits for the next line starting with `OK`/`READY`/`FAIL` and returns it.
    pub fn reply(&mut self, what: &str) -> String {
        let start = Instant::now();
        loop {
            let left = WAIT.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with("FAIL") => panic!("primary: {what}: {l}"),
                Ok(l) if l.starts_with("OK") || l.starts_with("READY") => return l,
                Ok(_) => {}
                Err(e) => panic!("primary: {what}: no answer within {WAIT:?} ({e:?})"),
            }
        }
    }
    pub fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        self.reply(line)
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The primary's image of one volume: the stamp of the last write of each block.
pub struct Model {
    pub name: &'static str,
    pub img: Vec<u64>,
    pub next_seq: u64,
}

impl Model {
    pub fn new(name: &'static str) -> Model {
        Model {
            name,
            img: vec![0; BLOCKS as usize],
            next_seq: 1,
        }
    }
    pub fn write(&mut self, p: &mut Primary, n: u64) {
        p.cmd(&format!("W {} {} {n}", self.name, self.next_seq));
        for s in self.next_seq..self.next_seq + n {
            self.img[(s % BLOCKS) as usize] = s;
        }
        self.next_seq += n;
    }
    /// Declares a restart point; returns its epoch.
    pub fn restart_point(&mut self, p: &mut Primary, tag: &str) -> u64 {
        let l = p.cmd(&format!("RP {} {tag}", self.name));
        l.split_whitespace().nth(2).unwrap().parse().unwrap()
    }
    pub fn expected(&self) -> Vec<u8> {
        let mut out = vec![0u8; BLOCKS as usize * BS];
        for (b, &s) in self.img.iter().enumerate() {
            if s != 0 {
                fill(&mut out[b * BS..(b + 1) * BS], s);
            }
        }
        out
    }
}

/// Panics naming the first differing block.
pub fn assert_image(got: &[u8], want: &Model, what: &str) {
    assert_eq!(got.len(), BLOCKS as usize * BS, "{what}: image size");
    let exp = want.expected();
    for b in 0..BLOCKS as usize {
        let (g, e) = (&got[b * BS..(b + 1) * BS], &exp[b * BS..(b + 1) * BS]);
        if g != e {
            panic!(
                "{what}: block {b} holds stamp {} but the primary's image at the restart point has {}",
                u64::from_le_bytes(g[..8].try_into().unwrap()),
                want.img[b]
            );
        }
    }
}

/// The delayed-mode standby's volume file (quiescent at an applied restart point).
pub fn read_delayed(s: &StandbyProc) -> Vec<u8> {
    let mut v = std::fs::read(s.dir.join("dvol.img")).unwrap();
    v.truncate(BLOCKS as usize * BS);
    v
}

/// The primary's body when this binary runs as the child (ignored otherwise). Commands on
/// stdin: `W <vol> <first_seq> <n>` writes stamps first_seq.. to blocks seq % BLOCKS and
/// answers `OK W` once all completed; `RP <vol> <tag>` declares a restart point and answers
/// `OK RP <epoch> <lsn> <last_lsn>`; `SYNC <vol>` answers `OK SYNC <block sync state>
/// <relay resyncs done>`. Each test binary that starts a [`Primary`] calls it
/// from its own `#[test] #[ignore] fn standby_primary_child()`.
pub fn primary_child_main() {
    use engine::reactor::{IdleMode, ReactorOpts, Reactors};
    use relay::volume::{AckPolicy, OnRelayDown, ReplicatedVolume, VolumeConfig};
    let Ok(relays) = std::env::var("BATON_SP_RELAYS") else {
        return;
    };
    let relays: Vec<SocketAddr> = relays.split(',').map(|a| a.parse().unwrap()).collect();
    let _reactors = Reactors::start(ReactorOpts {
        cores: vec![0],
        pin: false,
        idle: IdleMode::Poll,
    })
    .unwrap();
    let mut vols = std::collections::BTreeMap::new();
    for (i, name) in VOLS.iter().enumerate() {
        let base =
            engine::bdev::malloc::create(&format!("base_{name}"), BLOCKS, BS as u32, Some([i as u8 + 1; 16])).unwrap();
        let mut cfg = VolumeConfig::new(name, relays.clone());
        cfg.ack_policy = AckPolicy::All;
        cfg.on_relay_down = OnRelayDown::Degraded;
        cfg.relay_down_timeout_ms = 500;
        cfg.core = Some(0);
        vols.insert(name.to_string(), ReplicatedVolume::create(cfg, base).unwrap());
    }
    let mut out = std::io::stdout().lock();
    // libtest printed "test standby_primary_child ... " without a newline: end that line.
    writeln!(out).unwrap();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let w: Vec<&str> = line.split_whitespace().collect();
        let answer = match w.as_slice() {
            ["W", vol, first, n] => {
                let v = vols[*vol].clone();
                match write_stamps(v, first.parse().unwrap(), n.parse().unwrap()) {
                    Ok(()) => "OK W".to_string(),
                    Err(e) => format!("FAIL {e}"),
                }
            }
            ["SYNC", vol] => {
                // The block sync's state and the relays' resyncs done (`OK SYNC done 1`).
                let st = vols[*vol].status();
                let state = st.sync.map_or("none", |s| s.state);
                let done: u64 = st.relays.iter().map(|r| r.resyncs_done).sum();
                format!("OK SYNC {state} {done}")
            }
            ["RP", vol, tag] => match vols[*vol].declare_restart_point_wait(tag.as_bytes(), WAIT) {
                Ok(rp) => format!("OK RP {} {} {}", rp.epoch, rp.lsn, rp.last_lsn),
                Err(e) => format!("FAIL {e}"),
            },
            _ => format!("FAIL unknown command {line:?}"),
        };
        writeln!(out, "{answer}").unwrap();
        out.flush().unwrap();
    }
    std::process::exit(0);
}

/// Writes stamps `first..first + n` (stamp s to block s % BLOCKS), 8 in flight, on core 0;
/// returns once every write completed.
pub fn write_stamps(bdev: Arc<relay::volume::ReplicatedVolume>, first: u64, n: u64) -> Result<(), String> {
    use engine::bdev::{Bdev, IoOp, IoRequest};
    use engine::buf::DmaBuf;
    use engine::reactor::{self, PollStatus};
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    reactor::send_msg(0, move || {
        let bdev: Arc<dyn Bdev> = bdev;
        let mut ch = bdev.open_channel().expect("open channel");
        let mut free: Vec<DmaBuf> = (0..8).map(|_| DmaBuf::alloc(BS)).collect();
        let (mut next, end) = (first, first + n);
        let (mut done, mut failed) = (0u64, None::<String>);
        let id = std::rc::Rc::new(std::cell::Cell::new(None));
        let id2 = id.clone();
        let pid = reactor::register_poller("test_stamps", None, move || {
            while next < end {
                let Some(mut buf) = free.pop() else { break };
                fill(&mut buf, next);
                let io = IoRequest {
                    op: IoOp::Write,
                    offset_blocks: next % BLOCKS,
                    num_blocks: 1,
                    buf: Some(buf),
                    user_data: next,
                };
                match ch.submit(io) {
                    Ok(()) => next += 1,
                    Err(io) => {
                        free.push(io.buf.unwrap());
                        break;
                    }
                }
            }
            ch.poll(&mut |c| {
                done += 1;
                if let Err(e) = &c.result {
                    failed.get_or_insert(format!("write {}: {e}", c.user_data));
                }
                if let Some(b) = c.buf {
                    free.push(b);
                }
            });
            if done == n {
                let _ = tx.send(failed.take().map_or(Ok(()), Err));
                if let Some(id) = id2.take() {
                    reactor::unregister_poller(id);
                }
            }
            PollStatus::Busy
        });
        id.set(Some(pid));
    })
    .map_err(|e| e.to_string())?;
    rx.recv_timeout(WAIT)
        .map_err(|_| format!("{n} writes not done within {WAIT:?}"))?
}

pub fn links(st: &Value) -> Vec<Value> {
    st["links"].as_array().cloned().unwrap_or_default()
}

/// `relay_reports` of each relay the standby host's detector heard about for `vol`.
pub fn relay_reports(sb: &StandbyProc, vol: &str) -> Vec<u64> {
    let Ok(h) = rpc(&sb.sock, "standby_host_get_status", None) else {
        return Vec::new();
    };
    h["detector"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["volume"] == vol)
        .flat_map(|v| v["relays"].as_array().cloned().unwrap_or_default())
        .map(|r| r["reports"].as_u64().unwrap_or(0))
        .collect()
}
