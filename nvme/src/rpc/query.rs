//! The SPDK methods operators reach for to see who is connected and where, and discovery
//! referrals: `nvmf_subsystem_get_controllers`, `nvmf_subsystem_get_qpairs`,
//! `nvmf_subsystem_get_listeners`, `nvmf_discovery_add_referral`,
//! `nvmf_discovery_remove_referral`, `nvmf_discovery_get_referrals`. Names, parameters and
//! result shapes follow SPDK's `rpc.py`; see docs/nvme-tcp.md.

use super::{check_tgt, format_uuid, invalid, ListenAddress, RpcFailure};
use crate::nvmf::{SubsystemKind, Target};
use serde::Deserialize;
use serde_json::{json, Value};

/// Parameters of the three per-subsystem queries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemQuery {
    pub nqn: String,
    pub tgt_name: Option<String>,
}

fn live_controllers(
    t: &Target,
    p: &SubsystemQuery,
) -> Result<Vec<std::sync::Arc<crate::nvmf::ctrlr::Controller>>, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    let s = t.subsystem(&p.nqn)?;
    let mut v: Vec<_> = s
        .state()
        .controllers
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .filter(|c| !c.failed())
        .collect();
    v.sort_by_key(|c| c.cntlid);
    Ok(v)
}

/// `nvmf_subsystem_get_controllers`: `[{cntlid, cntrltype, hostnqn, hostid, num_io_qpairs}]`.
pub fn nvmf_subsystem_get_controllers(t: &Target, p: SubsystemQuery) -> Result<Vec<Value>, RpcFailure> {
    Ok(live_controllers(t, &p)?
        .iter()
        .map(|c| {
            let kind = if c.subsys.kind == SubsystemKind::Discovery {
                "discovery"
            } else {
                "io"
            };
            json!({
                "cntlid": c.cntlid,
                "cntrltype": kind,
                "hostnqn": c.hostnqn,
                "hostid": format_uuid(&c.hostid),
                "num_io_qpairs": c.io_qids().count_ones(),
            })
        })
        .collect())
}

/// `nvmf_subsystem_get_qpairs`: one object per connected queue (admin and I/O) with
/// `cntlid, qid, state, thread, hostnqn, listen_address, peer_address`.
pub fn nvmf_subsystem_get_qpairs(t: &Target, p: SubsystemQuery) -> Result<Vec<Value>, RpcFailure> {
    let mut out = Vec::new();
    for c in live_controllers(t, &p)? {
        for q in c.queues() {
            out.push(json!({
                "cntlid": c.cntlid,
                "qid": q.qid,
                "state": "enabled",
                "thread": format!("nvmf_tgt_poll_group_{:03}", q.core),
                "hostnqn": c.hostnqn,
                "listen_address": ListenAddress::on(t, &q.listen),
                "peer_address": ListenAddress::of(&q.peer),
            }));
        }
    }
    Ok(out)
}

/// `nvmf_subsystem_get_listeners`: `[{address: {trtype, adrfam, traddr, trsvcid},
/// ana_states: [{ana_group, ana_state}]}]` (ANA states of the groups that have namespaces).
pub fn nvmf_subsystem_get_listeners(t: &Target, p: SubsystemQuery) -> Result<Vec<Value>, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    let s = t.subsystem(&p.nqn)?;
    if s.kind == SubsystemKind::Discovery {
        return Ok(t
            .listen_addrs()
            .iter()
            .map(|a| json!({ "address": ListenAddress::on(t, a) }))
            .collect());
    }
    let st = s.state();
    let groups: std::collections::BTreeSet<u32> = st.namespaces.values().map(|n| n.anagrpid).collect();
    Ok(st
        .ana
        .iter()
        .map(|l| {
            let states: Vec<Value> = groups
                .iter()
                .map(|&g| json!({ "ana_group": g, "ana_state": l.state(g).name() }))
                .collect();
            json!({ "address": ListenAddress::on(t, &l.addr), "ana_states": states })
        })
        .collect())
}

/// `nvmf_discovery_add_referral` / `nvmf_discovery_remove_referral` parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferralParams {
    pub address: ListenAddress,
    pub subnqn: Option<String>,
    pub secure_channel: Option<bool>,
    pub tgt_name: Option<String>,
}

fn referral_addr(p: &ReferralParams) -> Result<std::net::SocketAddr, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    if p.address.trsvcid.as_deref().is_none_or(str::is_empty) {
        return Err(invalid("address.trsvcid: the service ID (port) is required"));
    }
    if p.address.is_rdma()? {
        return Err(invalid("address.trtype RDMA: referrals name TCP addresses only"));
    }
    p.address.socket_addr()
}

/// `nvmf_discovery_add_referral`: lists another discovery service (or, with `subnqn`, a
/// subsystem) in this target's discovery log. Returns true.
pub fn nvmf_discovery_add_referral(t: &Target, p: ReferralParams) -> Result<bool, RpcFailure> {
    let addr = referral_addr(&p)?;
    t.add_referral(addr, p.subnqn.as_deref(), p.secure_channel.unwrap_or(false))?;
    Ok(true)
}

/// `nvmf_discovery_remove_referral`. Returns true.
pub fn nvmf_discovery_remove_referral(t: &Target, p: ReferralParams) -> Result<bool, RpcFailure> {
    let addr = referral_addr(&p)?;
    t.remove_referral(addr, p.subnqn.as_deref())?;
    Ok(true)
}

/// `nvmf_discovery_get_referrals` parameters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetReferrals {
    pub tgt_name: Option<String>,
}

/// `nvmf_discovery_get_referrals`: `[{address, secure_channel, subnqn}]`.
pub fn nvmf_discovery_get_referrals(t: &Target, p: Option<GetReferrals>) -> Result<Vec<Value>, RpcFailure> {
    check_tgt(&p.unwrap_or_default().tgt_name)?;
    Ok(t.referrals()
        .iter()
        .map(|r| {
            json!({
                "address": ListenAddress::of(&r.addr),
                "secure_channel": r.secure_channel,
                "subnqn": r.subnqn,
            })
        })
        .collect())
}
