//! JSON-RPC methods of the NVMe-oF target, with SPDK's method and parameter names
//! (`nvmf_create_transport`, `nvmf_create_subsystem`, ...), as plain typed functions.
//!
//! Each method is `fn(&Target, Params) -> Result<Value-like, RpcFailure>`; the engine's
//! registry wraps each in one line (see `docs/nvme-tcp.md`). Parameter structs use
//! `deny_unknown_fields` so a misspelt parameter is an error naming it. Handlers run on the
//! management thread; they take the target's lock, never a reactor's time.

pub mod query;

pub use query::{
    nvmf_discovery_add_referral, nvmf_discovery_get_referrals, nvmf_discovery_remove_referral,
    nvmf_subsystem_get_controllers, nvmf_subsystem_get_listeners, nvmf_subsystem_get_qpairs,
};

use crate::target::{Subsystem, SubsystemKind, SubsystemParams, Target, TargetError, TransportOpts};
use engine::rpc::{ConfigEntry, Registry, RpcError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

/// JSON-RPC "invalid params".
pub const INVALID_PARAMS: i32 = -32602;
/// JSON-RPC "internal error".
pub const INTERNAL_ERROR: i32 = -32603;

/// A failed method: JSON-RPC error code and a message naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcFailure {
    pub code: i32,
    pub message: String,
}

impl From<TargetError> for RpcFailure {
    fn from(e: TargetError) -> Self {
        let code = match e {
            TargetError::NoReactors(_) => INTERNAL_ERROR,
            _ => INVALID_PARAMS,
        };
        RpcFailure {
            code,
            message: e.to_string(),
        }
    }
}

fn invalid(msg: impl Into<String>) -> RpcFailure {
    RpcFailure {
        code: INVALID_PARAMS,
        message: msg.into(),
    }
}

static GLOBAL: OnceLock<Arc<Target>> = OnceLock::new();

/// The process's target (what the RPC methods act on in the `baton` binary).
pub fn global() -> &'static Arc<Target> {
    GLOBAL.get_or_init(Target::new)
}

fn check_tgt(t: &Option<String>) -> Result<(), RpcFailure> {
    match t {
        None => Ok(()),
        Some(n) if n == "nvmf_tgt" => Ok(()),
        Some(n) => Err(invalid(format!(
            "tgt_name {n:?}: only the default target \"nvmf_tgt\" exists"
        ))),
    }
}

fn check_trtype(t: &str) -> Result<(), RpcFailure> {
    if t.eq_ignore_ascii_case("tcp") {
        Ok(())
    } else {
        Err(invalid(format!("trtype {t:?}: only TCP is supported")))
    }
}

/// `nvmf_create_transport` parameters. Options SPDK has that do not apply to this
/// transport are accepted and ignored (listed in docs/nvme-tcp.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTransport {
    pub trtype: String,
    pub tgt_name: Option<String>,
    pub max_queue_depth: Option<u16>,
    pub max_io_qpairs_per_ctrlr: Option<u16>,
    pub max_qpairs_per_ctrlr: Option<u16>,
    pub in_capsule_data_size: Option<u32>,
    pub max_io_size: Option<u32>,
    pub io_unit_size: Option<u32>,
    pub max_aq_depth: Option<u16>,
    pub c2h_success: Option<bool>,
    pub num_shared_buffers: Option<u32>,
    pub buf_cache_size: Option<u32>,
    pub dif_insert_or_strip: Option<bool>,
    pub sock_priority: Option<u32>,
    pub abort_timeout_sec: Option<u32>,
    pub zcopy: Option<bool>,
    pub ack_timeout: Option<u32>,
    pub data_wr_pool_size: Option<u32>,
    pub control_msg_num: Option<u32>,
    // Sent by SPDK's rpc.py on every call (store_true flags default to false); they tune
    // the RDMA / vfio-user transports or SPDK's iobuf layer and mean nothing for TCP here.
    pub iobuf_small_cache_size: Option<u32>,
    pub iobuf_large_cache_size: Option<u32>,
    pub num_cqe: Option<u32>,
    pub max_srq_depth: Option<u32>,
    pub no_srq: Option<bool>,
    pub acceptor_backlog: Option<u32>,
    pub no_wr_batching: Option<bool>,
    pub disable_mappable_bar0: Option<bool>,
    pub disable_adaptive_irq: Option<bool>,
    pub disable_shadow_doorbells: Option<bool>,
    pub acceptor_poll_rate: Option<u32>,
    pub disable_command_passthru: Option<bool>,
    /// Keep-alive settings and masks of optional commands: refused unless empty.
    pub kas: Option<u32>,
    pub min_kato: Option<u32>,
    pub masked_oncs: Option<Vec<String>>,
    pub masked_fuses: Option<Vec<String>>,
}

