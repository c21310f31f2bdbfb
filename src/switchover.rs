//! `baton switchover`: a planned switchover from the primary to the standby, driven over
//! both sites' JSON-RPC sockets (`docs/switchover.md`).
//!
//! 1. **Demote** every volume of the application on the primary (`replication_demote`):
//!    new writes fail, every numbered write is ordered before a final restart point (the
//!    application's own last one when it quiesced there), held by the relays.
//! 2. **Promote** at the standby site, either through the standby host's failover sequence
//!    (`--host`: drain the relays, promote, export, restart the application from its image)
//!    or per volume: wait until the standby applied the final point, `standby_promote`,
//!    optionally replicate the promoted volume onward (`--reverse-relay`), and export it.
//! 3. **Check** that each promoted volume shows the final restart point: every write the
//!    application had acknowledged is there. If the standby never got there, the primary
//!    is resumed (nothing was promoted) and the command fails.
//!
//! The downtime reported runs from the demote (writes start failing) to the promoted
//! volumes being exported.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::procs::{rpc, AnyErr};

/// `baton switchover` options.
#[derive(clap::Args, Debug, Clone)]
pub struct SwitchoverArgs {
    /// The primary's JSON-RPC socket.
    #[arg(long)]
    pub primary_rpc: PathBuf,
    /// The standby's JSON-RPC socket.
    #[arg(long)]
    pub standby_rpc: PathBuf,
    /// PRIMARY_VOLUME=STANDBY_VOLUME, once per volume of the application (in order).
    #[arg(long = "volume", required = true, value_parser = parse_pair)]
    pub volumes: Vec<(String, String)>,
    /// Promote through the standby host's failover sequence (drain, promote, export,
    /// restart the application); the standby must run a standby host for these volumes.
    #[arg(long)]
    pub host: bool,
    /// Without --host: export the promoted volumes in this subsystem...
    #[arg(long)]
    pub export_nqn: Option<String>,
    /// ...listening on this NVMe/TCP address.
    #[arg(long)]
    pub export_listen: Option<SocketAddr>,
    /// Without --host: replicate each promoted volume to these relays (the reverse
    /// direction), under the primary volume's name; that volume is what is exported.
    #[arg(long = "reverse-relay")]
    pub reverse_relays: Vec<SocketAddr>,
    /// Bound on each step (final point acknowledged, standby caught up, failover done).
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Tag of the final restart point when writes followed the application's last one.
    #[arg(long, default_value = "switchover")]
    pub tag: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((p, q)) if !p.is_empty() && !q.is_empty() => Ok((p.to_string(), q.to_string())),
        _ => Err(format!("{s:?}: expected PRIMARY_VOLUME=STANDBY_VOLUME")),
    }
}

/// One volume's final restart point on the primary.
struct Final {
    primary: String,
    standby: String,
    epoch: u64,
    lsn: u64,
    reused: bool,
}

