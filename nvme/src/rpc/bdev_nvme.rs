//! The host bdev's SPDK-named methods: `bdev_nvme_attach_controller` (one bdev per
//! namespace, `<name>n<nsid>`; a second call with the same name and `multipath: "failover"`
//! adds a path), `bdev_nvme_detach_controller` (a path, or the controller and its bdevs) and
//! `bdev_nvme_get_controllers` (`docs/nvme-tcp.md`, "The host bdev").

use super::{invalid, RpcFailure};
use crate::host::bdev::ReconnectOpts;
use crate::host::{HostBdevOpts, HostOpts, NvmeCtrlr, TransportId, Trtype};
use engine::bdev::Bdev;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

/// An attached controller and the bdevs made of its namespaces.
struct Attached {
    ctrlr: Ctrlr,
    bdevs: Vec<String>,
}

/// A controller reached over NVMe/TCP, or a local PCIe one through the VFIO driver.
enum Ctrlr {
    Tcp(Arc<NvmeCtrlr>),
    #[cfg(feature = "vfio")]
    Pcie(Arc<crate::pcie::PcieCtrlr>),
}

static ATTACHED: Mutex<BTreeMap<String, Attached>> = Mutex::new(BTreeMap::new());

fn attached() -> MutexGuard<'static, BTreeMap<String, Attached>> {
    ATTACHED.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AttachController {
    pub name: String,
    pub trtype: String,
    pub traddr: String,
    pub adrfam: Option<String>,
    pub trsvcid: Option<String>,
    pub subnqn: Option<String>,
    pub hostnqn: Option<String>,
    pub hdgst: Option<bool>,
    pub ddgst: Option<bool>,
    /// `disable` (default), `failover`; `multipath` (active-active) is refused.
    pub multipath: Option<String>,
    pub ctrlr_loss_timeout_sec: Option<i32>,
    pub reconnect_delay_sec: Option<u32>,
    pub fast_io_fail_timeout_sec: Option<u32>,
    pub num_io_queues: Option<u32>,
    pub fabrics_connect_timeout_us: Option<u64>,
    /// Sent by SPDK's rpc.py (false by default) or rarely used: refused when asked for.
    pub prchk_reftag: Option<bool>,
    pub prchk_guard: Option<bool>,
    pub allow_unrecognized_csi: Option<bool>,
    pub disable_sq_flow_control: Option<bool>,
    pub hostaddr: Option<String>,
    pub hostsvcid: Option<String>,
    pub priority: Option<i64>,
    pub psk: Option<String>,
    pub dhchap_key: Option<String>,
    pub dhchap_ctrlr_key: Option<String>,
    pub max_bdevs: Option<u32>,
    pub multipath_opts: Option<Value>,
}

fn refuse_unsupported(p: &AttachController) -> Result<(), RpcFailure> {
    let on = |b: Option<bool>| b == Some(true);
    if on(p.prchk_reftag) || on(p.prchk_guard) {
        return Err(invalid(
            "prchk_reftag/prchk_guard: protection information is not supported",
        ));
    }
    if on(p.allow_unrecognized_csi) || on(p.disable_sq_flow_control) {
        return Err(invalid("allow_unrecognized_csi/disable_sq_flow_control: not supported"));
    }
    if p.hostaddr.is_some() || p.hostsvcid.is_some() {
        return Err(invalid("hostaddr/hostsvcid: binding the host side is not supported"));
    }
    if p.psk.is_some() || p.dhchap_key.is_some() || p.dhchap_ctrlr_key.is_some() {
        return Err(invalid(
            "psk/dhchap keys: TLS and in-band authentication are not supported",
        ));
    }
    if p.priority.is_some_and(|x| x != 0) || p.multipath_opts.is_some() {
        return Err(invalid(
            "priority/multipath_opts: paths are used in the order they were added",
        ));
    }
    Ok(())
}

/// The transport of a TCP or RDMA attach; RDMA only in a build with the `rdma` feature.
fn trtype_of(p: &AttachController) -> Result<Trtype, RpcFailure> {
    match Trtype::parse(&p.trtype) {
        Some(Trtype::Rdma) if !cfg!(feature = "rdma") => Err(invalid(crate::host::trid::RDMA_FEATURE_MISSING)),
        Some(t) => Ok(t),
        None => Err(invalid(format!(
            "trtype {:?}: TCP, RDMA or PCIe controllers can be attached",
            p.trtype
        ))),
    }
}

