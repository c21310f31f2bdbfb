//! `nvmf_get_stats`: the per-poll-group queue pair and I/O counters of the TCP transport
//! and, with the `rdma` feature, of the RDMA transport, in SPDK's shape: one entry per
//! reactor's poll group, its transports listed in it (`docs/nvme-tcp.md`,
//! `docs/nvme-rdma.md`, `docs/rpc.md`).

use super::{check_tgt, RpcFailure};
use crate::nvmf::tcp::{GroupStats, REQ_STATE_NAMES, REQ_STATE_NEED_BUFFER};
use crate::nvmf::Target;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetStats {
    pub tgt_name: Option<String>,
}

/// The counters every transport's poll group has, in `nvmf_get_stats`'s order.
const GROUP_COUNTERS: [&str; 6] = [
    "admin_qpairs",
    "io_qpairs",
    "current_admin_qpairs",
    "current_io_qpairs",
    "pending_bdev_io",
    "completed_nvme_io",
];

fn tcp_counters(g: &GroupStats) -> [u64; 6] {
    [
        g.admin_qpairs.load(Relaxed),
        g.io_qpairs.load(Relaxed),
        g.current_admin_qpairs.load(Relaxed),
        g.current_io_qpairs.load(Relaxed),
        g.pending_bdev_io.load(Relaxed),
        g.completed_nvme_io.load(Relaxed),
    ]
}

fn tcp_transport(g: &GroupStats) -> Value {
    let states: serde_json::Map<String, Value> = REQ_STATE_NAMES
        .iter()
        .zip(g.req_states.iter())
        .map(|(n, c)| (n.to_string(), json!(c.load(Relaxed))))
        .collect();
    json!({
        "trtype": "TCP",
        "connections": g.connections.load(Relaxed),
        "term_reqs_sent": g.term_reqs_sent.load(Relaxed),
        "buffer_waits": g.buffer_waits.load(Relaxed),
        "empty_reads": g.empty_reads.load(Relaxed),
        "pending_data_buffer": g.req_states[REQ_STATE_NEED_BUFFER].load(Relaxed),
        "request_states": states,
    })
}

/// Each transport's poll groups: (core, the group's counters, its transport entry).
fn transport_groups() -> Vec<(u32, [u64; 6], Value)> {
    let v: Vec<(u32, [u64; 6], Value)> = crate::nvmf::tcp::group_stats()
        .iter()
        .map(|g| (g.core, tcp_counters(g), tcp_transport(g)))
        .collect();
    #[cfg(feature = "rdma")]
    let mut v = v;
    #[cfg(feature = "rdma")]
    v.extend(crate::nvmf::rdma::group_stats().iter().map(|g| {
        let c = [
            g.admin_qpairs.load(Relaxed),
            g.io_qpairs.load(Relaxed),
            g.current_admin_qpairs.load(Relaxed),
            g.current_io_qpairs.load(Relaxed),
            g.pending_bdev_io.load(Relaxed),
            g.completed_nvme_io.load(Relaxed),
        ];
        (g.core, c, g.transport_json())
    }));
    v
}

/// One entry per core: the counters summed over its transports' groups, the transports
/// listed (TCP first).
fn merge(groups: Vec<(u32, [u64; 6], Value)>) -> Vec<Value> {
    let mut cores: Vec<u32> = groups.iter().map(|g| g.0).collect();
    cores.sort_unstable();
    cores.dedup();
    cores
        .into_iter()
        .map(|core| {
            let mut sum = [0u64; 6];
            let mut transports = Vec::new();
            for (_, c, t) in groups.iter().filter(|g| g.0 == core) {
                sum.iter_mut().zip(c).for_each(|(s, c)| *s += c);
                transports.push(t.clone());
            }
            let mut m = serde_json::Map::new();
            m.insert("name".into(), json!(format!("nvmf_tgt_poll_group_{core:03}")));
            for (k, v) in GROUP_COUNTERS.iter().zip(sum) {
                m.insert((*k).into(), json!(v));
            }
            m.insert("transports".into(), Value::Array(transports));
            Value::Object(m)
        })
        .collect()
}

pub fn nvmf_get_stats(_t: &Target, p: Option<GetStats>) -> Result<Value, RpcFailure> {
    check_tgt(&p.unwrap_or_default().tgt_name)?;
    let groups = merge(transport_groups());
    Ok(json!({ "tick_rate": 1_000_000_000u64, "poll_groups": groups }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_of_one_core_merge_with_their_transports() {
        let g = vec![
            (1, [1, 2, 1, 2, 0, 10], json!({"trtype": "TCP"})),
            (0, [1, 0, 1, 0, 0, 0], json!({"trtype": "TCP"})),
            (1, [1, 1, 0, 1, 3, 5], json!({"trtype": "RDMA"})),
        ];
        let m = merge(g);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0]["name"], "nvmf_tgt_poll_group_000");
        let one = &m[1];
        assert_eq!(one["admin_qpairs"], 2);
        assert_eq!(one["current_io_qpairs"], 3);
        assert_eq!(one["pending_bdev_io"], 3);
        assert_eq!(one["completed_nvme_io"], 15);
        assert_eq!(one["transports"][0]["trtype"], "TCP");
        assert_eq!(one["transports"][1]["trtype"], "RDMA");
    }
}
