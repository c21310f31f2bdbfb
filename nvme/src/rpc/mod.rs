//! JSON-RPC methods of the NVMe-oF target, with SPDK's method and parameter names
//! (`nvmf_create_transport`, `nvmf_create_subsystem`, ...), as plain typed functions.
//!
//! Each method is `fn(&Target, Params) -> Result<Value-like, RpcFailure>`; the engine's
//! registry wraps each in one line (see `docs/nvme-tcp.md`). Parameter structs use
//! `deny_unknown_fields` so a misspelt parameter is an error naming it. Handlers run on the
//! management thread; they take the target's lock, never a reactor's time.
//!
//! This file holds what every method shares (the error type, the process's target, the
//! `tgt_name` and `trtype` checks), the registration of every method and the "nvmf" part
//! of `save_config`. The methods, by family:
//! - `transports.rs`: `nvmf_create_transport`, `nvmf_get_transports`.
//! - `subsystems.rs`: subsystems and their namespaces (`nvmf_create_subsystem`,
//!   `nvmf_subsystem_add_ns`, `nvmf_get_subsystems`, ...).
//! - `listeners.rs`: where a subsystem listens and which hosts it admits
//!   (`nvmf_subsystem_add_listener`, `nvmf_subsystem_add_host`, ...).
//! - `stats.rs`: `nvmf_get_stats`.
//! - `query.rs`: connected controllers, queue pairs, listeners, discovery referrals.

pub mod bdev_nvme;
mod keyring;
mod listeners;
pub mod query;
mod stats;
mod subsystems;
mod transports;

pub use keyring::{
    keyring_config_entries, keyring_file_add_key, keyring_file_remove_key, keyring_get_keys, AddKey, RemoveKey,
};
pub use listeners::{
    nvmf_subsystem_add_host, nvmf_subsystem_add_listener, nvmf_subsystem_allow_any_host,
    nvmf_subsystem_listener_set_ana_state, nvmf_subsystem_remove_host, nvmf_subsystem_remove_listener, AllowAnyHost,
    HostParams, ListenAddress, ListenerParams, SetAnaState,
};
pub use query::{
    nvmf_discovery_add_referral, nvmf_discovery_get_referrals, nvmf_discovery_remove_referral,
    nvmf_subsystem_get_controllers, nvmf_subsystem_get_listeners, nvmf_subsystem_get_qpairs,
};
pub use stats::{nvmf_get_stats, GetStats};
pub use subsystems::{
    format_uuid, nvmf_create_subsystem, nvmf_delete_subsystem, nvmf_get_subsystems, nvmf_subsystem_add_ns,
    nvmf_subsystem_remove_ns, nvmf_subsystem_set_ns_ana_group, parse_uuid, AddNs, CreateSubsystem, GetSubsystems,
    NamespaceParams, NqnOnly, RemoveNs, SetNsAnaGroup,
};
pub use transports::{nvmf_create_transport, nvmf_get_transports, CreateTransport, GetTransports};

use crate::nvmf::{SubsystemKind, Target, TargetError};
use engine::rpc::{ConfigEntry, Registry, RpcError};
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};
use transports::transport_json;

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

/// TCP (false) or RDMA (true); other transports are refused. RDMA is understood in every
/// build; without the `rdma` feature the target refuses it by name when asked to act.
fn trtype_is_rdma(t: &str) -> Result<bool, RpcFailure> {
    if t.eq_ignore_ascii_case("tcp") {
        Ok(false)
    } else if t.eq_ignore_ascii_case("rdma") {
        Ok(true)
    } else {
        Err(invalid(format!("trtype {t:?}: only TCP and RDMA are supported")))
    }
}

fn rpc_err(e: RpcFailure) -> RpcError {
    RpcError::new(e.code, e.message)
}

/// Registers the `nvmf_*` methods on the process's target ([`global`]) and the "nvmf"
/// config provider (after "bdev": namespaces need their bdevs). Call once at start-up.
pub fn register_rpcs(reg: &mut Registry) {
    register_rpcs_for(reg, global().clone());
    #[cfg(feature = "spdk")]
    crate::spdk::rpc::register_rpcs(reg);
}

