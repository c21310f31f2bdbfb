//! Unit tests of the placement model (`super`): the formula, the disaster area, losing one
//! relay, ordering, bounds and every input error.

use super::*;

fn cand(name: &str, rtt_us: f64, km: f64) -> Candidate {
    Candidate {
        name: name.into(),
        rtt_us: Some(rtt_us),
        distance_km: Some(km),
        ..Candidate::default()
    }
}

fn params(candidates: Vec<Candidate>) -> PlanParams {
    PlanParams {
        candidates,
        budget_us: 10_000.0,
        disaster_radius_km: Some(100.0),
        send_us_per_relay: Some(0.0),
        ..PlanParams::default()
    }
}

fn set<'a>(p: &'a Plan, names: &[&str]) -> &'a SetPlan {
    p.sets
        .iter()
        .find(|s| s.relays == names)
        .unwrap_or_else(|| panic!("no set {names:?}"))
}

#[test]
fn model_takes_the_kth_smallest_relay_and_the_local_write() {
    let r = [4000.0, 1000.0, 9000.0];
    assert_eq!(model_latency_us(&r, 3, 50.0, 0.0), Some(9000.0));
    assert_eq!(model_latency_us(&r, 2, 50.0, 0.0), Some(4000.0));
    assert_eq!(model_latency_us(&r, 1, 50.0, 0.0), Some(1000.0));
    assert_eq!(model_latency_us(&r, 1, 50.0, 10.0), Some(1030.0));
    assert_eq!(
        model_latency_us(&r, 1, 5000.0, 10.0),
        Some(5000.0),
        "a slow local write dominates"
    );
    assert_eq!(model_latency_us(&r, 4, 0.0, 0.0), None);
    assert_eq!(model_latency_us(&[], 1, 0.0, 0.0), None);
}

#[test]
fn distance_gives_fibre_round_trip() {
    // 100 km at 4.9 µs/km, ×1.5 route, there and back: 1470 µs.
    assert!((rtt_from_distance_us(100.0, 1.5) - 1470.0).abs() < 1e-9);
    let mut c = cand("far", 0.0, 100.0);
    c.rtt_us = None;
    let mut p = params(vec![c]);
    p.disaster_radius_km = Some(50.0);
    let plan = super::plan(&p.into_input().unwrap()).unwrap();
    assert_eq!(plan.sites[0].rtt_source, Some(RttSource::Distance));
    assert_eq!(plan.sets[0].latency_us.map(f64::round), Some(1470.0));
}

#[test]
fn sets_meet_the_budget_outside_the_radius_best_first() {
    let mut p = params(vec![
        cand("near", 500.0, 20.0),
        cand("a", 2000.0, 300.0),
        cand("b", 4000.0, 600.0),
        cand("c", 12_000.0, 2000.0),
    ]);
    p.commit_us = Some(100.0);
    p.local_write_us = Some(30.0);
    let plan = super::plan(&p.into_input().unwrap()).unwrap();
    assert!(plan.sites[0]
        .excluded
        .as_deref()
        .unwrap()
        .contains("inside the disaster radius"));
    let best = &plan.sets[0];
    assert_eq!(best.relays, ["a"]);
    assert_eq!(best.latency_us, Some(2100.0));
    assert!(best.ok && !best.survives_one_relay_loss);
    assert_eq!(set(&plan, &["a", "b"]).latency_us, Some(4100.0));
    assert!(set(&plan, &["a", "b"]).ok);
    let near = set(&plan, &["near", "a"]);
    assert!(!near.ok && near.why[0].starts_with("near: inside"), "{near:?}");
    let slow = set(&plan, &["a", "c"]);
    assert!(!slow.ok && slow.why[0].contains("over the budget"), "{slow:?}");
    // Ok sets first, sorted by latency then size.
    let ok: Vec<_> = plan.sets.iter().take_while(|s| s.ok).collect();
    assert_eq!(ok.len(), plan.sets_ok);
    assert_eq!(ok.len(), 3, "{ok:?}"); // a, b, a+b
    assert!(ok.windows(2).all(|w| w[0].latency_us <= w[1].latency_us));
    assert!(plan.sets[plan.sets_ok..].iter().all(|s| !s.ok && !s.why.is_empty()));
    // 4 candidates, sets of 1..=3: 4 + 6 + 4.
    assert_eq!(plan.sets.len(), 14);
}

