//! `baton chaos`: the disaster-recovery setup as real processes on loopback, a
//! self-checking writer, and SIGKILLs of a random role at a random moment, round after
//! round (see `docs/chaos.md`).
//!
//! A cluster is what `baton demo` starts, with files instead of RAM where a restart must
//! find its state: the standby (`baton standby` with its standby host: heartbeats,
//! automatic failover, NVMe/TCP export; its volume and staging are files), two relays
//! (relay 1 forwards, optionally under a `--forward` policy such as a bandwidth cap;
//! relay 2 is a backup; journals in the run directory), and the primary (`baton target`,
//! RAM volume replicated to both relays, `all` + `degraded`, exported over NVMe/TCP).
//! The writer (`chaos_writer`) drives the primary and keeps a synced record of every
//! acknowledged write and restart point.
//!
//! Each round kills one role with SIGKILL at a moment counted in the writer's events.
//! A relay or the standby is restarted on its own files after a random number of further
//! writes; the round passes once a restart point acknowledged after the restart is
//! applied at the standby and both relays hold everything the primary completed. A
//! killed primary ends the cluster: the standby host fails over, and the promoted volume
//! must equal, block by block, the writer's record at the restart point it shows, which
//! must be the last acknowledged one or the one in flight. After the last round a live
//! cluster is quiesced, caught up and failed over the same way. Every wait is on a
//! condition and fails only after `--wait-secs` without progress.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::chaos_report::{drain_fields, hex_text, moment_name, progress_json, round_line};
use crate::chaos_writer::{self as cw, Ctl, Moment, Note, Progress, Record, WriterCfg};
use crate::procs::{addr, baton, free_port, rand, rpc, unix_ms, wait_rpc, work_base, AnyErr, Proc};

/// `baton chaos` options.
#[derive(clap::Args, Debug, Clone)]
pub struct ChaosArgs {
    /// Rounds (one kill each).
    #[arg(long, default_value_t = 8)]
    pub rounds: usize,
    /// Seed of every random choice (printed; the same seed replays the same choices).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Roles to kill, comma-separated: primary, relay1, relay2, standby.
    #[arg(long, default_value = "primary,relay1,relay2,standby", value_parser = Roles::parse)]
    pub roles: Roles,
    /// The kill moment: random, writes (mid-epoch), point (a restart point in flight),
    /// after-point (right after one was acknowledged).
    #[arg(long, default_value = "random", value_parser = ["random", "writes", "point", "after-point"])]
    pub kill_at: String,
    /// Standby mode.
    #[arg(long, default_value = "delayed", value_parser = ["delayed", "snapshot"])]
    pub mode: String,
    /// Forwarding policy of relay 1 (e.g. bandwidth:4000000 to make the standby lag).
    #[arg(long, default_value = "immediate", value_parser = forward_policy)]
    pub forward: String,
    /// Write size, KiB (one extent, every block stamped).
    #[arg(long, default_value_t = 64)]
    pub io_kib: u32,
    /// Writes in flight.
    #[arg(long, default_value_t = 32)]
    pub qd: usize,
    /// Writes between restart points.
    #[arg(long, default_value_t = 64)]
    pub rp_every: u64,
    /// Writes before the kill moment are drawn from 1..=N (default 3 x --rp-every); more
    /// lets a capped forwarder fall further behind.
    #[arg(long)]
    pub round_writes: Option<u64>,
    /// Volume size, MiB.
    #[arg(long, default_value_t = 32)]
    pub vol_mib: u64,
    /// Bound of each relay journal, MiB (how far the standby may fall behind).
    #[arg(long, default_value_t = 1024)]
    pub journal_mib: u64,
    /// The primary marks a relay down after this long without an answer (it then goes
    /// on without it: `degraded`).
    #[arg(long, default_value_t = 3000)]
    pub relay_down_ms: u64,
    /// Primary-failure detection timeout, ms.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// The standby host's bound on draining the relays at failover (its default when not
    /// given; 0 disables the drain, so a lagging standby loses what only the relays hold).
    #[arg(long)]
    pub drain_timeout_ms: Option<u64>,
    /// A wait fails after this many seconds without progress.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
    /// Print the report as JSON (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Keep the run directory (logs, journals, volumes, the writer's records).
    #[arg(long)]
    pub keep: bool,
    /// Replicate over RDMA: relays and the standby also listen on rdma://IP:PORT, and the
    /// primary's and the relays' links use those (IP of an RDMA-capable interface; needs a
    /// build with the `rdma` feature, docs/rdma.md).
    #[arg(long)]
    pub rdma: Option<std::net::IpAddr>,
}

