//! The relay placement planner (R6): which sets of candidate relay sites meet a write
//! latency budget while every relay stays outside the primary's disaster radius.
//!
//! Where it sits: off the data path entirely. It is a pure function of its input (sites,
//! their round trips or distances, the acknowledgement policy, the budget and the disaster
//! area), run by the `relay_plan` JSON-RPC method and by `baton plan`, which may first
//! measure the round trips with [`crate::probe`]. The model and its assumptions are in
//! `docs/planning.md`.
//!
//! The model of one replicated write at queue depth 1 (what `docs/replication.md` describes:
//! the local write and the sends to every relay start together, the write completes when
//! the local write is done and the acknowledgement policy is met):
//!
//! ```text
//! relay_us(r)  = rtt_us(r) + commit_us(r)           (the relay acks after its group commit)
//! required_us  = k-th smallest relay_us over the set + n × send_us_per_relay
//! latency_us   = max(local_write_us, required_us)
//! ```
//!
//! with `n` the set's size and `k` = `n` for `all`, `quorum_k` for `quorum`, 1 for `any`.
//! The send cost is paid once per relay in the set because the link reactor sends every
//! frame to every relay in one poll before any Ack can be counted (worst case, the relay
//! that completes the policy is the last one sent to).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::volume::AckPolicy;

/// Most candidate sites one plan considers (2^16 subsets at most are looked at).
pub const CANDIDATES_MAX: usize = 16;
/// Largest relay set a plan proposes (C(16, ≤5) = 6,884 sets at most are evaluated).
pub const SET_RELAYS_MAX: usize = 5;
/// One-way propagation in optical fibre: light at about c / 1.47, 204 km per ms.
pub const FIBRE_US_PER_KM: f64 = 4.9;
/// How much longer a fibre route is than the straight line, when not given.
pub const ROUTE_FACTOR_DEFAULT: f64 = 1.5;
/// Primary-side cost of sending one 4 KiB write to one more relay (one `writev` of the
/// frame into a TCP socket, plus the link's bookkeeping), when not given: see
/// `docs/planning.md`, "Send cost".
pub const SEND_US_PER_RELAY_DEFAULT: f64 = 5.0;
/// Farthest a site may be: half the Earth's circumference.
pub const DISTANCE_KM_MAX: f64 = 20_038.0;
/// Largest time accepted anywhere in the input (one minute): bigger is a unit mistake.
pub const TIME_US_MAX: f64 = 60_000_000.0;
/// Longest site name or region tag.
pub const NAME_BYTES_MAX: usize = 64;

/// A candidate relay site, as given (JSON: `relay_plan`'s `candidates`, `baton plan`'s
/// input file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// Unique name of the site.
    pub name: String,
    /// The relay's replication address (IP:PORT), if it runs: then it can be probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Distance from the primary in km (great circle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_km: Option<f64>,
    /// Region tag (compared with the disaster's excluded regions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Round trip primary → relay → primary in µs, as known or measured elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<f64>,
    /// The relay's journal commit time in µs (its group commit before the Ack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_us: Option<f64>,
}

/// Round trips measured by a probe (see [`crate::probe`]), in µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RttStats {
    /// Probes answered.
    pub probes: u32,
    /// Fastest.
    pub min_us: f64,
    /// Median: what the model uses.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
}

/// What a probe of a site found, if the site was probed.
#[derive(Debug, Clone, PartialEq)]
pub enum Probed {
    /// Not probed (no address, or probing off).
    No,
    /// Answered.
    Rtt(RttStats),
    /// Failed: the message. The site is not planned (a relay that does not answer now is
    /// not one to count on).
    Failed(String),
}

/// Where a site's round trip comes from, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RttSource {
    /// Measured from this host by the probe (its p50).
    Probed,
    /// Given (`rtt_us`).
    Given,
    /// Derived from `distance_km` (fibre speed × route factor, there and back).
    Distance,
}

