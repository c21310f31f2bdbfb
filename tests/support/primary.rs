//! The primary child: the test binary re-run with `standby_primary_child` (two replicated
//! volumes `vold`, `vols` over RAM bdevs, driven by commands on its stdin), and the
//! primary's image model the standby's images are checked against.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use super::common::fill;
use super::{lines_of, Proc, BLOCKS, BS, VOLS, WAIT};

/// The primary child, driven line by line on its stdin.
pub struct Primary {
    pub child: Proc,
    pub stdin: ChildStdin,
    pub lines: mpsc::Receiver<String>,
}

impl Primary {
    pub fn start(relays: &[String]) -> Primary {
        Primary::start_with(relays, &[], None)
    }
    /// As [`Primary::start`], with more environment for the child (`BATON_SP_ACK`,
    /// `BATON_SP_ON_DOWN`, `BATON_SP_HEARTBEAT`: see [`primary_child_main`]) and, with `ns`,
    /// inside that network namespace.
    pub fn start_with(relays: &[String], env: &[(&str, String)], ns: Option<&str>) -> Primary {
        let mut cmd = super::in_netns(ns, std::env::current_exe().unwrap());
        let mut child = cmd
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
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
        let lines = lines_of(out);
        let mut p = Primary {
            child: Proc(child),
            stdin,
            lines,
        };
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
    /// What fencing and the relay-down policy do to volume `vol` now (`ST`).
    pub fn state(&mut self, vol: &str) -> PrimaryState {
        let l = self.cmd(&format!("ST {vol}"));
        let w: Vec<u64> = l.split_whitespace().skip(2).map(|x| x.parse().unwrap()).collect();
        PrimaryState {
            superseded_by: w[0],
            completed_lsn: w[1],
            writes_blocked: w[2] != 0,
        }
    }
    /// As [`Primary::cmd`], but a `FAIL` answer is returned as `Err` (the application saw
    /// an error) instead of failing the test.
    pub fn try_cmd(&mut self, line: &str) -> Result<String, String> {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let start = Instant::now();
        loop {
            let left = WAIT.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with("FAIL") => return Err(l),
                Ok(l) if l.starts_with("OK") => return Ok(l),
                Ok(_) => {}
                Err(e) => panic!("primary: {line}: no answer within {WAIT:?} ({e:?})"),
            }
        }
    }
}