pub fn nvmf_create_transport(t: &Target, p: CreateTransport) -> Result<bool, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    check_trtype(&p.trtype)?;
    if p.dif_insert_or_strip == Some(true) {
        return Err(invalid("dif_insert_or_strip: DIF is not supported"));
    }
    if p.kas.is_some() || p.min_kato.is_some() {
        return Err(invalid(
            "kas/min_kato: keep-alive granularity is fixed (KAS 1 = 100 ms)",
        ));
    }
    if p.masked_oncs.as_ref().is_some_and(|m| !m.is_empty()) || p.masked_fuses.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(invalid(
            "masked_oncs/masked_fuses: masking optional commands is not supported",
        ));
    }
    let d = TransportOpts::default();
    let o = TransportOpts {
        max_queue_depth: p.max_queue_depth.unwrap_or(d.max_queue_depth),
        max_aq_depth: p.max_aq_depth.unwrap_or(d.max_aq_depth),
        max_io_qpairs_per_ctrlr: p
            .max_io_qpairs_per_ctrlr
            .or(p.max_qpairs_per_ctrlr.map(|q| q.saturating_sub(1).max(1)))
            .unwrap_or(d.max_io_qpairs_per_ctrlr),
        in_capsule_data_size: p.in_capsule_data_size.unwrap_or(d.in_capsule_data_size),
        max_io_size: p.max_io_size.unwrap_or(d.max_io_size),
        io_unit_size: p.io_unit_size.unwrap_or(d.io_unit_size),
        c2h_success: p.c2h_success.unwrap_or(d.c2h_success),
    };
    t.create_transport(o)?;
    Ok(true)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetTransports {
    pub trtype: Option<String>,
    pub tgt_name: Option<String>,
}

fn transport_json(o: &TransportOpts) -> Value {
    json!({
        "trtype": "TCP",
        "max_queue_depth": o.max_queue_depth,
        "max_io_qpairs_per_ctrlr": o.max_io_qpairs_per_ctrlr,
        "in_capsule_data_size": o.in_capsule_data_size,
        "max_io_size": o.max_io_size,
        "io_unit_size": o.io_unit_size,
        "max_aq_depth": o.max_aq_depth,
        "c2h_success": o.c2h_success,
        "dif_insert_or_strip": false,
    })
}