/// A bad plan input. Every variant names the parameter and the value received.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// No candidates at all.
    #[error("candidates: none given")]
    NoCandidates,
    /// More than [`CANDIDATES_MAX`].
    #[error("candidates: {given} given, at most {CANDIDATES_MAX} are planned at once")]
    TooManyCandidates {
        /// How many.
        given: usize,
    },
    /// A name or region tag empty or longer than [`NAME_BYTES_MAX`].
    #[error("{field}: {value:?} must be 1..={NAME_BYTES_MAX} bytes")]
    BadName {
        /// Which (`candidates[2].name`).
        field: String,
        /// Received.
        value: String,
    },
    /// Two candidates with one name.
    #[error("candidates: name {name:?} given twice")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A number out of its range (negative, not finite, too big).
    #[error("{field}: {value} must be {range}")]
    BadNumber {
        /// Which (`candidates[1].rtt_us`, `budget_us`).
        field: String,
        /// Received.
        value: f64,
        /// The accepted range, in words.
        range: &'static str,
    },
    /// An address that is not IP:PORT.
    #[error("candidates[{index}].addr: {addr:?} is not an IP:PORT address")]
    BadAddr {
        /// Candidate index.
        index: usize,
        /// Received.
        addr: String,
    },
    /// A site whose round trip cannot be known.
    #[error(
        "candidates[{index}] ({name:?}): no rtt_us, no distance_km and no probe result: its round trip is unknown"
    )]
    NoLatency {
        /// Candidate index.
        index: usize,
        /// Its name.
        name: String,
    },
    /// `relays_min` / `relays_max` out of range.
    #[error(
        "relays_min ({min}) and relays_max ({max}) must satisfy 1 <= relays_min <= relays_max <= {SET_RELAYS_MAX}"
    )]
    RelaysRange {
        /// Received.
        min: usize,
        /// Received.
        max: usize,
    },
    /// `quorum_k` larger than the largest set.
    #[error("quorum_k: {k} must be between 1 and relays_max ({max})")]
    QuorumK {
        /// Received.
        k: u32,
        /// relays_max.
        max: usize,
    },
    /// An ack policy that is not all, quorum with k, or any.
    #[error("ack_policy: {given:?} is not all, quorum (with quorum_k) or any")]
    AckPolicy {
        /// Received.
        given: String,
    },
}

/// A validated plan input.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanInput {
    /// The sites, at most [`CANDIDATES_MAX`], names unique.
    pub candidates: Vec<Candidate>,
    /// Probe results, one per candidate (same order); [`Probed::No`] when not probed.
    pub probed: Vec<Probed>,
    /// The replicated volume's acknowledgement policy.
    pub ack: AckPolicy,
    /// The primary's local write latency (µs).
    pub local_write_us: f64,
    /// Budget of one replicated write (µs).
    pub budget_us: f64,
    /// No relay may be closer to the primary than this (km).
    pub disaster_radius_km: Option<f64>,
    /// No relay may be in one of these regions.
    pub excluded_regions: Vec<String>,
    /// Smallest set size considered.
    pub relays_min: usize,
    /// Largest set size considered, ≤ [`SET_RELAYS_MAX`].
    pub relays_max: usize,
    /// Primary-side cost per relay in the set (µs).
    pub send_us_per_relay: f64,
    /// Route length / straight-line distance, for sites known by distance only.
    pub route_factor: f64,
    /// Commit time of sites that do not give one (µs).
    pub commit_us_default: f64,
}

/// Parses `all`, `any`, `quorum:K` (the `baton plan --ack` and `baton perf --ack` form).
pub fn parse_ack(s: &str) -> Result<AckPolicy, PlanError> {
    let bad = || PlanError::AckPolicy { given: s.to_string() };
    match s {
        "all" => Ok(AckPolicy::All),
        "any" => Ok(AckPolicy::Any),
        _ => {
            let k = s.strip_prefix("quorum:").ok_or_else(bad)?;
            Ok(AckPolicy::Quorum(k.parse().map_err(|_| bad())?))
        }
    }
}

