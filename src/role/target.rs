//! `baton target`: the storage target, reactors and bdevs managed over JSON-RPC (the
//! NVMe-oF target, replicated volumes) until SIGINT/SIGTERM.

use super::{serve, Role, RoleOpts};
use crate::AnyErr;
use clap::Args;
use std::path::Path;

#[derive(Args)]
pub(crate) struct TargetArgs {
    /// Core mask for the reactors.
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    cpumask: String,
    /// JSON-RPC Unix socket.
    #[arg(short = 'r', long = "rpc-socket", default_value = engine::rpc::server::DEFAULT_SOCKET_PATH)]
    rpc_socket: std::path::PathBuf,
    /// Mode of the JSON-RPC Unix socket, octal (owner read+write required, nothing for
    /// others): 600 by default whatever the umask; e.g. 660 with --rpc-socket-group.
    #[arg(long, default_value = "600", value_parser = super::octal_mode)]
    rpc_socket_mode: u32,
    /// Group (name or GID) given the JSON-RPC socket, for --rpc-socket-mode 660.
    #[arg(long)]
    rpc_socket_group: Option<String>,
    /// Also serve JSON-RPC on this loopback TCP address (e.g. 127.0.0.1:5260).
    #[arg(long)]
    rpc_tcp: Option<std::net::SocketAddr>,
    /// Load an SPDK-format JSON config at start-up.
    #[arg(long = "json")]
    json: Option<std::path::PathBuf>,
    /// Bdevs to create at start-up, as NAME=SPEC (see `baton perf --bdev`).
    #[arg(long = "bdev")]
    bdevs: Vec<String>,
    /// Spin when idle instead of napping (lowest latency, one full core).
    #[arg(long)]
    busy_poll: bool,
}

/// The target has nothing of its own beyond the shared start-up.
struct Target;

impl Role for Target {
    const NAME: &'static str = "target";
    fn running(&self, rpc_socket: &Path) -> String {
        format!(
            "running; JSON-RPC on {}; SIGINT or SIGTERM stops it",
            rpc_socket.display()
        )
    }
}

pub(crate) fn target(a: TargetArgs) -> Result<(), AnyErr> {
    let o = RoleOpts {
        cpumask: &a.cpumask,
        busy_poll: a.busy_poll,
        rpc_socket: &a.rpc_socket,
        rpc_socket_mode: a.rpc_socket_mode,
        rpc_socket_group: a.rpc_socket_group.as_deref(),
        rpc_tcp: a.rpc_tcp,
        bdevs: &a.bdevs,
        json: a.json.as_deref(),
    };
    serve(&o, || Ok(Target))
}
