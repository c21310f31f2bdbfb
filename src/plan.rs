//! `baton plan`: the relay placement planner (R6) from the command line.
//!
//! Reads candidate sites from a JSON file (`relay_plan`'s parameters, or just an array of
//! candidates) and/or `--site` flags, probes the ones with an address from this host
//! (unless `--no-probe`; run it on the primary's host), optionally measures the local
//! write on a file, and prints the sites and the relay sets best first (or `--json`).
//! The model is `relay::plan`; the probe `relay::probe`; both in `docs/planning.md`.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use relay::plan::{self, Candidate, Plan, PlanError, PlanParams, SetPlan, Site};
use relay::probe;
use relay::volume::AckPolicy;

/// Writes of the local-write measurement.
const LOCAL_WRITES: usize = 200;

#[derive(Args)]
pub struct PlanArgs {
    /// JSON file: `relay_plan`'s parameters (an object) or an array of candidates.
    #[arg(long)]
    input: Option<PathBuf>,
    /// A candidate: name=N[,addr=IP:PORT][,km=D][,region=R][,rtt_us=T][,commit_us=C]
    /// (repeatable; added to the file's).
    #[arg(long = "site")]
    sites: Vec<String>,
    /// Acknowledgement policy: all | quorum:K | any.
    #[arg(long, value_parser = plan::parse_ack)]
    ack: Option<AckPolicy>,
    /// Write-latency budget in µs.
    #[arg(long)]
    budget_us: Option<f64>,
    /// The primary's local write latency in µs.
    #[arg(long, conflicts_with = "local_write_file")]
    local_write_us: Option<f64>,
    /// Measure the local write instead: 4 KiB write + fdatasync at QD 1 on this file
    /// (created; left in place), p50 of 200.
    #[arg(long)]
    local_write_file: Option<PathBuf>,
    /// Disaster radius around the primary in km.
    #[arg(long)]
    radius_km: Option<f64>,
    /// A region a disaster may take (repeatable), e.g. the primary's.
    #[arg(long = "exclude-region")]
    exclude_regions: Vec<String>,
    /// Smallest relay set (default 1).
    #[arg(long)]
    relays_min: Option<usize>,
    /// Largest relay set (default 3, at most 5).
    #[arg(long)]
    relays_max: Option<usize>,
    /// Primary-side cost per relay in µs (default 5).
    #[arg(long)]
    send_us_per_relay: Option<f64>,
    /// Fibre route length over straight-line distance (default 1.5).
    #[arg(long)]
    route_factor: Option<f64>,
    /// Journal commit time of sites that give none, in µs (default 0).
    #[arg(long)]
    commit_us: Option<f64>,
    /// Probes per relay (default 20).
    #[arg(long)]
    probes: Option<u32>,
    /// Do not probe: use rtt_us or distance only.
    #[arg(long)]
    no_probe: bool,
    /// TLS credentials of a primary, to probe relays that require TLS (docs/security.md).
    #[command(flatten)]
    tls: crate::role::TlsArgs,
    /// Sets shown of each kind (meeting the budget, failing), best first.
    #[arg(long, default_value_t = 20)]
    rows: usize,
    /// Print the plan as JSON (every set).
    #[arg(long)]
    json: bool,
}

/// Why `baton plan` failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanCmdError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: not relay_plan parameters or an array of candidates: {source}")]
    Json { path: String, source: serde_json::Error },
    #[error("--site {spec:?}: {why}")]
    Site { spec: String, why: String },
    #[error("budget_us: required (--budget-us or the input file's budget_us)")]
    NoBudget,
    #[error("--local-write-file {path}: {source}")]
    LocalWrite { path: String, source: std::io::Error },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("TLS: {0}")]
    Tls(String),
}

fn parse_site(spec: &str) -> Result<Candidate, PlanCmdError> {
    let bad = |why: String| PlanCmdError::Site {
        spec: spec.to_string(),
        why,
    };
    let num = |k: &str, v: &str| v.parse::<f64>().map_err(|_| bad(format!("{k}: {v:?} is not a number")));
    let mut c = Candidate::default();
    for kv in spec.split(',') {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| bad(format!("{kv:?} is not key=value")))?;
        match k {
            "name" => c.name = v.to_string(),
            "addr" => c.addr = Some(v.to_string()),
            "km" | "distance_km" => c.distance_km = Some(num(k, v)?),
            "region" => c.region = Some(v.to_string()),
            "rtt_us" => c.rtt_us = Some(num(k, v)?),
            "commit_us" => c.commit_us = Some(num(k, v)?),
            _ => {
                return Err(bad(format!(
                    "unknown key {k:?} (name, addr, km, region, rtt_us, commit_us)"
                )))
            }
        }
    }
    if c.name.is_empty() {
        return Err(bad("name= is required".into()));
    }
    Ok(c)
}

