//! `baton demo`: the whole mission in one command, on this machine (docs/demo.md).
//!
//! Starts, each as its own `baton` process on loopback with RAM back ends: the standby
//! (with its standby host: heartbeat detector, execution-image store, failover), two relays
//! (one forwarder, one backup), and the primary target (replicated volume exported over
//! NVMe/TCP). Runs the ledger (`baton ledger`) against the primary, shows progress, kills
//! the primary site (target and ledger, SIGKILL) at a random moment, and waits for the
//! standby host to detect the failure, roll back to the last restart point, promote, export
//! and restart the ledger from the matching execution image. The restarted ledger verifies
//! the volume against its image; the demo checks that the standby reached at least the last
//! restart point the primary saw complete (relays outlive the primary, R5) and reports
//! writes replicated, restart points, RPO, RTO and latency percentiles.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use engine::metrics::LatencyHistogram;
use serde_json::{json, Value};

use crate::procs::{addr, baton, free_port, rand, rpc, unix_ms, wait_rpc, work_base, AnyErr, Proc};

/// `baton demo` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Standby mode: delayed (staged epochs) or snapshot (copy-on-write snapshots).
    #[arg(long, default_value = "delayed", value_parser = ["delayed", "snapshot"])]
    pub mode: String,
    /// When to kill the primary: random, writes (a group written, its restart point not yet declared: while its image is sent),
    /// point (while a restart point is being declared), after-point (right after one).
    #[arg(long, default_value = "random", value_parser = ["random", "writes", "point", "after-point"])]
    pub kill_at: String,
    /// Run at least this many seconds before the kill.
    #[arg(long, default_value_t = 3.0)]
    pub run_secs: f64,
    /// Primary-failure detection timeout, ms.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Accounts in the ledger.
    #[arg(long, default_value_t = 4096)]
    pub accounts: usize,
    /// Execution image size, MiB.
    #[arg(long, default_value_t = 64)]
    pub image_mib: usize,
    /// Transfers per group (one restart point each).
    #[arg(long, default_value_t = 64)]
    pub group: usize,
    /// Seed for the kill moment and the ledger.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the report as JSON (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Keep the working directory (logs, journals, images).
    #[arg(long)]
    pub keep: bool,
    /// The step of the disaster-recovery lifecycle shown: failover (kill the primary, fail
    /// over, restart the ledger), initial-sync, switchover or failback (docs/demo.md).
    #[arg(long, default_value = "failover", value_parser = ["failover", "initial-sync", "switchover", "failback"])]
    pub scenario: String,
    /// switchover: groups the ledger runs on the primary before it quiesces.
    #[arg(long, default_value_t = 8)]
    pub groups: u64,
    /// initial-sync: cap on the sync's rate, MiB/s (0: none).
    #[arg(long, default_value_t = 32)]
    pub sync_mib_per_sec: u64,
}

/// Parses `KEY=VALUE` words of a ledger progress line.
pub(crate) fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
}

/// What the primary-side ledger said before it died.
#[derive(Default)]
pub(crate) struct PrimarySeen {
    pub(crate) points: u64,
    pub(crate) last_point_seq: Option<u64>,
    last_pointing_seq: Option<u64>,
    pub(crate) last_wrote_tx: u64,
    pub(crate) last_point_tx: u64,
    write_us: LatencyHistogram,
    point_us: LatencyHistogram,
    image_us: LatencyHistogram,
    image_bytes: u64,
    delta_wire: Vec<(u64, u64)>,
}

pub fn run(a: DemoArgs) -> Result<(), AnyErr> {
    let mut seed = a.seed.unwrap_or_else(|| unix_ms() ^ u64::from(std::process::id())) | 1;
    let dir = PathBuf::from(work_base()).join(format!("baton-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let out = |s: String| {
        if !a.json {
            println!("{s}");
        } else {
            eprintln!("{s}");
        }
    };
    out(format!(
        "baton demo, scenario {}: primary -> 2 relays -> standby ({} mode), ledger of {} accounts, {} MiB execution image",
        a.scenario, a.mode, a.accounts, a.image_mib
    ));
    out(format!("working directory {}", dir.display()));
    let r = match a.scenario.as_str() {
        "failover" => Demo::new(&a, &dir, &mut seed, &out, SiteOpts::default()).and_then(Demo::run),
        s => crate::demo_lifecycle::run(s, &a, &dir, &mut seed, &out),
    };
    if !a.keep && r.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("logs kept in {}", dir.display());
    }
    r
}