/// The ack policy from the JSON-RPC pair (`ack_policy`, `quorum_k`), as
/// `replication_create_volume` takes it.
pub fn ack_from_params(name: Option<&str>, quorum_k: Option<u32>) -> Result<AckPolicy, PlanError> {
    match (name.unwrap_or("all"), quorum_k) {
        ("all", None) => Ok(AckPolicy::All),
        ("any", None) => Ok(AckPolicy::Any),
        ("quorum", Some(k)) => Ok(AckPolicy::Quorum(k)),
        (n, k) => Err(PlanError::AckPolicy {
            given: match k {
                Some(k) => format!("{n} with quorum_k {k}"),
                None => n.to_string(),
            },
        }),
    }
}

fn check_num(field: impl Into<String>, value: f64, max: f64, range: &'static str) -> Result<f64, PlanError> {
    if value.is_finite() && (0.0..=max).contains(&value) {
        Ok(value)
    } else {
        Err(PlanError::BadNumber {
            field: field.into(),
            value,
            range,
        })
    }
}

fn check_name(field: impl Into<String>, value: &str) -> Result<(), PlanError> {
    if value.is_empty() || value.len() > NAME_BYTES_MAX {
        return Err(PlanError::BadName {
            field: field.into(),
            value: value.to_string(),
        });
    }
    Ok(())
}

const TIME_RANGE: &str = "between 0 and 60000000 µs";

impl PlanInput {
    /// Checks every field (names, numbers, addresses, ranges, the policy against the set
    /// sizes). Called before probing, so a bad input is refused at once.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.candidates.is_empty() {
            return Err(PlanError::NoCandidates);
        }
        if self.candidates.len() > CANDIDATES_MAX {
            return Err(PlanError::TooManyCandidates {
                given: self.candidates.len(),
            });
        }
        let mut names = BTreeSet::new();
        for (i, c) in self.candidates.iter().enumerate() {
            check_name(format!("candidates[{i}].name"), &c.name)?;
            if !names.insert(c.name.as_str()) {
                return Err(PlanError::DuplicateName { name: c.name.clone() });
            }
            if let Some(r) = &c.region {
                check_name(format!("candidates[{i}].region"), r)?;
            }
            if let Some(a) = &c.addr {
                a.parse::<SocketAddr>().map_err(|_| PlanError::BadAddr {
                    index: i,
                    addr: a.clone(),
                })?;
            }
            if let Some(d) = c.distance_km {
                check_num(
                    format!("candidates[{i}].distance_km"),
                    d,
                    DISTANCE_KM_MAX,
                    "between 0 and 20038 km",
                )?;
            }
            if let Some(t) = c.rtt_us {
                check_num(format!("candidates[{i}].rtt_us"), t, TIME_US_MAX, TIME_RANGE)?;
            }
            if let Some(t) = c.commit_us {
                check_num(format!("candidates[{i}].commit_us"), t, TIME_US_MAX, TIME_RANGE)?;
            }
            let probed = matches!(self.probed.get(i), Some(Probed::Rtt(_) | Probed::Failed(_)));
            if c.rtt_us.is_none() && c.distance_km.is_none() && !probed && c.addr.is_none() {
                return Err(PlanError::NoLatency {
                    index: i,
                    name: c.name.clone(),
                });
            }
        }
        for (i, r) in self.excluded_regions.iter().enumerate() {
            check_name(format!("excluded_regions[{i}]"), r)?;
        }
        check_num("local_write_us", self.local_write_us, TIME_US_MAX, TIME_RANGE)?;
        check_num("budget_us", self.budget_us, TIME_US_MAX, TIME_RANGE)?;
        if self.budget_us == 0.0 {
            return Err(PlanError::BadNumber {
                field: "budget_us".into(),
                value: 0.0,
                range: "above 0 µs",
            });
        }
        if let Some(r) = self.disaster_radius_km {
            check_num("disaster_radius_km", r, DISTANCE_KM_MAX, "between 0 and 20038 km")?;
        }
        check_num("send_us_per_relay", self.send_us_per_relay, TIME_US_MAX, TIME_RANGE)?;
        check_num("commit_us", self.commit_us_default, TIME_US_MAX, TIME_RANGE)?;
        if !(self.route_factor.is_finite() && (1.0..=10.0).contains(&self.route_factor)) {
            return Err(PlanError::BadNumber {
                field: "route_factor".into(),
                value: self.route_factor,
                range: "between 1 and 10",
            });
        }
        if self.relays_min == 0 || self.relays_min > self.relays_max || self.relays_max > SET_RELAYS_MAX {
            return Err(PlanError::RelaysRange {
                min: self.relays_min,
                max: self.relays_max,
            });
        }
        if let AckPolicy::Quorum(k) = self.ack {
            if k == 0 || k as usize > self.relays_max {
                return Err(PlanError::QuorumK {
                    k,
                    max: self.relays_max,
                });
            }
        }
        Ok(())
    }
}