/// The parameters: the file's, then the flags over them.
fn params(a: &PlanArgs) -> Result<PlanParams, PlanCmdError> {
    let mut p = PlanParams::default();
    let mut budget = None;
    if let Some(path) = &a.input {
        let show = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PlanCmdError::Read {
            path: show.clone(),
            source,
        })?;
        let json = |source| PlanCmdError::Json {
            path: show.clone(),
            source,
        };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(json)?;
        if v.is_array() {
            p.candidates = serde_json::from_value(v).map_err(json)?;
        } else {
            p = serde_json::from_value(v).map_err(json)?;
            budget = Some(p.budget_us);
        }
    }
    for s in &a.sites {
        p.candidates.push(parse_site(s)?);
    }
    if let Some(ack) = a.ack {
        match ack {
            AckPolicy::Quorum(k) => (p.ack_policy, p.quorum_k) = (Some("quorum".into()), Some(k)),
            other => (p.ack_policy, p.quorum_k) = (Some(other.name().into()), None),
        }
    }
    p.budget_us = a.budget_us.or(budget).ok_or(PlanCmdError::NoBudget)?;
    p.local_write_us = a.local_write_us.or(p.local_write_us);
    p.disaster_radius_km = a.radius_km.or(p.disaster_radius_km);
    p.excluded_regions.extend(a.exclude_regions.iter().cloned());
    p.relays_min = a.relays_min.or(p.relays_min);
    p.relays_max = a.relays_max.or(p.relays_max);
    p.send_us_per_relay = a.send_us_per_relay.or(p.send_us_per_relay);
    p.route_factor = a.route_factor.or(p.route_factor);
    p.commit_us = a.commit_us.or(p.commit_us);
    p.probes = a.probes.or(p.probes);
    if a.no_probe {
        p.probe = Some(false);
    }
    Ok(p)
}