pub fn run(a: SwitchoverArgs) -> Result<(), AnyErr> {
    if a.host && (a.export_nqn.is_some() || !a.reverse_relays.is_empty()) {
        return Err("--host exports as the standby host is configured: drop --export-* and --reverse-relay".into());
    }
    if a.export_nqn.is_some() != a.export_listen.is_some() {
        return Err("--export-nqn and --export-listen go together".into());
    }
    let report = switchover(&a)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Runs the switchover; the report as JSON.
pub fn switchover(a: &SwitchoverArgs) -> Result<Value, AnyErr> {
    let timeout = Duration::from_millis(a.timeout_ms);
    let t0 = Instant::now();
    let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1000.0;
    let finals = demote_all(a)?;
    let fenced = Instant::now();
    let promoted = if a.host {
        promote_by_host(a, &finals, timeout)
    } else {
        promote_each(a, &finals, timeout)
    };
    let promoted = match promoted {
        Ok(p) => p,
        Err((e, resumable)) => {
            if resumable {
                resume_all(&a.primary_rpc, &finals);
                return Err(format!("{e}; nothing was promoted, the primary was resumed").into());
            }
            return Err(e.into());
        }
    };
    let done = Instant::now();
    let mut lost = Vec::new();
    let vols: Vec<Value> = finals
        .iter()
        .zip(&promoted)
        .map(|(f, p)| {
            if p.epoch < f.epoch {
                lost.push(format!(
                    "{}: promoted at epoch {} but the final restart point is epoch {}",
                    f.standby, p.epoch, f.epoch
                ));
            }
            json!({"primary_volume": f.primary, "standby": f.standby, "final_epoch": f.epoch,
                   "final_lsn": f.lsn, "final_point_reused": f.reused, "promoted_epoch": p.epoch,
                   "generation": p.generation, "bdev": p.bdev, "exported_bdev": p.exported})
        })
        .collect();
    let report = json!({
        "volumes": vols,
        "fenced_ms": ms(fenced),
        "promoted_ms": ms(done),
        "downtime_ms": ms(done),
        "via": if a.host { "standby host" } else { "per volume" },
        "reverse_relays": a.reverse_relays.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "no_acknowledged_write_lost": lost.is_empty(),
        "problems": lost,
    });
    if report["no_acknowledged_write_lost"] != true {
        return Err(format!("switchover lost acknowledged writes: {report}").into());
    }
    Ok(report)
}

fn demote_all(a: &SwitchoverArgs) -> Result<Vec<Final>, AnyErr> {
    let mut finals = Vec::new();
    for (p, s) in &a.volumes {
        let r = rpc(
            &a.primary_rpc,
            "replication_demote",
            json!({"name": p, "tag": a.tag, "timeout_ms": a.timeout_ms}),
        );
        match r {
            Ok(v) => finals.push(Final {
                primary: p.clone(),
                standby: s.clone(),
                epoch: v["epoch"].as_u64().unwrap_or(0),
                lsn: v["lsn"].as_u64().unwrap_or(0),
                reused: v["reused"] == true,
            }),
            Err(e) => {
                // Those demoted already take writes again; this one may be demoted too.
                let _ = rpc(&a.primary_rpc, "replication_resume", json!({"name": p}));
                resume_all(&a.primary_rpc, &finals);
                return Err(format!("demote {p}: {e}; the primary was resumed").into());
            }
        }
    }
    Ok(finals)
}

fn resume_all(primary: &Path, finals: &[Final]) {
    for f in finals {
        if let Err(e) = rpc(primary, "replication_resume", json!({"name": f.primary})) {
            eprintln!("switchover: resume {}: {e}", f.primary);
        }
    }
}

/// What the standby site shows of one promoted volume.
struct Promoted {
    epoch: u64,
    generation: u64,
    bdev: String,
    exported: Option<String>,
}

/// An error, and whether the primary may still be resumed (nothing was promoted).
type StepErr = (String, bool);

fn promote_by_host(a: &SwitchoverArgs, finals: &[Final], timeout: Duration) -> Result<Vec<Promoted>, StepErr> {
    let s = &a.standby_rpc;
    rpc(
        s,
        "standby_host_declare_failure",
        json!({"reason": "planned switchover"}),
    )
    .map_err(|e| (format!("standby host: {e}"), true))?;
    let start = Instant::now();
    let rep = loop {
        let h = rpc(s, "standby_host_get_status", Value::Null).map_err(|e| (e.to_string(), false))?;
        let f = &h["failover"];
        if f["state"] == "done" || f["state"] == "failed" {
            break f.clone();
        }
        if start.elapsed() > timeout {
            return Err((format!("standby failover not done within {timeout:?}: {f}"), false));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if rep["state"] != "done" {
        let resumable = rep["promoted_us"].is_null();
        return Err((format!("standby failover failed: {}", rep["error"]), resumable));
    }
    finals
        .iter()
        .map(|f| {
            let v = rep["volumes"]
                .as_array()
                .and_then(|vs| vs.iter().find(|v| v["standby"] == f.standby.as_str()))
                .ok_or_else(|| {
                    (
                        format!("{}: not among the host's promoted volumes: {rep}", f.standby),
                        false,
                    )
                })?;
            Ok(Promoted {
                epoch: v["epoch"].as_u64().unwrap_or(0),
                generation: v["generation"].as_u64().unwrap_or(0),
                bdev: v["bdev"].as_str().unwrap_or("").to_string(),
                exported: v["bdev"].as_str().map(str::to_string),
            })
        })
        .collect()
}

fn promote_each(a: &SwitchoverArgs, finals: &[Final], timeout: Duration) -> Result<Vec<Promoted>, StepErr> {
    let s = &a.standby_rpc;
    // Every standby volume must reach its final point before any is promoted: a refusal
    // then leaves both sites as they were.
    for f in finals {
        let start = Instant::now();
        loop {
            let st = rpc(s, "standby_get_status", json!({"name": f.standby})).map_err(|e| (e.to_string(), true))?;
            let applied = st[0]["applied_epoch"].as_u64().unwrap_or(0);
            if applied >= f.epoch && st[0]["failover_target"] != "not_valid" {
                break;
            }
            if start.elapsed() > timeout {
                return Err((
                    format!(
                        "{}: applied epoch {applied}, the final restart point is epoch {} (not reached within {timeout:?}; a forward policy holding ops needs --host, whose failover drains the relays)",
                        f.standby, f.epoch
                    ),
                    true,
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mut out = Vec::new();
    for f in finals {
        let r = rpc(s, "standby_promote", json!({"name": f.standby})).map_err(|e| (e.to_string(), out.is_empty()))?;
        let bdev = r["bdev_name"].as_str().unwrap_or("").to_string();
        let generation = r["generation"].as_u64().unwrap_or(0);
        let st = rpc(s, "standby_get_status", json!({"name": f.standby})).map_err(|e| (e.to_string(), false))?;
        let mut top = bdev.clone();
        if !a.reverse_relays.is_empty() {
            let relays: Vec<String> = a.reverse_relays.iter().map(|r| r.to_string()).collect();
            rpc(
                s,
                "replication_create_volume",
                json!({"name": f.primary, "base_bdev": bdev, "relays": relays}),
            )
            .map_err(|e| (format!("reverse replication of {}: {e}", f.primary), false))?;
            top = f.primary.clone();
        }
        out.push(Promoted {
            epoch: st[0]["applied_epoch"].as_u64().unwrap_or(0),
            generation,
            bdev,
            exported: Some(top),
        });
    }
    if let (Some(nqn), Some(listen)) = (&a.export_nqn, a.export_listen) {
        export(s, nqn, listen, &out).map_err(|e| (format!("export: {e}"), false))?;
    } else {
        out.iter_mut().for_each(|p| p.exported = None);
    }
    Ok(out)
}

/// The same RPCs as `nvmf_*` by hand: transport (if none), subsystem, namespaces, listener.
fn export(s: &Path, nqn: &str, listen: SocketAddr, vols: &[Promoted]) -> Result<(), AnyErr> {
    let _ = rpc(s, "nvmf_create_transport", json!({"trtype": "TCP"}));
    rpc(
        s,
        "nvmf_create_subsystem",
        json!({"nqn": nqn, "allow_any_host": true, "serial_number": "BATONSWITCH"}),
    )?;
    for p in vols {
        let b = p.exported.as_deref().unwrap_or(&p.bdev);
        rpc(
            s,
            "nvmf_subsystem_add_ns",
            json!({"nqn": nqn, "namespace": {"bdev_name": b}}),
        )?;
    }
    let adrfam = if listen.is_ipv4() { "IPv4" } else { "IPv6" };
    rpc(
        s,
        "nvmf_subsystem_add_listener",
        json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": adrfam,
               "traddr": listen.ip().to_string(), "trsvcid": listen.port().to_string()}}),
    )?;
    Ok(())
}

fn print_report(r: &Value) {
    println!(
        "switchover done via {}: downtime {:.1} ms (writes fenced at +{:.1} ms)",
        r["via"].as_str().unwrap_or("?"),
        r["downtime_ms"].as_f64().unwrap_or(0.0),
        r["fenced_ms"].as_f64().unwrap_or(0.0)
    );
    for v in r["volumes"].as_array().into_iter().flatten() {
        println!(
            "  {} -> {}: final restart point epoch {} (LSN {}{}), promoted at epoch {}, generation {}, bdev {}{}",
            v["primary_volume"].as_str().unwrap_or("?"),
            v["standby"].as_str().unwrap_or("?"),
            v["final_epoch"],
            v["final_lsn"],
            if v["final_point_reused"] == true {
                ", the application's own"
            } else {
                ", declared by the switchover"
            },
            v["promoted_epoch"],
            v["generation"],
            v["bdev"].as_str().unwrap_or("?"),
            v["exported_bdev"]
                .as_str()
                .map(|b| format!(", exported as {b}"))
                .unwrap_or_default()
        );
    }
    println!("no acknowledged write lost: {}", r["no_acknowledged_write_lost"]);
}