/// The loopback ports of the demo's processes.
pub(crate) struct Ports {
    pub(crate) standby: u16,
    heartbeat: u16,
    image: u16,
    export: u16,
    relay1: u16,
    relay2: u16,
    pub(crate) target: u16,
}

/// How the sites are built (the lifecycle scenarios of `demo_lifecycle.rs` vary these;
/// the default is the failover demo's: everything on RAM, no records kept in files).
#[derive(Default)]
pub(crate) struct SiteOpts {
    /// The standby volume's bdevs are files in the working directory (`SbVol.img`,
    /// `SbStage.img`; delayed mode), so its image can be read back.
    pub(crate) standby_files: bool,
    /// `standby_create` `changed_map`: the promoted volume's record of changes.
    pub(crate) changed_map: Option<PathBuf>,
    /// The primary's base bdev is this file (io_uring) rather than RAM: it survives a kill.
    pub(crate) primary_base_file: Option<PathBuf>,
    /// `replication_create_volume` `dirty_map`: the primary's dirty-block record.
    pub(crate) dirty_map: Option<PathBuf>,
    /// `initial_sync: true`, with this cap in bytes per second (0: none).
    pub(crate) initial_sync: Option<u64>,
}

/// The demo's state: its options, working directory, ports and the seed every random
/// choice draws from (in a fixed order, so a seed replays the same run).
pub(crate) struct Demo<'a> {
    pub(crate) a: &'a DemoArgs,
    pub(crate) dir: &'a Path,
    pub(crate) seed: &'a mut u64,
    pub(crate) out: &'a dyn Fn(String),
    pub(crate) ports: Ports,
    /// Where the ledger restarted on the standby host writes its verdict.
    pub(crate) result_file: PathBuf,
    pub(crate) opts: SiteOpts,
}

/// The processes of the standby, relay and primary sites. Fields drop (and so kill
/// their processes) in this order: primary, relays, standby.
pub(crate) struct Sites {
    pub(crate) primary: Proc,
    pub(crate) relays: Vec<Proc>,
    pub(crate) standby: Proc,
}

/// The kill: what the primary-side ledger said before it, and when it happened.
pub(crate) struct Killed {
    pub(crate) seen: PrimarySeen,
    pub(crate) kill_at: String,
    pub(crate) kill_ms: u64,
}

/// What the ledger restarted on the standby host wrote, and the standby's state then.
pub(crate) struct Restored {
    pub(crate) seq: u64,
    pub(crate) tx: u64,
    pub(crate) serving_ms: u64,
    pub(crate) verified: bool,
    pub(crate) error: String,
    /// `standby_host_get_status` once the restarted ledger reported.
    pub(crate) host: Value,
    /// `standby_get_status` of the standby volume.
    pub(crate) standby: Value,
}

pub(crate) const NQN: &str = "nqn.2016-06.io.baton:ledger";
const STANDBY_NQN: &str = "nqn.2016-06.io.baton:ledger-standby";
/// Size of the replicated volume, MiB.
pub(crate) const VOL_MB: u64 = 64;

impl<'a> Demo<'a> {
    pub(crate) fn new(
        a: &'a DemoArgs,
        dir: &'a Path,
        seed: &'a mut u64,
        out: &'a dyn Fn(String),
        opts: SiteOpts,
    ) -> Result<Self, AnyErr> {
        let (standby, heartbeat, image, export) = (free_port()?, free_port()?, free_port()?, free_port()?);
        let (relay1, relay2, target) = (free_port()?, free_port()?, free_port()?);
        let ports = Ports {
            standby,
            heartbeat,
            image,
            export,
            relay1,
            relay2,
            target,
        };
        let result_file = dir.join("restored.json");
        Ok(Demo {
            a,
            dir,
            seed,
            out,
            ports,
            result_file,
            opts,
        })
    }

