//! `baton demo --scenario initial-sync|switchover|failback`: the other steps of the
//! disaster-recovery lifecycle, with the failover demo's processes on loopback
//! (`demo.rs`, built with other `SiteOpts`) and a verified report each (docs/demo.md,
//! "Scenarios").
//!
//! - **initial-sync**: the primary's base (a file) holds 64 MiB before replication exists;
//!   the replicated volume is created with `initial_sync: true` while the ledger runs on
//!   it. The standby says `not_valid` until the first restart point after the sync, then
//!   `valid`; at a restart point after that its volume file equals the primary's base.
//! - **switchover**: the ledger runs `--groups` groups and exits at its last restart point;
//!   `switchover::switchover` through the standby host promotes the standby and restarts
//!   the ledger there from its image, at that last group.
//! - **failback**: the failover demo, then the old primary is repaired as a standby over
//!   its old base file behind two new relays, and the promoted site replicates back with
//!   an initial sync of only the union of its record of changes and the old primary's
//!   dirty-block record. At the first restart point after the sync the old base equals the
//!   promoted volume.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nvme::host::{cmd, Data};
use serde_json::{json, Value};

use crate::demo::{Demo, DemoArgs, Killed, PrimarySeen, Restored, SiteOpts, Sites, VOL_MB};
use crate::ledger::{Target, Volume};
use crate::procs::{addr, baton, free_port, rand, rpc, unix_ms, wait_rpc, AnyErr, Proc};
use crate::switchover::{switchover, SwitchoverArgs};

const BS: usize = 4096;
const VOL_BLOCKS: u64 = VOL_MB * 256;
const VOL_BYTES: u64 = VOL_MB << 20;
/// The subsystem exporting the promoted site's replicated volume (failback).
const HOME_NQN: &str = "nqn.2016-06.io.baton:ledger-home";
/// Bound on each wait (a sync, a restart point applied, an application exit).
const WAIT: Duration = Duration::from_secs(120);

/// Runs one scenario, prints its report (text or `--json`), and fails unless verified.
pub fn run(scenario: &str, a: &DemoArgs, dir: &Path, seed: &mut u64, out: &dyn Fn(String)) -> Result<(), AnyErr> {
    let report = match scenario {
        "initial-sync" => initial_sync(a, dir, seed, out)?,
        "switchover" => switchover_scenario(a, dir, seed, out)?,
        "failback" => failback(a, dir, seed, out)?,
        s => return Err(format!("unknown scenario {s}").into()),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report)?;
    }
    if report["verified"] == true {
        out(format!("demo passed: {scenario} verified"));
        Ok(())
    } else {
        Err(format!("demo FAILED ({scenario}; see the report)").into())
    }
}

fn print_report(r: &Value) -> std::io::Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(o, "\n== report ({})", r["scenario"].as_str().unwrap_or("?"))?;
    for l in r["summary"].as_array().into_iter().flatten() {
        writeln!(o, "{}", l.as_str().unwrap_or(""))?;
    }
    writeln!(o, "verified                      {}", r["verified"])?;
    for p in r["problems"].as_array().into_iter().flatten() {
        writeln!(o, "PROBLEM: {}", p.as_str().unwrap_or(""))?;
    }
    Ok(())
}

/// The first element of an array answer (the status RPCs answer a list), or `v` itself.
fn first(v: Value) -> Value {
    match v {
        Value::Array(mut a) if !a.is_empty() => a.swap_remove(0),
        v => v,
    }
}

fn vol_status(sock: &Path) -> Result<Value, AnyErr> {
    Ok(first(rpc(sock, "replication_get_volumes", json!({"name": "Vol0"}))?))
}

fn standby_status(sock: &Path) -> Result<Value, AnyErr> {
    Ok(first(rpc(sock, "standby_get_status", json!({"name": "Vol0"}))?))
}

fn mib(b: f64) -> f64 {
    b / f64::from(1u32 << 20)
}