fn addr_of(p: &AttachController) -> Result<SocketAddr, RpcFailure> {
    trtype_of(p)?;
    let ip: IpAddr = p
        .traddr
        .parse()
        .map_err(|_| invalid(format!("traddr {:?} is not an IP address", p.traddr)))?;
    let port = match &p.trsvcid {
        None => 4420,
        Some(s) => s
            .parse()
            .map_err(|_| invalid(format!("trsvcid {s:?} is not a port number")))?,
    };
    Ok(SocketAddr::new(ip, port))
}

fn opts_of(p: &AttachController) -> HostBdevOpts {
    let mut host = HostOpts {
        trtype: trtype_of(p).unwrap_or_default(),
        hdgst: p.hdgst.unwrap_or(false),
        ddgst: p.ddgst.unwrap_or(false),
        ..HostOpts::default()
    };
    if let Some(us) = p.fabrics_connect_timeout_us.filter(|&u| u > 0) {
        host.timeout = std::time::Duration::from_micros(us);
    }
    if let Some(h) = &p.hostnqn {
        host.hostnqn = h.clone();
    }
    HostBdevOpts {
        host,
        reconnect: ReconnectOpts {
            ctrlr_loss_timeout_sec: p.ctrlr_loss_timeout_sec.unwrap_or(0),
            reconnect_delay_sec: p.reconnect_delay_sec.unwrap_or(0),
            fast_io_fail_timeout_sec: p.fast_io_fail_timeout_sec.unwrap_or(0),
        },
        ..HostBdevOpts::default()
    }
}

/// What `save_config` replays: the call as given, without defaults' noise.
fn saved_call(p: &AttachController, subnqn: &str) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
        o.insert("subnqn".into(), json!(subnqn));
    }
    v
}

/// SPDK answers an unknown controller with -ENODEV.
fn no_such(name: &str) -> RpcFailure {
    RpcFailure {
        code: -19,
        message: format!("no NVMe controller named {name:?}"),
    }
}

/// Returns the names of the controller's bdevs.
pub fn bdev_nvme_attach_controller(p: AttachController) -> Result<Vec<String>, RpcFailure> {
    refuse_unsupported(&p)?;
    if p.trtype.eq_ignore_ascii_case("pcie") {
        return attach_pcie(&p);
    }
    let addr = addr_of(&p)?;
    let mode = p.multipath.as_deref().unwrap_or("disable");
    if !matches!(mode, "disable" | "failover") {
        return Err(invalid(format!(
            "multipath {mode:?}: only \"disable\" and \"failover\" (active-passive paths)"
        )));
    }
    if let Some(a) = attached().get(&p.name) {
        let Ctrlr::Tcp(c) = &a.ctrlr else {
            return Err(invalid(format!(
                "controller {} is a PCIe controller: one path only",
                p.name
            )));
        };
        return add_path(c, &a.bdevs, &p, addr, mode);
    }
    if engine::bdev::lookup(&format!("{}n1", p.name)).is_some() {
        return Err(invalid(format!("bdev {}n1 already exists", p.name)));
    }
    let trid = TransportId {
        trtype: trtype_of(&p)?,
        adrfam: None,
        traddr: addr.ip().to_string(),
        trsvcid: addr.port(),
        subnqn: p.subnqn.clone(),
        hostnqn: p.hostnqn.clone(),
        nsid: None,
    };
    let ctrlr = NvmeCtrlr::attach(&p.name, &trid, &opts_of(&p)).map_err(|e| invalid(format!("{}: {e}", p.name)))?;
    let bdevs = ctrlr
        .namespace_bdevs()
        .map_err(|e| invalid(format!("{}: {e}", p.name)))?;
    let mut names: Vec<String> = Vec::new();
    for b in &bdevs {
        if let Err(e) = engine::bdev::register(b.clone()) {
            for n in &names {
                let _ = engine::bdev::unregister(n);
            }
            return Err(invalid(format!("{}: {e}", p.name)));
        }
        names.push(b.name().to_string());
    }
    if let Some(first) = bdevs.first() {
        first.save_controller_config();
    }
    ctrlr.set_config(vec![saved_call(&p, ctrlr.subnqn())]);
    log::info!(
        "bdev_nvme: attached {} ({} at {addr}): {}",
        p.name,
        ctrlr.subnqn(),
        names.join(", ")
    );
    attached().insert(
        p.name.clone(),
        Attached {
            ctrlr: Ctrlr::Tcp(ctrlr),
            bdevs: names.clone(),
        },
    );
    Ok(names)
}