    /// Starts the three sites, runs the ledger to the kill, waits for the failover and
    /// reports.
    fn run(mut self) -> Result<(), AnyErr> {
        let mut sites = self.start_sites()?;
        let killed = self.run_ledger_until_kill(&mut sites)?;
        let restored = self.await_failover(&mut sites.standby)?;
        let report = self.report(&killed, &restored);
        if self.a.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            self.print_report(&report, &killed, &restored)?;
        }
        if report["verified"].as_bool() == Some(true) {
            (self.out)(
                "demo passed: the ledger restarted on the standby at a whole restart point, money conserved".into(),
            );
            Ok(())
        } else {
            Err("demo FAILED (see the report)".into())
        }
    }

    /// The standby, the two relays forwarding to it, and the primary, in that order.
    pub(crate) fn start_sites(&mut self) -> Result<Sites, AnyErr> {
        let standby = self.start_standby()?;
        let (relay1, relay2, to) = (self.ports.relay1, self.ports.relay2, self.ports.standby);
        let relays = self.start_relays([("relay1", relay1), ("relay2", relay2)], to)?;
        let primary = self.start_primary()?;
        Ok(Sites {
            primary,
            relays,
            standby,
        })
    }

    pub(crate) fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    /// The standby site: the standby process with its standby host (detector, images,
    /// failover), and the standby volume.
    fn start_standby(&mut self) -> Result<Proc, AnyErr> {
        let (a, dir, p) = (self.a, self.dir, &self.ports);
        let exe = std::env::current_exe()?;
        let restart_cmd = format!(
            "exec {} ledger --restore --groups 3 --app ledger --initial 1000 --result {} >> {} 2>&1",
            exe.display(),
            self.result_file.display(),
            dir.join("ledger-restored.log").display()
        );
        let ss = self.sock("standby");
        let mut cmd = baton()?;
        cmd.args(["standby", "-m", "0x2", "-r"]).arg(&ss);
        if self.opts.standby_files {
            for (name, mb) in [("SbVol", VOL_MB), ("SbStage", 128)] {
                let f = dir.join(format!("{name}.img"));
                cmd.args(["--bdev", &format!("{name}=uring:{},size={mb}M,bs=4096", f.display())]);
            }
        }
        let mut standby = Proc::spawn(
            "standby",
            cmd.args(["--listen", &addr(p.standby).to_string()])
                .args(["--heartbeat-listen", &addr(p.heartbeat).to_string()])
                .args(["--primary-timeout-ms", &a.timeout_ms.to_string()])
                .args(["--image-listen", &addr(p.image).to_string()])
                .arg("--image-dir")
                .arg(dir.join("images"))
                .args(["--failover-volume", "Vol0"])
                .args(["--failover-nqn", STANDBY_NQN])
                .args(["--failover-listen", &addr(p.export).to_string()])
                .args(["--on-failover", &restart_cmd]),
            &dir.join("standby.log"),
        )?;
        wait_rpc(&mut standby, &ss, Duration::from_secs(20))?;
        self.create_standby_volume(&ss)?;
        (self.out)(format!(
            "standby   up: relays -> {}, images on {}, heartbeats on {}",
            addr(p.standby),
            addr(p.image),
            addr(p.heartbeat)
        ));
        Ok(standby)
    }

    /// The standby volume `Vol0` in the chosen mode, on RAM bdevs (or on the files the
    /// standby was started with: `SiteOpts::standby_files`).
    fn create_standby_volume(&self, ss: &Path) -> Result<(), AnyErr> {
        let changed = self.opts.changed_map.as_ref().map(|p| p.display().to_string());
        match self.a.mode.as_str() {
            "delayed" if self.opts.standby_files => {
                rpc(
                    ss,
                    "standby_create",
                    json!({"name": "Vol0", "mode": "delayed", "volume_bdev": "SbVol", "staging_bdev": "SbStage",
                           "format": true, "changed_map": changed}),
                )?;
            }
            _ if self.opts.standby_files => return Err("standby volume files need --mode delayed".into()),
            "delayed" => {
                rpc(
                    ss,
                    "bdev_malloc_create",
                    json!({"name": "SbVol", "num_blocks": VOL_MB * 256, "block_size": 4096}),
                )?;
                rpc(
                    ss,
                    "bdev_malloc_create",
                    json!({"name": "SbStage", "num_blocks": 128 * 256, "block_size": 4096}),
                )?;
                rpc(
                    ss,
                    "standby_create",
                    json!({"name": "Vol0", "mode": "delayed", "volume_bdev": "SbVol", "staging_bdev": "SbStage",
                           "changed_map": changed}),
                )?;
            }
            _ => {
                rpc(
                    ss,
                    "bdev_malloc_create",
                    json!({"name": "SbData", "num_blocks": 4 * VOL_MB * 256, "block_size": 4096}),
                )?;
                rpc(
                    ss,
                    "bdev_malloc_create",
                    json!({"name": "SbMeta", "num_blocks": 64 * 256, "block_size": 4096}),
                )?;
                rpc(
                    ss,
                    "standby_create",
                    json!({"name": "Vol0", "mode": "snapshot", "data_bdev": "SbData", "metadata_bdev": "SbMeta",
                           "volume_blocks": VOL_MB * 256, "keep_last": 4, "changed_map": changed}),
                )?;
            }
        }
        Ok(())
    }

    /// A relay site: a forwarder (the first) and a backup relay (the second), each
    /// journaling to a directory named like it, forwarding to the standby on `to`.
    pub(crate) fn start_relays(&mut self, relays: [(&'static str, u16); 2], to: u16) -> Result<Vec<Proc>, AnyErr> {
        let dir = self.dir;
        let [(n1, p1), (n2, p2)] = relays;
        let mut procs = Vec::new();
        for (name, port, backup) in [(n1, p1, false), (n2, p2, true)] {
            let jdir = dir.join(name);
            std::fs::create_dir_all(&jdir)?;
            let mut c = baton()?;
            c.args(["relay", "-m", "0x2", "-r"])
                .arg(self.sock(name))
                .args(["--listen", &addr(port).to_string()])
                .arg("--journal-dir")
                .arg(&jdir)
                .args(["--journal-bytes-max", "256M", "--standby", &addr(to).to_string()]);
            if backup {
                c.arg("--backup");
            }
            let mut proc = Proc::spawn(name, &mut c, &dir.join(format!("{name}.log")))?;
            wait_rpc(&mut proc, &self.sock(name), Duration::from_secs(20))?;
            procs.push(proc);
        }
        (self.out)(format!(
            "relays    up: {} (forwarder), {} (backup) -> standby {}, journals in {}",
            addr(p1),
            addr(p2),
            addr(to),
            dir.display()
        ));
        Ok(procs)
    }

    /// The primary site: a replicated volume exported over NVMe/TCP.
    fn start_primary(&mut self) -> Result<Proc, AnyErr> {
        let p = &self.ports;
        let ps = self.sock("primary");
        let base = match &self.opts.primary_base_file {
            Some(f) => format!("Base0=uring:{},size={VOL_MB}M,bs=4096", f.display()),
            None => format!("Base0=malloc,size={VOL_MB}M,bs=4096"),
        };
        let mut primary = Proc::spawn(
            "primary",
            baton()?
                .args(["target", "-m", "0x1", "-r"])
                .arg(&ps)
                .args(["--bdev", &base]),
            &self.dir.join("primary.log"),
        )?;
        wait_rpc(&mut primary, &ps, Duration::from_secs(20))?;
        let mut vol = json!({"name": "Vol0", "base_bdev": "Base0",
               "relays": [addr(p.relay1).to_string(), addr(p.relay2).to_string()],
               "standby_heartbeat": addr(p.heartbeat).to_string()});
        if let Some(f) = &self.opts.dirty_map {
            vol["dirty_map"] = json!(f.display().to_string());
        }
        if let Some(bps) = self.opts.initial_sync {
            vol["initial_sync"] = json!(true);
            vol["initial_sync_bytes_per_sec"] = json!(bps);
        }
        rpc(&ps, "replication_create_volume", vol)?;
        rpc(&ps, "nvmf_create_transport", json!({"trtype": "TCP"}))?;
        rpc(
            &ps,
            "nvmf_create_subsystem",
            json!({"nqn": NQN, "allow_any_host": true, "serial_number": "BATON0001"}),
        )?;
        rpc(
            &ps,
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "Vol0"}}),
        )?;
        rpc(
            &ps,
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
                   "trsvcid": p.target.to_string()}}),
        )?;
        (self.out)(format!(
            "primary   up: Vol0 ({}, {VOL_MB} MiB) replicated to both relays{}, NVMe/TCP {NQN} on {}",
            if self.opts.primary_base_file.is_some() {
                "file"
            } else {
                "RAM"
            },
            if self.opts.initial_sync.is_some() {
                " with an initial sync"
            } else {
                ""
            },
            addr(p.target)
        ));
        Ok(primary)
    }

    /// The application on the primary host: the ledger, running `groups` groups (0: until
    /// killed), whose progress lines arrive on the returned channel (and are logged to
    /// `ledger-progress.log`).
    pub(crate) fn start_ledger(&mut self, groups: u64) -> Result<(Proc, mpsc::Receiver<String>), AnyErr> {
        let (a, dir) = (self.a, self.dir);
        let mut ledger_cmd = baton()?;
        ledger_cmd
            .args([
                "ledger",
                "--traddr",
                "127.0.0.1",
                "--trsvcid",
                &self.ports.target.to_string(),
                "--subnqn",
                NQN,
            ])
            .args(["--image-server", &addr(self.ports.image).to_string(), "--app", "ledger"])
            .args([
                "--accounts",
                &a.accounts.to_string(),
                "--image-mib",
                &a.image_mib.to_string(),
            ])
            .args(["--group", &a.group.to_string(), "--initial", "1000"])
            .args(["--groups", &groups.to_string()])
            .args(["--seed", &(rand(self.seed) % 1_000_000).to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(dir.join("ledger.log"))?));
        let mut ledger_child = ledger_cmd.spawn()?;
        let stdout = ledger_child.stdout.take().ok_or("ledger stdout")?;
        let ledger = Proc {
            name: "ledger",
            child: ledger_child,
        };
        let (tx, rx) = mpsc::channel::<String>();
        let mut lines_log = std::fs::File::create(dir.join("ledger-progress.log"))?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(lines_log, "{line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok((ledger, rx))
    }

    /// Runs the ledger against the primary, showing progress, until the kill moment
    /// (`--kill-at`, after at least `--run-secs`), then SIGKILLs the ledger and the
    /// primary target and collects every line the ledger wrote before it died.
    pub(crate) fn run_ledger_until_kill(&mut self, sites: &mut Sites) -> Result<Killed, AnyErr> {
        let (mut ledger, rx) = self.start_ledger(0)?;
        let run_for = Duration::from_secs_f64(self.a.run_secs) + Duration::from_millis(rand(self.seed) % 2000);
        let kill_at = match self.a.kill_at.as_str() {
            "random" => ["writes", "point", "after-point"][(rand(self.seed) % 3) as usize].to_string(),
            k => k.to_string(),
        };
        let ss = self.sock("standby");
        let mut seen = PrimarySeen::default();
        let started = Instant::now();
        let mut last_status = Instant::now() - Duration::from_secs(1);
        let mut status_line = String::new();
        loop {
            let line = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => Some(l),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(
                        format!("the ledger exited early; see {}", self.dir.join("ledger.log").display()).into(),
                    )
                }
            };
            for p in [&mut sites.standby, &mut sites.primary]
                .into_iter()
                .chain(sites.relays.iter_mut())
            {
                p.check_alive()?;
            }
            let trigger = line.as_deref().is_some_and(|l| seen.observe(l, &kill_at));
            if last_status.elapsed() > Duration::from_millis(250) {
                last_status = Instant::now();
                status_line = status(&ss, started, &seen);
                eprint!("{status_line}");
            }
            if trigger && started.elapsed() >= run_for && seen.points >= 1 {
                break;
            }
            if started.elapsed() > run_for + Duration::from_secs(60) {
                return Err("the ledger made no progress to the kill point within 60 s".into());
            }
        }
        if kill_at == "writes" {
            std::thread::sleep(Duration::from_millis(1 + rand(self.seed) % 3));
        }
        ledger.kill9();
        sites.primary.kill9();
        let kill_ms = unix_ms();
        // Every line the ledger wrote before it died (the reader ends at EOF).
        let drain_until = Instant::now() + Duration::from_secs(5);
        while let Ok(l) = rx.recv_timeout(drain_until.saturating_duration_since(Instant::now())) {
            seen.after_kill(&l);
        }
        eprintln!("{status_line}");
        (self.out)(format!(
            "\nKILLED the primary site (target + ledger, SIGKILL) {kill_at}: last restart point the primary saw complete: group {}",
            seen.last_point_seq.unwrap_or(0)
        ));
        Ok(Killed { seen, kill_at, kill_ms })
    }

    /// Failover at the standby site: waits (60 s at most) for the ledger restarted on
    /// the standby host to write its result, and reads the standby's state then.
    pub(crate) fn await_failover(&self, standby: &mut Proc) -> Result<Restored, AnyErr> {
        let ss = self.sock("standby");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.result_file.exists() {
            standby.check_alive()?;
            if Instant::now() > deadline {
                let h = rpc(&ss, "standby_host_get_status", Value::Null).unwrap_or(Value::Null);
                return Err(format!("no restarted application within 60 s of the kill; standby host: {h}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let host = rpc(&ss, "standby_host_get_status", Value::Null).unwrap_or(Value::Null);
        let res: Value = serde_json::from_slice(&std::fs::read(&self.result_file)?)?;
        let n = |k: &str| res.get(k).and_then(Value::as_u64).unwrap_or(0);
        Ok(Restored {
            seq: n("restored_seq"),
            tx: n("restored_tx"),
            serving_ms: n("serving_unix_ms"),
            verified: res.get("verified").and_then(Value::as_bool).unwrap_or(false),
            error: res.get("error").and_then(Value::as_str).unwrap_or("?").to_string(),
            host,
            standby: rpc(&ss, "standby_get_status", json!({"name": "Vol0"})).unwrap_or(Value::Null),
        })
    }

    /// The report as JSON (`--json` prints it; the text report reads from it).
    fn report(&self, k: &Killed, r: &Restored) -> Value {
        let (seen, kill_ms) = (&k.seen, k.kill_ms);
        let detected_ms = r.detected_ms();
        let last_point = seen.last_point_seq.unwrap_or(0);
        let pct = |h: &LatencyHistogram| {
            json!({"p50_us": h.percentile_us(50.0), "p99_us": h.percentile_us(99.0),
                   "max_us": h.max_us(), "count": h.count()})
        };
        let problems = problems(seen, r);
        json!({
            "mode": self.a.mode,
            "kill_at": k.kill_at,
            "transfers_at_primary": seen.last_wrote_tx,
            "restart_points_completed": seen.points,
            "last_restart_point_at_primary": last_point,
            "restored_restart_point": r.seq,
            "rpo_restart_points_lost": last_point.saturating_sub(r.seq),
            "transfers_rolled_back": seen.last_wrote_tx.saturating_sub(r.tx),
            "rto_ms": r.serving_ms.saturating_sub(kill_ms),
            "detection_ms": detected_ms.saturating_sub(kill_ms),
            "after_detection_ms": r.after_detection_ms(),
            "detection_timeout_ms": self.a.timeout_ms,
            "relay_drain": r.host.pointer("/failover/drain").cloned().unwrap_or(Value::Null),
            "image_bytes": seen.image_bytes,
            "image_share_sent_per_point": seen.avg_image_share(),
            "latency": {"group_writes": pct(&seen.write_us), "image_transfer": pct(&seen.image_us),
                        "restart_point": pct(&seen.point_us)},
            "verified": r.verified && problems.is_empty(),
            "problems": problems,
            "standby": r.standby,
            "standby_host": r.host,
        })
    }

    /// The report as text, on stdout.
    fn print_report(&self, report: &Value, k: &Killed, r: &Restored) -> std::io::Result<()> {
        let (seen, kill_ms) = (&k.seen, k.kill_ms);
        let (restored_seq, restored_tx, verified) = (r.seq, r.tx, r.verified);
        let last_point = seen.last_point_seq.unwrap_or(0);
        let detected_ms = r.detected_ms();
        let rto_ms = r.serving_ms.saturating_sub(kill_ms);
        let after_detect_ms = r.after_detection_ms();
        let mut o = std::io::stdout().lock();
        writeln!(o, "\n== report ({} mode)", self.a.mode)?;
        writeln!(o, "transfers at the primary      {}", seen.last_wrote_tx)?;
        let sb0 = r.standby.get(0).unwrap_or(&r.standby);
        writeln!(
            o,
            "writes replicated             {} reached the standby through the relays; {} applied{} up to its last restart point",
            sb0.get("durable_lsn").and_then(Value::as_u64).unwrap_or(0),
            sb0.get("applied_last_lsn").and_then(Value::as_u64).unwrap_or(0),
            sb0.pointer("/delayed/bytes_applied")
                .and_then(Value::as_u64)
                .map_or(String::new(), |b| format!(" ({b} bytes)")),
        )?;
        writeln!(
            o,
            "restart points completed      {} (groups 0..={last_point}, group 0 the formatted ledger)",
            seen.points
        )?;
        writeln!(
            o,
            "restored at the standby       group {restored_seq} ({restored_tx} transfers), verified: {verified}"
        )?;
        writeln!(
            o,
            "RPO                           {} completed restart points lost; {} transfers written after the last one rolled back (by design)",
            last_point.saturating_sub(restored_seq),
            seen.last_wrote_tx.saturating_sub(restored_tx)
        )?;
        writeln!(
            o,
            "RTO                           {rto_ms} ms kill -> ledger serving (detection {} ms of a {} ms timeout; {after_detect_ms} ms after detection)",
            detected_ms.saturating_sub(kill_ms),
            self.a.timeout_ms
        )?;
        if let Some(d) = r.host.pointer("/failover/drain/0") {
            print_drain(&mut o, d)?;
        }
        writeln!(
            o,
            "execution image               {} bytes; {:.2}% of it sent per restart point (average after the first)",
            seen.image_bytes,
            seen.avg_image_share() * 100.0
        )?;
        for (n, h) in [
            ("group writes", &seen.write_us),
            ("image transfer", &seen.image_us),
            ("restart point", &seen.point_us),
        ] {
            writeln!(
                o,
                "latency {n:<15}       p50 {:>8.0} us  p99 {:>8.0} us  max {:>8.0} us  ({} samples)",
                h.percentile_us(50.0),
                h.percentile_us(99.0),
                h.max_us(),
                h.count()
            )?;
        }
        for p in report["problems"].as_array().into_iter().flatten() {
            writeln!(o, "PROBLEM: {}", p.as_str().unwrap_or(""))?;
        }
        Ok(())
    }
}

impl PrimarySeen {
    /// Takes in one ledger progress line while the primary runs; true when the line is
    /// the moment `kill_at` names.
    pub(crate) fn observe(&mut self, l: &str, kill_at: &str) -> bool {
        let mut trigger = false;
        if l.starts_with("READY") {
            self.image_bytes = field(l, "image_bytes").unwrap_or(0);
        } else if l.starts_with("WROTE") {
            self.last_wrote_tx = field(l, "tx").unwrap_or(0);
            self.write_us.record_ns(field(l, "write_us").unwrap_or(0) * 1000);
        } else if l.starts_with("POINTING") {
            self.last_pointing_seq = field(l, "seq");
            self.image_us.record_ns(field(l, "image_us").unwrap_or(0) * 1000);
            if let (Some(w), Some(b)) = (field(l, "wire_bytes"), field(l, "image_bytes")) {
                self.delta_wire.push((w, b));
            }
            trigger = kill_at == "point";
        } else if l.starts_with("POINT ") {
            self.points += 1;
            self.last_point_seq = field(l, "seq");
            self.last_point_tx = field(l, "tx").unwrap_or(0);
            self.point_us.record_ns(field(l, "point_us").unwrap_or(0) * 1000);
            trigger = kill_at == "after-point";
        }
        if l.starts_with("WROTE") && kill_at == "writes" {
            // This group's writes are done; its image is on its way to the standby
            // host and its restart point not yet declared: kill a few ms into that.
            trigger = true;
        }
        trigger
    }

    /// Takes in a line the ledger wrote before it died but that arrived after the kill
    /// (only the positions count; no latencies).
    fn after_kill(&mut self, l: &str) {
        if l.starts_with("POINT ") {
            self.points += 1;
            self.last_point_seq = field(l, "seq");
            self.last_point_tx = field(l, "tx").unwrap_or(0);
        } else if l.starts_with("WROTE") {
            self.last_wrote_tx = field(l, "tx").unwrap_or(0);
        } else if l.starts_with("POINTING") {
            self.last_pointing_seq = field(l, "seq");
        }
    }

    /// Average share of the execution image sent per restart point, after the first
    /// (which sends it whole).
    fn avg_image_share(&self) -> f64 {
        let share: Vec<f64> = self
            .delta_wire
            .iter()
            .skip(1)
            .map(|&(w, b)| w as f64 / b.max(1) as f64)
            .collect();
        if share.is_empty() {
            0.0
        } else {
            share.iter().sum::<f64>() / share.len() as f64
        }
    }
}

impl Restored {
    /// When the standby host detected the primary's failure (0 if it did not say).
    fn detected_ms(&self) -> u64 {
        self.host
            .pointer("/failover/detected_unix_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    /// From detection to the restarted ledger serving (0 if detection is unknown).
    fn after_detection_ms(&self) -> u64 {
        let detected_ms = self.detected_ms();
        if detected_ms > 0 {
            self.serving_ms.saturating_sub(detected_ms)
        } else {
            0
        }
    }
}

/// The progress line shown while the ledger runs (rewritten in place on stderr).
fn status(ss: &Path, started: Instant, seen: &PrimarySeen) -> String {
    let applied = rpc(ss, "standby_get_status", json!({"name": "Vol0"}))
        .ok()
        .and_then(|v| v.get(0).cloned().or(Some(v)))
        .and_then(|v| v.get("applied_epoch").and_then(Value::as_u64))
        .unwrap_or(0);
    format!(
        "\r  {:>5.1} s  transfers {:>7}  restart points {:>5}  standby applied epoch {:>5}   ",
        started.elapsed().as_secs_f64(),
        seen.last_wrote_tx,
        seen.points,
        applied
    )
}

/// What the demo checks of the failover: the restarted ledger verified, and the standby
/// restored at least the last restart point the primary saw complete (relays outlive the
/// primary) and none beyond the last one declared.
pub(crate) fn problems(seen: &PrimarySeen, r: &Restored) -> Vec<String> {
    let mut problems = Vec::new();
    if !r.verified {
        problems.push(format!("the restarted ledger did not verify: {}", r.error));
    }
    let restored_seq = r.seq;
    let last_point = seen.last_point_seq.unwrap_or(0);
    if restored_seq < last_point {
        problems.push(format!(
            "standby restored group {restored_seq}, but the primary saw restart point {last_point} complete (replicated to the relays)"
        ));
    }
    if let Some(p) = seen.last_pointing_seq {
        if restored_seq > p {
            problems.push(format!(
                "standby restored group {restored_seq}, beyond any restart point declared ({p})"
            ));
        }
    }
    problems
}

/// The report line of the relay drain the failover did.
fn print_drain(o: &mut impl std::io::Write, d: &Value) -> std::io::Result<()> {
    let n = |k: &str| d.get(k).and_then(Value::as_u64).unwrap_or(0);
    writeln!(
        o,
        "relay drain                   {} of {} relays drained in {} us: LSN {} -> {} ({} bytes), {} restart points gained{}",
        n("relays_drained"),
        n("relays"),
        n("elapsed_us"),
        n("lsn_start"),
        n("lsn_reached"),
        n("bytes_drained"),
        n("restart_points_gained"),
        if d.get("timed_out") == Some(&Value::Bool(true)) {
            " (TIMED OUT)"
        } else if d.get("relays_unreachable") == Some(&Value::Bool(true)) {
            " (relays unreachable)"
        } else {
            ""
        }
    )
}