/// `b` bytes in KiB or MiB, for the progress line.
fn size(b: f64) -> String {
    if b >= f64::from(1u32 << 20) {
        format!("{:.1} MiB", mib(b))
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

/// Block `lba` of the data the primary's base holds before replication.
fn pattern_block(lba: u64, seed: u64) -> Vec<u8> {
    let w = (lba << 20) ^ seed;
    (0..BS / 8)
        .flat_map(|i| (w.wrapping_add(i as u64)).to_le_bytes())
        .collect()
}

fn write_pattern(path: &Path, seed: u64) -> Result<(), AnyErr> {
    let data: Vec<u8> = (0..VOL_BLOCKS).flat_map(|lba| pattern_block(lba, seed)).collect();
    std::fs::write(path, data)?;
    Ok(())
}

/// Reads a file's first `VOL_BYTES`.
fn read_image(path: &Path) -> Result<Vec<u8>, AnyErr> {
    let mut v = std::fs::read(path)?;
    v.truncate(VOL_BYTES as usize);
    Ok(v)
}

/// Reads the whole namespace over NVMe/TCP, 16 blocks a command.
fn read_nvme(t: &Target) -> Result<Vec<u8>, AnyErr> {
    let mut vol = Volume::connect(t)?;
    let mut out = Vec::with_capacity(VOL_BYTES as usize);
    for (i, slba) in (0..vol.blocks).step_by(16).enumerate() {
        let n = 16.min(vol.blocks - slba) as u32;
        let buf = engine::buf::DmaBuf::alloc(n as usize * vol.bs);
        let c = vol.q.sync(
            cmd::read(vol.nsid, slba, n),
            Data::FromCtrl(buf),
            Duration::from_secs(10),
        )?;
        nvme::host::status_ok(&c.cqe)?;
        out.extend_from_slice(&c.buf.ok_or("read: no data")?[..]);
        if i % 256 == 0 {
            vol.ctrl.tick()?;
        }
    }
    vol.ctrl.disconnect();
    Ok(out)
}

/// Blocks that differ between two images, and the first of them.
fn diff_blocks(a: &[u8], b: &[u8]) -> (u64, Option<u64>) {
    let n = a.len().min(b.len()) / BS;
    let mut first = None;
    let mut count = (a.len().max(b.len()) / BS - n) as u64;
    for k in 0..n {
        if a[k * BS..(k + 1) * BS] != b[k * BS..(k + 1) * BS] {
            count += 1;
            first.get_or_insert(k as u64);
        }
    }
    (count, first)
}

/// Waits until nothing is in flight on the replicated volume behind `sock` (its writer
/// gone) and declares a restart point there; its epoch.
fn quiesce_and_point(sock: &Path, tag: &str) -> Result<u64, AnyErr> {
    let start = Instant::now();
    let mut last = None;
    loop {
        let v = vol_status(sock)?;
        let now = (v["completed_lsn"].as_u64(), v["inflight_ops"].as_u64());
        if now.1 == Some(0) && last == Some(now) {
            break;
        }
        if start.elapsed() > WAIT {
            return Err(format!("the volume never went quiet: {v}").into());
        }
        last = Some(now);
        std::thread::sleep(Duration::from_millis(100));
    }
    let rp = rpc(
        sock,
        "replication_declare_restart_point",
        json!({"name": "Vol0", "tag": tag}),
    )?;
    rp["epoch"]
        .as_u64()
        .ok_or_else(|| format!("restart point: {rp}").into())
}

/// Waits until the standby behind `sock` applied `epoch` and is idle; its status then.
fn wait_applied(sock: &Path, epoch: u64) -> Result<Value, AnyErr> {
    let start = Instant::now();
    loop {
        let s = standby_status(sock)?;
        let idle = matches!(s["delayed"]["apply_phase"].as_str(), None | Some("idle"));
        if s["applied_epoch"].as_u64() >= Some(epoch) && idle {
            return Ok(s);
        }
        if start.elapsed() > WAIT {
            return Err(format!("the standby never applied epoch {epoch}: {s}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What was seen of a block sync while it ran.
#[derive(Default)]
struct SyncWatch {
    /// Progress samples taken while the sync was reading or ending.
    samples: u64,
    /// The standby's `failover_target`, each change in order.
    targets: Vec<String>,
    /// The sync's status once done.
    done: Value,
    /// The ledger's lines (initial-sync: it runs during the sync).
    seen: PrimarySeen,
    /// Restart points the ledger completed while the sync ran.
    points_during_sync: u64,
    /// A ledger runs during the sync (its progress is shown).
    with_ledger: bool,
}

impl SyncWatch {
    /// Takes one sample: the sync's progress on the primary side `ps`, the standby's
    /// `failover_target` on `ss`; true once the sync is done (and, with `until_valid`,
    /// the standby says `valid`).
    fn sample(&mut self, ps: &Path, ss: &Path, until_valid: bool) -> Result<bool, AnyErr> {
        let sync = vol_status(ps)?["sync"].clone();
        let target = standby_status(ss)?["failover_target"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        if self.targets.last() != Some(&target) {
            self.targets.push(target.clone());
        }
        let state = sync["state"].as_str().unwrap_or("none");
        if state == "failed" {
            return Err(format!("the sync failed: {sync}").into());
        }
        if matches!(state, "reading" | "ending") {
            self.samples += 1;
            self.points_during_sync = self.seen.points;
        }
        let ledger = if self.with_ledger {
            format!(
                " | ledger transfers {:>6} restart points {:>4}",
                self.seen.last_wrote_tx, self.seen.points
            )
        } else {
            String::new()
        };
        eprint!(
            "\r  sync {state:<7} {:>5.1} %  {:>9} of {:>9}  {:>6.1} MiB/s  ETA {:>5.1} s{ledger} | standby {target:<9}   ",
            sync["percent"].as_f64().unwrap_or(0.0),
            size(sync["bytes_sent"].as_f64().unwrap_or(0.0)),
            size(sync["bytes_total"].as_f64().unwrap_or(0.0)),
            mib(sync["rate_bytes_per_sec"].as_f64().unwrap_or(0.0)),
            sync["eta_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        );
        let finished = state == "done" && (!until_valid || target == "valid");
        if finished {
            eprintln!();
            self.done = sync;
        }
        Ok(finished)
    }

    /// Samples every 200 ms until the sync is done (see `sample`), taking in the ledger's
    /// lines from `rx` meanwhile and checking every process in `procs` is alive.
    fn run(
        &mut self,
        (ps, ss): (&Path, &Path),
        rx: Option<&mpsc::Receiver<String>>,
        procs: &mut [&mut Proc],
        until_valid: bool,
    ) -> Result<(), AnyErr> {
        self.with_ledger = rx.is_some();
        let start = Instant::now();
        loop {
            if let Some(rx) = rx {
                loop {
                    match rx.try_recv() {
                        Ok(l) => {
                            self.seen.observe(&l, "");
                        }
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => return Err("the ledger exited early".into()),
                    }
                }
            }
            for p in procs.iter_mut() {
                p.check_alive()?;
            }
            if self.sample(ps, ss, until_valid)? {
                return Ok(());
            }
            if start.elapsed() > WAIT {
                return Err(format!("the sync did not finish within {WAIT:?}").into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The sync's figures for the report.
    fn json(&self) -> Value {
        let d = &self.done;
        json!({"bytes_sent": d["bytes_sent"], "bytes_total": d["bytes_total"], "elapsed_ms": d["elapsed_ms"],
               "rate_bytes_per_sec": d["rate_bytes_per_sec"], "chunks_total": d["chunks_total"],
               "progress_samples": self.samples, "failover_target_seen": self.targets})
    }
}

/// `--scenario initial-sync`.
fn initial_sync(a: &DemoArgs, dir: &Path, seed: &mut u64, out: &dyn Fn(String)) -> Result<Value, AnyErr> {
    if a.mode != "delayed" {
        return Err("--scenario initial-sync reads the standby's volume file: it needs --mode delayed".into());
    }
    let base = dir.join("primary-base.img");
    let pseed = rand(seed);
    write_pattern(&base, pseed)?;
    out(format!(
        "primary's base {} holds {VOL_MB} MiB written before any replication",
        base.display()
    ));
    let opts = SiteOpts {
        standby_files: true,
        primary_base_file: Some(base.clone()),
        initial_sync: Some(a.sync_mib_per_sec << 20),
        ..SiteOpts::default()
    };
    let mut d = Demo::new(a, dir, seed, out, opts)?;
    let mut sites = d.start_sites()?;
    let (ps, ss) = (d.sock("primary"), d.sock("standby"));
    let (mut ledger, rx) = d.start_ledger(0)?;
    let mut w = SyncWatch::default();
    let t0 = Instant::now();
    {
        let Sites {
            primary,
            relays,
            standby,
        } = &mut sites;
        let mut procs: Vec<&mut Proc> = vec![primary, standby, &mut ledger];
        procs.extend(relays.iter_mut());
        w.run((&ps, &ss), Some(&rx), &mut procs, true)?;
    }
    let to_valid_ms = t0.elapsed().as_millis() as u64;
    while let Ok(l) = rx.try_recv() {
        w.seen.observe(&l, "");
    }
    ledger.kill9();
    out(format!(
        "sync done, standby valid after {to_valid_ms} ms; ledger stopped (SIGKILL) after {} transfers, {} restart points",
        w.seen.last_wrote_tx, w.seen.points
    ));
    let epoch = quiesce_and_point(&ps, "demo-verify")?;
    let sb = wait_applied(&ss, epoch)?;
    let (prim, stby) = (read_image(&base)?, read_image(&dir.join("SbVol.img"))?);
    let (differ, first_diff) = diff_blocks(&prim, &stby);
    let kept = (0..VOL_BLOCKS)
        .filter(|&l| stby[l as usize * BS..(l as usize + 1) * BS] == pattern_block(l, pseed)[..])
        .count() as u64;
    initial_sync_report(a, &w, sb, to_valid_ms, (epoch, differ, first_diff, kept))
}

/// What the initial-sync scenario checks and reports.
fn initial_sync_report(
    a: &DemoArgs,
    w: &SyncWatch,
    sb: Value,
    to_valid_ms: u64,
    (epoch, differ, first_diff, kept): (u64, u64, Option<u64>, u64),
) -> Result<Value, AnyErr> {
    let mut problems = Vec::new();
    if differ > 0 {
        problems.push(format!(
            "the standby differs from the primary in {differ} blocks (first {first_diff:?}) at epoch {epoch}"
        ));
    }
    if !w.targets.iter().any(|t| t == "not_valid") || w.targets.last().map(String::as_str) != Some("valid") {
        problems.push(format!(
            "failover_target went {:?}, not not_valid then valid",
            w.targets
        ));
    }
    if kept < VOL_BLOCKS / 2 {
        problems.push(format!(
            "only {kept} of {VOL_BLOCKS} blocks of the data from before replication reached the standby"
        ));
    }
    let sync = w.json();
    let rate = sync["rate_bytes_per_sec"].as_f64().unwrap_or(0.0);
    let summary = vec![
        format!(
            "initial sync                  {} of {} bytes in {} ms, {:.1} MiB/s ({}), {} progress samples",
            sync["bytes_sent"],
            sync["bytes_total"],
            sync["elapsed_ms"],
            mib(rate),
            match a.sync_mib_per_sec {
                0 => "uncapped".to_string(),
                c => format!("cap {c} MiB/s"),
            },
            w.samples
        ),
        format!("standby failover_target       {}", w.targets.join(" -> ")),
        format!(
            "ledger during the sync        {} restart points completed while syncing (dropped by the standby), {} in all, {} transfers",
            w.points_during_sync, w.seen.points, w.seen.last_wrote_tx
        ),
        format!(
            "verified at epoch {epoch:<12} standby volume = primary base: {} differing blocks of {VOL_BLOCKS}; {kept} blocks hold the data from before replication",
            differ
        ),
    ];
    Ok(json!({
        "scenario": "initial-sync", "mode": a.mode, "volume_bytes": VOL_BYTES, "sync": sync,
        "sync_rate_cap_bytes_per_sec": a.sync_mib_per_sec << 20, "to_valid_ms": to_valid_ms,
        "ledger": {"transfers": w.seen.last_wrote_tx, "restart_points": w.seen.points,
                   "restart_points_during_sync": w.points_during_sync},
        "verify_epoch": epoch, "blocks_differing": differ, "blocks_from_before_replication": kept,
        "standby": sb, "verified": problems.is_empty(), "problems": problems, "summary": summary,
    }))
}

/// Collects the ledger's lines until it exits; fails unless it exited with status 0.
fn run_ledger_to_end(ledger: &mut Proc, rx: &mpsc::Receiver<String>, sites: &mut Sites) -> Result<PrimarySeen, AnyErr> {
    let mut seen = PrimarySeen::default();
    let start = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) => {
                seen.observe(&l, "");
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        for p in [&mut sites.standby, &mut sites.primary]
            .into_iter()
            .chain(sites.relays.iter_mut())
        {
            p.check_alive()?;
        }
        if start.elapsed() > WAIT {
            return Err("the ledger did not finish its groups".into());
        }
    }
    let st = ledger.child.wait()?;
    if !st.success() {
        return Err(format!("the ledger exited with {st}").into());
    }
    Ok(seen)
}

/// `--scenario switchover`.
fn switchover_scenario(a: &DemoArgs, dir: &Path, seed: &mut u64, out: &dyn Fn(String)) -> Result<Value, AnyErr> {
    let mut d = Demo::new(a, dir, seed, out, SiteOpts::default())?;
    let mut sites = d.start_sites()?;
    let (mut ledger, rx) = d.start_ledger(a.groups)?;
    let seen = run_ledger_to_end(&mut ledger, &rx, &mut sites)?;
    let last = seen.last_point_seq.unwrap_or(0);
    out(format!(
        "ledger quiesced: {} groups, {} transfers, last restart point group {last}",
        a.groups, seen.last_wrote_tx
    ));
    let args = SwitchoverArgs {
        primary_rpc: d.sock("primary"),
        standby_rpc: d.sock("standby"),
        volumes: vec![("Vol0".into(), "Vol0".into())],
        host: true,
        export_nqn: None,
        export_listen: None,
        reverse_relays: Vec::new(),
        timeout_ms: 30_000,
        tag: "switchover".into(),
        json: true,
    };
    let start_ms = unix_ms();
    let sw = switchover(&args)?;
    out(format!(
        "switchover done: downtime {:.1} ms; the standby host restarts the ledger from its image",
        sw["downtime_ms"].as_f64().unwrap_or(0.0)
    ));
    let r = d.await_failover(&mut sites.standby)?;
    let v = &sw["volumes"][0];
    let mut problems = restore_problems(&r, last, seen.last_point_tx);
    if v["final_point_reused"] != true {
        problems.push(format!(
            "the final restart point was not the ledger's own (it had quiesced): {v}"
        ));
    }
    if sw["no_acknowledged_write_lost"] != true {
        problems.push("the switchover lost acknowledged writes".into());
    }
    let serving_ms = r.serving_ms.saturating_sub(start_ms);
    let summary = vec![
        format!(
            "ledger on the primary         {} groups, {} transfers, quiesced at its restart point group {last}",
            a.groups, seen.last_wrote_tx
        ),
        format!(
            "switchover (standby host)     final restart point epoch {} (the ledger's own: {}), promoted at epoch {}",
            v["final_epoch"], v["final_point_reused"], v["promoted_epoch"]
        ),
        format!(
            "downtime                      {:.1} ms demote -> promoted and exported (fenced at {:.1} ms); {serving_ms} ms until the ledger served again",
            sw["downtime_ms"].as_f64().unwrap_or(0.0),
            sw["fenced_ms"].as_f64().unwrap_or(0.0)
        ),
        format!(
            "restored at the standby       group {} ({} transfers), verified: {}",
            r.seq, r.tx, r.verified
        ),
    ];
    Ok(json!({
        "scenario": "switchover", "mode": a.mode, "groups": a.groups,
        "transfers_at_primary": seen.last_wrote_tx, "last_restart_point_at_primary": last,
        "restored_restart_point": r.seq, "restored_transfers": r.tx,
        "downtime_ms": sw["downtime_ms"], "ledger_serving_after_ms": serving_ms,
        "switchover": sw, "verified": problems.is_empty(), "problems": problems, "summary": summary,
        "standby_host": r.host,
    }))
}

/// The restarted ledger verified (money conserved, volume = image) and restored exactly
/// group `seq` with `tx` transfers.
fn restore_problems(r: &Restored, seq: u64, tx: u64) -> Vec<String> {
    let mut p = Vec::new();
    if !r.verified {
        p.push(format!("the restarted ledger did not verify: {}", r.error));
    }
    if (r.seq, r.tx) != (seq, tx) {
        p.push(format!(
            "restored group {} ({} transfers), the primary's last restart point is group {seq} ({tx} transfers)",
            r.seq, r.tx
        ));
    }
    p
}

/// Waits until the application the standby host started has exited (status 0).
fn wait_app_exit(ss: &Path) -> Result<(), AnyErr> {
    let start = Instant::now();
    loop {
        let h = rpc(ss, "standby_host_get_status", Value::Null)?;
        let app = &h["failover"]["app"];
        if app["running"] == false {
            if app["exit_code"] != 0 {
                return Err(format!("the restarted ledger ended with {app}").into());
            }
            return Ok(());
        }
        if start.elapsed() > WAIT {
            return Err(format!("the restarted ledger is still running: {app}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The old primary's site repaired as a standby.
struct SiteA {
    standby: Proc,
    relays: Vec<Proc>,
    sock: PathBuf,
    relay_addrs: Vec<String>,
}

/// Site A repaired: a standby over the old primary's base file, and two relays to it.
fn repair_old_primary(d: &mut Demo, base: &Path) -> Result<SiteA, AnyErr> {
    let (dir, port) = (d.dir, free_port()?);
    let sock = d.sock("standby-a");
    let stage = dir.join("a-stage.img");
    let mut p = Proc::spawn(
        "standby-a",
        baton()?
            .args(["standby", "-m", "0x1", "-r"])
            .arg(&sock)
            .args(["--listen", &addr(port).to_string()])
            .args([
                "--bdev",
                &format!("base=uring:{},size={VOL_MB}M,bs=4096", base.display()),
            ])
            .args(["--bdev", &format!("stage=uring:{},size=128M,bs=4096", stage.display())]),
        &dir.join("standby-a.log"),
    )?;
    wait_rpc(&mut p, &sock, Duration::from_secs(20))?;
    rpc(
        &sock,
        "standby_create",
        json!({"name": "Vol0", "mode": "delayed", "volume_bdev": "base", "staging_bdev": "stage", "format": true}),
    )?;
    (d.out)(format!(
        "old primary repaired as a standby over its old base {}, on {}",
        base.display(),
        addr(port)
    ));
    let (p3, p4) = (free_port()?, free_port()?);
    let relays = d.start_relays([("relay3", p3), ("relay4", p4)], port)?;
    Ok(SiteA {
        standby: p,
        relays,
        sock,
        relay_addrs: vec![addr(p3).to_string(), addr(p4).to_string()],
    })
}

/// Exports the replicated volume `Vol0` of the promoted site (behind `ss`) on a new port.
fn export_home(ss: &Path) -> Result<Target, AnyErr> {
    let port = free_port()?;
    let _ = rpc(ss, "nvmf_create_transport", json!({"trtype": "TCP"}));
    rpc(
        ss,
        "nvmf_create_subsystem",
        json!({"nqn": HOME_NQN, "allow_any_host": true, "serial_number": "BATONHOME1"}),
    )?;
    rpc(
        ss,
        "nvmf_subsystem_add_ns",
        json!({"nqn": HOME_NQN, "namespace": {"bdev_name": "Vol0"}}),
    )?;
    rpc(
        ss,
        "nvmf_subsystem_add_listener",
        json!({"nqn": HOME_NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
               "trsvcid": port.to_string()}}),
    )?;
    Ok(Target {
        addr: addr(port),
        subnqn: HOME_NQN.into(),
        nsid: 1,
    })
}

/// `--scenario failback`.
fn failback(a: &DemoArgs, dir: &Path, seed: &mut u64, out: &dyn Fn(String)) -> Result<Value, AnyErr> {
    let (base, changed, dirty) = (
        dir.join("primary-base.img"),
        dir.join("Vol0.changed"),
        dir.join("Vol0.dirty"),
    );
    let opts = SiteOpts {
        changed_map: Some(changed.clone()),
        primary_base_file: Some(base.clone()),
        dirty_map: Some(dirty.clone()),
        ..SiteOpts::default()
    };
    let mut d = Demo::new(a, dir, seed, out, opts)?;
    let mut sites = d.start_sites()?;
    let killed = d.run_ledger_until_kill(&mut sites)?;
    let r = d.await_failover(&mut sites.standby)?;
    let ss = d.sock("standby");
    wait_app_exit(&ss)?;
    let head = r.host["failover"]["volumes"][0]["bdev"]
        .as_str()
        .ok_or_else(|| format!("no promoted bdev: {}", r.host))?
        .to_string();
    let record = standby_status(&ss)?["changed"].clone();
    out(format!(
        "failed over: ledger restored at group {} on {head}, ran on there and exited; record of changes: {} regions",
        r.seq, record["changed_regions"]
    ));
    let mut site_a = repair_old_primary(&mut d, &base)?;
    let maps = [changed.display().to_string(), dirty.display().to_string()];
    rpc(
        &ss,
        "replication_create_volume",
        json!({"name": "Vol0", "base_bdev": head, "relays": site_a.relay_addrs, "initial_sync_maps": maps}),
    )?;
    let home = export_home(&ss)?;
    out(format!(
        "promoted site replicates back with an initial sync of the union of {} and {}",
        changed.display(),
        dirty.display()
    ));
    let mut w = SyncWatch::default();
    {
        let mut procs: Vec<&mut Proc> = vec![&mut sites.standby, &mut site_a.standby];
        procs.extend(site_a.relays.iter_mut());
        w.run((&ss, &site_a.sock), None, &mut procs, false)?;
    }
    let epoch = quiesce_and_point(&ss, "failback")?;
    let sb = wait_applied(&site_a.sock, epoch)?;
    if let Some(t) = sb["failover_target"]
        .as_str()
        .filter(|t| w.targets.last().map(String::as_str) != Some(*t))
    {
        w.targets.push(t.to_string());
    }
    let (promoted, old_base) = (read_nvme(&home)?, read_image(&base)?);
    let (differ, first_diff) = diff_blocks(&promoted, &old_base);
    failback_report(a, &killed, &r, (&w, &sb, &record), (epoch, differ, first_diff))
}

/// What the failback scenario checks and reports.
fn failback_report(
    a: &DemoArgs,
    killed: &Killed,
    r: &Restored,
    (w, sb, record): (&SyncWatch, &Value, &Value),
    (epoch, differ, first_diff): (u64, u64, Option<u64>),
) -> Result<Value, AnyErr> {
    let seen = &killed.seen;
    let mut problems = crate::demo::problems(seen, r);
    if differ > 0 {
        problems.push(format!(
            "the old base differs from the promoted volume in {differ} blocks (first {first_diff:?}) at epoch {epoch}"
        ));
    }
    if sb["failover_target"] != "valid" {
        problems.push(format!(
            "the old primary's site is not a valid standby after the sync: {}",
            sb["failover_target"]
        ));
    }
    let sync = w.json();
    let sent = sync["bytes_sent"].as_u64().unwrap_or(0);
    let share = sent as f64 / VOL_BYTES as f64;
    if share > 0.5 {
        problems.push(format!(
            "the failback moved {sent} bytes, {:.1} % of the volume: not a delta",
            share * 100.0
        ));
    }
    let summary = vec![
        format!(
            "failover                      killed {} at group {}; restored group {} ({} transfers), verified: {}",
            killed.kill_at,
            seen.last_point_seq.unwrap_or(0),
            r.seq,
            r.tx,
            r.verified
        ),
        format!(
            "records of differing blocks   promoted site: {} regions changed; the old primary's dirty-block record merged in",
            record["changed_regions"]
        ),
        format!(
            "failback sync                 {sent} bytes = {:.3} % of the {VOL_MB} MiB volume (a full copy: {VOL_BYTES}), in {} ms",
            share * 100.0,
            sync["elapsed_ms"]
        ),
        format!(
            "verified at epoch {epoch:<12} old base = promoted volume: {differ} differing blocks of {VOL_BLOCKS}; old site {}",
            w.targets.join(" -> ")
        ),
    ];
    Ok(json!({
        "scenario": "failback", "mode": a.mode, "volume_bytes": VOL_BYTES,
        "kill_at": killed.kill_at, "last_restart_point_at_primary": seen.last_point_seq.unwrap_or(0),
        "restored_restart_point": r.seq, "restored_verified": r.verified,
        "record_of_changes": record, "sync": sync, "bytes_moved": sent, "share_of_volume": share,
        "verify_epoch": epoch, "blocks_differing": differ, "old_site_standby": sb,
        "verified": problems.is_empty(), "problems": problems, "summary": summary,
    }))
}