#[test]
fn quorum_survives_one_loss_with_a_spare_relay() {
    let mut p = params(vec![
        cand("a", 2000.0, 300.0),
        cand("b", 4000.0, 600.0),
        cand("c", 8000.0, 900.0),
    ]);
    p.ack_policy = Some("quorum".into());
    p.quorum_k = Some(2);
    let plan = super::plan(&p.into_input().unwrap()).unwrap();
    // Sizes below k are not considered.
    assert!(plan.sets.iter().all(|s| s.relays.len() >= 2));
    let abc = set(&plan, &["a", "b", "c"]);
    assert_eq!(abc.latency_us, Some(4000.0));
    // Losing a (or b) leaves the 2nd of the others: 8000 µs, within 10 ms.
    assert_eq!(abc.latency_after_loss_us, Some(8000.0));
    assert!(abc.ok && abc.survives_one_relay_loss);
    let ab = set(&plan, &["a", "b"]);
    assert!(ab.ok && !ab.survives_one_relay_loss && ab.latency_after_loss_us.is_none());
    // A tighter budget: abc still meets it, but not after a loss.
    let mut p2 = params(vec![
        cand("a", 2000.0, 300.0),
        cand("b", 4000.0, 600.0),
        cand("c", 8000.0, 900.0),
    ]);
    p2.ack_policy = Some("quorum".into());
    p2.quorum_k = Some(2);
    p2.budget_us = 5000.0;
    let plan = super::plan(&p2.into_input().unwrap()).unwrap();
    let abc = set(&plan, &["a", "b", "c"]);
    assert!(abc.ok && !abc.survives_one_relay_loss);
}

#[test]
fn any_survives_and_all_does_not() {
    let mut p = params(vec![cand("a", 2000.0, 300.0), cand("b", 4000.0, 600.0)]);
    p.ack_policy = Some("any".into());
    let plan = super::plan(&p.into_input().unwrap()).unwrap();
    let ab = set(&plan, &["a", "b"]);
    assert_eq!((ab.latency_us, ab.latency_after_loss_us), (Some(2000.0), Some(4000.0)));
    assert!(ab.survives_one_relay_loss);
    let plan = super::plan(
        &params(vec![cand("a", 2000.0, 300.0), cand("b", 4000.0, 600.0)])
            .into_input()
            .unwrap(),
    )
    .unwrap();
    assert!(!set(&plan, &["a", "b"]).survives_one_relay_loss);
}

#[test]
fn regions_unknown_distances_and_failed_probes_exclude_a_site() {
    let mut p = params(vec![
        Candidate {
            region: Some("eu-west".into()),
            ..cand("same-region", 3000.0, 400.0)
        },
        Candidate {
            distance_km: None,
            ..cand("nowhere", 3000.0, 0.0)
        },
        Candidate {
            addr: Some("127.0.0.1:4520".into()),
            ..cand("probed", 3000.0, 400.0)
        },
    ]);
    p.excluded_regions = vec!["eu-west".into()];
    let mut input = p.into_input().unwrap();
    input.probed[2] = Probed::Failed("connection refused".into());
    let plan = plan(&input).unwrap();
    assert!(plan.sites[0].excluded.as_deref().unwrap().contains("excluded region"));
    assert!(plan.sites[1].excluded.as_deref().unwrap().contains("distance unknown"));
    assert!(plan.sites[2].excluded.as_deref().unwrap().contains("probe failed"));
    assert_eq!(plan.sets_ok, 0);
    // Without a radius, a site with no distance is fine.
    input.disaster_radius_km = None;
    input.probed[2] = Probed::Rtt(RttStats {
        probes: 5,
        min_us: 900.0,
        p50_us: 1000.0,
        p99_us: 1500.0,
    });
    let plan = super::plan(&input).unwrap();
    assert_eq!(plan.sites[2].rtt_us, Some(1000.0), "the probe beats the given rtt");
    assert_eq!(plan.sites[2].rtt_source, Some(RttSource::Probed));
    assert_eq!(plan.sets[0].relays, ["probed"]);
    assert!(plan.sites[1].excluded.is_none());
}