/// `trtype: PCIe`, `traddr: 0000:00:04.0`: the controller through baton's VFIO driver.
#[cfg(feature = "vfio")]
fn attach_pcie(p: &AttachController) -> Result<Vec<String>, RpcFailure> {
    use crate::pcie::{PcieBdev, PcieCtrlr};
    if attached().contains_key(&p.name) {
        return Err(invalid(format!("controller {} already exists", p.name)));
    }
    if p.multipath.as_deref().is_some_and(|m| m != "disable") {
        return Err(invalid("multipath: a PCIe controller has one path"));
    }
    let c = PcieCtrlr::attach(&p.traddr).map_err(|e| invalid(format!("{}: {e}", p.name)))?;
    let mut names: Vec<String> = Vec::new();
    for (i, ns) in c.namespaces.iter().enumerate() {
        let name = format!("{}n{}", p.name, ns.nsid);
        let b = PcieBdev::new(&c, &name, ns.nsid).map_err(|e| invalid(e.to_string()))?;
        if i == 0 {
            b.save_controller_config();
        }
        if let Err(e) = engine::bdev::register(b) {
            for n in &names {
                let _ = engine::bdev::unregister(n);
            }
            return Err(invalid(format!("{}: {e}", p.name)));
        }
        names.push(name);
    }
    log::info!(
        "bdev_nvme: attached {} (PCIe {}): {}",
        p.name,
        p.traddr,
        names.join(", ")
    );
    attached().insert(
        p.name.clone(),
        Attached {
            ctrlr: Ctrlr::Pcie(c),
            bdevs: names.clone(),
        },
    );
    Ok(names)
}

#[cfg(not(feature = "vfio"))]
fn attach_pcie(_: &AttachController) -> Result<Vec<String>, RpcFailure> {
    Err(invalid(
        "trtype PCIe: this build has no user-space NVMe driver (feature vfio)",
    ))
}

