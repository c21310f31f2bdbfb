//! The long-running roles (`baton target`, `baton relay`, `baton standby`) and the
//! start-up they share: reactors with SIGINT/SIGTERM handlers, the `--bdev`s, every
//! crate's JSON-RPC methods and the `--json` config, then the role's own services, then
//! the JSON-RPC server; on a signal the reactors drain and stop, then the role's services,
//! then the RPC thread ([`serve`]).
//!
//! - `target.rs`: the storage target (nothing of its own beyond the shared start-up).
//! - `relay.rs`: the relay (journal, forwarding).
//! - `standby.rs`: standby volumes' network side, execution images, the standby host and
//!   its image pruning.

mod relay;
mod standby;
mod target;

pub(crate) use relay::{relay_cmd, RelayArgs};
pub(crate) use standby::{standby_cmd, StandbyArgs};
pub(crate) use target::{target, TargetArgs};

use crate::{AnyErr, VERSION};
use clap::Args;
use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The flags every role takes alike.
#[derive(Args)]
pub(crate) struct RoleArgs {
    /// Core mask for the reactors.
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    cpumask: String,
    /// Mode of the JSON-RPC Unix socket, octal (owner read+write required, nothing for
    /// others): 600 by default whatever the umask; e.g. 660 with --rpc-socket-group.
    #[arg(long, default_value = "600", value_parser = octal_mode)]
    rpc_socket_mode: u32,
    /// Group (name or GID) given the JSON-RPC socket, for --rpc-socket-mode 660.
    #[arg(long)]
    rpc_socket_group: Option<String>,
    /// Spin when idle instead of napping (lowest latency, one full core).
    #[arg(long)]
    busy_poll: bool,
    /// Whose rings and buffer pools: `baton` (default, or BATON_ENV) or `dpdk` (a build
    /// with the `dpdk` feature; docs/dpdk.md).
    #[arg(long)]
    env: Option<engine::env::EnvKind>,
    /// PCI functions DPDK may probe (`--env dpdk` only; repeat or separate with commas),
    /// e.g. an NVMe controller bound to vfio-pci for the spdk-nvme bdev. Without it DPDK
    /// sees no PCI device (docs/spdk.md). Adds to BATON_DPDK_PCI_ALLOW.
    #[arg(long = "pci-allow", value_delimiter = ',')]
    pci_allow: Vec<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// `--env` and `--pci-allow`: chooses the engine's environment before any reactor or
/// pool exists.
pub(crate) fn init_env(kind: Option<engine::env::EnvKind>, pci_allow: &[String]) -> Result<(), AnyErr> {
    if kind.is_some() || !pci_allow.is_empty() {
        let mut o = engine::env::EnvOpts::from_env()?;
        o.kind = kind.unwrap_or(o.kind);
        o.allow_pci(pci_allow)?;
        engine::env::init(o)?;
    }
    Ok(())
}

/// TLS 1.3 on the replication links (`docs/security.md`): certificates or a pre-shared key.
#[derive(Args, Clone)]
pub(crate) struct TlsArgs {
    /// The deployment's CA certificate (PEM); with --tls-cert and --tls-key.
    #[arg(long, requires_all = ["tls_cert", "tls_key"], conflicts_with = "tls_psk")]
    tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM), naming <role>.<site>.
    #[arg(long, requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// This process's private key (PEM).
    #[arg(long, requires = "tls_ca")]
    tls_key: Option<PathBuf>,
    /// A file holding the deployment's pre-shared key (at least 32 bytes).
    #[arg(long)]
    tls_psk: Option<PathBuf>,
}

impl TlsArgs {
    /// Loads and installs the credentials for a process of role `own`, if any were given.
    pub(crate) fn install(&self, own: rdma_transport::tls::Role) -> Result<(), AnyErr> {
        use rdma_transport::tls::{self, TlsContext, TlsSettings};
        let parts = TlsSettings::from_parts(
            self.tls_ca.clone(),
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.tls_psk.clone(),
        );
        let settings = match parts {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(()),
            Err(()) => return Err("give --tls-ca, --tls-cert and --tls-key together, or --tls-psk alone".into()),
        };
        let ctx = TlsContext::load(&settings, own)?;
        log::info!("replication links use TLS 1.3 as {}", ctx.name());
        tls::install(ctx)?;
        Ok(())
    }
}

/// What every role takes from its flags for the shared start-up.
pub(crate) struct RoleOpts<'a> {
    /// Core mask, socket access, idle mode.
    pub role: &'a RoleArgs,
    /// The JSON-RPC Unix socket (each role has its own default).
    pub rpc_socket: &'a Path,
    /// Also serve JSON-RPC on this loopback TCP address.
    pub rpc_tcp: Option<SocketAddr>,
    /// `NAME=SPEC` bdevs to create before the config loads.
    pub bdevs: &'a [String],
    /// An SPDK-format JSON config to load.
    pub json: Option<&'a Path>,
}

/// What a role started on top of the shared start-up.
pub(crate) trait Role {
    /// The role's name in its log lines (`baton <name> ...`).
    const NAME: &'static str;
    /// The role its TLS certificate must name.
    const TLS_ROLE: rdma_transport::tls::Role;
    /// The log line's words once the role serves, after `baton <name> <version> `.
    fn running(&self, rpc_socket: &Path) -> String;
    /// Stops what the role started, once the reactors have stopped (the JSON-RPC thread
    /// still runs).
    fn stop(&mut self) {}
}