/// Registers the `nvmf_*` methods acting on `t` (tests use their own target).
// A flat list, one registration per method: long, but with no step to name.
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
        "Create an NVM subsystem (nqn; serial_number, model_number, allow_any_host, max_namespaces, ana_reporting, min_cntlid, max_cntlid)",
        nvmf_create_subsystem
    );
    method!(
        "nvmf_delete_subsystem",
        "Delete a subsystem and disconnect its hosts (nqn)",
        nvmf_delete_subsystem
    );
    method!(
        "nvmf_subsystem_add_ns",
        "Add a namespace over a bdev (nqn, namespace.bdev_name; nsid, uuid, nguid, anagrpid); returns the NSID",
        nvmf_subsystem_add_ns
    );
    method!(
        "nvmf_subsystem_set_ns_ana_group",
        "Move a namespace to another ANA group (nqn, nsid, anagrpid)",
        nvmf_subsystem_set_ns_ana_group
    );
    method!(
        "nvmf_subsystem_remove_ns",
        "Remove a namespace (nqn, nsid)",
        nvmf_subsystem_remove_ns
    );
    method!(
        "nvmf_subsystem_add_listener",
        "Listen for a subsystem on a TCP address (nqn, listen_address {trtype, adrfam, traddr, trsvcid}; ana_state; secure_channel: TLS 1.3 with a PSK only)",
        nvmf_subsystem_add_listener
    );
    method!(
        "nvmf_subsystem_listener_set_ana_state",
        "Set the ANA state of a listener's groups (nqn, listen_address, ana_state optimized|non_optimized|inaccessible; anagrpid)",
        nvmf_subsystem_listener_set_ana_state
    );
    method!(
        "nvmf_subsystem_remove_listener",
        "Stop listening for a subsystem on an address (nqn, listen_address)",
        nvmf_subsystem_remove_listener
    );
    method!(
        "keyring_file_add_key",
        "Add a key read from a file (name, path; the file holds a DHHC-1 secret or an NVMeTLSkey-1 PSK, mode 0600)",
        keyring_file_add_key
    );
    method!(
        "keyring_file_remove_key",
        "Remove a key (name)",
        keyring_file_remove_key
    );
    method!(
        "keyring_get_keys",
        "List the keys (name, path; never the key)",
        keyring_get_keys
    );
    method!(
        "nvmf_subsystem_add_host",
        "Allow a host NQN (nqn, host; dhchap_key, dhchap_ctrlr_key: keyring names for DH-HMAC-CHAP; psk: keyring name of its NVMe/TCP TLS PSK)",
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
    register_bdev_nvme(reg);
    let tk = t.clone();
    reg.register_config_provider("keyring", &[], move || {
        keyring_config_entries(&tk)
            .into_iter()
            .map(|(m, p)| ConfigEntry {
                method: m.to_string(),
                params: Some(p),
            })
            .collect()
    });
    reg.register_config_provider("nvmf", &["bdev", "keyring"], move || {
        config_entries(&t)
            .into_iter()
            .map(|(m, p)| ConfigEntry {
                method: m.to_string(),
                params: Some(p),
            })
            .collect()
    });
}

/// The host bdev's methods (process-wide, like the bdev registry they fill).
fn register_bdev_nvme(reg: &mut Registry) {
    use bdev_nvme::*;
    reg.register(
        "bdev_nvme_attach_controller",
        "Attach an NVMe/TCP controller, one bdev per namespace <name>n<nsid> (name, trtype, traddr, trsvcid, subnqn; hostnqn, hdgst, ddgst, multipath disable|failover, ctrlr_loss_timeout_sec, reconnect_delay_sec, fast_io_fail_timeout_sec); returns the bdev names",
        |p| bdev_nvme_attach_controller(p).map_err(rpc_err),
    );
    reg.register(
        "bdev_nvme_detach_controller",
        "Detach a controller and delete its bdevs (name), or only one of its paths (name, traddr, trsvcid)",
        |p| bdev_nvme_detach_controller(p).map_err(rpc_err),
    );
    reg.register(
        "bdev_nvme_get_controllers",
        "List attached NVMe controllers with their paths (optional name)",
        |p| bdev_nvme_get_controllers(p).map_err(rpc_err),
    );
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
    if let Some(o) = t.rdma_transport() {
        let mut tr = transport_json(&o);
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
                    "allow_any_host": st.allow_any_host, "max_namespaces": s.max_namespaces,
                    "ana_reporting": s.ana.reporting, "min_cntlid": s.min_cntlid, "max_cntlid": s.max_cntlid }),
        ));
        for l in &st.ana {
            let mut p = json!({ "nqn": s.nqn, "listen_address": ListenAddress::on(t, &l.addr) });
            if t.listener_secure(l.addr) {
                p["secure_channel"] = json!(true);
            }
            v.push(("nvmf_subsystem_add_listener", p));
        }
        for h in &st.hosts {
            let mut p = json!({ "nqn": s.nqn, "host": h });
            if let Some(k) = st.host_psks.get(h) {
                p["psk"] = json!(k);
            }
            if let Some(k) = st.host_keys.get(h) {
                p["dhchap_key"] = json!(k.dhchap_key);
                if let Some(c) = &k.dhchap_ctrlr_key {
                    p["dhchap_ctrlr_key"] = json!(c);
                }
            }
            v.push(("nvmf_subsystem_add_host", p));
        }
        for n in st.namespaces.values() {
            v.push((
                "nvmf_subsystem_add_ns",
                json!({ "nqn": s.nqn, "namespace": { "bdev_name": n.bdev.name(), "nsid": n.nsid,
                        "uuid": format_uuid(&n.uuid), "anagrpid": n.anagrpid } }),
            ));
        }
        // ANA states other than optimized, per listener and group, after the namespaces
        // that make the groups exist.
        for l in &st.ana {
            for g in 1..=s.max_namespaces {
                let state = l.state(g);
                if state != crate::nvmf::ana::AnaState::Optimized {
                    v.push((
                        "nvmf_subsystem_listener_set_ana_state",
                        json!({ "nqn": s.nqn, "listen_address": ListenAddress::of(&l.addr),
                                "ana_state": state.name(), "anagrpid": g }),
                    ));
                }
            }
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
            trtype: "FC".into(),
            adrfam: None,
            traddr: "127.0.0.1".into(),
            trsvcid: None,
        };
        assert!(bad.socket_addr().unwrap_err().message.contains("FC"));
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
