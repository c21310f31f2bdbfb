//! The standby process end to end, with real processes on loopback: a primary (this test
//! binary re-run as a child: two replicated volumes over RAM bdevs, driven by commands on
//! its stdin) -> two `baton relay` processes (a forwarder and a `--backup`) -> one
//! `baton standby` holding a delayed-write volume (`vold`) and a snapshot-mode volume
//! (`vols`) over files in /dev/shm.
//!
//! At each restart point the standby's image must equal the primary's image at that point,
//! byte for byte: delayed mode read from its volume file, snapshot mode exported by
//! `snapshot_export` and read over NVMe/TCP from the standby process. Then the forwarder is
//! killed (the standby pulls from the backup), the standby is killed and restarted (it
//! recovers and the relays resend from its resume LSN), and a relay presenting an older
//! generation is refused. Every wait is bounded.

#[path = "../relay/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{fill, TempDir};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
/// Blocks of each primary volume (4 KiB each).
const BLOCKS: u64 = 1024;
const BS: usize = 4096;
const VOLS: [&str; 2] = ["vold", "vols"];

fn baton() -> Command {
    Command::new(env!("CARGO_BIN_EXE_baton"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rpc(sock: &Path, method: &str, params: Option<Value>) -> Result<Value, String> {
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
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>, show: impl Fn() -> String) -> T {
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

/// A `baton relay` process, killed on drop.
struct RelayProc {
    child: Child,
    port: u16,
}

impl RelayProc {
    fn start(dir: &Path, port: u16, standby: SocketAddr, extra: &[&str]) -> RelayProc {
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
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut r = RelayProc { child, port };
        wait_for(
            "relay answers RPC",
            || {
                if let Ok(Some(st)) = r.child.try_wait() {
                    panic!("relay on port {port} exited at start: {st}");
                }
                rpc(&sock, "relay_get_status", None).ok()
            },
            String::new,
        );
        r
    }
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    fn kill9(&mut self) {
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
struct StandbyProc {
    child: Child,
    sock: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl StandbyProc {
    fn start(dir: &Path, port: u16) -> StandbyProc {
        StandbyProc::start_with(dir, port, &[])
    }
    /// As [`StandbyProc::start`] with more `baton standby` arguments (the standby host's).
    fn start_with(dir: &Path, port: u16, extra: &[&str]) -> StandbyProc {
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
            .stderr(Stdio::null())
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
    fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }
    fn status(&self, vol: &str) -> Option<Value> {
        let v = rpc(&self.sock, "standby_get_status", Some(json!({"name": vol}))).ok()?;
        v.get(0).cloned()
    }
    /// Waits until `vol` shows restart point `epoch` (applied and, delayed mode, quiescent).
    fn wait_epoch(&self, vol: &str, epoch: u64) -> Value {
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
    fn kill9(&mut self) {
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
struct Primary {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Primary {
    fn start(relays: &[String]) -> Primary {
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
    fn reply(&mut self, what: &str) -> String {
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
    fn cmd(&mut self, line: &str) -> String {
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
struct Model {
    name: &'static str,
    img: Vec<u64>,
    next_seq: u64,
}

impl Model {
    fn new(name: &'static str) -> Model {
        Model {
            name,
            img: vec![0; BLOCKS as usize],
            next_seq: 1,
        }
    }
    fn write(&mut self, p: &mut Primary, n: u64) {
        p.cmd(&format!("W {} {} {n}", self.name, self.next_seq));
        for s in self.next_seq..self.next_seq + n {
            self.img[(s % BLOCKS) as usize] = s;
        }
        self.next_seq += n;
    }
    /// Declares a restart point; returns its epoch.
    fn restart_point(&mut self, p: &mut Primary, tag: &str) -> u64 {
        let l = p.cmd(&format!("RP {} {tag}", self.name));
        l.split_whitespace().nth(2).unwrap().parse().unwrap()
    }
    fn expected(&self) -> Vec<u8> {
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
fn assert_image(got: &[u8], want: &Model, what: &str) {
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
fn read_delayed(s: &StandbyProc) -> Vec<u8> {
    let mut v = std::fs::read(s.dir.join("dvol.img")).unwrap();
    v.truncate(BLOCKS as usize * BS);
    v
}

/// Exports snapshot `epoch` of `vols` as a bdev, puts it in an NVMe/TCP subsystem of the
/// standby process and reads it with the NVMe/TCP host.
fn read_snapshot_over_nvme(s: &StandbyProc, epoch: u64, transport: &mut bool) -> Vec<u8> {
    use nvme::host::{cmd, status_ok, Controller, Data, HostOpts};
    if !*transport {
        rpc(&s.sock, "nvmf_create_transport", Some(json!({"trtype": "TCP"}))).unwrap();
        *transport = true;
    }
    let bdev = rpc(
        &s.sock,
        "snapshot_export",
        Some(json!({"name": "vols", "epoch": epoch, "bdev_name": format!("vols_e{epoch}")})),
    )
    .unwrap();
    let nqn = format!("nqn.2016-06.io.baton:vols-e{epoch}");
    rpc(
        &s.sock,
        "nvmf_create_subsystem",
        Some(json!({"nqn": nqn, "allow_any_host": true})),
    )
    .unwrap();
    rpc(
        &s.sock,
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": nqn, "namespace": {"bdev_name": bdev}})),
    )
    .unwrap();
    let port = free_port();
    rpc(
        &s.sock,
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": nqn, "listen_address":
            {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}})),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = Controller::connect(addr, &nqn, &HostOpts::default()).expect("NVMe/TCP connect");
    let mut q = c.create_io_qpair().expect("I/O queue");
    let per = 16u32;
    let mut out = Vec::with_capacity(BLOCKS as usize * BS);
    for slba in (0..BLOCKS).step_by(per as usize) {
        let buf = engine::buf::DmaBuf::alloc(per as usize * BS);
        let done = q
            .sync(cmd::read(1, slba, per), Data::FromCtrl(buf), Duration::from_secs(10))
            .expect("NVMe read");
        status_ok(&done.cqe).expect("NVMe read status");
        out.extend_from_slice(&done.buf.expect("read buffer")[..]);
    }
    c.disconnect();
    out
}

/// A fake relay: sends a Hello and returns the standby's HelloReply.
fn hello_reply(
    standby: SocketAddr,
    volume: &str,
    volume_id: [u8; 16],
    generation: u64,
) -> rdma_transport::wire::HelloReply {
    use rdma_transport::wire::{self, Frame, Hello, Role};
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(standby).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let h = Hello {
        role: Role::Relay,
        block_size: BS as u32,
        volume_id,
        volume_name: volume,
        generation,
        resume_lsn: 1,
        frame_bytes_max: wire::FRAME_BYTES_MAX as u32,
        recv_credits: 0,
    };
    s.write_all(wire::encode_hello(&h).unwrap().as_bytes()).unwrap();
    let mut buf = vec![0u8; wire::ENVELOPE_BYTES + wire::HELLO_REPLY_BODY_BYTES];
    s.read_exact(&mut buf).unwrap();
    let r = match wire::parse(&buf).unwrap() {
        Frame::HelloReply(r) => r,
        f => panic!("expected a HelloReply, got {f:?}"),
    };
    r
}

/// The primary's body when this binary runs as the child (ignored otherwise). Commands on
/// stdin: `W <vol> <first_seq> <n>` writes stamps first_seq.. to blocks seq % BLOCKS and
/// answers `OK W` once all completed; `RP <vol> <tag>` declares a restart point and answers
/// `OK RP <epoch> <lsn> <last_lsn>`.
#[test]
#[ignore]
fn standby_primary_child() {
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
fn write_stamps(bdev: Arc<relay::volume::ReplicatedVolume>, first: u64, n: u64) -> Result<(), String> {
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

fn links(st: &Value) -> Vec<Value> {
    st["links"].as_array().cloned().unwrap_or_default()
}

#[test]
fn standby_process_follows_relays_through_forwarder_and_standby_kill9() {
    let sd = TempDir::new("/dev/shm", "standby-s");
    let d1 = TempDir::new("/dev/shm", "standby-r1");
    let d2 = TempDir::new("/dev/shm", "standby-r2");
    let mut sb = StandbyProc::start(&sd.0, free_port());
    let sa = sb.addr();
    let port1 = free_port();
    let mut r1 = RelayProc::start(&d1.0, port1, sa, &[]);
    let r2 = RelayProc::start(&d2.0, free_port(), sa, &["--backup"]);
    let mut p = Primary::start(&[r1.addr(), r2.addr()]);
    let mut models = [Model::new("vold"), Model::new("vols")];
    let mut nvme_transport = false;

    // Restart point 1 through the forwarder.
    let check = |sb: &StandbyProc, models: &[Model; 2], epoch: u64, nvme: &mut bool, what: &str| {
        for m in models {
            let st = sb.wait_epoch(m.name, epoch);
            assert_eq!(st["applied_epoch"].as_u64(), Some(epoch), "{what}: {st}");
        }
        assert_image(&read_delayed(sb), &models[0], &format!("{what}: delayed volume"));
        assert_image(
            &read_snapshot_over_nvme(sb, epoch, nvme),
            &models[1],
            &format!("{what}: snapshot {epoch}"),
        );
    };
    for m in &mut models {
        m.write(&mut p, 1500);
        assert_eq!(m.restart_point(&mut p, "rp1"), 1);
    }
    check(&sb, &models, 1, &mut nvme_transport, "restart point 1");
    for m in &models {
        let st = sb.status(m.name).unwrap();
        let up: Vec<Value> = links(&st).into_iter().filter(|l| l["connected"] == true).collect();
        assert_eq!(up.len(), 2, "{}: both relays linked: {st}", m.name);
        assert!(
            up.iter()
                .any(|l| l["role"] == "forwarder" && l["forward_frames"].as_u64() > Some(0)),
            "{}: a forwarder link: {st}",
            m.name
        );
        assert_eq!(st["applied_tag"], "rp1", "{st}");
    }
    // Delayed mode: everything the relays sent is staged and durable, so SafeUpTo
    // lets them release all of it.
    let st = sb.status("vold").unwrap();
    assert_eq!(
        st["durable_lsn"].as_u64(),
        st["relay_lsn_max"].as_u64(),
        "vold: all that relays sent is durable: {st}"
    );

    // Kill the forwarder: the standby pulls the next epoch from the backup.
    r1.kill9();
    for m in &mut models {
        m.write(&mut p, 1000);
        assert_eq!(m.restart_point(&mut p, "rp2"), 2);
    }
    check(&sb, &models, 2, &mut nvme_transport, "restart point 2, forwarder dead");
    for m in &models {
        let st = sb.status(m.name).unwrap();
        let backup: Vec<Value> = links(&st)
            .into_iter()
            .filter(|l| l["connected"] == true && l["gap_replies"].as_u64() > Some(0))
            .collect();
        assert!(!backup.is_empty(), "{}: the backup answered gap requests: {st}", m.name);
    }

    // The forwarder comes back; the standby is killed, writes go on, it restarts.
    let _r1b = RelayProc::start(&d1.0, port1, sa, &[]);
    sb.kill9();
    for m in &mut models {
        m.write(&mut p, 500);
    }
    let sb = StandbyProc::start(&sd.0, sb.port);
    for m in &models {
        let st = sb.status(m.name).unwrap();
        assert!(
            st["applied_epoch"].as_u64() >= Some(2),
            "{}: recovered at restart point 2 or later: {st}",
            m.name
        );
    }
    for m in &mut models {
        assert_eq!(m.restart_point(&mut p, "rp3"), 3);
    }
    let mut nvme_transport = false;
    check(
        &sb,
        &models,
        3,
        &mut nvme_transport,
        "restart point 3, after the standby restart",
    );

    // Fencing: a relay of an older generation is refused (vold's id is its base bdev's
    // UUID, [1; 16]), and so are another volume id and an unknown volume.
    use rdma_transport::wire::{HelloReply, RefuseReason};
    match hello_reply(sb.addr(), "vold", [1; 16], 0) {
        HelloReply::Refused {
            reason: RefuseReason::StaleGeneration,
            generation,
            ..
        } => assert_eq!(generation, 1),
        r => panic!("a generation-0 relay must be refused as stale: {r:?}"),
    }
    match hello_reply(sb.addr(), "vold", [9; 16], 1) {
        HelloReply::Refused {
            reason: RefuseReason::UnknownVolume,
            ..
        } => {}
        r => panic!("a relay of another volume id must be refused: {r:?}"),
    }
    match hello_reply(sb.addr(), "nosuch", [1; 16], 1) {
        HelloReply::Refused {
            reason: RefuseReason::UnknownVolume,
            ..
        } => {}
        r => panic!("a relay of an unknown volume must be refused: {r:?}"),
    }
    let st = sb.status("vold").unwrap();
    assert!(
        links(&st)
            .iter()
            .any(|l| l["connected"] == false && l["last_error"].as_str().unwrap_or("").contains("fenced")),
        "the refusal is in the status: {st}"
    );
    drop(r2);
}

/// `relay_reports` of each relay the standby host's detector heard about for `vol`.
fn relay_reports(sb: &StandbyProc, vol: &str) -> Vec<u64> {
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

/// A forwarder that holds ops back by policy is not fetched around (the standby stays
/// behind, no gap request goes to either relay), and at failover the standby host drains
/// both relays first, so the promoted volume is at the last acknowledged restart point,
/// not at what the standby happened to hold.
#[test]
fn standby_lagging_by_policy_is_not_fetched_around_and_failover_drains_the_relays() {
    let sd = TempDir::new("/dev/shm", "drain-s");
    let d1 = TempDir::new("/dev/shm", "drain-r1");
    let d2 = TempDir::new("/dev/shm", "drain-r2");
    let host = ["--failover-volume", "vold", "--primary-timeout-ms", "500"];
    let sb = StandbyProc::start_with(&sd.0, free_port(), &host);
    let sa = sb.addr();
    // The forwarder forwards its first read, then holds everything for ten minutes.
    let r1 = RelayProc::start(&d1.0, free_port(), sa, &["--forward", "interval:600000"]);
    let r2 = RelayProc::start(&d2.0, free_port(), sa, &["--backup"]);
    let mut p = Primary::start(&[r1.addr(), r2.addr()]);
    let mut m = Model::new("vold");
    m.write(&mut p, 300);
    assert_eq!(m.restart_point(&mut p, "rp1"), 1);
    m.write(&mut p, 300);
    assert_eq!(m.restart_point(&mut p, "rp2"), 2);
    let at_rp2 = m.img.clone();
    // Not covered by a restart point: must not show after failover.
    m.write(&mut p, 100);

    // Ten reports from each relay (a second of them) after the last write: the old
    // standby pulled around a stalled forwarder after 200 ms.
    let base = relay_reports(&sb, "vold");
    wait_for(
        "ten more reports from both relays",
        || {
            let now = relay_reports(&sb, "vold");
            (now.len() == 2 && base.len() == 2 && now.iter().zip(&base).all(|(n, b)| *n >= b + 10)).then_some(())
        },
        || format!("{:?}", rpc(&sb.sock, "standby_host_get_status", None)),
    );
    let st = sb.status("vold").unwrap();
    let up: Vec<Value> = links(&st).into_iter().filter(|l| l["connected"] == true).collect();
    assert_eq!(up.len(), 2, "both relays linked: {st}");
    for l in &up {
        assert_eq!(l["gap_requests_sent"], 0, "nothing fetched around the policy: {st}");
    }
    assert_eq!(st["stall_verdicts"]["pulled"], 0, "{st}");
    assert!(
        up.iter().any(|l| l["forward_state"] == "holding"),
        "the forwarder reports holding by policy: {st}"
    );
    assert!(
        st["applied_epoch"].as_u64() < Some(2),
        "the standby lags by policy (restart point 2 not forwarded): {st}"
    );

    // The primary dies; the standby host detects it, drains both relays, rolls back to
    // the newest restart point that arrived in full (2), promotes.
    drop(p);
    let rep = wait_for(
        "failover done",
        || {
            let h = rpc(&sb.sock, "standby_host_get_status", None).ok()?;
            let f = h["failover"].clone();
            (f["state"] == "done" || f["state"] == "failed").then_some(f)
        },
        || format!("{:?}", rpc(&sb.sock, "standby_host_get_status", None)),
    );
    assert_eq!(rep["state"], "done", "{rep}");
    assert_eq!(
        rep["volumes"][0]["epoch"], 2,
        "promoted at the last acknowledged restart point: {rep}"
    );
    let d = &rep["drain"][0];
    assert_eq!(d["relays"], 2, "{rep}");
    assert_eq!(d["relays_drained"], 2, "{rep}");
    assert!(d["restart_points_gained"].as_u64() >= Some(1), "{rep}");
    assert!(d["lsn_reached"].as_u64() > d["lsn_start"].as_u64(), "{rep}");
    assert!(rep["drained_us"].as_u64().is_some(), "{rep}");
    let want = Model {
        name: "vold",
        img: at_rp2,
        next_seq: 0,
    };
    assert_image(&read_delayed(&sb), &want, "promoted volume at restart point 2");
    drop((r1, r2));
}
