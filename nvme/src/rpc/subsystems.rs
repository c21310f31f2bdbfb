//! The subsystem methods: create, delete and list NVM subsystems, and add or remove their
//! namespaces (`docs/nvme-tcp.md`, `docs/rpc.md`).

use super::{check_tgt, invalid, ListenAddress, RpcFailure};
use crate::nvmf::{NsOptions, Subsystem, SubsystemKind, SubsystemParams, Target};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSubsystem {
    pub nqn: String,
    pub tgt_name: Option<String>,
    pub serial_number: Option<String>,
    pub model_number: Option<String>,
    pub allow_any_host: Option<bool>,
    pub max_namespaces: Option<u32>,
    pub ana_reporting: Option<bool>,
    pub min_cntlid: Option<u16>,
    pub max_cntlid: Option<u16>,
    /// Sent by SPDK's rpc.py (false by default): refused when asked for.
    pub passthrough: Option<bool>,
    pub enable_nssr: Option<bool>,
    /// DSM range / write-zeroes size limits and admin queue label: refused when given.
    pub dmrsl: Option<u32>,
    pub wzsl: Option<u32>,
    pub admin_label: Option<String>,
}

pub fn nvmf_create_subsystem(t: &Target, p: CreateSubsystem) -> Result<bool, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    if p.passthrough == Some(true) {
        return Err(invalid("passthrough: NVMe passthrough subsystems are not supported"));
    }
    if p.enable_nssr == Some(true) {
        return Err(invalid("enable_nssr: NVM subsystem reset is not supported"));
    }
    if p.dmrsl.is_some() || p.wzsl.is_some() || p.admin_label.is_some() {
        return Err(invalid("dmrsl/wzsl/admin_label: not supported"));
    }
    t.create_subsystem(SubsystemParams {
        nqn: p.nqn,
        serial_number: p.serial_number,
        model_number: p.model_number,
        allow_any_host: p.allow_any_host.unwrap_or(false),
        max_namespaces: p.max_namespaces,
        ana_reporting: p.ana_reporting.unwrap_or(false),
        min_cntlid: p.min_cntlid,
        max_cntlid: p.max_cntlid,
    })?;
    Ok(true)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NqnOnly {
    pub nqn: String,
    pub tgt_name: Option<String>,
}

pub fn nvmf_delete_subsystem(t: &Target, p: NqnOnly) -> Result<bool, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    t.delete_subsystem(&p.nqn)?;
    Ok(true)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceParams {
    pub bdev_name: String,
    pub nsid: Option<u32>,
    pub uuid: Option<String>,
    pub nguid: Option<String>,
    pub eui64: Option<String>,
    pub ptpl_file: Option<String>,
    pub anagrpid: Option<u32>,
    pub no_auto_visible: Option<bool>,
    /// Sent by SPDK's rpc.py (false by default); metadata is not supported at all.
    pub hide_metadata: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNs {
    pub nqn: String,
    pub namespace: NamespaceParams,
    pub tgt_name: Option<String>,
}

/// Parses "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" or 32 hex digits.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Formats 16 bytes as a UUID string (the engine's formatter).
pub use engine::bdev::uuid_to_string as format_uuid;

pub fn nvmf_subsystem_add_ns(t: &Target, p: AddNs) -> Result<u32, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    let n = p.namespace;
    if n.ptpl_file.is_some() || n.eui64.is_some() || n.no_auto_visible == Some(true) || n.hide_metadata == Some(true) {
        return Err(invalid(
            "namespace: ptpl_file, eui64, no_auto_visible and hide_metadata are not supported",
        ));
    }
    let id = match (n.uuid.as_deref(), n.nguid.as_deref()) {
        (Some(u), _) => Some(parse_uuid(u).ok_or_else(|| invalid(format!("namespace.uuid {u:?} is not a UUID")))?),
        (None, Some(g)) => {
            Some(parse_uuid(g).ok_or_else(|| invalid(format!("namespace.nguid {g:?} is not 32 hex digits")))?)
        }
        (None, None) => None,
    };
    let o = NsOptions {
        nsid: n.nsid,
        uuid: id,
        anagrpid: n.anagrpid,
    };
    Ok(t.add_ns(&p.nqn, &n.bdev_name, o)?)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetNsAnaGroup {
    pub nqn: String,
    pub nsid: u32,
    pub anagrpid: u32,
    pub tgt_name: Option<String>,
}

pub fn nvmf_subsystem_set_ns_ana_group(t: &Target, p: SetNsAnaGroup) -> Result<bool, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    t.set_ns_ana_group(&p.nqn, p.nsid, p.anagrpid)?;
    Ok(true)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveNs {
    pub nqn: String,
    pub nsid: u32,
    pub tgt_name: Option<String>,
}

pub fn nvmf_subsystem_remove_ns(t: &Target, p: RemoveNs) -> Result<bool, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    t.remove_namespace(&p.nqn, p.nsid)?;
    Ok(true)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetSubsystems {
    pub nqn: Option<String>,
    pub tgt_name: Option<String>,
}

fn subsystem_json(s: &Subsystem) -> Value {
    let st = s.state();
    let listen: Vec<ListenAddress> = st.listeners.iter().map(ListenAddress::of).collect();
    let mut v = json!({
        "nqn": s.nqn,
        "subtype": if s.kind == SubsystemKind::Discovery { "Discovery" } else { "NVMe" },
        "listen_addresses": listen,
        "allow_any_host": st.allow_any_host,
        "hosts": st.hosts.iter().map(|h| {
            let mut e = json!({ "nqn": h });
            if let Some(k) = st.host_psks.get(h) {
                e["psk"] = json!(k);
            }
            if let Some(k) = st.host_keys.get(h) {
                e["dhchap_key"] = json!(k.dhchap_key);
                if let Some(c) = &k.dhchap_ctrlr_key {
                    e["dhchap_ctrlr_key"] = json!(c);
                }
            }
            e
        }).collect::<Vec<_>>(),
    });
    if s.kind == SubsystemKind::Nvme {
        v["serial_number"] = json!(s.serial_number);
        v["model_number"] = json!(s.model_number);
        v["max_namespaces"] = json!(s.max_namespaces);
        v["min_cntlid"] = json!(s.min_cntlid);
        v["max_cntlid"] = json!(s.max_cntlid);
        v["ana_reporting"] = json!(s.ana.reporting);
        v["namespaces"] = st
            .namespaces
            .values()
            .map(|n| {
                json!({
                    "nsid": n.nsid,
                    "bdev_name": n.bdev.name(),
                    "name": n.bdev.name(),
                    "nguid": n.uuid.iter().map(|b| format!("{b:02X}")).collect::<String>(),
                    "uuid": format_uuid(&n.uuid),
                    "anagrpid": n.anagrpid,
                })
            })
            .collect();
    }
    v
}

pub fn nvmf_get_subsystems(t: &Target, p: Option<GetSubsystems>) -> Result<Vec<Value>, RpcFailure> {
    let p = p.unwrap_or_default();
    check_tgt(&p.tgt_name)?;
    if let Some(n) = &p.nqn {
        let s = t.subsystem(n)?;
        return Ok(vec![subsystem_json(&s)]);
    }
    Ok(t.subsystems().iter().map(|s| subsystem_json(s)).collect())
}
