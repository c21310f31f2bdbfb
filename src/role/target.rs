//! `baton target`: the storage target, reactors and bdevs managed over JSON-RPC (the
//! NVMe-oF target, replicated volumes) until SIGINT/SIGTERM.

use super::{serve, Role, RoleArgs, RoleOpts};
use crate::AnyErr;
use clap::Args;
use std::path::Path;

#[derive(Args)]
pub(crate) struct TargetArgs {
    #[command(flatten)]
    role: RoleArgs,
    /// JSON-RPC Unix socket.
    #[arg(short = 'r', long = "rpc-socket", default_value = engine::rpc::server::DEFAULT_SOCKET_PATH)]
    rpc_socket: std::path::PathBuf,
    /// Also serve JSON-RPC on this loopback TCP address (e.g. 127.0.0.1:5260).
    #[arg(long)]
    rpc_tcp: Option<std::net::SocketAddr>,
    /// Load an SPDK-format JSON config at start-up.
    #[arg(long = "json")]
    json: Option<std::path::PathBuf>,
    /// Bdevs to create at start-up, as NAME=SPEC (see `baton perf --bdev`).
    #[arg(long = "bdev")]
    bdevs: Vec<String>,
}

/// The target has nothing of its own beyond the shared start-up.
struct Target;

impl Role for Target {
    const NAME: &'static str = "target";
    const TLS_ROLE: rdma_transport::tls::Role = rdma_transport::tls::Role::Primary;
    fn running(&self, rpc_socket: &Path) -> String {
        format!(
            "running; JSON-RPC on {}; SIGINT or SIGTERM stops it",
            rpc_socket.display()
        )
    }
}

pub(crate) fn target(a: TargetArgs) -> Result<(), AnyErr> {
    let o = RoleOpts {
        role: &a.role,
        rpc_socket: &a.rpc_socket,
        rpc_tcp: a.rpc_tcp,
        bdevs: &a.bdevs,
        json: a.json.as_deref(),
    };
    serve(&o, || Ok(Target))
}