/// One site as the plan sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Site {
    /// Name.
    pub name: String,
    /// Address, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Round trip the model uses (µs); `None` when unknown (probe failed).
    pub rtt_us: Option<f64>,
    /// Where `rtt_us` comes from.
    pub rtt_source: Option<RttSource>,
    /// The probe's figures, if probed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<RttStats>,
    /// Journal commit time the model uses (µs).
    pub commit_us: f64,
    /// `rtt_us + commit_us`: how long after its send this relay's Ack counts.
    pub relay_us: Option<f64>,
    /// Distance, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance_km: Option<f64>,
    /// Region, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Why this site may not be in any set (inside the disaster radius, excluded region,
    /// unknown distance while a radius is set, probe failed); `None`: eligible.
    pub excluded: Option<String>,
}

/// One set of relays, evaluated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SetPlan {
    /// Site names, in candidate order.
    pub relays: Vec<String>,
    /// Modelled replicated write latency (µs); `None` when a site's round trip is unknown.
    pub latency_us: Option<f64>,
    /// Meets the budget and every relay is outside the disaster area.
    pub ok: bool,
    /// With any one relay of the set lost, the policy can still be met within the budget.
    pub survives_one_relay_loss: bool,
    /// Worst modelled latency over losing any one relay (µs); `None` when the policy can
    /// no longer be met with one relay fewer (`all`, or `quorum` with exactly k relays).
    pub latency_after_loss_us: Option<f64>,
    /// Why the set fails (empty when `ok`).
    pub why: Vec<String>,
}

/// A plan: the sites, then every set of `relays_min..=relays_max` sites (at least the
/// policy's k), the ones that meet the budget first, best first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The sites with the figures the model used.
    pub sites: Vec<Site>,
    /// The sets, sorted: ok first, then by modelled latency, then fewest relays, then names.
    pub sets: Vec<SetPlan>,
    /// How many sets are ok.
    pub sets_ok: usize,
}

impl Plan {
    /// The plan as JSON with at most `sets_max` sets (ok ones first), and how many there are
    /// in all (`sets_total`, `sets_ok`).
    pub fn to_json(&self, sets_max: usize) -> serde_json::Value {
        serde_json::json!({
            "sites": self.sites,
            "sets_total": self.sets.len(),
            "sets_ok": self.sets_ok,
            "sets": &self.sets[..self.sets.len().min(sets_max)],
        })
    }
}

/// Round trip of `distance_km` of fibre route, there and back (µs).
pub fn rtt_from_distance_us(distance_km: f64, route_factor: f64) -> f64 {
    2.0 * distance_km * route_factor * FIBRE_US_PER_KM
}

fn site(input: &PlanInput, i: usize) -> Site {
    let c = &input.candidates[i];
    let probed = input.probed.get(i).cloned().unwrap_or(Probed::No);
    let (rtt_us, rtt_source, probe) = match (&probed, c.rtt_us, c.distance_km) {
        (Probed::Rtt(s), _, _) => (Some(s.p50_us), Some(RttSource::Probed), Some(*s)),
        (Probed::Failed(_), _, _) => (None, None, None),
        (Probed::No, Some(t), _) => (Some(t), Some(RttSource::Given), None),
        (Probed::No, None, Some(d)) => (
            Some(round_us(rtt_from_distance_us(d, input.route_factor))),
            Some(RttSource::Distance),
            None,
        ),
        (Probed::No, None, None) => (None, None, None),
    };
    let commit_us = c.commit_us.unwrap_or(input.commit_us_default);
    let excluded = if let Probed::Failed(why) = &probed {
        Some(format!("probe failed: {why}"))
    } else if rtt_us.is_none() {
        Some("round trip unknown (not probed, no rtt_us, no distance_km)".to_string())
    } else if let Some(r) = c.region.as_ref().filter(|r| input.excluded_regions.contains(r)) {
        Some(format!("in excluded region {r:?}"))
    } else {
        match (input.disaster_radius_km, c.distance_km) {
            (Some(r), Some(d)) if d <= r => Some(format!("inside the disaster radius ({d} km <= {r} km)")),
            (Some(r), None) => Some(format!(
                "distance unknown: cannot show it is outside the {r} km disaster radius"
            )),
            _ => None,
        }
    };
    Site {
        name: c.name.clone(),
        addr: c.addr.clone(),
        rtt_us,
        rtt_source,
        probe,
        commit_us,
        relay_us: rtt_us.map(|t| t + commit_us),
        distance_km: c.distance_km,
        region: c.region.clone(),
        excluded,
    }
}