/// One volume of the primary child, as `ST` reports it.
#[derive(Debug, Clone, Copy)]
pub struct PrimaryState {
    /// The newer generation a relay named (0: none): the volume refuses every write.
    pub superseded_by: u64,
    pub completed_lsn: u64,
    /// The ack policy cannot be met (`on_relay_down: block`): new writes fail at once.
    pub writes_blocked: bool,
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
    /// Writes `n` stamps and returns whether the application saw them all succeed; the
    /// model takes them either way (some may have reached the primary's own volume).
    pub fn try_write(&mut self, p: &mut Primary, n: u64) -> Result<(), String> {
        let r = p.try_cmd(&format!("W {} {} {n}", self.name, self.next_seq));
        for s in self.next_seq..self.next_seq + n {
            self.img[(s % BLOCKS) as usize] = s;
        }
        self.next_seq += n;
        r.map(|_| ())
    }
    /// Declares a restart point; returns its epoch.
    pub fn restart_point(&mut self, p: &mut Primary, tag: &str) -> u64 {
        let l = p.cmd(&format!("RP {} {tag}", self.name));
        l.split_whitespace().nth(2).unwrap().parse().unwrap()
    }
    /// Declares a restart point; its epoch, or the application's error.
    pub fn try_restart_point(&mut self, p: &mut Primary, tag: &str) -> Result<u64, String> {
        let l = p.try_cmd(&format!("RP {} {tag}", self.name))?;
        Ok(l.split_whitespace().nth(2).unwrap().parse().unwrap())
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

/// The primary's body when this binary runs as the child (ignored otherwise). Commands on
/// stdin: `W <vol> <first_seq> <n>` writes stamps first_seq.. to blocks seq % BLOCKS and
/// answers `OK W` once all completed (`FAIL <error>` if one failed); `RP <vol> <tag>`
/// declares a restart point and answers `OK RP <epoch> <lsn> <last_lsn>`; `SYNC <vol>`
/// answers `OK SYNC <state> <resyncs done>`; `ST <vol>` answers `OK ST <superseded_by>
/// <completed_lsn> <writes_blocked 0|1>`. Environment: `BATON_SP_RELAYS` (required), `BATON_SP_ACK`
/// (`all` default, `any`, `quorum:K`), `BATON_SP_ON_DOWN` (`degraded` default, `block`),
/// `BATON_SP_DOWN_MS` (relay down timeout, 500), `BATON_SP_HEARTBEAT` (standby host's
/// heartbeat address), `BATON_SP_IDLE=nap` (nap when idle instead of spinning). Each test
/// binary that starts a [`Primary`] calls it from its own
/// `#[test] #[ignore] fn standby_primary_child()`.
pub fn primary_child_main() {
    use engine::reactor::{IdleMode, ReactorOpts, Reactors};
    use relay::volume::{AckPolicy, OnRelayDown, ReplicatedVolume, VolumeConfig};
    let Ok(relays) = std::env::var("BATON_SP_RELAYS") else {
        return;
    };
    let relays: Vec<SocketAddr> = relays.split(',').map(|a| a.parse().unwrap()).collect();
    // `CA,CERT,KEY`: the replication links use TLS with these credentials.
    if let Ok(tls) = std::env::var("BATON_SP_TLS") {
        use rdma_transport::tls::{install, Role, TlsContext, TlsSettings};
        let f: Vec<&str> = tls.split(',').collect();
        let settings = TlsSettings::Certs {
            ca: f[0].into(),
            cert: f[1].into(),
            key: f[2].into(),
        };
        install(TlsContext::load(&settings, Role::Primary).unwrap()).unwrap();
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let ack = match env("BATON_SP_ACK").as_deref() {
        None | Some("all") => AckPolicy::All,
        Some("any") => AckPolicy::Any,
        Some(q) => AckPolicy::Quorum(q.trim_start_matches("quorum:").parse().unwrap()),
    };
    let on_down = match env("BATON_SP_ON_DOWN").as_deref() {
        Some("block") => OnRelayDown::Block,
        _ => OnRelayDown::Degraded,
    };
    let heartbeat: Option<SocketAddr> = env("BATON_SP_HEARTBEAT").map(|a| a.parse().unwrap());
    let down_ms: u64 = env("BATON_SP_DOWN_MS").map_or(500, |v| v.parse().unwrap());
    // Napping when idle (the roles' default) instead of spinning: for slow machines.
    let idle = match env("BATON_SP_IDLE").as_deref() {
        Some("nap") => IdleMode::default(),
        _ => IdleMode::Poll,
    };
    let _reactors = Reactors::start(ReactorOpts {
        cores: vec![0],
        pin: false,
        idle,
    })
    .unwrap();
    let mut vols = std::collections::BTreeMap::new();
    for (i, name) in VOLS.iter().enumerate() {
        let base =
            engine::bdev::malloc::create(&format!("base_{name}"), BLOCKS, BS as u32, Some([i as u8 + 1; 16])).unwrap();
        let mut cfg = VolumeConfig::new(name, relays.clone());
        cfg.ack_policy = ack;
        cfg.on_relay_down = on_down;
        cfg.standby_heartbeat = heartbeat;
        cfg.relay_down_timeout_ms = down_ms;
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
            ["ST", vol] => {
                // What fencing and the relay-down policy do to the volume now.
                let st = vols[*vol].status();
                let blocked = u8::from(st.writes_blocked);
                format!("OK ST {} {} {blocked}", vols[*vol].superseded(), st.completed_lsn)
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