const NQN: &str = "nqn.2016-06.io.baton:chaos";
const STANDBY_NQN: &str = "nqn.2016-06.io.baton:chaos-standby";
const VOL: &str = "Vol0";
const BS: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Primary,
    Relay1,
    Relay2,
    Standby,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Relay1 => "relay1",
            Role::Relay2 => "relay2",
            Role::Standby => "standby",
        }
    }
}

/// `--roles`: the roles to kill, in the order given.
#[derive(Debug, Clone)]
pub struct Roles(Vec<Role>);

impl Roles {
    fn parse(s: &str) -> Result<Roles, String> {
        let all = [Role::Primary, Role::Relay1, Role::Relay2, Role::Standby];
        let mut out = Vec::new();
        for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let r = all.iter().find(|r| r.name() == w);
            out.push(*r.ok_or_else(|| format!("unknown role {w:?} (primary, relay1, relay2, standby)"))?);
        }
        if out.is_empty() {
            return Err("no role".into());
        }
        Ok(Roles(out))
    }
}

impl std::fmt::Display for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|r| r.name()).collect();
        f.write_str(&names.join(","))
    }
}

/// `--forward`: checked here, passed on to relay 1 as given.
fn forward_policy(s: &str) -> Result<String, String> {
    relay::relay::ForwardPolicy::parse(s).map(|_| s.to_string())
}

/// The roles of rounds `0..n`: the chosen roles shuffled, block after block, so every
/// role is killed once per block in a seeded order.
fn plan(roles: &[Role], n: usize, rng: &mut u64) -> Vec<Role> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut block = roles.to_vec();
        for i in (1..block.len()).rev() {
            block.swap(i, (rand(rng) % (i as u64 + 1)) as usize);
        }
        out.extend(block);
    }
    out.truncate(n);
    out
}

fn pick_moment(a: &ChaosArgs, rng: &mut u64) -> Moment {
    let kind = match a.kill_at.as_str() {
        "random" => ["writes", "point", "after-point"][(rand(rng) % 3) as usize],
        k => k,
    };
    let n = 1 + rand(rng) % a.round_writes.unwrap_or(3 * a.rp_every).max(1);
    match kind {
        "point" => Moment::Point(n),
        "after-point" => Moment::AfterPoint(n),
        _ => Moment::Writes(n),
    }
}