/// Runs a role until SIGINT/SIGTERM: the shared start-up, then `start` (the role's own
/// services, which may use the bdevs and the config), then the JSON-RPC server. The role
/// is dropped last, after the JSON-RPC thread ended.
pub(crate) fn serve<R: Role>(o: &RoleOpts, start: impl FnOnce() -> Result<R, AnyErr>) -> Result<(), AnyErr> {
    let idle = if o.role.busy_poll {
        IdleMode::Poll
    } else {
        IdleMode::default()
    };
    init_env(o.role.env, &o.role.pci_allow)?;
    rdma_transport::tls::set_process_role(R::TLS_ROLE);
    o.role.tls.install(R::TLS_ROLE)?;
    let reactors = start_reactors(&o.role.cpumask, idle)?;
    engine::reactor::install_signal_handlers(&reactors)?;
    create_bdevs(o.bdevs)?;
    let mut reg = engine::rpc::Registry::new();
    register_all_rpcs(&mut reg);
    if let Some(f) = o.json {
        engine::rpc::load_config(&reg, f)?;
        log::info!("loaded config {}", f.display());
    }
    let mut role = start()?;
    let mut server = engine::rpc::Server::new(reg);
    let access = rpc_access(o.role.rpc_socket_mode, o.role.rpc_socket_group.as_deref())?;
    server.listen_unix_with(o.rpc_socket, access)?;
    if let Some(addr) = o.rpc_tcp {
        server.listen_tcp(addr)?;
    }
    let app = engine::rpc::server::spawn_app_thread(server, reactors.stop_flag())?;
    log::info!("baton {} {VERSION} {}", R::NAME, role.running(o.rpc_socket));
    reactors.wait();
    role.stop();
    let _ = app.join();
    log::info!("baton {} stopped", R::NAME);
    Ok(())
}

/// Reactors on the cores of `mask`, unpinned (with a warning) when it names cores this
/// machine lacks.
pub(crate) fn start_reactors(mask: &str, idle: IdleMode) -> Result<Reactors, AnyErr> {
    let cores = engine::cpumask::parse(mask)?;
    let available = core_count();
    let pin = cores.iter().all(|&c| (c as usize) < available);
    if !pin {
        log::warn!("core mask {mask} names cores this machine lacks ({available} cores): reactors run unpinned");
    }
    Ok(Reactors::start(ReactorOpts { cores, pin, idle })?)
}

pub(crate) fn core_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// `--rpc-socket-mode`: an octal mode (`600`, `0o660`).
fn octal_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| "expected an octal mode such as 600 or 660".to_string())
}

/// `--rpc-socket-mode` / `--rpc-socket-group`: who may connect to the management socket.
fn rpc_access(mode: u32, group: Option<&str>) -> Result<engine::rpc::server::SocketAccess, AnyErr> {
    let gid = match group {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_id(g).ok_or_else(|| format!("--rpc-socket-group {g:?}: no such group"))?,
        }),
    };
    let access = engine::rpc::server::SocketAccess { mode, gid };
    access.check()?;
    Ok(access)
}

/// The GID of group `name` from /etc/group (management path; a group known only to a
/// directory service is given by number instead).
fn group_id(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// `--bdev NAME=SPEC` arguments: create and register each.
fn create_bdevs(specs: &[String]) -> Result<(), AnyErr> {
    for spec in specs {
        let (name, s) = spec
            .split_once('=')
            .ok_or_else(|| format!("--bdev {spec:?}: expected NAME=SPEC, e.g. Malloc0=malloc,size=64M"))?;
        let b = engine::bdev::spec::create_bdev(name, s)?;
        log::info!(
            "bdev {name}: {} x {} B ({})",
            b.num_blocks(),
            b.block_size(),
            b.product_name()
        );
        engine::bdev::register(b)?;
    }
    Ok(())
}

/// Every crate's JSON-RPC methods, in one registry. (`::relay` and `::standby` are the
/// crates, not this module's files of the same names.)
fn register_all_rpcs(reg: &mut engine::rpc::Registry) {
    engine::rpc::methods::register_rpcs(reg);
    nvme::rpc::register_rpcs(reg);
    ::relay::rpc::register_rpcs(reg);
    ::standby::rpc::register_rpcs(reg);
    ::standby::host::register_rpcs(reg);
}

/// A `--listen`/`--standby` address: `IP:PORT` (TCP) or `rdma://IP:PORT`; RDMA is refused
/// here by a build without the `rdma` feature, with a message saying so.
pub(crate) fn endpoint_arg(s: &str) -> Result<rdma_transport::Endpoint, String> {
    let ep = rdma_transport::Endpoint::parse(s).map_err(|e| e.to_string())?;
    rdma_transport::any::check_endpoint(&ep).map_err(|e| e.to_string())?;
    Ok(ep)
}

/// The TCP and (optional) RDMA listen addresses of repeated `--listen` options: at most
/// one of each; the TCP one is `tcp_default` when only an RDMA one is given.
pub(crate) fn split_listen(
    eps: &[rdma_transport::Endpoint],
    tcp_default: &str,
) -> Result<(SocketAddr, Option<SocketAddr>), AnyErr> {
    use rdma_transport::Endpoint;
    let tcp: Vec<SocketAddr> = eps.iter().filter(|e| !e.is_rdma()).map(|e| e.addr()).collect();
    let rdma: Vec<SocketAddr> = eps.iter().filter(|e| e.is_rdma()).map(Endpoint::addr).collect();
    if tcp.len() > 1 || rdma.len() > 1 {
        return Err("--listen: at most one TCP and one rdma:// address".into());
    }
    let tcp = match tcp.first() {
        Some(a) => *a,
        None => tcp_default
            .parse()
            .map_err(|e| format!("--listen default {tcp_default}: {e}"))?,
    };
    Ok((tcp, rdma.first().copied()))
}