/// p50 of 4 KiB write + fdatasync at offset 0 of `path`, in µs.
fn measure_local_write(path: &PathBuf) -> Result<f64, PlanCmdError> {
    let err = |source| PlanCmdError::LocalWrite {
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(err)?;
    let block = [0x5au8; 4096];
    let mut t: Vec<f64> = Vec::with_capacity(LOCAL_WRITES);
    for _ in 0..LOCAL_WRITES {
        let t0 = Instant::now();
        f.write_all_at(&block, 0).map_err(err)?;
        f.sync_data().map_err(err)?;
        t.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    Ok(probe::stats(&mut t).p50_us)
}

pub fn run(a: PlanArgs) -> Result<(), PlanCmdError> {
    rdma_transport::tls::set_process_role(rdma_transport::tls::Role::Primary);
    a.tls
        .install(rdma_transport::tls::Role::Primary)
        .map_err(|e| PlanCmdError::Tls(e.to_string()))?;
    let mut p = params(&a)?;
    if let Some(path) = &a.local_write_file {
        p.local_write_us = Some(measure_local_write(path)?);
    }
    let probe_on = p.probe.unwrap_or(true);
    let probes = p.probes.unwrap_or(probe::PROBES_DEFAULT);
    let mut input = p.into_input()?;
    if probe_on {
        probe::probe_candidates(&mut input, probes, probe::PROBE_TIMEOUT);
    }
    let planned = plan::plan(&input)?;
    let mut out = std::io::stdout().lock();
    let r = if a.json {
        writeln!(out, "{:#}", planned.to_json(usize::MAX))
    } else {
        print_plan(&mut out, &input, &planned, a.rows)
    };
    // A closed stdout (`| head`) is not the plan's failure.
    let _ = r;
    Ok(())
}

fn us(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

fn site_row(s: &Site) -> Vec<String> {
    let source = s.rtt_source.map_or("", |r| match r {
        plan::RttSource::Probed => "probed",
        plan::RttSource::Given => "given",
        plan::RttSource::Distance => "distance",
    });
    vec![
        s.name.clone(),
        s.addr.clone().unwrap_or_else(|| "-".into()),
        format!("{} {source}", us(s.rtt_us)),
        s.probe.map_or_else(
            || "-".into(),
            |p| format!("{:.0}/{:.0}/{:.0}", p.min_us, p.p50_us, p.p99_us),
        ),
        format!("{:.0}", s.commit_us),
        s.distance_km.map_or_else(|| "-".into(), |d| format!("{d}")),
        s.region.clone().unwrap_or_else(|| "-".into()),
        s.excluded.clone().unwrap_or_else(|| "eligible".into()),
    ]
}

fn set_row(i: usize, s: &SetPlan) -> Vec<String> {
    vec![
        (i + 1).to_string(),
        s.relays.join("+"),
        us(s.latency_us),
        if s.ok { "yes" } else { "no" }.into(),
        if s.survives_one_relay_loss { "yes" } else { "no" }.into(),
        us(s.latency_after_loss_us),
        if s.why.is_empty() { "-".into() } else { s.why.join("; ") },
    ]
}

fn print_plan(out: &mut impl Write, input: &plan::PlanInput, p: &Plan, rows: usize) -> std::io::Result<()> {
    writeln!(
        out,
        "ack {}, budget {:.0} µs, local write {:.1} µs, send {:.0} µs per relay, sets of {}..={}",
        match input.ack {
            relay::volume::AckPolicy::Quorum(k) => format!("quorum:{k}"),
            other => other.name().to_string(),
        },
        input.budget_us,
        input.local_write_us,
        input.send_us_per_relay,
        input.relays_min,
        input.relays_max
    )?;
    writeln!(out, "\nsites")?;
    let head = [
        "site",
        "addr",
        "rtt µs",
        "probe min/p50/p99 µs",
        "commit µs",
        "km",
        "region",
        "placement",
    ];
    table(out, &head, p.sites.iter().map(site_row).collect())?;
    writeln!(
        out,
        "\nsets: {} of {} meet the budget outside the disaster area",
        p.sets_ok,
        p.sets.len()
    )?;
    let head = [
        "#",
        "relays",
        "model µs",
        "ok",
        "survives one relay loss",
        "after loss µs",
        "why not",
    ];
    let ok = p.sets.iter().enumerate().filter(|(_, s)| s.ok).take(rows);
    let failing = p.sets.iter().enumerate().filter(|(_, s)| !s.ok).take(rows);
    let shown: Vec<Vec<String>> = ok.chain(failing).map(|(i, s)| set_row(i, s)).collect();
    let hidden = p.sets.len() - shown.len();
    table(out, &head, shown)?;
    if hidden > 0 {
        writeln!(out, "({hidden} more sets not shown: --rows N or --json)")?;
    }
    Ok(())
}

fn table(out: &mut impl Write, head: &[&str], rows: Vec<Vec<String>>) -> std::io::Result<()> {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            s.push_str(c);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s
    };
    writeln!(out, "{}", line(head.to_vec()))?;
    for r in &rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_specs_parse_and_name_what_is_wrong() {
        let c = parse_site("name=r1,addr=10.0.0.1:4520,km=120,region=eu-west,rtt_us=1500,commit_us=30").unwrap();
        assert_eq!(c.name, "r1");
        assert_eq!(c.addr.as_deref(), Some("10.0.0.1:4520"));
        assert_eq!(
            (c.distance_km, c.rtt_us, c.commit_us),
            (Some(120.0), Some(1500.0), Some(30.0))
        );
        assert!(parse_site("addr=1.2.3.4:5").unwrap_err().to_string().contains("name="));
        assert!(parse_site("name=a,km=far").unwrap_err().to_string().contains("\"far\""));
        assert!(parse_site("name=a,rack=3").unwrap_err().to_string().contains("rack"));
    }

    #[test]
    fn the_table_shows_ok_and_failing_sets() {
        let p = PlanParams {
            candidates: vec![
                parse_site("name=near,km=10,rtt_us=200").unwrap(),
                parse_site("name=far,km=400,rtt_us=4000").unwrap(),
            ],
            budget_us: 10_000.0,
            disaster_radius_km: Some(50.0),
            ..PlanParams::default()
        };
        let input = p.into_input().unwrap();
        let planned = plan::plan(&input).unwrap();
        let mut out = Vec::new();
        print_plan(&mut out, &input, &planned, 20).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("1 of 3 meet the budget"), "{s}");
        assert!(s.contains("inside the disaster radius"), "{s}");
        assert!(s.contains("4005"), "{s}");
    }
}