/// Polls `f` until it gives `Ok(Some)`; `marker` must change while things move: the wait
/// fails after `quiet` without a change (never on a total time).
fn wait_until<T>(
    what: &str,
    quiet: Duration,
    mut f: impl FnMut() -> Result<Option<T>, AnyErr>,
    mut marker: impl FnMut() -> String,
) -> Result<T, AnyErr> {
    let mut last = marker();
    let mut since = Instant::now();
    loop {
        if let Some(t) = f()? {
            return Ok(t);
        }
        let m = marker();
        if m != last {
            last = m;
            since = Instant::now();
        } else if since.elapsed() > quiet {
            return Err(format!("{what}: no progress for {quiet:?}; last: {last}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Ports {
    standby: u16,
    hb: u16,
    export: u16,
    relays: [u16; 2],
    target: u16,
    /// RDMA ports of the relays and the standby (used with `--rdma`).
    rdma_relays: [u16; 2],
    rdma_standby: u16,
}

/// Where peers reach role port `tcp` (or its RDMA twin `rdma` with `--rdma`).
fn link_addr(a: &ChaosArgs, tcp: u16, rdma: u16) -> String {
    match a.rdma {
        Some(ip) => format!("rdma://{}", std::net::SocketAddr::new(ip, rdma)),
        None => addr(tcp).to_string(),
    }
}

/// One set of processes and its writer.
struct Cluster<'a> {
    a: &'a ChaosArgs,
    dir: PathBuf,
    p: Ports,
    standby: Proc,
    relays: Vec<Proc>,
    primary: Proc,
    writer_id: u64,
    ctl: mpsc::Sender<Ctl>,
    notes: mpsc::Receiver<Note>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl<'a> Cluster<'a> {
    fn sock(&self, n: &str) -> PathBuf {
        self.dir.join(format!("{n}.sock"))
    }
    fn quiet(&self) -> Duration {
        Duration::from_secs(self.a.wait_secs)
    }

    fn start(a: &'a ChaosArgs, dir: &Path, writer_id: u64) -> Result<Cluster<'a>, AnyErr> {
        std::fs::create_dir_all(dir)?;
        let p = Ports {
            standby: free_port()?,
            hb: free_port()?,
            export: free_port()?,
            relays: [free_port()?, free_port()?],
            target: free_port()?,
            rdma_relays: [free_port()?, free_port()?],
            rdma_standby: free_port()?,
        };
        write_standby_config(a, dir)?;
        let standby = spawn_standby(a, dir, &p)?;
        let mut relays = Vec::new();
        for i in 0..2 {
            relays.push(spawn_relay(a, dir, &p, i)?);
        }
        let primary = spawn_primary(a, dir, &p)?;
        let (ctl, ctl_rx) = mpsc::channel();
        let (note_tx, notes) = mpsc::channel();
        let cfg = WriterCfg {
            addr: addr(p.target),
            nqn: NQN.into(),
            nsid: 1,
            io_blocks: (a.io_kib * 1024 / BS as u32).max(1),
            qd: a.qd.max(1),
            rp_every: a.rp_every.max(1),
            seed: writer_id,
            writer_id,
            log: dir.join("writer.log"),
        };
        let writer = Some(cw::spawn(cfg, ctl_rx, note_tx)?);
        Ok(Cluster {
            a,
            dir: dir.to_path_buf(),
            p,
            standby,
            relays,
            primary,
            writer_id,
            ctl,
            notes,
            writer,
        })
    }

    /// Arms `m` and waits until the writer reaches it (it then waits for `resume`).
    fn trigger(&mut self, m: Moment) -> Result<Progress, AnyErr> {
        self.ctl.send(Ctl::Arm(m))?;
        let quiet = self.quiet();
        loop {
            match self.notes.recv_timeout(quiet) {
                Ok(Note::Fired(f, p)) if f == m => return Ok(p),
                Ok(Note::Fired(f, _)) => return Err(format!("the writer fired {f:?}, {m:?} was armed").into()),
                Ok(Note::Ended(p, why)) => {
                    return Err(format!(
                        "the writer ended before the moment {m:?} ({}): {why}",
                        progress_json(&p)
                    )
                    .into())
                }
                Ok(Note::Quiesced(_)) => {}
                Err(_) => return Err(format!("the writer did not reach the moment {m:?} within {quiet:?}").into()),
            }
        }
    }
    fn resume(&self) {
        let _ = self.ctl.send(Ctl::Resume);
    }

    fn restart(&mut self, role: Role) -> Result<(), AnyErr> {
        match role {
            Role::Relay1 | Role::Relay2 => {
                let i = usize::from(role == Role::Relay2);
                self.relays[i] = spawn_relay(self.a, &self.dir, &self.p, i)?;
            }
            Role::Standby => self.standby = spawn_standby(self.a, &self.dir, &self.p)?,
            Role::Primary => return Err("a primary is not restarted: the standby takes over".into()),
        }
        Ok(())
    }
    fn kill(&mut self, role: Role) {
        match role {
            Role::Primary => self.primary.kill9(),
            Role::Relay1 => self.relays[0].kill9(),
            Role::Relay2 => self.relays[1].kill9(),
            Role::Standby => self.standby.kill9(),
        }
    }

    fn standby_status(&self) -> Value {
        rpc(&self.sock("standby"), "standby_get_status", json!({"name": VOL}))
            .ok()
            .and_then(|v| v.get(0).cloned())
            .unwrap_or(Value::Null)
    }
    fn relay_volume(&self, i: usize) -> Value {
        let st = rpc(&self.sock(&format!("relay{}", i + 1)), "relay_get_status", Value::Null).unwrap_or(Value::Null);
        st["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == VOL).cloned())
            .unwrap_or(Value::Null)
    }

    /// A relay or the standby: kill at the moment, restart after more writes, then wait
    /// until a restart point acknowledged after the restart is everywhere.
    fn kill_restart(&mut self, role: Role, m: Moment, rng: &mut u64) -> Result<Value, AnyErr> {
        let at = self.trigger(m)?;
        self.kill(role);
        self.resume();
        let down_writes = 1 + rand(rng) % (2 * self.a.rp_every.max(1));
        let before_restart = self.trigger(Moment::Writes(down_writes))?;
        self.resume();
        self.restart(role)?;
        let after = self.trigger(Moment::AfterPoint(1))?;
        self.resume();
        let lsn = rpc(&self.sock("primary"), "replication_get_volumes", json!({"name": VOL}))?[0]["completed_lsn"]
            .as_u64()
            .unwrap_or(0);
        wait_until(
            &format!("both relays acknowledge LSN {lsn} after the {} restart", role.name()),
            self.quiet(),
            || {
                self.no_false_failover()?;
                self.relays_hold(lsn)
            },
            || self.relay_volume(0)["durable_lsn"].to_string() + "/" + &self.relay_volume(1)["durable_lsn"].to_string(),
        )?;
        let epoch = after.last_epoch;
        let sb = wait_until(
            &format!("the standby applies epoch {epoch} after the {} restart", role.name()),
            self.quiet(),
            || {
                let s = self.standby_status();
                if let Some(e) = s["error"].as_str() {
                    return Err(format!("the standby stopped: {e}").into());
                }
                self.no_false_failover()?;
                Ok((s["applied_epoch"].as_u64().unwrap_or(0) >= epoch).then_some(s))
            },
            || self.standby_status()["durable_lsn"].to_string(),
        )?;
        Ok(json!({
            "role": role.name(), "moment": moment_name(m), "at_kill": progress_json(&at),
            "restarted_after_writes": down_writes, "at_restart": progress_json(&before_restart),
            "caught_up": {"rp": after.rp_acked, "epoch": epoch, "primary_completed_lsn": lsn,
                          "standby_applied_epoch": sb["applied_epoch"], "standby_durable_lsn": sb["durable_lsn"]},
            "problems": [],
        }))
    }

    /// An error if the standby host failed over although the primary was never killed
    /// (a stalled primary looks dead; the old primary goes on acknowledging writes).
    fn no_false_failover(&self) -> Result<(), AnyErr> {
        let f = &self.host_status()["failover"];
        if f.is_object() {
            return Err(format!(
                "the standby host failed over while the primary was alive (cause {}, {} generation)",
                f["cause"], f["volumes"][0]["generation"]
            )
            .into());
        }
        Ok(())
    }

    /// Both relays up at the primary with `lsn` acknowledged; an error if one needs a resync.
    fn relays_hold(&self, lsn: u64) -> Result<Option<()>, AnyErr> {
        let v = rpc(&self.sock("primary"), "replication_get_volumes", json!({"name": VOL}))?;
        let relays = v[0]["relays"].as_array().cloned().unwrap_or_default();
        if let Some(r) = relays.iter().find(|r| r["state"] == "needs_resync") {
            return Err(format!(
                "relay {} needs a resync (the primary's retention overflowed)",
                r["addr"]
            )
            .into());
        }
        let ok = relays.len() == 2
            && relays
                .iter()
                .all(|r| r["connected"] == true && r["acked_lsn"].as_u64().unwrap_or(0) >= lsn);
        Ok(ok.then_some(()))
    }

    /// The primary: kill at the moment, let the standby host fail over, verify.
    fn kill_primary(&mut self, m: Moment) -> Result<Value, AnyErr> {
        let at = self.trigger(m)?;
        self.kill(Role::Primary);
        let kill_ms = unix_ms();
        self.resume();
        // How far the standby was behind the relays when the primary died.
        let sb = self.standby_status();
        let r1 = self.relay_volume(0);
        let lag = json!({
            "standby_durable_lsn": sb["durable_lsn"], "standby_applied_epoch": sb["applied_epoch"],
            "relay1_durable_lsn": r1["durable_lsn"], "relay1_forward_lag_lsn": r1["forward_lag_lsn"],
            "relay1_forward_lag_bytes": r1["forward_lag_bytes"],
        });
        let end = self.writer_end()?;
        let mut r = self.failover_and_verify(kill_ms, None)?;
        r["role"] = json!("primary");
        r["moment"] = json!(moment_name(m));
        r["at_kill"] = progress_json(&at);
        r["writer_end"] = progress_json(&end);
        r["lag_at_kill"] = lag;
        r["standby_links"] = self.link_summary();
        r["standby_after"] = self.standby_status();
        Ok(r)
    }

    /// Waits for the writer thread to end (its queue breaks when the primary dies).
    fn writer_end(&mut self) -> Result<Progress, AnyErr> {
        let quiet = self.quiet();
        let p = loop {
            match self.notes.recv_timeout(quiet) {
                Ok(Note::Ended(p, _)) => break p,
                Ok(_) => {}
                Err(_) => return Err(format!("the writer did not stop within {quiet:?} of the kill").into()),
            }
        };
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        Ok(p)
    }

    /// The end of the last round: quiesce the writer, wait until its last restart point
    /// is applied at the standby, kill the primary and verify the failover as above.
    fn finish(&mut self) -> Result<Value, AnyErr> {
        self.ctl.send(Ctl::Quiesce)?;
        let quiet = self.quiet();
        let q = loop {
            match self.notes.recv_timeout(quiet) {
                Ok(Note::Quiesced(p)) => break p,
                Ok(Note::Ended(p, why)) => {
                    return Err(format!("the writer ended while quiescing ({}): {why}", progress_json(&p)).into())
                }
                Ok(_) => {}
                Err(_) => return Err(format!("the writer did not quiesce within {quiet:?}").into()),
            }
        };
        if q.rp_acked != q.rp_submitted {
            return Err(format!("the final restart point failed: {}", progress_json(&q)).into());
        }
        let epoch = q.last_epoch;
        wait_until(
            &format!("the standby applies the final epoch {epoch}"),
            self.quiet(),
            || Ok((self.standby_status()["applied_epoch"].as_u64().unwrap_or(0) >= epoch).then_some(())),
            || self.standby_status()["durable_lsn"].to_string(),
        )?;
        self.kill(Role::Primary);
        let kill_ms = unix_ms();
        let _ = self.ctl.send(Ctl::Stop);
        self.writer_end()?;
        let mut r = self.failover_and_verify(kill_ms, Some(q.rp_acked))?;
        r["role"] = json!("primary (final check: writer quiesced, standby caught up)");
        r["at_kill"] = progress_json(&q);
        Ok(r)
    }

    /// What each relay link gave the standby: pushed (`forward_frames`) or answered
    /// (`gap_replies`), and the ops it offered.
    fn link_summary(&self) -> Value {
        let links = self.standby_status()["links"].as_array().cloned().unwrap_or_default();
        Value::Array(
            links
                .iter()
                .map(|l| {
                    json!({"addr": l["addr"], "role": l["role"], "forward_frames": l["forward_frames"],
                                "gap_replies": l["gap_replies"], "ops_offered": l["ops_offered"]})
                })
                .collect(),
        )
    }

    fn host_status(&self) -> Value {
        rpc(&self.sock("standby"), "standby_host_get_status", Value::Null).unwrap_or(Value::Null)
    }

    /// Waits for the failover, then checks the promoted restart point against the
    /// writer's record (`exact`: the only acceptable one) and the volume against the model.
    fn failover_and_verify(&mut self, kill_ms: u64, exact: Option<u64>) -> Result<Value, AnyErr> {
        let host = wait_until(
            "the standby host fails over",
            self.quiet(),
            || {
                let h = self.host_status();
                let s = h["failover"]["state"].as_str().unwrap_or("");
                Ok((s == "done" || s == "failed").then_some(h))
            },
            || {
                let h = self.host_status();
                format!("{} {}", h["failover"], self.standby_status()["durable_lsn"])
            },
        )?;
        let f = &host["failover"];
        let mut problems = Vec::new();
        if f["state"] != "done" {
            problems.push(format!("failover {}: {}", f["state"], f["error"]));
            return Ok(json!({"problems": problems, "failover": f}));
        }
        let v = &f["volumes"][0];
        let epoch = v["epoch"].as_u64().unwrap_or(0);
        let tag = hex_text(v["tag"].as_str().unwrap_or(""));
        let k = self.tag_point(&tag, &mut problems);
        let rec = Record::read(&self.dir.join("writer.log"))?;
        let (ka, ea) = rec.last_acked.unwrap_or((0, 0));
        if k < ka {
            problems.push(format!(
                "acknowledged restart points lost: the last acknowledged was rp {ka} (epoch {ea}), the standby promoted rp {k} (epoch {epoch})"
            ));
        }
        if k > rec.last_submitted {
            problems.push(format!(
                "the standby promoted rp {k}, but the writer declared only {}",
                rec.last_submitted
            ));
        }
        if let Some(x) = exact.filter(|&x| x != k) {
            problems.push(format!("the standby promoted rp {k}, the caught-up one is rp {x}"));
        }
        let port = f["trsvcid"].as_u64().unwrap_or(u64::from(self.p.export)) as u16;
        let nsid = v["nsid"].as_u64().unwrap_or(1) as u32;
        let io_blocks = (self.a.io_kib * 1024 / BS as u32).max(1);
        let cmp = cw::compare_volume(addr(port), STANDBY_NQN, nsid, io_blocks, self.writer_id, &rec, k)?;
        if cmp.mismatched > 0 {
            problems.push(format!(
                "{} of {} blocks differ from the writer's record at rp {k}: {}",
                cmp.mismatched,
                cmp.blocks,
                cmp.first.join("; ")
            ));
        }
        let detected = f["detected_unix_ms"].as_u64().unwrap_or(0);
        Ok(json!({
            "last_acked_rp": ka, "last_acked_epoch": ea, "last_submitted_rp": rec.last_submitted,
            "writes_acked": rec.acked, "promoted_rp": k, "promoted_epoch": epoch, "promoted_tag": tag,
            "rp_lost": ka.saturating_sub(k), "blocks_checked": cmp.blocks, "blocks_mismatched": cmp.mismatched,
            "detection_ms": detected.saturating_sub(kill_ms), "drain": drain_fields(f),
            "rolled_back_us": f["rolled_back_us"], "problems": problems,
        }))
    }

    /// The writer's restart point index in a promoted tag (`chaos w<id> rp <k>`; none: 0).
    fn tag_point(&self, tag: &str, problems: &mut Vec<String>) -> u64 {
        if tag.is_empty() {
            return 0;
        }
        let want = format!("chaos w{:016x} rp ", self.writer_id);
        match tag.strip_prefix(&want).and_then(|k| k.parse().ok()) {
            Some(k) => k,
            None => {
                problems.push(format!("the promoted tag {tag:?} is not this writer's ({want}<k>)"));
                0
            }
        }
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        let _ = self.ctl.send(Ctl::Stop);
        self.primary.kill9();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

fn write_standby_config(a: &ChaosArgs, dir: &Path) -> Result<(), AnyErr> {
    let params = if a.mode == "delayed" {
        json!({"name": VOL, "mode": "delayed", "volume_bdev": "SbVol", "staging_bdev": "SbStage"})
    } else {
        json!({"name": VOL, "mode": "snapshot", "data_bdev": "SbData", "metadata_bdev": "SbMeta",
               "volume_blocks": a.vol_mib * 1024 * 1024 / BS, "keep_last": 4})
    };
    let cfg = json!({"subsystems": [{"subsystem": "standby", "config": [
        {"method": "standby_create", "params": params}]}]});
    std::fs::write(dir.join("standby.json"), cfg.to_string())?;
    Ok(())
}

/// The standby with its standby host; its bdevs are files in `dir`, so a restart recovers.
fn spawn_standby(a: &ChaosArgs, dir: &Path, p: &Ports) -> Result<Proc, AnyErr> {
    let file = |name: &str, f: &str, mib: u64| format!("{name}=uring:{}/{f},size={mib}M,bs={BS}", dir.display());
    let bdevs = if a.mode == "delayed" {
        [
            file("SbVol", "sbvol.img", a.vol_mib),
            file("SbStage", "sbstage.img", 256),
        ]
    } else {
        [
            file("SbData", "sbdata.img", 4 * a.vol_mib),
            file("SbMeta", "sbmeta.img", 64),
        ]
    };
    let sock = dir.join("standby.sock");
    let _ = std::fs::remove_file(&sock);
    let mut c = baton()?;
    c.args(["standby", "-m", "0x2", "-r"])
        .arg(&sock)
        .args(["--listen", &addr(p.standby).to_string()]);
    if a.rdma.is_some() {
        c.args(["--listen", &link_addr(a, p.standby, p.rdma_standby)]);
    }
    c.arg("--json")
        .arg(dir.join("standby.json"))
        .args(["--bdev", &bdevs[0], "--bdev", &bdevs[1]])
        .args(["--heartbeat-listen", &addr(p.hb).to_string()])
        .args(["--primary-timeout-ms", &a.timeout_ms.to_string()])
        .args(["--failover-volume", VOL, "--failover-nqn", STANDBY_NQN])
        .args(["--failover-listen", &addr(p.export).to_string()]);
    if let Some(ms) = a.drain_timeout_ms {
        c.args(["--drain-timeout-ms", &ms.to_string()]);
    }
    let mut proc = Proc::spawn("standby", &mut c, &dir.join("standby.log"))?;
    wait_rpc(&mut proc, &sock, Duration::from_secs(a.wait_secs))?;
    Ok(proc)
}

/// Relay `i` (0: the forwarder, under `--forward`; 1: a backup), journal in `dir`.
fn spawn_relay(a: &ChaosArgs, dir: &Path, p: &Ports, i: usize) -> Result<Proc, AnyErr> {
    let name = ["relay1", "relay2"][i.min(1)];
    let jdir = dir.join(name);
    std::fs::create_dir_all(&jdir)?;
    let sock = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&sock);
    let mut c = baton()?;
    c.args(["relay", "-m", "0x2", "-r"])
        .arg(&sock)
        .args(["--listen", &addr(p.relays[i.min(1)]).to_string()]);
    if a.rdma.is_some() {
        c.args(["--listen", &link_addr(a, 0, p.rdma_relays[i.min(1)])]);
    }
    c.arg("--journal-dir")
        .arg(&jdir)
        .args(["--journal-bytes-max", &format!("{}M", a.journal_mib)])
        .args(["--standby", &link_addr(a, p.standby, p.rdma_standby)]);
    if i == 0 {
        c.args(["--forward", &a.forward]);
    } else {
        c.arg("--backup");
    }
    let mut proc = Proc::spawn(name, &mut c, &dir.join(format!("{name}.log")))?;
    wait_rpc(&mut proc, &sock, Duration::from_secs(a.wait_secs))?;
    Ok(proc)
}

/// The primary: RAM base, the replicated volume (`all` + `degraded`, direct heartbeats to
/// the standby host), exported over NVMe/TCP.
fn spawn_primary(a: &ChaosArgs, dir: &Path, p: &Ports) -> Result<Proc, AnyErr> {
    let ps = dir.join("primary.sock");
    let _ = std::fs::remove_file(&ps);
    let mut c = baton()?;
    c.args(["target", "-m", "0x1", "-r"])
        .arg(&ps)
        .args(["--bdev", &format!("Base0=malloc,size={}M,bs={BS}", a.vol_mib)]);
    let mut proc = Proc::spawn("primary", &mut c, &dir.join("primary.log"))?;
    wait_rpc(&mut proc, &ps, Duration::from_secs(a.wait_secs))?;
    let relays: Vec<String> = (0..2).map(|i| link_addr(a, p.relays[i], p.rdma_relays[i])).collect();
    rpc(
        &ps,
        "replication_create_volume",
        json!({"name": VOL, "base_bdev": "Base0", "relays": relays, "on_relay_down": "degraded",
               "relay_down_timeout_ms": a.relay_down_ms, "retain_bytes_max": 1u64 << 30,
               "standby_heartbeat": addr(p.hb).to_string()}),
    )?;
    rpc(&ps, "nvmf_create_transport", json!({"trtype": "TCP"}))?;
    rpc(
        &ps,
        "nvmf_create_subsystem",
        json!({"nqn": NQN, "allow_any_host": true, "serial_number": "BATONCHAOS1"}),
    )?;
    rpc(
        &ps,
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN, "namespace": {"bdev_name": VOL}}),
    )?;
    rpc(
        &ps,
        "nvmf_subsystem_add_listener",
        json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
               "trsvcid": p.target.to_string()}}),
    )?;
    Ok(proc)
}

pub fn run(a: ChaosArgs) -> Result<(), AnyErr> {
    let seed = a.seed.unwrap_or_else(|| unix_ms() ^ u64::from(std::process::id()));
    let roles = a.roles.0.clone();
    let out = |s: String| {
        if a.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    };
    let dir = PathBuf::from(work_base()).join(format!("baton-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    out(format!(
        "baton chaos: seed {seed} (replay: --seed {seed}), {} rounds, roles {}, kill at {}, {} standby, relay 1 forwards {}, {} KiB writes at QD {}, a restart point every {} writes",
        a.rounds, a.roles, a.kill_at, a.mode, a.forward, a.io_kib, a.qd, a.rp_every
    ));
    out(format!("run directory {}", dir.display()));
    let mut rng = seed | 1;
    let plan = plan(&roles, a.rounds, &mut rng);
    let reports = rounds(&a, &dir, &plan, &mut rng, &out);
    let failed = reports
        .iter()
        .filter(|r| r["problems"].as_array().is_some_and(|p| !p.is_empty()))
        .count();
    let lost: Vec<String> = reports
        .iter()
        .filter_map(|r| r.get("rp_lost").map(Value::to_string))
        .collect();
    out(format!(
        "== {} rounds checked (seed {seed}): {failed} with problems; acknowledged restart points lost per failover: [{}]",
        reports.len(),
        lost.join(", ")
    ));
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"seed": seed, "args": format!("{a:?}"), "rounds": reports,
                                                 "rounds_with_problems": failed}))?
        );
    }
    if failed == 0 && !a.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("run directory kept: {}", dir.display());
    }
    if failed > 0 {
        return Err(format!("chaos: {failed} round(s) with problems (seed {seed})").into());
    }
    Ok(())
}