/// The k of the policy for a set of `n` relays.
pub fn policy_k(ack: AckPolicy, n: usize) -> usize {
    match ack {
        AckPolicy::All => n,
        AckPolicy::Quorum(k) => k as usize,
        AckPolicy::Any => 1,
    }
}

/// Modelled latency of one write to relays whose `relay_us` are given, needing `k` Acks
/// (µs). `None` if fewer than `k` relays.
pub fn model_latency_us(relay_us: &[f64], k: usize, local_write_us: f64, send_us_per_relay: f64) -> Option<f64> {
    if k == 0 || k > relay_us.len() {
        return None;
    }
    let mut v = relay_us.to_vec();
    v.sort_by(f64::total_cmp);
    let required = v[k - 1] + relay_us.len() as f64 * send_us_per_relay;
    Some(required.max(local_write_us))
}

/// The worst latency after losing any one relay, under the policy's k (which does not
/// shrink: `all` counts every relay of the set, so it cannot lose one). `None` if the
/// policy cannot be met with one relay fewer.
fn latency_after_loss(relay_us: &[f64], ack: AckPolicy, input: &PlanInput) -> Option<f64> {
    let n = relay_us.len();
    if matches!(ack, AckPolicy::All) || n < 2 {
        return None;
    }
    let k = policy_k(ack, n);
    (0..n)
        .map(|lost| {
            let rest: Vec<f64> = (0..n).filter(|&j| j != lost).map(|j| relay_us[j]).collect();
            model_latency_us(&rest, k, input.local_write_us, input.send_us_per_relay)
        })
        .try_fold(0.0f64, |worst, l| l.map(|l| worst.max(l)))
}

/// To 0.1 µs: the model is not more precise, and JSON then shows no float noise.
fn round_us(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn evaluate(input: &PlanInput, sites: &[Site], members: &[usize]) -> SetPlan {
    let n = members.len();
    let k = policy_k(input.ack, n);
    let mut why: Vec<String> = members
        .iter()
        .filter_map(|&i| sites[i].excluded.as_ref().map(|e| format!("{}: {e}", sites[i].name)))
        .collect();
    let relay_us: Option<Vec<f64>> = members.iter().map(|&i| sites[i].relay_us).collect();
    let (latency_us, after) = match &relay_us {
        Some(r) => (
            model_latency_us(r, k, input.local_write_us, input.send_us_per_relay).map(round_us),
            latency_after_loss(r, input.ack, input).map(round_us),
        ),
        None => (None, None),
    };
    match latency_us {
        Some(l) if l > input.budget_us => why.push(format!(
            "latency {l:.0} µs over the budget of {:.0} µs",
            input.budget_us
        )),
        Some(_) => {}
        None if relay_us.is_some() => why.push(format!("{n} relays cannot meet a quorum of {k}")),
        None => {}
    }
    let ok = why.is_empty();
    SetPlan {
        relays: members.iter().map(|&i| sites[i].name.clone()).collect(),
        latency_us,
        ok,
        survives_one_relay_loss: ok && after.is_some_and(|l| l <= input.budget_us),
        latency_after_loss_us: after,
        why,
    }
}

/// Plans: every set of `relays_min..=relays_max` candidates (sizes below the quorum's k
/// are skipped: they can never meet it), evaluated and sorted best first.
pub fn plan(input: &PlanInput) -> Result<Plan, PlanError> {
    input.validate()?;
    let sites: Vec<Site> = (0..input.candidates.len()).map(|i| site(input, i)).collect();
    let lo = match input.ack {
        AckPolicy::Quorum(k) => input.relays_min.max(k as usize),
        AckPolicy::All | AckPolicy::Any => input.relays_min,
    };
    let hi = input.relays_max.min(sites.len());
    let mut sets = Vec::new();
    // Candidates ≤ 16, so every subset is a bit mask of a u32.
    for mask in 1u32..(1u32 << sites.len()) {
        let n = mask.count_ones() as usize;
        if n < lo || n > hi {
            continue;
        }
        let members: Vec<usize> = (0..sites.len()).filter(|&i| mask & (1 << i) != 0).collect();
        sets.push(evaluate(input, &sites, &members));
    }
    sets.sort_by(|a, b| {
        b.ok.cmp(&a.ok)
            .then(
                a.latency_us
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&b.latency_us.unwrap_or(f64::INFINITY)),
            )
            .then(a.relays.len().cmp(&b.relays.len()))
            .then(b.survives_one_relay_loss.cmp(&a.survives_one_relay_loss))
            .then_with(|| a.relays.cmp(&b.relays))
    });
    let sets_ok = sets.iter().filter(|s| s.ok).count();
    Ok(Plan { sites, sets, sets_ok })
}