/// A second attach of the same name: another path to the same subsystem.
fn add_path(
    c: &Arc<NvmeCtrlr>,
    bdevs: &[String],
    p: &AttachController,
    addr: SocketAddr,
    mode: &str,
) -> Result<Vec<String>, RpcFailure> {
    if mode != "failover" {
        return Err(invalid(format!(
            "controller {} already exists: give multipath \"failover\" to add a path",
            p.name
        )));
    }
    if p.subnqn.as_deref().is_some_and(|n| n != c.subnqn()) {
        return Err(invalid(format!(
            "controller {} is attached to {}, not {}",
            p.name,
            c.subnqn(),
            p.subnqn.as_deref().unwrap_or_default()
        )));
    }
    if trtype_of(p)? != c.trtype() {
        return Err(invalid(format!(
            "controller {} runs over {}: every path uses the same transport",
            p.name,
            c.trtype().as_str()
        )));
    }
    if p.hostnqn.as_deref().is_some_and(|h| h != c.hostnqn()) {
        return Err(invalid(format!("controller {} uses host NQN {}", p.name, c.hostnqn())));
    }
    c.add_path(addr).map_err(|e| invalid(e.to_string()))?;
    let mut calls = c.config();
    calls.push(saved_call(p, c.subnqn()));
    c.set_config(calls);
    log::info!("bdev_nvme: {}: path {addr} added ({} paths)", p.name, c.paths().len());
    Ok(bdevs.to_vec())
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetachController {
    pub name: String,
    pub trtype: Option<String>,
    pub traddr: Option<String>,
    pub adrfam: Option<String>,
    pub trsvcid: Option<String>,
    pub subnqn: Option<String>,
    pub hostaddr: Option<String>,
    pub hostsvcid: Option<String>,
}

/// With an address: removes that path (unless it is the only one). Without: the controller
/// and its bdevs go (channels already open keep working until closed).
pub fn bdev_nvme_detach_controller(p: DetachController) -> Result<bool, RpcFailure> {
    let mut all = attached();
    let a = all.get(&p.name).ok_or_else(|| no_such(&p.name))?;
    if let (Some(t), Ctrlr::Tcp(c)) = (&p.traddr, &a.ctrlr) {
        let q = AttachController {
            trtype: p.trtype.clone().unwrap_or_else(|| "TCP".into()),
            traddr: t.clone(),
            trsvcid: p.trsvcid.clone(),
            ..Default::default()
        };
        let addr = addr_of(&q)?;
        if c.paths().len() > 1 {
            c.remove_path(addr).map_err(|e| invalid(e.to_string()))?;
            let keep: Vec<Value> = c
                .config()
                .into_iter()
                .filter(|c| c["traddr"] != json!(t) || c["trsvcid"] != json!(addr.port().to_string()))
                .collect();
            c.set_config(keep);
            return Ok(true);
        }
        if c.paths() != vec![addr] {
            return Err(invalid(format!("controller {} has no path to {addr}", p.name)));
        }
    }
    let a = all.remove(&p.name).expect("looked up above");
    drop(all);
    for n in &a.bdevs {
        let _ = engine::bdev::unregister(n);
    }
    log::info!("bdev_nvme: detached {}", p.name);
    Ok(true)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetControllers {
    pub name: Option<String>,
}

fn trid_json(a: SocketAddr, subnqn: &str, t: Trtype) -> Value {
    json!({
        "trtype": t.as_str(),
        "adrfam": if a.is_ipv4() { "IPv4" } else { "IPv6" },
        "traddr": a.ip().to_string(),
        "trsvcid": a.port().to_string(),
        "subnqn": subnqn,
    })
}

fn tcp_json(n: &str, c: &NvmeCtrlr, bdevs: &[String]) -> Value {
    let active = c.addr();
    let alternates: Vec<Value> = c
        .paths()
        .into_iter()
        .filter(|x| *x != active)
        .map(|x| trid_json(x, c.subnqn(), c.trtype()))
        .collect();
    json!({
        "name": n,
        "ctrlrs": [{
            "state": if c.connected() { "enabled" } else { "resetting" },
            "trid": trid_json(active, c.subnqn(), c.trtype()),
            "cntlid": c.cntlid(),
            "host": { "nqn": c.hostnqn() },
            "alternate_trids": alternates,
            "reconnects": c.reconnects(),
            "ana_failovers": c.ana_failovers(),
        }],
        "bdevs": bdevs,
    })
}

/// SPDK's shape: `[{name, ctrlrs: [{state, trid, cntlid, host, alternate_trids}]}]`, with
/// baton's counters (`reconnects`, `ana_failovers`) and the bdevs.
pub fn bdev_nvme_get_controllers(p: Option<GetControllers>) -> Result<Vec<Value>, RpcFailure> {
    let p = p.unwrap_or_default();
    let all = attached();
    if let Some(n) = &p.name {
        if !all.contains_key(n) {
            return Err(no_such(n));
        }
    }
    Ok(all
        .iter()
        .filter(|(n, _)| p.name.as_ref().is_none_or(|w| w == *n))
        .map(|(n, a)| match &a.ctrlr {
            Ctrlr::Tcp(c) => tcp_json(n, c, &a.bdevs),
            #[cfg(feature = "vfio")]
            Ctrlr::Pcie(c) => json!({
                "name": n,
                "ctrlrs": [{
                    "state": "enabled",
                    "trid": { "trtype": "PCIe", "traddr": c.bdf },
                    "cntlid": c.id.cntlid,
                    "max_transfer_bytes": c.max_xfer,
                    "io_queues": c.queues(),
                    "resets": c.resets.load(std::sync::atomic::Ordering::Relaxed),
                    "aborts": c.aborts.load(std::sync::atomic::Ordering::Relaxed),
                }],
                "bdevs": a.bdevs,
            }),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rdma_attach() -> AttachController {
        AttachController {
            name: "rdma0".into(),
            trtype: "rdma".into(),
            traddr: "192.0.2.1".into(),
            trsvcid: Some("4420".into()),
            subnqn: Some("nqn.2016-06.io.baton:e2e".into()),
            ..Default::default()
        }
    }

    #[test]
    fn trtype_rdma_is_recognised() {
        assert_eq!(
            trtype_of(&rdma_attach()).ok(),
            cfg!(feature = "rdma").then_some(Trtype::Rdma)
        );
        let odd = AttachController {
            trtype: "FC".into(),
            ..rdma_attach()
        };
        assert!(trtype_of(&odd).unwrap_err().message.contains("TCP, RDMA or PCIe"));
    }

    /// Without the `rdma` feature an RDMA attach is refused by name, before connecting.
    #[cfg(not(feature = "rdma"))]
    #[test]
    fn rdma_attach_without_the_feature_names_it() {
        let e = bdev_nvme_attach_controller(rdma_attach()).unwrap_err();
        assert!(e.message.contains("`rdma` cargo feature"), "{}", e.message);
    }
}
