//! `baton relay`: journal primaries' writes, forward them to the standby.

use super::{serve, Role, RoleArgs, RoleOpts};
use crate::AnyErr;
use clap::Args;
use engine::bdev::spec::parse_size;
use relay::relay::{ForwardPolicy, Relay};
use std::path::Path;
use std::sync::Arc;

#[derive(Args)]
pub(crate) struct RelayArgs {
    #[command(flatten)]
    role: RoleArgs,
    /// JSON-RPC Unix socket.
    #[arg(short = 'r', long = "rpc-socket", default_value = "/var/tmp/baton-relay.sock")]
    rpc_socket: std::path::PathBuf,
    /// Address primaries connect to: IP:PORT (TCP) and/or rdma://IP:PORT (RDMA); give it
    /// twice to take primaries over both (the TCP one defaults to 127.0.0.1:4520).
    #[arg(long, default_value = "127.0.0.1:4520", value_parser = super::endpoint_arg)]
    listen: Vec<rdma_transport::Endpoint>,
    /// Directory holding one journal directory per volume.
    #[arg(long)]
    journal_dir: std::path::PathBuf,
    /// Bound of each volume's journal in bytes (K/M/G suffixes).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    journal_bytes_max: u64,
    /// Journal segment size (K/M/G suffixes).
    #[arg(long, default_value = "8M", value_parser = parse_size)]
    segment_bytes: u64,
    /// Released segment files each journal keeps and reuses instead of creating new ones.
    #[arg(long, default_value_t = relay::journal::SPARE_SEGMENTS_DEFAULT)]
    spare_segments: usize,
    /// Bytes of segment files each journal creates (zero-filled) when opened: space
    /// reserved up front, appends into allocated pages/blocks from the start (K/M/G).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    journal_preallocate: u64,
    /// The standby to forward to (IP:PORT or rdma://IP:PORT); none: hold only.
    #[arg(long, value_parser = super::endpoint_arg)]
    standby: Option<rdma_transport::Endpoint>,
    /// Forwarding timing: immediate | interval:MS | window:HH:MM-HH:MM[,..] (UTC) | bandwidth:BYTES_PER_SEC.
    #[arg(long, default_value = "immediate", value_parser = ForwardPolicy::parse)]
    forward: ForwardPolicy,
    /// Backup relay: journal and acknowledge, answer the standby's gap requests, never push.
    #[arg(long)]
    backup: bool,
    /// Buffered journal writes instead of O_DIRECT.
    #[arg(long)]
    no_direct: bool,
}

/// The relay the role started.
struct RelayRole(Arc<Relay>);

impl Role for RelayRole {
    const NAME: &'static str = "relay";
    const TLS_ROLE: rdma_transport::tls::Role = rdma_transport::tls::Role::Relay;
    fn running(&self, rpc_socket: &Path) -> String {
        let rdma = match self.0.config().listen_rdma {
            Some(a) => format!(" and rdma://{a}"),
            None => String::new(),
        };
        format!(
            "listening on {}{rdma}; JSON-RPC on {}",
            self.0.listen_addr(),
            rpc_socket.display()
        )
    }
}

pub(crate) fn relay_cmd(a: RelayArgs) -> Result<(), AnyErr> {
    let (tcp, rdma) = super::split_listen(&a.listen, "127.0.0.1:4520")?;
    let mut cfg = relay::relay::RelayConfig::new(tcp, &a.journal_dir);
    cfg.listen_rdma = rdma;
    cfg.journal_bytes_max = a.journal_bytes_max;
    cfg.segment_bytes = a.segment_bytes;
    cfg.spare_segments = a.spare_segments;
    cfg.journal_preallocate_bytes = a.journal_preallocate;
    cfg.standby = a.standby;
    cfg.forward = a.forward.clone();
    cfg.forwarder = !a.backup;
    cfg.direct_io = !a.no_direct;
    // Out-of-range settings stop here, before any reactor or file (Relay::start checks
    // again for in-process relays).
    cfg.validate()?;
    let o = RoleOpts {
        role: &a.role,
        rpc_socket: &a.rpc_socket,
        rpc_tcp: None,
        bdevs: &[],
        json: None,
    };
    serve(&o, || {
        let r = Relay::start(cfg)?;
        relay::rpc::set_relay(r.clone());
        Ok(RelayRole(r))
    })
}
