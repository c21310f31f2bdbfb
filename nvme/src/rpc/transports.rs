//! The transport methods: `nvmf_create_transport` sets the TCP transport's options,
//! `nvmf_get_transports` lists them (`docs/nvme-tcp.md`, `docs/rpc.md`).

use super::{check_tgt, invalid, trtype_is_rdma, RpcFailure};
use crate::nvmf::rdma_opts::rdma_default_opts;
use crate::nvmf::{Target, TransportOpts};
use serde::Deserialize;
use serde_json::{json, Value};

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
    let rdma = trtype_is_rdma(&p.trtype)?;
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
    let d = if rdma {
        rdma_default_opts()
    } else {
        TransportOpts::default()
    };
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
        num_shared_buffers: p.num_shared_buffers.unwrap_or(d.num_shared_buffers),
        buf_cache_size: p.buf_cache_size.unwrap_or(d.buf_cache_size),
        rdma,
    };
    if rdma {
        t.create_transport_rdma(o)?;
    } else {
        t.create_transport(o)?;
    }
    Ok(true)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetTransports {
    pub trtype: Option<String>,
    pub tgt_name: Option<String>,
}

pub(super) fn transport_json(o: &TransportOpts) -> Value {
    json!({
        "trtype": if o.rdma { "RDMA" } else { "TCP" },
        "max_queue_depth": o.max_queue_depth,
        "max_io_qpairs_per_ctrlr": o.max_io_qpairs_per_ctrlr,
        "in_capsule_data_size": o.in_capsule_data_size,
        "max_io_size": o.max_io_size,
        "io_unit_size": o.io_unit_size,
        "max_aq_depth": o.max_aq_depth,
        "c2h_success": o.c2h_success,
        "num_shared_buffers": o.num_shared_buffers,
        "buf_cache_size": o.buf_cache_size,
        "dif_insert_or_strip": false,
    })
}

pub fn nvmf_get_transports(t: &Target, p: Option<GetTransports>) -> Result<Vec<Value>, RpcFailure> {
    let p = p.unwrap_or_default();
    check_tgt(&p.tgt_name)?;
    let want = p.trtype.as_deref().map(trtype_is_rdma).transpose()?;
    let mut out = Vec::new();
    if t.transport_created() && want != Some(true) {
        out.push(transport_json(&t.transport_opts()));
    }
    if let Some(o) = t.rdma_transport().filter(|_| want != Some(false)) {
        out.push(transport_json(&o));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::config_entries;

    fn rdma(p: CreateTransport) -> CreateTransport {
        CreateTransport {
            trtype: "RDMA".into(),
            ..p
        }
    }

    /// `trtype: RDMA` with SPDK's parameter names: listed beside TCP, in save_config, and
    /// replayable; without the `rdma` feature refused naming the feature.
    #[test]
    fn rdma_transport_round_trips_or_names_the_missing_feature() {
        let t = Target::new();
        let p = rdma(CreateTransport {
            max_queue_depth: Some(64),
            in_capsule_data_size: Some(8192),
            max_io_size: Some(262_144),
            io_unit_size: Some(8192),
            num_shared_buffers: Some(4095),
            no_srq: Some(true),
            acceptor_backlog: Some(100),
            ..Default::default()
        });
        let r = nvmf_create_transport(&t, p);
        if !cfg!(feature = "rdma") {
            let e = r.unwrap_err();
            assert!(e.message.contains("`rdma` feature"), "{}", e.message);
            assert!(nvmf_get_transports(&t, None).unwrap().is_empty());
            return;
        }
        r.unwrap();
        nvmf_create_transport(
            &t,
            CreateTransport {
                trtype: "tcp".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let all = nvmf_get_transports(&t, None).unwrap();
        assert_eq!(all.len(), 2);
        let only = nvmf_get_transports(
            &t,
            Some(GetTransports {
                trtype: Some("rdma".into()),
                tgt_name: None,
            }),
        )
        .unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0]["trtype"], "RDMA");
        assert_eq!(only[0]["max_queue_depth"], 64);
        assert_eq!(only[0]["max_io_size"], 262_144);
        // save_config: both transports, each replayable into a fresh target.
        let saved: Vec<Value> = config_entries(&t)
            .into_iter()
            .filter(|(m, _)| *m == "nvmf_create_transport")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(saved.len(), 2);
        let t2 = Target::new();
        for v in saved {
            let p: CreateTransport = serde_json::from_value(v).unwrap();
            nvmf_create_transport(&t2, p).unwrap();
        }
        assert_eq!(nvmf_get_transports(&t2, None).unwrap(), all);
    }

    /// An RDMA listener: refused naming the feature without it; with it, it needs the
    /// reactors (this test runs none), never TLS.
    #[test]
    fn rdma_listener_names_what_it_lacks() {
        use crate::nvmf::SubsystemParams;
        use crate::rpc::{nvmf_subsystem_add_listener, ListenAddress, ListenerParams};
        let t = Target::new();
        t.create_subsystem(SubsystemParams {
            nqn: "nqn.2016-06.io.baton:r".into(),
            allow_any_host: true,
            ..Default::default()
        })
        .unwrap();
        let p = |secure| ListenerParams {
            nqn: "nqn.2016-06.io.baton:r".into(),
            listen_address: ListenAddress {
                trtype: "rdma".into(),
                adrfam: Some("ipv4".into()),
                traddr: "192.0.2.1".into(),
                trsvcid: Some("4420".into()),
            },
            secure_channel: secure,
            ..Default::default()
        };
        let e = nvmf_subsystem_add_listener(&t, p(Some(true))).unwrap_err();
        assert!(e.message.contains("secure_channel"), "{}", e.message);
        let e = nvmf_subsystem_add_listener(&t, p(None)).unwrap_err();
        if cfg!(feature = "rdma") {
            // No reactors here, or (reactors of another test running) no RDMA device
            // with that address on this machine.
            let m = &e.message;
            assert!(m.contains("no reactors") || m.contains("cannot listen"), "{m}");
        } else {
            assert!(e.message.contains("`rdma` feature"), "{}", e.message);
        }
        assert!(t.listen_addrs().is_empty());
    }

    #[test]
    fn rdma_limits_are_refused_by_name_and_other_transports_too() {
        let t = Target::new();
        let e = nvmf_create_transport(
            &t,
            rdma(CreateTransport {
                max_io_size: Some(3 * 4096),
                ..Default::default()
            }),
        )
        .unwrap_err();
        let want = if cfg!(feature = "rdma") {
            "max_io_size"
        } else {
            "`rdma` feature"
        };
        assert!(e.message.contains(want), "{}", e.message);
        let e = nvmf_create_transport(
            &t,
            CreateTransport {
                trtype: "FC".into(),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.message.contains("only TCP and RDMA"), "{}", e.message);
    }
}