pub fn nvmf_get_transports(t: &Target, p: Option<GetTransports>) -> Result<Vec<Value>, RpcFailure> {
    let p = p.unwrap_or_default();
    check_tgt(&p.tgt_name)?;
    if let Some(tt) = &p.trtype {
        check_trtype(tt)?;
    }
    if !t.transport_created() {
        return Ok(Vec::new());
    }
    Ok(vec![transport_json(&t.transport_opts())])
}

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
    if p.ana_reporting == Some(true) {
        return Err(invalid("ana_reporting: ANA is not supported"));
    }
    if p.passthrough == Some(true) {
        return Err(invalid("passthrough: NVMe passthrough subsystems are not supported"));
    }
    if p.enable_nssr == Some(true) {
        return Err(invalid("enable_nssr: NVM subsystem reset is not supported"));
    }
    if p.dmrsl.is_some() || p.wzsl.is_some() || p.admin_label.is_some() {
        return Err(invalid("dmrsl/wzsl/admin_label: not supported"));
    }
    if p.min_cntlid.is_some_and(|m| m != 1) || p.max_cntlid.is_some_and(|m| m != crate::target::CNTLID_MAX) {
        return Err(invalid(
            "min_cntlid/max_cntlid: only the full range 1..=0xffef is supported",
        ));
    }
    t.create_subsystem(SubsystemParams {
        nqn: p.nqn,
        serial_number: p.serial_number,
        model_number: p.model_number,
        allow_any_host: p.allow_any_host.unwrap_or(false),
        max_namespaces: p.max_namespaces,
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

/// Formats 16 bytes as a UUID string.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub fn nvmf_subsystem_add_ns(t: &Target, p: AddNs) -> Result<u32, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    let n = p.namespace;
    if n.ptpl_file.is_some()
        || n.anagrpid.is_some()
        || n.eui64.is_some()
        || n.no_auto_visible == Some(true)
        || n.hide_metadata == Some(true)
    {
        return Err(invalid(
            "namespace: ptpl_file, anagrpid, eui64, no_auto_visible and hide_metadata are not supported",
        ));
    }
    let id = match (n.uuid.as_deref(), n.nguid.as_deref()) {
        (Some(u), _) => Some(parse_uuid(u).ok_or_else(|| invalid(format!("namespace.uuid {u:?} is not a UUID")))?),
        (None, Some(g)) => {
            Some(parse_uuid(g).ok_or_else(|| invalid(format!("namespace.nguid {g:?} is not 32 hex digits")))?)
        }
        (None, None) => None,
    };
    Ok(t.add_namespace(&p.nqn, &n.bdev_name, n.nsid, id)?)
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

/// SPDK's `listen_address` object.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenAddress {
    pub trtype: String,
    pub adrfam: Option<String>,
    pub traddr: String,
    pub trsvcid: Option<String>,
}

impl ListenAddress {
    pub(crate) fn socket_addr(&self) -> Result<SocketAddr, RpcFailure> {
        check_trtype(&self.trtype)?;
        let ip: IpAddr = self
            .traddr
            .parse()
            .map_err(|_| invalid(format!("listen_address.traddr {:?} is not an IP address", self.traddr)))?;
        if let Some(f) = &self.adrfam {
            let ok =
                (f.eq_ignore_ascii_case("ipv4") && ip.is_ipv4()) || (f.eq_ignore_ascii_case("ipv6") && ip.is_ipv6());
            if !ok {
                return Err(invalid(format!(
                    "listen_address.adrfam {f:?} does not match traddr {}",
                    self.traddr
                )));
            }
        }
        let port = match &self.trsvcid {
            None => 4420,
            Some(s) => s
                .parse()
                .map_err(|_| invalid(format!("listen_address.trsvcid {s:?} is not a port number")))?,
        };
        Ok(SocketAddr::new(ip, port))
    }

    pub(crate) fn of(a: &SocketAddr) -> ListenAddress {
        ListenAddress {
            trtype: "TCP".into(),
            adrfam: Some(if a.is_ipv4() { "IPv4" } else { "IPv6" }.into()),
            traddr: a.ip().to_string(),
            trsvcid: Some(a.port().to_string()),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerParams {
    pub nqn: String,
    pub listen_address: ListenAddress,
    pub tgt_name: Option<String>,
    pub secure_channel: Option<bool>,
    pub ana_state: Option<String>,
    pub anagrpid: Option<u32>,
    /// Socket implementation and NUMA node (rpc.py may send them): only the default.
    pub sock_impl: Option<String>,
    pub numa_id: Option<i32>,
}

/// Returns the address actually bound (trsvcid "0" picks a free port).
pub fn nvmf_subsystem_add_listener(t: &Arc<Target>, p: ListenerParams) -> Result<bool, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    if p.secure_channel == Some(true) {
        return Err(invalid("secure_channel: TLS is not supported"));
    }
    if p.sock_impl.as_deref().is_some_and(|s| s != "posix") {
        return Err(invalid(format!(
            "sock_impl: {:?}: only \"posix\" sockets",
            p.sock_impl.as_deref().unwrap_or_default()
        )));
    }
    let a = p.listen_address.socket_addr()?;
    t.add_listener(&p.nqn, a)?;
    Ok(true)
}

pub fn nvmf_subsystem_remove_listener(t: &Target, p: ListenerParams) -> Result<bool, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    let a = p.listen_address.socket_addr()?;
    t.remove_listener(&p.nqn, a)?;
    Ok(true)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostParams {
    pub nqn: String,
    pub host: String,
    pub tgt_name: Option<String>,
    pub psk: Option<String>,
    pub dhchap_key: Option<String>,
    pub dhchap_ctrlr_key: Option<String>,
    /// `nvmf_subsystem_remove_host`: how long to wait for the host's controllers to go.
    pub timeout_ms: Option<u64>,
}

pub fn nvmf_subsystem_add_host(t: &Target, p: HostParams) -> Result<bool, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    if p.psk.is_some() || p.dhchap_key.is_some() || p.dhchap_ctrlr_key.is_some() {
        return Err(invalid(
            "psk/dhchap keys: TLS and in-band authentication are not supported",
        ));
    }
    t.add_host(&p.nqn, &p.host)?;
    Ok(true)
}

pub fn nvmf_subsystem_remove_host(t: &Target, p: HostParams) -> Result<bool, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    t.remove_host(&p.nqn, &p.host)?;
    Ok(true)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowAnyHost {
    pub nqn: String,
    pub allow_any_host: bool,
    pub tgt_name: Option<String>,
}

pub fn nvmf_subsystem_allow_any_host(t: &Target, p: AllowAnyHost) -> Result<bool, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    t.allow_any_host(&p.nqn, p.allow_any_host)?;
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
        "hosts": st.hosts.iter().map(|h| json!({ "nqn": h })).collect::<Vec<_>>(),
    });
    if s.kind == SubsystemKind::Nvme {
        v["serial_number"] = json!(s.serial_number);
        v["model_number"] = json!(s.model_number);
        v["max_namespaces"] = json!(s.max_namespaces);
        v["min_cntlid"] = json!(1);
        v["max_cntlid"] = json!(crate::target::CNTLID_MAX);
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetStats {
    pub tgt_name: Option<String>,
}

pub fn nvmf_get_stats(_t: &Target, p: Option<GetStats>) -> Result<Value, RpcFailure> {
    check_tgt(&p.unwrap_or_default().tgt_name)?;
    use std::sync::atomic::Ordering::Relaxed;
    let groups: Vec<Value> = crate::target::tcp::group_stats()
        .iter()
        .map(|g| {
            json!({
                "name": format!("nvmf_tgt_poll_group_{:03}", g.core),
                "admin_qpairs": g.admin_qpairs.load(Relaxed),
                "io_qpairs": g.io_qpairs.load(Relaxed),
                "current_admin_qpairs": g.current_admin_qpairs.load(Relaxed),
                "current_io_qpairs": g.current_io_qpairs.load(Relaxed),
                "pending_bdev_io": g.pending_bdev_io.load(Relaxed),
                "completed_nvme_io": g.completed_nvme_io.load(Relaxed),
                "transports": [{ "trtype": "TCP", "connections": g.connections.load(Relaxed), "term_reqs_sent": g.term_reqs_sent.load(Relaxed) }],
            })
        })
        .collect();
    Ok(json!({ "tick_rate": 1_000_000_000u64, "poll_groups": groups }))
}

fn rpc_err(e: RpcFailure) -> RpcError {
    RpcError::new(e.code, e.message)
}

/// Registers the `nvmf_*` methods on the process's target ([`global`]) and the "nvmf"
/// config provider (after "bdev": namespaces need their bdevs). Call once at start-up.
pub fn register_rpcs(reg: &mut Registry) {
    register_rpcs_for(reg, global().clone());
}

/// Registers the `nvmf_*` methods acting on `t` (tests use their own target).
pub fn register_rpcs_for(reg: &mut Registry, t: Arc<Target>) {
    macro_rules! method {
        ($name:literal, $help:literal, $f:ident) => {{
            let t = t.clone();
            reg.register($name, $help, move |p| $f(&t, p).map_err(rpc_err));
        }};
    }
    method!("nvmf_create_transport", "Set the TCP transport's options (trtype TCP; max_queue_depth, in_capsule_data_size, max_io_size, io_unit_size, ...)", nvmf_create_transport);
    method!(
        "nvmf_get_transports",
        "List transports and their options",
        nvmf_get_transports
    );
    method!(
        "nvmf_create_subsystem",
        "Create an NVM subsystem (nqn; serial_number, model_number, allow_any_host, max_namespaces)",
        nvmf_create_subsystem
    );
    method!(
        "nvmf_delete_subsystem",
        "Delete a subsystem and disconnect its hosts (nqn)",
        nvmf_delete_subsystem
    );
    method!(
        "nvmf_subsystem_add_ns",
        "Add a namespace over a bdev (nqn, namespace.bdev_name; nsid, uuid, nguid); returns the NSID",
        nvmf_subsystem_add_ns
    );
    method!(
        "nvmf_subsystem_remove_ns",
        "Remove a namespace (nqn, nsid)",
        nvmf_subsystem_remove_ns
    );
    method!(
        "nvmf_subsystem_add_listener",
        "Listen for a subsystem on a TCP address (nqn, listen_address {trtype, adrfam, traddr, trsvcid})",
        nvmf_subsystem_add_listener
    );
    method!(
        "nvmf_subsystem_remove_listener",
        "Stop listening for a subsystem on an address (nqn, listen_address)",
        nvmf_subsystem_remove_listener
    );
    method!(
        "nvmf_subsystem_add_host",
        "Allow a host NQN (nqn, host)",
        nvmf_subsystem_add_host
    );
    method!(
        "nvmf_subsystem_remove_host",
        "Disallow a host NQN and disconnect it (nqn, host)",
        nvmf_subsystem_remove_host
    );
    method!(
        "nvmf_subsystem_allow_any_host",
        "Allow or restrict hosts (nqn, allow_any_host)",
        nvmf_subsystem_allow_any_host
    );
    method!(
        "nvmf_get_subsystems",
        "List subsystems with listeners, hosts and namespaces (optional nqn)",
        nvmf_get_subsystems
    );
    method!(
        "nvmf_get_stats",
        "Per-poll-group queue pair and I/O counters",
        nvmf_get_stats
    );
    method!(
        "nvmf_subsystem_get_controllers",
        "List a subsystem's controllers (nqn): cntlid, cntrltype, hostnqn, hostid, num_io_qpairs",
        nvmf_subsystem_get_controllers
    );
    method!(
        "nvmf_subsystem_get_qpairs",
        "List a subsystem's connected queue pairs (nqn): cntlid, qid, state, thread, addresses",
        nvmf_subsystem_get_qpairs
    );
    method!(
        "nvmf_subsystem_get_listeners",
        "List a subsystem's listeners (nqn)",
        nvmf_subsystem_get_listeners
    );
    method!(
        "nvmf_discovery_add_referral",
        "Add a discovery referral (address {trtype, adrfam, traddr, trsvcid}; subnqn, secure_channel)",
        nvmf_discovery_add_referral
    );
    method!(
        "nvmf_discovery_remove_referral",
        "Remove a discovery referral (address; subnqn)",
        nvmf_discovery_remove_referral
    );
    method!(
        "nvmf_discovery_get_referrals",
        "List the discovery referrals",
        nvmf_discovery_get_referrals
    );
    reg.register_config_provider("nvmf", &["bdev"], move || {
        config_entries(&t)
            .into_iter()
            .map(|(m, p)| ConfigEntry {
                method: m.to_string(),
                params: Some(p),
            })
            .collect()
    });
}

/// The calls that recreate the target's state, in replay order (for `save_config`'s
/// "nvmf" subsystem): transport, subsystems, listeners, hosts, namespaces.
pub fn config_entries(t: &Target) -> Vec<(&'static str, Value)> {
    let mut v = Vec::new();
    if t.transport_created() {
        let mut tr = transport_json(&t.transport_opts());
        if let Some(o) = tr.as_object_mut() {
            o.remove("dif_insert_or_strip");
        }
        v.push(("nvmf_create_transport", tr));
    }
    for r in t.referrals() {
        v.push((
            "nvmf_discovery_add_referral",
            json!({ "address": ListenAddress::of(&r.addr), "subnqn": r.subnqn, "secure_channel": r.secure_channel }),
        ));
    }
    for s in t.subsystems() {
        if s.kind == SubsystemKind::Discovery {
            continue;
        }
        let st = s.state();
        v.push((
            "nvmf_create_subsystem",
            json!({ "nqn": s.nqn, "serial_number": s.serial_number, "model_number": s.model_number,
                    "allow_any_host": st.allow_any_host, "max_namespaces": s.max_namespaces }),
        ));
        for a in &st.listeners {
            v.push((
                "nvmf_subsystem_add_listener",
                json!({ "nqn": s.nqn, "listen_address": ListenAddress::of(a) }),
            ));
        }
        for h in &st.hosts {
            v.push(("nvmf_subsystem_add_host", json!({ "nqn": s.nqn, "host": h })));
        }
        for n in st.namespaces.values() {
            v.push((
                "nvmf_subsystem_add_ns",
                json!({ "nqn": s.nqn, "namespace": { "bdev_name": n.bdev.name(), "nsid": n.nsid, "uuid": format_uuid(&n.uuid) } }),
            ));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_round_trip_and_rejects() {
        let u = parse_uuid("0123456789abcdef0123456789ABCDEF").unwrap();
        assert_eq!(format_uuid(&u), "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(parse_uuid(&format_uuid(&u)), Some(u));
        assert!(parse_uuid("xyz").is_none());
        assert!(parse_uuid("0123456789abcdef0123456789abcdeg").is_none());
    }

    /// The exact params SPDK's `scripts/rpc.py` (2026 master) sends for these calls with
    /// no optional flags: every store_true flag goes out as `false`.
    #[test]
    fn accepts_what_spdk_rpc_py_sends_and_refuses_features_by_name() {
        let t: CreateTransport = serde_json::from_value(json!({"trtype": "TCP", "no_srq": false, "c2h_success": true,
            "zcopy": false, "dif_insert_or_strip": false, "no_wr_batching": false, "disable_mappable_bar0": false,
            "disable_adaptive_irq": false, "disable_shadow_doorbells": false, "disable_command_passthru": false}))
        .unwrap();
        assert_eq!(t.no_srq, Some(false));
        let s: CreateSubsystem = serde_json::from_value(json!({"nqn": "nqn.2016-06.io.spdk:cnode1",
            "serial_number": "SPDK001", "allow_any_host": true, "ana_reporting": false, "passthrough": false,
            "enable_nssr": false}))
        .unwrap();
        assert_eq!(s.enable_nssr, Some(false));
        let n: AddNs = serde_json::from_value(json!({"nqn": "nqn.a", "namespace": {"bdev_name": "Malloc0",
            "no_auto_visible": false, "hide_metadata": false}}))
        .unwrap();
        assert_eq!(n.namespace.hide_metadata, Some(false));
        let l: ListenerParams = serde_json::from_value(json!({"nqn": "nqn.a", "secure_channel": false,
            "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "4420"}}))
        .unwrap();
        assert_eq!(l.secure_channel, Some(false));
        let tgt = Target::new();
        let e = nvmf_create_subsystem(
            &tgt,
            CreateSubsystem {
                nqn: "nqn.a".into(),
                enable_nssr: Some(true),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.message.contains("enable_nssr"), "{}", e.message);
        let e = nvmf_create_transport(
            &tgt,
            CreateTransport {
                trtype: "TCP".into(),
                masked_oncs: Some(vec!["write_zeroes".into()]),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.message.contains("masked_oncs"), "{}", e.message);
    }

    #[test]
    fn params_reject_unknown_fields_and_name_them() {
        let e = serde_json::from_value::<CreateSubsystem>(json!({"nqn": "nqn.a", "serial": "x"})).unwrap_err();
        assert!(e.to_string().contains("serial"), "{e}");
        let p: AddNs =
            serde_json::from_value(json!({"nqn": "nqn.a", "namespace": {"bdev_name": "Malloc0", "nsid": 3}})).unwrap();
        assert_eq!(p.namespace.nsid, Some(3));
        let l: ListenerParams = serde_json::from_value(json!({"nqn": "nqn.a", "listen_address": {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "4420"}})).unwrap();
        assert_eq!(
            l.listen_address.socket_addr().unwrap(),
            "127.0.0.1:4420".parse().unwrap()
        );
        let bad = ListenAddress {
            trtype: "RDMA".into(),
            adrfam: None,
            traddr: "127.0.0.1".into(),
            trsvcid: None,
        };
        assert!(bad.socket_addr().unwrap_err().message.contains("RDMA"));
        let bad = ListenAddress {
            trtype: "TCP".into(),
            adrfam: Some("IPv6".into()),
            traddr: "127.0.0.1".into(),
            trsvcid: None,
        };
        assert!(bad.socket_addr().is_err());
    }

    #[test]
    fn management_without_listeners_and_errors() {
        let t = Target::new();
        assert!(nvmf_get_transports(&t, None).unwrap().is_empty());
        nvmf_create_transport(
            &t,
            CreateTransport {
                trtype: "TCP".into(),
                in_capsule_data_size: Some(4096),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(nvmf_get_transports(&t, None).unwrap()[0]["in_capsule_data_size"], 4096);
        let e = nvmf_create_transport(
            &t,
            CreateTransport {
                trtype: "TCP".into(),
                max_queue_depth: Some(4096),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.message.contains("max_queue_depth"));
        nvmf_create_subsystem(
            &t,
            CreateSubsystem {
                nqn: "nqn.2016-06.io.spdk:cnode1".into(),
                allow_any_host: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
        let e = nvmf_create_subsystem(
            &t,
            CreateSubsystem {
                nqn: "nqn.2016-06.io.spdk:cnode1".into(),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.code, INVALID_PARAMS);
        assert!(e.message.contains("already exists"));
        assert!(nvmf_create_subsystem(
            &t,
            CreateSubsystem {
                nqn: "bad".into(),
                ..Default::default()
            }
        )
        .unwrap_err()
        .message
        .contains("nqn."));
        let e = nvmf_subsystem_add_ns(
            &t,
            AddNs {
                nqn: "nqn.2016-06.io.spdk:cnode1".into(),
                namespace: NamespaceParams {
                    bdev_name: "NoSuchBdev".into(),
                    ..Default::default()
                },
                tgt_name: None,
            },
        )
        .unwrap_err();
        assert!(e.message.contains("NoSuchBdev"));
        nvmf_subsystem_add_host(
            &t,
            HostParams {
                nqn: "nqn.2016-06.io.spdk:cnode1".into(),
                host: "nqn.2014-08.org.nvmexpress:uuid:1".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let subs = nvmf_get_subsystems(&t, None).unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0]["subtype"], "Discovery");
        assert_eq!(subs[1]["hosts"][0]["nqn"], "nqn.2014-08.org.nvmexpress:uuid:1");
        let cfg = config_entries(&t);
        let names: Vec<_> = cfg.iter().map(|c| c.0).collect();
        assert_eq!(
            names,
            vec![
                "nvmf_create_transport",
                "nvmf_create_subsystem",
                "nvmf_subsystem_add_host"
            ]
        );
        // Every saved entry parses back into its params struct.
        let _: CreateTransport = serde_json::from_value(cfg[0].1.clone()).unwrap();
        let _: CreateSubsystem = serde_json::from_value(cfg[1].1.clone()).unwrap();
        let _: HostParams = serde_json::from_value(cfg[2].1.clone()).unwrap();
        nvmf_delete_subsystem(
            &t,
            NqnOnly {
                nqn: "nqn.2016-06.io.spdk:cnode1".into(),
                tgt_name: None,
            },
        )
        .unwrap();
        assert_eq!(nvmf_get_subsystems(&t, None).unwrap().len(), 1);
        assert!(nvmf_delete_subsystem(
            &t,
            NqnOnly {
                nqn: crate::spec::fabrics::DISCOVERY_NQN.into(),
                tgt_name: None
            }
        )
        .is_err());
    }
}