#[test]
fn bad_input_is_a_named_error() {
    let e = |f: &dyn Fn(&mut PlanParams)| {
        let mut p = params(vec![cand("a", 1.0, 200.0), cand("b", 1.0, 200.0)]);
        f(&mut p);
        p.into_input().unwrap_err()
    };
    assert_eq!(e(&|p| p.candidates.clear()), PlanError::NoCandidates);
    assert!(matches!(
        e(&|p| p.candidates = (0..17).map(|i| cand(&format!("s{i}"), 1.0, 200.0)).collect()),
        PlanError::TooManyCandidates { given: 17 }
    ));
    assert!(matches!(
        e(&|p| p.candidates[1].name = "a".into()),
        PlanError::DuplicateName { .. }
    ));
    assert!(matches!(
        e(&|p| p.candidates[1].name = String::new()),
        PlanError::BadName { .. }
    ));
    let bad = e(&|p| p.candidates[1].rtt_us = Some(-1.0));
    assert!(bad.to_string().contains("candidates[1].rtt_us: -1"), "{bad}");
    assert!(matches!(
        e(&|p| p.candidates[0].distance_km = Some(f64::NAN)),
        PlanError::BadNumber { .. }
    ));
    assert!(matches!(
        e(&|p| p.candidates[0].addr = Some("here".into())),
        PlanError::BadAddr { index: 0, .. }
    ));
    assert!(matches!(
        e(&|p| {
            p.candidates[0].rtt_us = None;
            p.candidates[0].distance_km = None;
        }),
        PlanError::NoLatency { index: 0, .. }
    ));
    assert!(e(&|p| p.budget_us = 0.0).to_string().contains("budget_us"));
    assert!(matches!(
        e(&|p| p.relays_max = Some(6)),
        PlanError::RelaysRange { min: 1, max: 6 }
    ));
    assert!(matches!(e(&|p| p.relays_min = Some(0)), PlanError::RelaysRange { .. }));
    assert!(matches!(
        e(&|p| {
            p.ack_policy = Some("quorum".into());
            p.quorum_k = Some(4)
        }),
        PlanError::QuorumK { k: 4, max: 3 }
    ));
    assert!(matches!(
        e(&|p| p.ack_policy = Some("most".into())),
        PlanError::AckPolicy { .. }
    ));
    assert!(matches!(e(&|p| p.quorum_k = Some(2)), PlanError::AckPolicy { .. }));
    assert!(matches!(
        e(&|p| p.route_factor = Some(0.5)),
        PlanError::BadNumber { .. }
    ));
}

#[test]
fn the_largest_plan_is_bounded() {
    let mut p = params(
        (0..16)
            .map(|i| cand(&format!("s{i}"), 1000.0 + i as f64, 200.0))
            .collect(),
    );
    p.relays_max = Some(SET_RELAYS_MAX);
    let plan = super::plan(&p.into_input().unwrap()).unwrap();
    assert_eq!(plan.sets.len(), 16 + 120 + 560 + 1820 + 4368);
    assert_eq!(plan.sets[0].relays, ["s0"]);
}

#[test]
fn ack_strings_parse() {
    assert_eq!(parse_ack("all"), Ok(AckPolicy::All));
    assert_eq!(parse_ack("any"), Ok(AckPolicy::Any));
    assert_eq!(parse_ack("quorum:2"), Ok(AckPolicy::Quorum(2)));
    assert!(parse_ack("quorum:x").is_err());
    assert!(parse_ack("most").is_err());
}