/// The JSON parameters of `relay_plan` (and the input file of `baton plan`), SPDK style.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanParams {
    /// Candidate sites.
    pub candidates: Vec<Candidate>,
    /// `all` (default), `quorum` (with `quorum_k`) or `any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_policy: Option<String>,
    /// k of `quorum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_k: Option<u32>,
    /// The primary's local write latency (µs, default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_write_us: Option<f64>,
    /// Write latency budget (µs).
    pub budget_us: f64,
    /// Disaster radius around the primary (km).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disaster_radius_km: Option<f64>,
    /// Region tags a disaster may take (e.g. the primary's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_regions: Vec<String>,
    /// Smallest set (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relays_min: Option<usize>,
    /// Largest set (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relays_max: Option<usize>,
    /// Primary-side cost per relay (µs, default [`SEND_US_PER_RELAY_DEFAULT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_us_per_relay: Option<f64>,
    /// Route length / straight line for distance-only sites (default 1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_factor: Option<f64>,
    /// Journal commit of sites without `commit_us` (µs, default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_us: Option<f64>,
    /// Probe the candidates that have an `addr` first (default true). Not part of the
    /// model: read by `relay_plan` and `baton plan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<bool>,
    /// Probes per candidate (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    /// Most sets in the answer (default 50; ok sets come first). The count of all is
    /// always given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sets_max: Option<usize>,
}

impl PlanParams {
    /// The validated model input (nothing probed yet).
    pub fn into_input(self) -> Result<PlanInput, PlanError> {
        if let Some(p) = self.probes.filter(|&p| p == 0 || p > crate::probe::PROBES_MAX) {
            return Err(PlanError::BadNumber {
                field: "probes".into(),
                value: f64::from(p),
                range: "between 1 and 10000",
            });
        }
        let ack = ack_from_params(self.ack_policy.as_deref(), self.quorum_k)?;
        let n = self.candidates.len();
        let input = PlanInput {
            candidates: self.candidates,
            probed: vec![Probed::No; n],
            ack,
            local_write_us: self.local_write_us.unwrap_or(0.0),
            budget_us: self.budget_us,
            disaster_radius_km: self.disaster_radius_km,
            excluded_regions: self.excluded_regions,
            relays_min: self.relays_min.unwrap_or(1),
            relays_max: self.relays_max.unwrap_or(3),
            send_us_per_relay: self.send_us_per_relay.unwrap_or(SEND_US_PER_RELAY_DEFAULT),
            route_factor: self.route_factor.unwrap_or(ROUTE_FACTOR_DEFAULT),
            commit_us_default: self.commit_us.unwrap_or(0.0),
        };
        input.validate()?;
        Ok(input)
    }
}

#[cfg(test)]
mod tests;
