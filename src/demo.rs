//! `baton demo`: the whole mission in one command, on this machine (issue 7 item 5).
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
}

/// Parses `KEY=VALUE` words of a ledger progress line.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
}

/// What the primary-side ledger said before it died.
#[derive(Default)]
struct PrimarySeen {
    points: u64,
    last_point_seq: Option<u64>,
    last_pointing_seq: Option<u64>,
    last_wrote_tx: u64,
    last_point_tx: u64,
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
        "baton demo: primary -> 2 relays -> standby ({} mode), ledger of {} accounts, {} MiB execution image",
        a.mode, a.accounts, a.image_mib
    ));
    out(format!("working directory {}", dir.display()));
    let r = run_in(&a, &dir, &mut seed, &out);
    if !a.keep && r.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("logs kept in {}", dir.display());
    }
    r
}

fn run_in(a: &DemoArgs, dir: &Path, seed: &mut u64, out: &dyn Fn(String)) -> Result<(), AnyErr> {
    let nqn = "nqn.2016-06.io.baton:ledger";
    let standby_nqn = "nqn.2016-06.io.baton:ledger-standby";
    let (p_standby, p_hb, p_img, p_export) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let (p_r1, p_r2, p_target) = (free_port()?, free_port()?, free_port()?);
    let vol_mb = 64u64;
    let sock = |n: &str| dir.join(format!("{n}.sock"));
    let exe = std::env::current_exe()?;
    let result_file = dir.join("restored.json");

    // --- standby site: standby volume, standby host (detector, images, failover) ---
    let restart_cmd = format!(
        "exec {} ledger --restore --groups 3 --app ledger --initial 1000 --result {} >> {} 2>&1",
        exe.display(),
        result_file.display(),
        dir.join("ledger-restored.log").display()
    );
    let mut standby = Proc::spawn(
        "standby",
        baton()?
            .args(["standby", "-m", "0x2", "-r"])
            .arg(sock("standby"))
            .args(["--listen", &addr(p_standby).to_string()])
            .args(["--heartbeat-listen", &addr(p_hb).to_string()])
            .args(["--primary-timeout-ms", &a.timeout_ms.to_string()])
            .args(["--image-listen", &addr(p_img).to_string()])
            .arg("--image-dir")
            .arg(dir.join("images"))
            .args(["--failover-volume", "Vol0"])
            .args(["--failover-nqn", standby_nqn])
            .args(["--failover-listen", &addr(p_export).to_string()])
            .args(["--on-failover", &restart_cmd]),
        &dir.join("standby.log"),
    )?;
    wait_rpc(&mut standby, &sock("standby"), Duration::from_secs(20))?;
    let ss = sock("standby");
    match a.mode.as_str() {
        "delayed" => {
            rpc(
                &ss,
                "bdev_malloc_create",
                json!({"name": "SbVol", "num_blocks": vol_mb * 256, "block_size": 4096}),
            )?;
            rpc(
                &ss,
                "bdev_malloc_create",
                json!({"name": "SbStage", "num_blocks": 128 * 256, "block_size": 4096}),
            )?;
            rpc(
                &ss,
                "standby_create",
                json!({"name": "Vol0", "mode": "delayed", "volume_bdev": "SbVol", "staging_bdev": "SbStage"}),
            )?;
        }
        _ => {
            rpc(
                &ss,
                "bdev_malloc_create",
                json!({"name": "SbData", "num_blocks": 4 * vol_mb * 256, "block_size": 4096}),
            )?;
            rpc(
                &ss,
                "bdev_malloc_create",
                json!({"name": "SbMeta", "num_blocks": 64 * 256, "block_size": 4096}),
            )?;
            rpc(
                &ss,
                "standby_create",
                json!({"name": "Vol0", "mode": "snapshot", "data_bdev": "SbData", "metadata_bdev": "SbMeta",
                       "volume_blocks": vol_mb * 256, "keep_last": 4}),
            )?;
        }
    }
    out(format!(
        "standby   up: relays -> {}, images on {}, heartbeats on {}",
        addr(p_standby),
        addr(p_img),
        addr(p_hb)
    ));

    // --- relay site ---
    let mut relays = Vec::new();
    for (i, port, backup) in [(1, p_r1, false), (2, p_r2, true)] {
        let name = if i == 1 { "relay1" } else { "relay2" };
        let jdir = dir.join(name);
        std::fs::create_dir_all(&jdir)?;
        let mut c = baton()?;
        c.args(["relay", "-m", "0x2", "-r"])
            .arg(sock(name))
            .args(["--listen", &addr(port).to_string()])
            .arg("--journal-dir")
            .arg(&jdir)
            .args(["--journal-bytes-max", "256M", "--standby", &addr(p_standby).to_string()]);
        if backup {
            c.arg("--backup");
        }
        let mut p = Proc::spawn(
            if i == 1 { "relay1" } else { "relay2" },
            &mut c,
            &dir.join(format!("{name}.log")),
        )?;
        wait_rpc(&mut p, &sock(name), Duration::from_secs(20))?;
        relays.push(p);
    }
    out(format!(
        "relays    up: {} (forwarder), {} (backup), journals in {}",
        addr(p_r1),
        addr(p_r2),
        dir.display()
    ));

    // --- primary site: replicated volume exported over NVMe/TCP ---
    let mut primary = Proc::spawn(
        "primary",
        baton()?
            .args(["target", "-m", "0x1", "-r"])
            .arg(sock("primary"))
            .args(["--bdev", &format!("Base0=malloc,size={vol_mb}M,bs=4096")]),
        &dir.join("primary.log"),
    )?;
    let ps = sock("primary");
    wait_rpc(&mut primary, &ps, Duration::from_secs(20))?;
    rpc(
        &ps,
        "replication_create_volume",
        json!({"name": "Vol0", "base_bdev": "Base0",
               "relays": [addr(p_r1).to_string(), addr(p_r2).to_string()],
               "standby_heartbeat": addr(p_hb).to_string()}),
    )?;
    rpc(&ps, "nvmf_create_transport", json!({"trtype": "TCP"}))?;
    rpc(
        &ps,
        "nvmf_create_subsystem",
        json!({"nqn": nqn, "allow_any_host": true, "serial_number": "BATON0001"}),
    )?;
    rpc(
        &ps,
        "nvmf_subsystem_add_ns",
        json!({"nqn": nqn, "namespace": {"bdev_name": "Vol0"}}),
    )?;
    rpc(
        &ps,
        "nvmf_subsystem_add_listener",
        json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
               "trsvcid": p_target.to_string()}}),
    )?;
    out(format!(
        "primary   up: Vol0 (RAM, {vol_mb} MiB) replicated to both relays, NVMe/TCP {nqn} on {}",
        addr(p_target)
    ));

    // --- the application on the primary host ---
    let mut ledger_cmd = baton()?;
    ledger_cmd
        .args([
            "ledger",
            "--traddr",
            "127.0.0.1",
            "--trsvcid",
            &p_target.to_string(),
            "--subnqn",
            nqn,
        ])
        .args(["--image-server", &addr(p_img).to_string(), "--app", "ledger"])
        .args([
            "--accounts",
            &a.accounts.to_string(),
            "--image-mib",
            &a.image_mib.to_string(),
        ])
        .args(["--group", &a.group.to_string(), "--initial", "1000"])
        .args(["--seed", &(rand(seed) % 1_000_000).to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(dir.join("ledger.log"))?));
    let mut ledger_child = ledger_cmd.spawn()?;
    let stdout = ledger_child.stdout.take().ok_or("ledger stdout")?;
    let mut ledger = Proc {
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

    let run_for = Duration::from_secs_f64(a.run_secs) + Duration::from_millis(rand(seed) % 2000);
    let kill_at = match a.kill_at.as_str() {
        "random" => ["writes", "point", "after-point"][(rand(seed) % 3) as usize].to_string(),
        k => k.to_string(),
    };
    let mut seen = PrimarySeen::default();
    let started = Instant::now();
    let mut last_status = Instant::now() - Duration::from_secs(1);
    let mut status_line = String::new();
    let kill_ms;
    loop {
        let line = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) => Some(l),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("the ledger exited early; see {}", dir.join("ledger.log").display()).into())
            }
        };
        for p in [&mut standby, &mut primary].into_iter().chain(relays.iter_mut()) {
            p.check_alive()?;
        }
        let mut trigger = false;
        if let Some(l) = &line {
            if l.starts_with("READY") {
                seen.image_bytes = field(l, "image_bytes").unwrap_or(0);
            } else if l.starts_with("WROTE") {
                seen.last_wrote_tx = field(l, "tx").unwrap_or(0);
                seen.write_us.record_ns(field(l, "write_us").unwrap_or(0) * 1000);
            } else if l.starts_with("POINTING") {
                seen.last_pointing_seq = field(l, "seq");
                seen.image_us.record_ns(field(l, "image_us").unwrap_or(0) * 1000);
                if let (Some(w), Some(b)) = (field(l, "wire_bytes"), field(l, "image_bytes")) {
                    seen.delta_wire.push((w, b));
                }
                trigger = kill_at == "point";
            } else if l.starts_with("POINT ") {
                seen.points += 1;
                seen.last_point_seq = field(l, "seq");
                seen.last_point_tx = field(l, "tx").unwrap_or(0);
                seen.point_us.record_ns(field(l, "point_us").unwrap_or(0) * 1000);
                trigger = kill_at == "after-point";
            }
            if l.starts_with("WROTE") && kill_at == "writes" {
                // This group's writes are done; its image is on its way to the standby
                // host and its restart point not yet declared: kill a few ms into that.
                trigger = true;
            }
        }
        if last_status.elapsed() > Duration::from_millis(250) {
            last_status = Instant::now();
            let applied = rpc(&ss, "standby_get_status", json!({"name": "Vol0"}))
                .ok()
                .and_then(|v| v.get(0).cloned().or(Some(v)))
                .and_then(|v| v.get("applied_epoch").and_then(Value::as_u64))
                .unwrap_or(0);
            status_line = format!(
                "\r  {:>5.1} s  transfers {:>7}  restart points {:>5}  standby applied epoch {:>5}   ",
                started.elapsed().as_secs_f64(),
                seen.last_wrote_tx,
                seen.points,
                applied
            );
            eprint!("{status_line}");
        }
        if trigger && started.elapsed() >= run_for && seen.points >= 1 {
            if kill_at == "writes" {
                std::thread::sleep(Duration::from_millis(1 + rand(seed) % 3));
            }
            ledger.kill9();
            primary.kill9();
            kill_ms = unix_ms();
            // Every line the ledger wrote before it died (the reader ends at EOF).
            let drain_until = Instant::now() + Duration::from_secs(5);
            while let Ok(l) = rx.recv_timeout(drain_until.saturating_duration_since(Instant::now())) {
                if l.starts_with("POINT ") {
                    seen.points += 1;
                    seen.last_point_seq = field(&l, "seq");
                    seen.last_point_tx = field(&l, "tx").unwrap_or(0);
                } else if l.starts_with("WROTE") {
                    seen.last_wrote_tx = field(&l, "tx").unwrap_or(0);
                } else if l.starts_with("POINTING") {
                    seen.last_pointing_seq = field(&l, "seq");
                }
            }
            break;
        }
        if started.elapsed() > run_for + Duration::from_secs(60) {
            return Err("the ledger made no progress to the kill point within 60 s".into());
        }
    }
    eprintln!("{status_line}");
    out(format!(
        "\nKILLED the primary site (target + ledger, SIGKILL) {kill_at}: last restart point the primary saw complete: group {}",
        seen.last_point_seq.unwrap_or(0)
    ));

    // --- failover at the standby site ---
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut host = Value::Null;
    while !result_file.exists() {
        standby.check_alive()?;
        if Instant::now() > deadline {
            let h = rpc(&ss, "standby_host_get_status", Value::Null).unwrap_or(Value::Null);
            return Err(format!("no restarted application within 60 s of the kill; standby host: {h}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ok(h) = rpc(&ss, "standby_host_get_status", Value::Null) {
        host = h;
    }
    let res: Value = serde_json::from_slice(&std::fs::read(&result_file)?)?;
    let restored_seq = res.get("restored_seq").and_then(Value::as_u64).unwrap_or(0);
    let restored_tx = res.get("restored_tx").and_then(Value::as_u64).unwrap_or(0);
    let serving_ms = res.get("serving_unix_ms").and_then(Value::as_u64).unwrap_or(0);
    let verified = res.get("verified").and_then(Value::as_bool).unwrap_or(false);
    let detected_ms = host
        .pointer("/failover/detected_unix_ms")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let sb = rpc(&ss, "standby_get_status", json!({"name": "Vol0"})).unwrap_or(Value::Null);

    let mut problems = Vec::new();
    if !verified {
        problems.push(format!(
            "the restarted ledger did not verify: {}",
            res.get("error").and_then(Value::as_str).unwrap_or("?")
        ));
    }
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
    let rto_ms = serving_ms.saturating_sub(kill_ms);
    let after_detect_ms = if detected_ms > 0 {
        serving_ms.saturating_sub(detected_ms)
    } else {
        0
    };
    let share: Vec<f64> = seen
        .delta_wire
        .iter()
        .skip(1)
        .map(|&(w, b)| w as f64 / b.max(1) as f64)
        .collect();
    let avg_share = if share.is_empty() {
        0.0
    } else {
        share.iter().sum::<f64>() / share.len() as f64
    };
    let pct = |h: &LatencyHistogram| {
        json!({"p50_us": h.percentile_us(50.0), "p99_us": h.percentile_us(99.0),
               "max_us": h.max_us(), "count": h.count()})
    };
    let report = json!({
        "mode": a.mode,
        "kill_at": kill_at,
        "transfers_at_primary": seen.last_wrote_tx,
        "restart_points_completed": seen.points,
        "last_restart_point_at_primary": last_point,
        "restored_restart_point": restored_seq,
        "rpo_restart_points_lost": last_point.saturating_sub(restored_seq),
        "transfers_rolled_back": seen.last_wrote_tx.saturating_sub(restored_tx),
        "rto_ms": rto_ms,
        "detection_ms": detected_ms.saturating_sub(kill_ms),
        "after_detection_ms": after_detect_ms,
        "detection_timeout_ms": a.timeout_ms,
        "relay_drain": host.pointer("/failover/drain").cloned().unwrap_or(Value::Null),
        "image_bytes": seen.image_bytes,
        "image_share_sent_per_point": avg_share,
        "latency": {"group_writes": pct(&seen.write_us), "image_transfer": pct(&seen.image_us),
                    "restart_point": pct(&seen.point_us)},
        "verified": verified && problems.is_empty(),
        "problems": problems,
        "standby": sb,
        "standby_host": host,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let mut o = std::io::stdout().lock();
        writeln!(o, "\n== report ({} mode)", a.mode)?;
        writeln!(o, "transfers at the primary      {}", seen.last_wrote_tx)?;
        let sb0 = sb.get(0).unwrap_or(&sb);
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
            a.timeout_ms
        )?;
        if let Some(d) = host.pointer("/failover/drain/0") {
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
            )?;
        }
        writeln!(
            o,
            "execution image               {} bytes; {:.2}% of it sent per restart point (average after the first)",
            seen.image_bytes,
            avg_share * 100.0
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
    }
    if report["verified"].as_bool() == Some(true) {
        out("demo passed: the ledger restarted on the standby at a whole restart point, money conserved".into());
        Ok(())
    } else {
        Err("demo FAILED (see the report)".into())
    }
}
