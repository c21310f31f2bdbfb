//! The transport methods: `nvmf_create_transport` sets the TCP transport's options,
//! `nvmf_get_transports` lists them (`docs/nvme-tcp.md`, `docs/rpc.md`).

use super::{check_tgt, check_trtype, invalid, RpcFailure};
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
        num_shared_buffers: p.num_shared_buffers.unwrap_or(d.num_shared_buffers),
        buf_cache_size: p.buf_cache_size.unwrap_or(d.buf_cache_size),
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

pub(super) fn transport_json(o: &TransportOpts) -> Value {
    json!({
        "trtype": "TCP",
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
    if let Some(tt) = &p.trtype {
        check_trtype(tt)?;
    }
    if !t.transport_created() {
        return Ok(Vec::new());
    }
    Ok(vec![transport_json(&t.transport_opts())])
}
