//! `nvmf_get_stats`: the per-poll-group queue pair and I/O counters of the TCP transport,
//! in SPDK's shape (`docs/nvme-tcp.md`, `docs/rpc.md`).

use super::{check_tgt, RpcFailure};
use crate::nvmf::tcp::{REQ_STATE_NAMES, REQ_STATE_NEED_BUFFER};
use crate::nvmf::Target;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetStats {
    pub tgt_name: Option<String>,
}

pub fn nvmf_get_stats(_t: &Target, p: Option<GetStats>) -> Result<Value, RpcFailure> {
    check_tgt(&p.unwrap_or_default().tgt_name)?;
    let groups: Vec<Value> = crate::nvmf::tcp::group_stats()
        .iter()
        .map(|g| {
            let states: serde_json::Map<String, Value> = REQ_STATE_NAMES
                .iter()
                .zip(g.req_states.iter())
                .map(|(n, c)| (n.to_string(), json!(c.load(Relaxed))))
                .collect();
            let need_buffer = g.req_states[REQ_STATE_NEED_BUFFER].load(Relaxed);
            json!({
                "name": format!("nvmf_tgt_poll_group_{:03}", g.core),
                "admin_qpairs": g.admin_qpairs.load(Relaxed),
                "io_qpairs": g.io_qpairs.load(Relaxed),
                "current_admin_qpairs": g.current_admin_qpairs.load(Relaxed),
                "current_io_qpairs": g.current_io_qpairs.load(Relaxed),
                "pending_bdev_io": g.pending_bdev_io.load(Relaxed),
                "completed_nvme_io": g.completed_nvme_io.load(Relaxed),
                "transports": [{
                    "trtype": "TCP",
                    "connections": g.connections.load(Relaxed),
                    "term_reqs_sent": g.term_reqs_sent.load(Relaxed),
                    "buffer_waits": g.buffer_waits.load(Relaxed),
                    "pending_data_buffer": need_buffer,
                    "request_states": states,
                }],
            })
        })
        .collect();
    Ok(json!({ "tick_rate": 1_000_000_000u64, "poll_groups": groups }))
}
