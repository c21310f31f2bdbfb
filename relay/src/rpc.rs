//! JSON-RPC methods of replication: `replication_*` on the primary (replicated volumes),
//! `relay_*` in a relay process. Management thread only; handlers reach the reactors
//! through the volumes' and the relay's control rings and read their status snapshots.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use rdma_transport::Endpoint;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::bdev::{self, Bdev};
use engine::rpc::{ConfigEntry, Registry, Reply, RpcError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::plan::{PlanError, PlanParams};
use crate::relay::{ForwardPolicy, JournalSpec, Relay, RelayError};
use crate::volume::{AckPolicy, OnRelayDown, ReplicatedVolume, VolumeConfig, VolumeError};

/// Longest a management call waits for a link reactor.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(10);

static VOLUMES: Mutex<BTreeMap<String, Arc<ReplicatedVolume>>> = Mutex::new(BTreeMap::new());
static RELAY: Mutex<Option<Arc<Relay>>> = Mutex::new(None);

/// Makes `relay` the process's relay (the `relay_*` methods act on it).
pub fn set_relay(relay: Arc<Relay>) {
    *RELAY.lock().unwrap_or_else(|e| e.into_inner()) = Some(relay);
}

/// The process's relay, if this process runs one.
pub fn relay() -> Option<Arc<Relay>> {
    RELAY.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A replicated volume by name.
pub fn volume(name: &str) -> Option<Arc<ReplicatedVolume>> {
    VOLUMES.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
}

fn vol_err(e: VolumeError) -> RpcError {
    match e {
        VolumeError::InvalidParam { param, why } => RpcError::invalid_params(format!("{param}: {why}")),
        VolumeError::Relay(why) => RpcError::errno_detail(libc::EINVAL, why),
        e @ (VolumeError::Busy(_) | VolumeError::Demoted(_)) => RpcError::errno_detail(libc::EBUSY, e.to_string()),
        e => RpcError::errno_detail(libc::EIO, e.to_string()),
    }
}

fn relay_err(e: RelayError) -> RpcError {
    match e {
        RelayError::InvalidParam { param, why } => RpcError::invalid_params(format!("{param}: {why}")),
        RelayError::Limit(e) => RpcError::invalid_params(e),
        RelayError::Exists(v) => RpcError::errno_detail(libc::EEXIST, format!("volume {v:?} already has a journal")),
        e => RpcError::errno_detail(libc::EIO, e.to_string()),
    }
}

fn plan_err(e: PlanError) -> RpcError {
    RpcError::invalid_params(e.to_string())
}

/// `relay_plan`: validates at once; probes (if asked and any candidate has an address) on
/// a helper thread, so the management thread is never blocked for the probes' round trips.
fn relay_plan(p: PlanParams) -> Reply {
    let probe = p.probe.unwrap_or(true);
    let probes = p.probes.unwrap_or(crate::probe::PROBES_DEFAULT);
    let sets_max = p.sets_max.unwrap_or(50);
    let mut input = match p.into_input() {
        Ok(i) => i,
        Err(e) => return Reply::Ready(Err(plan_err(e))),
    };
    let answer = move |input: &crate::plan::PlanInput| {
        crate::plan::plan(input)
            .map(|plan| plan.to_json(sets_max))
            .map_err(plan_err)
    };
    if !probe || input.candidates.iter().all(|c| c.addr.is_none()) {
        return Reply::Ready(answer(&input));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("relay_plan".into()).spawn(move || {
        crate::probe::probe_candidates(&mut input, probes, crate::probe::PROBE_TIMEOUT);
        let _ = tx.send(answer(&input));
    });
    if let Err(e) = spawned {
        return Reply::Ready(Err(RpcError::errno_detail(libc::EAGAIN, format!("probe thread: {e}"))));
    }
    Reply::Later(Box::new(move || match rx.try_recv() {
        Ok(r) => Some(r),
        Err(std::sync::mpsc::TryRecvError::Empty) => None,
        Err(std::sync::mpsc::TryRecvError::Disconnected) => Some(Err(RpcError::errno_detail(
            libc::EIO,
            "relay_plan: the probe thread died",
        ))),
    }))
}

fn parse_addr(param: &str, s: &str) -> Result<SocketAddr, RpcError> {
    s.parse()
        .map_err(|_| RpcError::invalid_params(format!("{param}: {s:?} is not an IP:PORT address")))
}

/// A relay address: `IP:PORT` (TCP) or `rdma://IP:PORT`; RDMA is refused by a build
/// without the `rdma` feature.
fn parse_relay(param: &str, s: &str) -> Result<Endpoint, RpcError> {
    let ep = Endpoint::parse(s).map_err(|e| RpcError::invalid_params(format!("{param}: {e}")))?;
    rdma_transport::any::check_endpoint(&ep).map_err(|e| RpcError::invalid_params(format!("{param}: {e}")))?;
    Ok(ep)
}

fn no_volume(name: &str) -> RpcError {
    RpcError::errno_detail(libc::ENODEV, format!("no replicated volume {name:?}"))
}

fn no_relay() -> RpcError {
    RpcError::new(
        engine::rpc::error::INVALID_STATE,
        "this process is not a relay (start it with `baton relay`)",
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateVolume {
    name: String,
    base_bdev: String,
    #[serde(default)]
    relays: Vec<String>,
    #[serde(default)]
    ack_policy: Option<String>,
    #[serde(default)]
    quorum_k: Option<u32>,
    #[serde(default)]
    relay_down_timeout_ms: Option<u64>,
    #[serde(default)]
    on_relay_down: Option<String>,
    #[serde(default)]
    generation: Option<u64>,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    retain_bytes_max: Option<u64>,
    #[serde(default)]
    relay_bytes_in_flight_max: Option<u64>,
    #[serde(default)]
    core: Option<u32>,
    #[serde(default)]
    flush_is_restart_point: Option<bool>,
    /// Standby host address (IP:PORT) for direct UDP heartbeats.
    #[serde(default)]
    standby_heartbeat: Option<String>,
    #[serde(default)]
    standby_heartbeat_interval_ms: Option<u64>,
    /// File persisting the dirty-block record (default: kept in memory only).
    #[serde(default)]
    dirty_map: Option<String>,
    /// The base bdev holds data: copy every block through the relays once LSNs start.
    #[serde(default)]
    initial_sync: Option<bool>,
    /// Rate cap of that copy in bytes per second (0 or absent: none).
    #[serde(default)]
    initial_sync_bytes_per_sec: Option<u64>,
    /// Region map files (`engine::regionmap` format: a promoted standby's record of
    /// changes, the old primary's dirty-block record): the initial sync copies only their
    /// union (a failback by delta). Implies `initial_sync`.
    #[serde(default)]
    initial_sync_maps: Option<Vec<String>>,
}

/// The union of the region maps `paths` as block runs over a volume of `num_blocks`, and
/// the smallest region size among them (the chunk of the delta sync).
fn delta_of_maps(paths: &[String], num_blocks: u64) -> Result<(Vec<(u64, u64)>, u64), RpcError> {
    use engine::regionmap;
    if paths.is_empty() {
        return Err(RpcError::invalid_params("initial_sync_maps: empty"));
    }
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut chunk = u64::MAX;
    for p in paths {
        let path = std::path::Path::new(p);
        let m = regionmap::read(path)
            .map_err(|e| RpcError::invalid_params(format!("initial_sync_maps: {e}")))?
            .ok_or_else(|| RpcError::invalid_params(format!("initial_sync_maps: {p}: no such file")))?;
        if m.regions != regionmap::regions(num_blocks, m.shift) {
            return Err(RpcError::invalid_params(format!(
                "initial_sync_maps: {p}: {} regions of 2^{} blocks do not cover a volume of {num_blocks} blocks",
                m.regions, m.shift
            )));
        }
        chunk = chunk.min(1 << m.shift);
        runs.extend(m.runs(num_blocks));
    }
    runs.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for (o, n) in runs {
        match merged.last_mut() {
            Some((mo, mn)) if o <= *mo + *mn => *mn = (*mn).max(o + n - *mo),
            _ => merged.push((o, n)),
        }
    }
    Ok((merged, chunk))
}

fn create_volume(p: CreateVolume) -> Result<String, RpcError> {
    let base = bdev::lookup(&p.base_bdev)
        .ok_or_else(|| RpcError::errno_detail(libc::ENODEV, format!("base_bdev: no bdev {:?}", p.base_bdev)))?;
    if bdev::lookup(&p.name).is_some() {
        return Err(RpcError::errno_detail(
            libc::EEXIST,
            format!("bdev {:?} already exists", p.name),
        ));
    }
    let relays = p
        .relays
        .iter()
        .map(|r| parse_relay("relays", r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cfg = VolumeConfig::new(&p.name, relays);
    cfg.ack_policy = match (p.ack_policy.as_deref().unwrap_or("all"), p.quorum_k) {
        ("all", None) => AckPolicy::All,
        ("any", None) => AckPolicy::Any,
        ("quorum", Some(k)) => AckPolicy::Quorum(k),
        ("quorum", None) => {
            return Err(RpcError::invalid_params(
                "quorum_k: required with ack_policy \"quorum\"",
            ))
        }
        ("all" | "any", Some(_)) => {
            return Err(RpcError::invalid_params(
                "quorum_k: only valid with ack_policy \"quorum\"",
            ))
        }
        (other, _) => {
            return Err(RpcError::invalid_params(format!(
                "ack_policy: {other:?} is not all, quorum or any"
            )))
        }
    };
    cfg.on_relay_down = match p.on_relay_down.as_deref().unwrap_or("block") {
        "block" => OnRelayDown::Block,
        "degraded" => OnRelayDown::Degraded,
        other => {
            return Err(RpcError::invalid_params(format!(
                "on_relay_down: {other:?} is not block or degraded"
            )))
        }
    };
    if let Some(t) = p.relay_down_timeout_ms {
        cfg.relay_down_timeout_ms = t;
    }
    if let Some(g) = p.generation {
        cfg.generation = g;
    }
    if let Some(u) = &p.uuid {
        cfg.volume_id = Some(bdev::uuid_parse(u).map_err(|e| RpcError::invalid_params(format!("uuid: {e}")))?);
    }
    if let Some(b) = p.retain_bytes_max {
        cfg.retain_bytes_max = b;
    }
    if let Some(b) = p.relay_bytes_in_flight_max {
        if b == 0 {
            return Err(RpcError::invalid_params("relay_bytes_in_flight_max: must be > 0"));
        }
        cfg.relay_bytes_in_flight_max = b;
    }
    cfg.core = p.core;
    cfg.flush_is_restart_point = p.flush_is_restart_point.unwrap_or(false);
    if let Some(a) = &p.standby_heartbeat {
        cfg.standby_heartbeat = Some(parse_addr("standby_heartbeat", a)?);
    }
    if let Some(i) = p.standby_heartbeat_interval_ms {
        if i == 0 {
            return Err(RpcError::invalid_params("standby_heartbeat_interval_ms: must be > 0"));
        }
        cfg.standby_heartbeat_interval_ms = i;
    }
    cfg.dirty_map = p.dirty_map.as_ref().map(std::path::PathBuf::from);
    // Not kept by save_config: a restart from the saved config does not copy again (a
    // sync cut short is finished with `replication_sync_volume` and `full`).
    cfg.initial_sync = p.initial_sync.unwrap_or(false) || p.initial_sync_maps.is_some();
    if let Some(maps) = &p.initial_sync_maps {
        cfg.initial_sync_delta = Some(delta_of_maps(maps, base.num_blocks())?);
    }
    cfg.initial_sync_bytes_per_sec = p.initial_sync_bytes_per_sec.unwrap_or(0);
    let v = ReplicatedVolume::create(cfg, base).map_err(vol_err)?;
    if let Err(e) = bdev::register(v.clone()) {
        let _ = v.stop(CTL_TIMEOUT);
        return Err(RpcError::errno_detail(e.errno().abs(), e.to_string()));
    }
    VOLUMES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(p.name.clone(), v);
    Ok(p.name)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoteParams {
    name: String,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncParams {
    name: String,
    #[serde(default)]
    full: bool,
    #[serde(default)]
    bytes_per_sec: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayAddr {
    name: String,
    addr: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MaybeNamed {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartParams {
    name: String,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateJournal {
    volume: String,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    journal_bytes_max: Option<u64>,
    #[serde(default)]
    segment_bytes: Option<u64>,
}

fn volume_config_params(v: &ReplicatedVolume) -> Value {
    let c = v.config();
    let mut p = json!({
        "name": c.name,
        "base_bdev": v.base().name(),
        "relays": v.relays().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "ack_policy": c.ack_policy.name(),
        "relay_down_timeout_ms": c.relay_down_timeout_ms,
        "on_relay_down": match c.on_relay_down { OnRelayDown::Block => "block", OnRelayDown::Degraded => "degraded" },
        "generation": c.generation,
        "uuid": bdev::uuid_to_string(&v.volume_id()),
        "retain_bytes_max": c.retain_bytes_max,
        "relay_bytes_in_flight_max": c.relay_bytes_in_flight_max,
    });
    if let AckPolicy::Quorum(k) = c.ack_policy {
        p["quorum_k"] = json!(k);
    }
    if c.flush_is_restart_point {
        p["flush_is_restart_point"] = json!(true);
    }
    if let Some(a) = c.standby_heartbeat {
        p["standby_heartbeat"] = json!(a.to_string());
        p["standby_heartbeat_interval_ms"] = json!(c.standby_heartbeat_interval_ms);
    }
    if let Some(d) = &c.dirty_map {
        p["dirty_map"] = json!(d.display().to_string());
    }
    p
}

/// Registers the `replication_*` and `relay_*` methods and their config providers.
pub fn register_rpcs(reg: &mut Registry) {
    crate::tls_rpc::register(reg);
    register_replication_rpcs(reg);
    register_relay_rpcs(reg);
}

/// The primary side: the `replication_*` methods and the replicated volumes' config.
// A flat list, one registration per method: long, but with no step to name.
fn register_replication_rpcs(reg: &mut Registry) {
    reg.register(
        "replication_create_volume",
        "Create a replicated volume over base_bdev sending every write to relays [IP:PORT...]; \
         ack_policy all|quorum|any (quorum_k), relay_down_timeout_ms, on_relay_down block|degraded, \
         flush_is_restart_point (an NVMe Flush also declares a restart point), \
         standby_heartbeat IP:PORT (direct UDP heartbeats, standby_heartbeat_interval_ms), \
         dirty_map FILE (persisted dirty-block record)",
        create_volume,
    );
    reg.register(
        "replication_delete_volume",
        "Delete a replicated volume (in-flight writes fail; the base bdev stays)",
        |p: Named| {
            let v = VOLUMES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&p.name)
                .ok_or_else(|| no_volume(&p.name))?;
            let _ = bdev::unregister(&p.name);
            v.stop(CTL_TIMEOUT).map_err(vol_err)?;
            Ok(true)
        },
    );
    reg.register(
        "replication_add_relay",
        "Add a relay (addr IP:PORT) to a replicated volume",
        |p: RelayAddr| {
            let v = volume(&p.name).ok_or_else(|| no_volume(&p.name))?;
            v.add_relay(parse_relay("addr", &p.addr)?).map_err(vol_err)?;
            Ok(true)
        },
    );
    reg.register(
        "replication_sync_volume",
        "Start a block sync of a replicated volume: the blocks in the dirty-block record (or every block with full: true) sent again through the relays, capped at bytes_per_sec (0: no cap)",
        |p: SyncParams| {
            let v = volume(&p.name).ok_or_else(|| no_volume(&p.name))?;
            v.start_sync(p.full, p.bytes_per_sec, Duration::from_secs(5))
                .map_err(vol_err)?;
            Ok(true)
        },
    );
    reg.register(
        "replication_remove_relay",
        "Remove a relay (addr IP:PORT) from a replicated volume",
        |p: RelayAddr| {
            let v = volume(&p.name).ok_or_else(|| no_volume(&p.name))?;
            v.remove_relay(parse_relay("addr", &p.addr)?).map_err(vol_err)?;
            Ok(true)
        },
    );
    reg.register(
        "replication_get_volumes",
        "Replicated volumes with per-relay state (connected, down, acked LSN, bytes in flight, lag)",
        |p: MaybeNamed| {
            let vols = VOLUMES.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(n) = &p.name {
                if !vols.contains_key(n) {
                    return Err(no_volume(n));
                }
            }
            Ok(vols
                .values()
                .filter(|v| p.name.as_deref().is_none_or(|n| n == v.name()))
                .map(|v| v.status())
                .collect::<Vec<_>>())
        },
    );
    reg.register(
        "replication_declare_restart_point",
        "Declare a restart point (optional tag) on a replicated volume; returns epoch and LSN \
         once the relays hold it",
        |p: RestartParams| {
            let v = volume(&p.name).ok_or_else(|| no_volume(&p.name))?;
            let tag = p.tag.unwrap_or_default();
            v.declare_restart_point_wait(tag.as_bytes(), CTL_TIMEOUT)
                .map_err(vol_err)
        },
    );
    reg.register(
        "replication_demote",
        "Demote a replicated volume for a planned switchover: refuse new writes, order every \
         numbered write before a final restart point (optional tag), return it once the \
         relays hold it (timeout_ms, default 10000)",
        |p: DemoteParams| {
            let v = volume(&p.name).ok_or_else(|| no_volume(&p.name))?;
            let tag = p.tag.unwrap_or_else(|| "switchover".into());
            let timeout = Duration::from_millis(p.timeout_ms.unwrap_or(10_000));
            let rp = v.demote(tag.as_bytes(), timeout).map_err(vol_err)?;
            Ok(
                serde_json::json!({"epoch": rp.epoch, "lsn": rp.lsn, "last_lsn": rp.last_lsn,
                                  "reused": v.fence_reused()}),
            )
        },
    );
    reg.register(
        "replication_resume",
        "Lift a demotion (an aborted switchover): writes are accepted again",
        |p: Named| {
            let v = volume(&p.name).ok_or_else(|| no_volume(&p.name))?;
            v.resume(CTL_TIMEOUT).map_err(vol_err)?;
            Ok(true)
        },
    );
    reg.register_config_provider("replication", &["bdev"], || {
        VOLUMES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|v| ConfigEntry {
                method: "replication_create_volume".into(),
                params: Some(volume_config_params(v)),
            })
            .collect()
    });
}

/// The relay role: the `relay_*` methods (and the planner) and the relay's config.
fn register_relay_rpcs(reg: &mut Registry) {
    reg.register_deferred(
        "relay_plan",
        "Plan relay placement (R6): every set of candidates (name, addr, distance_km, region, rtt_us, \
         commit_us) meeting budget_us under ack_policy all|quorum|any (quorum_k), with local_write_us, \
         outside disaster_radius_km and excluded_regions, relays_min..relays_max; probes candidates with \
         an addr (probe, probes) first; best first, sets_max shown (docs/planning.md)",
        |_, p: PlanParams| relay_plan(p),
    );
    reg.register(
        "relay_create_journal",
        "Set the journal of a volume before its primary connects: dir, journal_bytes_max, segment_bytes",
        |p: CreateJournal| {
            let r = relay().ok_or_else(no_relay)?;
            r.create_journal(JournalSpec {
                volume: p.volume,
                dir: p.dir.map(Into::into),
                journal_bytes_max: p.journal_bytes_max,
                segment_bytes: p.segment_bytes,
            })
            .map_err(relay_err)?;
            Ok(true)
        },
    );
    reg.register(
        "relay_get_status",
        "Relay state: per volume journal use, durable/acked LSN, forward lag (LSN, bytes, seconds), standby link",
        |_: ()| {
            let r = relay().ok_or_else(no_relay)?;
            Ok(r.status())
        },
    );
    reg.register(
        "relay_set_forward_policy",
        "When the relay forwards: mode immediate | interval (interval_ms) | windows ([\"HH:MM-HH:MM\"], UTC) | \
         bandwidth (bytes_per_sec)",
        |p: ForwardPolicy| {
            let r = relay().ok_or_else(no_relay)?;
            r.set_forward_policy(p).map_err(relay_err)?;
            Ok(true)
        },
    );
    reg.register_config_provider("relay", &[], || {
        let Some(r) = relay() else { return Vec::new() };
        let mut v: Vec<ConfigEntry> = r
            .journal_specs()
            .into_iter()
            .map(|s| {
                let mut p = json!({ "volume": s.volume });
                if let Some(d) = s.dir {
                    p["dir"] = json!(d.display().to_string());
                }
                if let Some(b) = s.journal_bytes_max {
                    p["journal_bytes_max"] = json!(b);
                }
                if let Some(b) = s.segment_bytes {
                    p["segment_bytes"] = json!(b);
                }
                ConfigEntry {
                    method: "relay_create_journal".into(),
                    params: Some(p),
                }
            })
            .collect();
        v.push(ConfigEntry {
            method: "relay_set_forward_policy".into(),
            params: serde_json::to_value(r.forward_policy()).ok(),
        });
        v
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(reg: &Registry, method: &str, params: Value) -> RpcError {
        match reg.call_blocking(method, Some(params), 10, Duration::from_millis(1)) {
            Ok(v) => panic!("{method} accepted: {v}"),
            Err(e) => e,
        }
    }

    #[test]
    fn params_are_typed_and_errors_name_the_parameter() {
        let mut reg = Registry::new();
        register_rpcs(&mut reg);
        let base = engine::bdev::malloc::create("rpc_test_base", 64, 4096, None).unwrap();
        bdev::register(base).unwrap();
        let e = err(
            &reg,
            "replication_create_volume",
            json!({"name": "v", "base_bdev": "rpc_test_base", "bogus": 1}),
        );
        assert!(e.message.contains("bogus"), "{e:?}");
        let e = err(
            &reg,
            "replication_create_volume",
            json!({"name": "v", "base_bdev": "nope"}),
        );
        assert!(e.message.contains("base_bdev") && e.code == -libc::ENODEV, "{e:?}");
        let e = err(
            &reg,
            "replication_create_volume",
            json!({"name": "v", "base_bdev": "rpc_test_base", "relays": ["127.0.0.1:1"], "ack_policy": "most"}),
        );
        assert!(e.message.contains("ack_policy") && e.message.contains("most"), "{e:?}");
        let e = err(
            &reg,
            "replication_create_volume",
            json!({"name": "v", "base_bdev": "rpc_test_base", "relays": ["127.0.0.1:1"], "ack_policy": "quorum", "quorum_k": 3}),
        );
        assert!(e.message.contains("quorum_k"), "{e:?}");
        let e = err(
            &reg,
            "replication_create_volume",
            json!({"name": "v", "base_bdev": "rpc_test_base", "relays": ["here"]}),
        );
        assert!(e.message.contains("relays") && e.message.contains("here"), "{e:?}");
        if !rdma_transport::any::RDMA_BUILT {
            let e = err(
                &reg,
                "replication_create_volume",
                json!({"name": "v", "base_bdev": "rpc_test_base", "relays": ["rdma://192.0.2.1:4520"]}),
            );
            assert!(e.message.contains("lacks RDMA support"), "{e:?}");
        }
        let e = err(
            &reg,
            "replication_create_volume",
            json!({"name": "v", "base_bdev": "rpc_test_base", "on_relay_down": "panic"}),
        );
        assert!(e.message.contains("on_relay_down"), "{e:?}");
        let e = err(
            &reg,
            "replication_create_volume",
            json!({"name": "v", "base_bdev": "rpc_test_base", "standby_heartbeat": "nowhere"}),
        );
        assert!(
            e.message.contains("standby_heartbeat") && e.message.contains("nowhere"),
            "{e:?}"
        );
        let e = err(
            &reg,
            "replication_create_volume",
            json!({"name": "v", "base_bdev": "rpc_test_base", "standby_heartbeat": "127.0.0.1:9", "standby_heartbeat_interval_ms": 0}),
        );
        assert!(e.message.contains("standby_heartbeat_interval_ms"), "{e:?}");
        let e = err(&reg, "replication_get_volumes", json!({"name": "ghost"}));
        assert_eq!(e.code, -libc::ENODEV);
        // Relay methods outside a relay process say so.
        let e = err(&reg, "relay_get_status", json!({}));
        assert!(e.message.contains("not a relay"), "{e:?}");
        let e = err(&reg, "relay_set_forward_policy", json!({"mode": "sometimes"}));
        assert!(e.message.contains("sometimes") || e.message.contains("mode"), "{e:?}");
        let _ = bdev::unregister("rpc_test_base");
    }

    #[test]
    fn relay_plan_answers_and_names_bad_parameters() {
        let mut reg = Registry::new();
        register_rpcs(&mut reg);
        let ok = reg
            .call_blocking(
                "relay_plan",
                Some(json!({
                    "candidates": [
                        {"name": "near", "distance_km": 10, "rtt_us": 200},
                        {"name": "far", "distance_km": 400, "rtt_us": 4000, "commit_us": 100},
                        {"name": "farther", "distance_km": 900}
                    ],
                    "ack_policy": "quorum", "quorum_k": 1, "budget_us": 10000,
                    "disaster_radius_km": 50, "relays_max": 2, "sets_max": 2
                })),
                10,
                Duration::from_millis(1),
            )
            .unwrap();
        assert_eq!(ok["sets_total"], json!(6), "{ok}");
        assert_eq!(ok["sets_ok"], json!(2), "{ok}");
        assert_eq!(ok["sets"].as_array().unwrap().len(), 2);
        assert_eq!(ok["sets"][0]["relays"], json!(["far"]));
        assert_eq!(ok["sets"][0]["latency_us"], json!(4105.0));
        assert_eq!(ok["sets"][1]["relays"], json!(["far", "farther"]));
        assert_eq!(ok["sites"][2]["rtt_source"], json!("distance"));
        let e = err(
            &reg,
            "relay_plan",
            json!({"candidates": [{"name": "a", "rtt_us": -3}], "budget_us": 1000}),
        );
        assert!(e.message.contains("candidates[0].rtt_us") && e.code == -32602, "{e:?}");
        let e = err(
            &reg,
            "relay_plan",
            json!({"candidates": [{"name": "a", "rtt_us": 3, "rack": 1}], "budget_us": 1000}),
        );
        assert!(e.message.contains("rack"), "{e:?}");
        let e = err(
            &reg,
            "relay_plan",
            json!({"candidates": [{"name": "a", "addr": "nowhere"}], "budget_us": 1000}),
        );
        assert!(e.message.contains("nowhere"), "{e:?}");
    }
}