/// Runs the planned rounds, cluster after cluster (a primary kill ends one); a cluster
/// alive after the last round gets the final check. Returns one report per round.
fn rounds(a: &ChaosArgs, dir: &Path, plan: &[Role], rng: &mut u64, out: &dyn Fn(String)) -> Vec<Value> {
    let mut reports = Vec::new();
    let mut next = 0;
    let mut cluster_no = 0;
    loop {
        cluster_no += 1;
        let cdir = dir.join(format!("cluster{cluster_no}"));
        let mut c = match Cluster::start(a, &cdir, rand(rng)) {
            Ok(c) => c,
            Err(e) => {
                let r = json!({"round": next + 1, "rounds": plan.len(), "cluster": cluster_no, "role": "-",
                               "problems": [format!("starting the cluster: {e}")]});
                out(round_line(&r));
                reports.push(r);
                return reports;
            }
        };
        let first_report = reports.len();
        let ended_by_kill = loop {
            let Some(&role) = plan.get(next) else {
                let mut r = c
                    .finish()
                    .unwrap_or_else(|e| json!({"role": "primary (final check)", "problems": [e.to_string()]}));
                r["round"] = json!("final");
                r["rounds"] = json!(plan.len());
                r["cluster"] = json!(cluster_no);
                out(round_line(&r));
                reports.push(r);
                break false;
            };
            next += 1;
            let m = pick_moment(a, rng);
            let res = match role {
                Role::Primary => c.kill_primary(m),
                _ => c.kill_restart(role, m, rng),
            };
            let mut r = res.unwrap_or_else(|e| {
                json!({"role": role.name(), "moment": moment_name(m),
                                                      "problems": [e.to_string()], "aborted": true})
            });
            r["round"] = json!(next);
            r["rounds"] = json!(plan.len());
            r["cluster"] = json!(cluster_no);
            out(round_line(&r));
            let ends = role == Role::Primary || r["aborted"] == true;
            reports.push(r);
            if ends {
                break true;
            }
        };
        drop(c);
        let clean = reports[first_report..]
            .iter()
            .all(|r| r["problems"].as_array().is_some_and(|p| p.is_empty()));
        if clean && !a.keep {
            let _ = std::fs::remove_dir_all(&cdir);
        }
        if !ended_by_kill || next == plan.len() {
            return reports;
        }
    }
}
