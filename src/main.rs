//! `baton`: one binary, one role per process (see `docs/architecture.md`).
//!
//! - `baton demo`: the one-command tour: primary, two relays and the standby as
//!   processes on loopback, the ledger application, a kill of the primary site,
//!   failover and restart from the execution image (`demo.rs`); `--scenario
//!   initial-sync|switchover|failback`, the other lifecycle steps (`demo_lifecycle.rs`).
//! - `baton chaos`: kill -9 rounds on the whole setup with a self-checking
//!   writer (`chaos.rs`, `chaos_writer.rs`).
//! - `baton ledger`: the demo application (`ledger.rs`).
//! - `baton selfcheck`: reactors + bdevs + a verifying workload.
//! - `baton perf`: the perf harness (`spdk_nvme_perf` / `bdevperf` flags).
//! - `baton target`: the storage target process (reactors, bdevs).
//! - `baton relay`: journal primaries' writes, forward them to the standby.
//! - `baton standby`: receive relays' streams into standby volumes.

mod chaos;
mod chaos_report;
mod chaos_writer;
mod demo;
mod demo_lifecycle;
mod ledger;
mod perf_targets;
mod plan;
mod procs;
mod switchover;

use clap::{Args, Parser, Subcommand};
use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use perf::report::{compare_table, plot_svg, Report};
use perf::{Pattern, WorkloadOpts};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BATON_GIT_COMMIT"), ")");

#[derive(Parser)]
#[command(name = "baton", version = VERSION, about = "Polled-mode block storage engine for disaster recovery")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole mission on this machine: primary, relays, standby, the ledger
    /// application, a primary failure, failover and restart (RAM back ends, no setup).
    Demo(demo::DemoArgs),
    /// Chaos rounds on the whole setup: SIGKILL a random role (primary, relays, standby)
    /// at a random moment, restart or fail over, and check a self-checking writer's record.
    Chaos(chaos::ChaosArgs),
    /// The demo application: a bank ledger over NVMe/TCP with restart points and
    /// incremental execution images.
    Ledger(ledger::LedgerArgs),
    /// Start reactors and bdevs and run a short verifying workload on each.
    Selfcheck(SelfcheckArgs),
    /// Measure IOPS, bandwidth and latency of a bdev.
    Perf(PerfArgs),
    /// Run a storage target: reactors and bdevs until SIGINT/SIGTERM.
    Target(TargetArgs),
    /// Call a JSON-RPC method of a running baton (SPDK rpc.py compatible).
    Rpc(RpcArgs),
    /// Run a relay: journal primaries' writes, forward them to the standby.
    Relay(RelayArgs),
    /// Run a standby: receive relays' streams into delayed-write or snapshot volumes.
    Standby(StandbyArgs),
    /// A planned switchover: demote the primary at a restart point, promote the standby
    /// with no acknowledged write lost, export it (optionally replicate it onward).
    Switchover(switchover::SwitchoverArgs),
    /// Measure this machine's limits (4 KiB memcpy rate, loopback TCP round
    /// trip) to report baton's figures as ratios to them.
    Limits,
    /// Plan relay placement: which relay sets meet a write-latency budget outside the
    /// disaster radius (probes the relays given by address).
    Plan(plan::PlanArgs),
}

#[derive(Args)]
struct SelfcheckArgs {
    /// Core mask for the reactors (hex `0x3` or list `[0,1]`).
    #[arg(short = 'm', long = "cpumask", default_value = "0x3")]
    cpumask: String,
    /// Seconds per workload.
    #[arg(short = 't', long, default_value_t = 2.0)]
    time: f64,
}

#[derive(Args, Clone)]
struct PerfArgs {
    /// Bdev to drive: malloc[,size=N][,bs=N] | null[,size=N] | uring:PATH[,size=N][,bs=N],
    /// optionally with ,replicate=N (see docs/perf.md).
    #[arg(long, default_value = "malloc,size=256M")]
    bdev: String,
    /// Drive a remote NVMe/TCP namespace instead of --bdev: a transport ID as
    /// spdk_nvme_perf takes it, 'trtype:TCP adrfam:IPv4 traddr:IP trsvcid:PORT [subnqn:NQN] [ns:N]'.
    #[arg(short = 'r', long = "transport-id", conflicts_with = "bdev")]
    trid: Option<String>,
    /// Replicate the target (--bdev or -r) over N relays.
    #[arg(long)]
    replicate: Option<usize>,
    /// Compare with a second target run the same way (prints both and the ratio): a bdev spec
    /// [,replicate=N], a transport ID, `plain` (the first target unreplicated) or
    /// `replicate=N` (the first target's base over N relays).
    #[arg(long)]
    compare: Option<String>,
    /// Relays' journal directory (in-process relays; default a temporary dir under /dev/shm).
    #[arg(long)]
    journal_dir: Option<std::path::PathBuf>,
    /// Acknowledgement policy of the replicated volume: all | quorum:K | any.
    #[arg(long, default_value = "all")]
    ack: String,
    /// Use running relays (`baton relay`) HOST:PORT,... instead of starting them in-process.
    #[arg(long, value_delimiter = ',')]
    relays: Vec<String>,
    /// Cores of in-process relays (default: the -m cores); reactors start on both masks,
    /// workers only on -m.
    #[arg(long)]
    relay_cpumask: Option<String>,
    /// Bound of each in-process relay journal (K/M/G suffixes).
    #[arg(long, default_value = "8G")]
    journal_bytes_max: String,
    /// Buffered journal writes for in-process relays instead of O_DIRECT.
    #[arg(long)]
    journal_no_direct: bool,
    /// Bytes of segment files each in-process relay journal creates before the run
    /// (K/M/G; 0: none): the run measures relays whose journals write into allocated
    /// pages/blocks, as a relay in service does once its released segments are reused.
    #[arg(long, default_value = "0")]
    journal_preallocate: String,
    /// Queue depth per core.
    #[arg(short = 'q', long = "queue-depth", default_value_t = 32)]
    queue_depth: u32,
    /// I/O size in bytes.
    #[arg(short = 'o', long = "io-size", default_value_t = 4096)]
    io_size: u32,
    /// Pattern: read, write, randread, randwrite, rw, randrw.
    #[arg(short = 'w', long = "workload", default_value = "randread")]
    workload: String,
    /// Read percentage for rw/randrw.
    #[arg(short = 'M', long = "rwmixread", default_value_t = 50)]
    read_pct: u8,
    /// Seconds to measure.
    #[arg(short = 't', long, default_value_t = 10.0)]
    time: f64,
    /// Seconds of warm-up excluded from the figures.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Core mask (`-m 0x1`, `-c 0x1` both work).
    #[arg(short = 'm', long = "cpumask", visible_short_alias = 'c', default_value = "0x1")]
    cpumask: String,
    /// Latency summary (-L) or full histogram (-LL).
    #[arg(short = 'L', action = clap::ArgAction::Count)]
    latency: u8,
    /// Check data: stamp writes with LBA and generation, verify reads.
    #[arg(long)]
    verify: bool,
    /// With -r: keep reconnecting a lost target for this many seconds (-1 forever, 0 never),
    /// SPDK bdev_nvme's ctrlr_loss_timeout_sec.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    ctrlr_loss_timeout_sec: i32,
    /// With -r: seconds between reconnect attempts (SPDK's reconnect_delay_sec).
    #[arg(long, default_value_t = 0)]
    reconnect_delay_sec: u32,
    /// With -r: seconds after which I/O waiting for a reconnect fails (0: it waits);
    /// SPDK's fast_io_fail_timeout_sec.
    #[arg(long, default_value_t = 0)]
    fast_io_fail_timeout_sec: u32,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Write an SVG latency plot here.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// Let idle reactors nap (default: spin, for the lowest latency).
    #[arg(long)]
    adaptive_idle: bool,
}

#[derive(Args)]
struct RpcArgs {
    /// Unix socket path, or HOST:PORT for TCP.
    #[arg(short = 's', long = "server", default_value = engine::rpc::server::DEFAULT_SOCKET_PATH)]
    server: std::path::PathBuf,
    /// Method name, e.g. bdev_get_bdevs.
    method: String,
    /// Parameters: one JSON object, or --name value pairs (values parsed as JSON, else strings).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Args)]
struct RelayArgs {
    /// Core mask for the reactors.
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    cpumask: String,
    /// JSON-RPC Unix socket.
    #[arg(short = 'r', long = "rpc-socket", default_value = "/var/tmp/baton-relay.sock")]
    rpc_socket: std::path::PathBuf,
    /// Mode of the JSON-RPC Unix socket, octal (owner read+write required, nothing for
    /// others): 600 by default whatever the umask; e.g. 660 with --rpc-socket-group.
    #[arg(long, default_value = "600")]
    rpc_socket_mode: String,
    /// Group (name or GID) given the JSON-RPC socket, for --rpc-socket-mode 660.
    #[arg(long)]
    rpc_socket_group: Option<String>,
    /// Address primaries connect to.
    #[arg(long, default_value = "127.0.0.1:4520")]
    listen: std::net::SocketAddr,
    /// Directory holding one journal directory per volume.
    #[arg(long)]
    journal_dir: std::path::PathBuf,
    /// Bound of each volume's journal in bytes (K/M/G suffixes).
    #[arg(long, default_value = "1G")]
    journal_bytes_max: String,
    /// Journal segment size (K/M/G suffixes).
    #[arg(long, default_value = "8M")]
    segment_bytes: String,
    /// Released segment files each journal keeps and reuses instead of creating new ones.
    #[arg(long, default_value_t = relay::journal::SPARE_SEGMENTS_DEFAULT)]
    spare_segments: usize,
    /// Bytes of segment files each journal creates (zero-filled) when opened: space
    /// reserved up front, appends into allocated pages/blocks from the start (K/M/G).
    #[arg(long, default_value = "0")]
    journal_preallocate: String,
    /// The standby to forward to (IP:PORT); none: hold only.
    #[arg(long)]
    standby: Option<std::net::SocketAddr>,
    /// Forwarding timing: immediate | interval:MS | window:HH:MM-HH:MM[,..] (UTC) | bandwidth:BYTES_PER_SEC.
    #[arg(long, default_value = "immediate")]
    forward: String,
    /// Backup relay: journal and acknowledge, answer the standby's gap requests, never push.
    #[arg(long)]
    backup: bool,
    /// Buffered journal writes instead of O_DIRECT.
    #[arg(long)]
    no_direct: bool,
    /// Spin when idle instead of napping.
    #[arg(long)]
    busy_poll: bool,
}

#[derive(Args)]
struct StandbyArgs {
    /// Core mask for the reactors.
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    cpumask: String,
    /// JSON-RPC Unix socket.
    #[arg(short = 'r', long = "rpc-socket", default_value = "/var/tmp/baton-standby.sock")]
    rpc_socket: std::path::PathBuf,
    /// Mode of the JSON-RPC Unix socket, octal (owner read+write required, nothing for
    /// others): 600 by default whatever the umask; e.g. 660 with --rpc-socket-group.
    #[arg(long, default_value = "600")]
    rpc_socket_mode: String,
    /// Group (name or GID) given the JSON-RPC socket, for --rpc-socket-mode 660.
    #[arg(long)]
    rpc_socket_group: Option<String>,
    /// Address relays connect to.
    #[arg(long, default_value = standby::net::LISTEN_DEFAULT)]
    listen: std::net::SocketAddr,
    /// Load an SPDK-format JSON config at start-up (bdevs, standby_create, ...).
    #[arg(long = "json")]
    json: Option<std::path::PathBuf>,
    /// Bdevs to create at start-up, as NAME=SPEC (see `baton perf --bdev`).
    #[arg(long = "bdev")]
    bdevs: Vec<String>,
    /// Spin when idle instead of napping.
    #[arg(long)]
    busy_poll: bool,
    /// Standby host: UDP address the primaries' direct heartbeats arrive on.
    #[arg(long)]
    heartbeat_listen: Option<std::net::SocketAddr>,
    /// Primary declared failed after this long unheard directly AND through every relay.
    #[arg(long, default_value_t = standby::failover::PRIMARY_TIMEOUT_MS_DEFAULT)]
    primary_timeout_ms: u64,
    /// Age after which a relay's report of the primary no longer counts (default: --primary-timeout-ms).
    #[arg(long)]
    relay_timeout_ms: Option<u64>,
    /// Volume to fail over: PRIMARY=STANDBY[:HEAD][@NSID], or NAME when both are named alike
    /// (repeatable; the first one's restart point names the execution image).
    #[arg(long = "failover-volume")]
    failover_volumes: Vec<String>,
    /// NQN of the subsystem the promoted volumes are exported in.
    #[arg(long, default_value = "nqn.2016-06.io.baton:standby")]
    failover_nqn: String,
    /// NVMe/TCP address the promoted volumes are exported on (none: promote only).
    #[arg(long)]
    failover_listen: Option<std::net::SocketAddr>,
    /// Shell command that restarts the application after failover (BATON_IMAGE, BATON_TRADDR,
    /// BATON_TRSVCID, BATON_SUBNQN, BATON_NSID, BATON_EPOCH, BATON_RESTART_TAG are set).
    #[arg(long)]
    on_failover: Option<String>,
    /// Detect and report only; fail over when `standby_host_declare_failure` is called.
    #[arg(long)]
    no_auto_failover: bool,
    /// At failover, bound on draining the relays (taking in what they hold and the
    /// standby lacks) before rolling back; 0 disables the drain.
    #[arg(long, default_value_t = standby::host::DRAIN_TIMEOUT_MS_DEFAULT)]
    drain_timeout_ms: u64,
    /// At failover, what to do with a standby whose initial sync is not complete (not a
    /// valid failover target): refuse (default; `standby_host_declare_failure` with force
    /// overrides) or warn (promote anyway, loudly).
    #[arg(long, default_value = "refuse")]
    syncing_failover: standby::host::SyncingFailover,
    /// At failover, bound on the rollback of each volume.
    #[arg(long, default_value_t = standby::host::ROLLBACK_TIMEOUT_MS_DEFAULT)]
    rollback_timeout_ms: u64,
    /// Execution-image server address (the primary host's application sends images here).
    #[arg(long)]
    image_listen: Option<std::net::SocketAddr>,
    /// Directory of the execution-image store.
    #[arg(long, default_value = "/var/tmp/baton-images")]
    image_dir: std::path::PathBuf,
    /// Application name whose image is restored on failover.
    #[arg(long, default_value = "ledger")]
    image_app: String,
}

#[derive(Args)]
struct TargetArgs {
    /// Core mask for the reactors.
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    cpumask: String,
    /// JSON-RPC Unix socket.
    #[arg(short = 'r', long = "rpc-socket", default_value = engine::rpc::server::DEFAULT_SOCKET_PATH)]
    rpc_socket: std::path::PathBuf,
    /// Mode of the JSON-RPC Unix socket, octal (owner read+write required, nothing for
    /// others): 600 by default whatever the umask; e.g. 660 with --rpc-socket-group.
    #[arg(long, default_value = "600")]
    rpc_socket_mode: String,
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

fn main() -> ExitCode {
    // Without BATON_LOG the logger passes everything up to debug and the level is capped at
    // info, so `log_set_level DEBUG` (JSON-RPC) can raise it at run time.
    let explicit = std::env::var_os("BATON_LOG").is_some();
    env_logger::Builder::from_env(env_logger::Env::default().filter_or("BATON_LOG", "debug"))
        .format_timestamp_micros()
        .init();
    if !explicit {
        log::set_max_level(log::LevelFilter::Info);
    }
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Demo(a) => demo::run(a),
        Cmd::Switchover(a) => switchover::run(a),
        Cmd::Chaos(a) => chaos::run(a),
        Cmd::Ledger(a) => ledger::run(a).map_err(|e| e.into()),
        Cmd::Selfcheck(a) => selfcheck(a),
        Cmd::Perf(a) => perf_cmd(a),
        Cmd::Target(a) => target(a),
        Cmd::Limits => limits(),
        Cmd::Relay(a) => relay_cmd(a),
        Cmd::Standby(a) => standby_cmd(a),
        Cmd::Rpc(a) => rpc(a),
        Cmd::Plan(a) => plan::run(a).map_err(|e| e.into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton: {e}");
            ExitCode::FAILURE
        }
    }
}

type AnyErr = Box<dyn std::error::Error>;

fn start_reactors(mask: &str, idle: IdleMode) -> Result<Reactors, AnyErr> {
    let cores = engine::cpumask::parse(mask)?;
    let available = core_count();
    let pin = cores.iter().all(|&c| (c as usize) < available);
    if !pin {
        log::warn!("core mask {mask} names cores this machine lacks ({available} cores): reactors run unpinned");
    }
    Ok(Reactors::start(ReactorOpts { cores, pin, idle })?)
}

fn core_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn perf_cmd(a: PerfArgs) -> Result<(), AnyErr> {
    use perf_targets::{parse_ack, parse_compare, parse_target, ReplOpts};
    let opts = WorkloadOpts {
        queue_depth: a.queue_depth,
        io_size_bytes: a.io_size,
        pattern: Pattern::parse(&a.workload)?,
        read_pct: a.read_pct,
        time: Duration::from_secs_f64(a.time),
        warmup: Duration::from_secs_f64(a.warmup),
        verify: a.verify,
        seed: 0x5eed,
        drain_timeout: perf::DRAIN_TIMEOUT_DEFAULT,
    };
    let mut first = parse_target(a.trid.as_deref().unwrap_or(&a.bdev))?;
    if let Some(n) = a.replicate {
        if n == 0 || n > perf_targets::RELAYS_MAX {
            return Err(format!("--replicate {n}: expected 1..={}", perf_targets::RELAYS_MAX).into());
        }
        first.replicate = n;
    }
    let mut targets = vec![first.clone()];
    if let Some(c) = &a.compare {
        targets.push(parse_compare(c)?.resolve(&first));
    }
    let relays = a
        .relays
        .iter()
        .map(|s| {
            s.parse::<std::net::SocketAddr>()
                .map_err(|e| format!("--relays {s}: {e} (expected HOST:PORT)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let workers = engine::cpumask::parse(&a.cpumask)?;
    let relay_cores = match &a.relay_cpumask {
        Some(m) => engine::cpumask::parse(m)?,
        None => workers.clone(),
    };
    let mut all = workers.clone();
    for c in &relay_cores {
        if !all.contains(c) {
            all.push(*c);
        }
    }
    all.sort_unstable();
    let (journal_dir, journal_dir_is_temp) = match &a.journal_dir {
        Some(d) => (d.clone(), false),
        None => {
            let root = if std::path::Path::new("/dev/shm").is_dir() {
                "/dev/shm"
            } else {
                "/tmp"
            };
            (
                std::path::PathBuf::from(root).join(format!("baton-perf-{}", std::process::id())),
                true,
            )
        }
    };
    let ro = ReplOpts {
        journal_dir,
        journal_dir_is_temp,
        ack: parse_ack(&a.ack)?,
        relays,
        relay_cores,
        link_core: workers[0],
        journal_bytes_max: perf::spec::parse_size(&a.journal_bytes_max)?,
        segment_bytes: 256 << 20,
        no_direct: a.journal_no_direct,
        preallocate_bytes: perf::spec::parse_size(&a.journal_preallocate)?,
    };
    let idle = if a.adaptive_idle {
        IdleMode::default()
    } else {
        IdleMode::Poll
    };
    let mask = format!("[{}]", all.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","));
    let reactors = start_reactors(&mask, idle)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        // Ctrl-C ends the measurement early and prints what was measured.
        let stop = stop.clone();
        let flag = Arc::new(AtomicBool::new(false));
        signal_hook_register(flag.clone())?;
        std::thread::spawn(move || loop {
            if flag.load(Ordering::Relaxed) {
                stop.store(true, Ordering::Relaxed);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        });
    }
    let mut reports = Vec::new();
    let mut infos = Vec::new();
    let mut run = || -> Result<(), AnyErr> {
        for (i, t) in targets.iter().enumerate() {
            let reconnect = nvme::host::bdev::ReconnectOpts {
                ctrlr_loss_timeout_sec: a.ctrlr_loss_timeout_sec,
                reconnect_delay_sec: a.reconnect_delay_sec,
                fast_io_fail_timeout_sec: a.fast_io_fail_timeout_sec,
            };
            let built = perf_targets::build(t, i, workers.len(), a.queue_depth, &ro, reconnect)?;
            let quiet = a.json;
            let results = perf::run_bdev_on(
                &reactors,
                &workers,
                built.bdev.clone(),
                &opts,
                stop.clone(),
                |el, ios| {
                    if !quiet {
                        eprint!("\r  {:>5.1} s  {:>12} I/O  ", el.as_secs_f64(), ios);
                    }
                },
            );
            if !quiet {
                eprint!("\r{:60}\r", "");
            }
            let info = built.json();
            let label = built.label.clone();
            built.finish(&ro)?;
            reports.push(Report::new(&label, &opts, results?));
            infos.push(info);
        }
        Ok(())
    };
    let r = run();
    if let Err(e) = r {
        reactors.shutdown();
        reactors.wait();
        return Err(e);
    }
    if a.json {
        let v: Vec<_> = reports
            .iter()
            .zip(&infos)
            .map(|(r, info)| {
                let mut j = r.json();
                j["target"] = info.clone();
                j
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&if v.len() == 1 { v[0].clone() } else { v.into() })?
        );
    } else {
        for r in &reports {
            println!("{}", r.table(a.latency >= 1, a.latency >= 2));
        }
        if reports.len() == 2 {
            println!("{}", compare_table(&reports[0], &reports[1]));
        }
    }
    if let Some(p) = &a.plot {
        std::fs::write(p, plot_svg(&reports.iter().collect::<Vec<_>>()))?;
        eprintln!("latency plot written to {}", p.display());
    }
    reactors.shutdown();
    reactors.wait();
    let failed = reports
        .iter()
        .any(|r| r.total.errors > 0 || r.total.verify_failures > 0);
    if failed {
        return Err("I/O errors or verification failures (see above)".into());
    }
    Ok(())
}

fn signal_hook_register(flag: Arc<AtomicBool>) -> std::io::Result<()> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal asks for an orderly stop; a second one, while that stop waits
        // (for I/O a broken target never completes), ends the process at once.
        signal_hook::flag::register_conditional_shutdown(sig, 1, flag.clone())?;
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(())
}

fn target(a: TargetArgs) -> Result<(), AnyErr> {
    let idle = if a.busy_poll {
        IdleMode::Poll
    } else {
        IdleMode::default()
    };
    let reactors = start_reactors(&a.cpumask, idle)?;
    engine::reactor::install_signal_handlers(&reactors)?;
    create_bdevs(&a.bdevs)?;
    let mut reg = engine::rpc::Registry::new();
    register_all_rpcs(&mut reg);
    if let Some(f) = &a.json {
        engine::rpc::load_config(&reg, f)?;
        log::info!("loaded config {}", f.display());
    }
    let mut server = engine::rpc::Server::new(reg);
    server.listen_unix_with(
        &a.rpc_socket,
        rpc_access(&a.rpc_socket_mode, a.rpc_socket_group.as_deref())?,
    )?;
    if let Some(addr) = a.rpc_tcp {
        server.listen_tcp(addr)?;
    }
    let app = engine::rpc::server::spawn_app_thread(server, reactors.stop_flag())?;
    log::info!(
        "baton target {VERSION} running; JSON-RPC on {}; SIGINT or SIGTERM stops it",
        a.rpc_socket.display()
    );
    reactors.wait();
    let _ = app.join();
    log::info!("baton target stopped");
    Ok(())
}

/// `--rpc-socket-mode` / `--rpc-socket-group`: who may connect to the management socket.
fn rpc_access(mode: &str, group: Option<&str>) -> Result<engine::rpc::server::SocketAccess, AnyErr> {
    let mode = u32::from_str_radix(mode.trim_start_matches("0o"), 8)
        .map_err(|_| format!("--rpc-socket-mode {mode:?}: expected an octal mode such as 600 or 660"))?;
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
        let b = perf::spec::create_bdev(name, s)?;
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

/// `baton standby`: bdevs, then the config (standby volumes recover), then the
/// relay listener, so relays of configured volumes are never refused.
fn standby_cmd(a: StandbyArgs) -> Result<(), AnyErr> {
    let idle = if a.busy_poll {
        IdleMode::Poll
    } else {
        IdleMode::default()
    };
    let reactors = start_reactors(&a.cpumask, idle)?;
    engine::reactor::install_signal_handlers(&reactors)?;
    create_bdevs(&a.bdevs)?;
    let mut reg = engine::rpc::Registry::new();
    register_all_rpcs(&mut reg);
    if let Some(f) = &a.json {
        engine::rpc::load_config(&reg, f)?;
        log::info!("loaded config {}", f.display());
    }
    let net = standby::net::StandbyNet::start(standby::net::NetConfig {
        listen: a.listen,
        core: None,
    })?;
    let images = match a.image_listen {
        Some(addr) => {
            let s = standby::image::ImageServer::start(addr, &a.image_dir)?;
            log::info!(
                "execution images: listening on {}, store {}",
                s.addr(),
                a.image_dir.display()
            );
            Some(s)
        }
        None => None,
    };
    let host = start_standby_host(&a, images.as_ref().map(|s| s.store()))?;
    let mut server = engine::rpc::Server::new(reg);
    server.listen_unix_with(
        &a.rpc_socket,
        rpc_access(&a.rpc_socket_mode, a.rpc_socket_group.as_deref())?,
    )?;
    let app = engine::rpc::server::spawn_app_thread(server, reactors.stop_flag())?;
    log::info!(
        "baton standby {VERSION} listening for relays on {}; JSON-RPC on {}",
        net.listen_addr(),
        a.rpc_socket.display()
    );
    reactors.wait();
    if let Some(h) = host {
        h.stop();
    }
    drop(images);
    let _ = app.join();
    log::info!("baton standby stopped");
    Ok(())
}

/// Parses `PRIMARY=STANDBY[:HEAD][@NSID]` (or `NAME`).
fn parse_failover_volume(s: &str) -> Result<standby::host::FailoverVolume, AnyErr> {
    let (rest, nsid) = match s.rsplit_once('@') {
        Some((r, n)) => (
            r,
            Some(
                n.parse::<u32>()
                    .map_err(|e| format!("--failover-volume {s:?}: NSID {n:?}: {e}"))?,
            ),
        ),
        None => (s, None),
    };
    let (primary, standby_part) = rest.split_once('=').unwrap_or((rest, rest));
    let (standby, head) = match standby_part.split_once(':') {
        Some((v, h)) => (v, Some(h.to_string())),
        None => (standby_part, None),
    };
    if primary.is_empty() || standby.is_empty() {
        return Err(format!("--failover-volume {s:?}: expected PRIMARY=STANDBY[:HEAD][@NSID]").into());
    }
    Ok(standby::host::FailoverVolume {
        primary_volume: primary.into(),
        standby: standby.into(),
        head_bdev: head,
        nsid,
    })
}

/// The standby host (failure detection, failover, application restart), when volumes
/// to fail over are configured. A background thread prunes execution images below the
/// restart point the first volume has applied: failover never returns further back.
fn start_standby_host(
    a: &StandbyArgs,
    store: Option<std::sync::Arc<standby::image::ImageStore>>,
) -> Result<Option<std::sync::Arc<standby::host::StandbyHost>>, AnyErr> {
    if a.failover_volumes.is_empty() {
        if a.heartbeat_listen.is_some() || a.on_failover.is_some() || a.failover_listen.is_some() {
            return Err("--heartbeat-listen/--on-failover/--failover-listen need --failover-volume".into());
        }
        return Ok(None);
    }
    let volumes = a
        .failover_volumes
        .iter()
        .map(|v| parse_failover_volume(v))
        .collect::<Result<Vec<_>, _>>()?;
    let first = volumes[0].standby.clone();
    let mut cfg = standby::host::StandbyHostConfig::new(volumes);
    cfg.heartbeat_listen = a.heartbeat_listen;
    cfg.timeout_ms = a.primary_timeout_ms;
    cfg.relay_timeout_ms = a.relay_timeout_ms;
    cfg.export = a.failover_listen.map(|listen| standby::host::ExportConfig {
        nqn: a.failover_nqn.clone(),
        listen,
        allow_any_host: true,
    });
    cfg.restart_cmd = a.on_failover.clone();
    cfg.auto_failover = !a.no_auto_failover;
    cfg.drain_timeout_ms = a.drain_timeout_ms;
    cfg.syncing_failover = a.syncing_failover;
    cfg.rollback_timeout_ms = a.rollback_timeout_ms;
    let resolver: Option<standby::host::ImageResolver> = store.clone().map(|st| {
        let app = a.image_app.clone();
        Box::new(move |tag: &[u8]| st.restore_tag(&app, tag).map_err(|e| e.to_string())) as standby::host::ImageResolver
    });
    let host = standby::host::StandbyHost::start(cfg, resolver)?;
    if let Some(st) = store {
        let app = a.image_app.clone();
        std::thread::Builder::new().name("image-prune".into()).spawn(move || {
            let mut pruned_below = 0;
            loop {
                std::thread::sleep(Duration::from_secs(2));
                let v = first.clone();
                let Ok(tag) = standby::rpc::with_standby(&v, |sv| sv.applied().3) else {
                    continue;
                };
                if let Some((seq, _)) = standby::image::parse_restart_tag(&tag) {
                    if seq > pruned_below {
                        match st.prune(&app, seq) {
                            Ok(r) => log::debug!("images of {app} below {seq} pruned: {r:?}"),
                            Err(e) => log::warn!("pruning images of {app}: {e}"),
                        }
                        pruned_below = seq;
                    }
                }
            }
        })?;
    }
    Ok(Some(host))
}

fn relay_cmd(a: RelayArgs) -> Result<(), AnyErr> {
    let idle = if a.busy_poll {
        IdleMode::Poll
    } else {
        IdleMode::default()
    };
    let mut cfg = relay::relay::RelayConfig::new(a.listen, &a.journal_dir);
    cfg.journal_bytes_max = perf::spec::parse_size(&a.journal_bytes_max)?;
    cfg.segment_bytes = perf::spec::parse_size(&a.segment_bytes)?;
    cfg.spare_segments = a.spare_segments;
    cfg.journal_preallocate_bytes = perf::spec::parse_size(&a.journal_preallocate)?;
    cfg.standby = a.standby;
    cfg.forward = relay::relay::ForwardPolicy::parse(&a.forward).map_err(|e| format!("--forward {e}"))?;
    cfg.forwarder = !a.backup;
    cfg.direct_io = !a.no_direct;
    // Out-of-range settings stop here, before any reactor or file (Relay::start checks
    // again for in-process relays).
    cfg.validate()?;
    let reactors = start_reactors(&a.cpumask, idle)?;
    engine::reactor::install_signal_handlers(&reactors)?;
    let r = relay::relay::Relay::start(cfg)?;
    relay::rpc::set_relay(r.clone());
    let mut reg = engine::rpc::Registry::new();
    register_all_rpcs(&mut reg);
    let mut server = engine::rpc::Server::new(reg);
    server.listen_unix_with(
        &a.rpc_socket,
        rpc_access(&a.rpc_socket_mode, a.rpc_socket_group.as_deref())?,
    )?;
    let app = engine::rpc::server::spawn_app_thread(server, reactors.stop_flag())?;
    log::info!(
        "baton relay {VERSION} listening on {}; JSON-RPC on {}",
        r.listen_addr(),
        a.rpc_socket.display()
    );
    reactors.wait();
    let _ = app.join();
    log::info!("baton relay stopped");
    Ok(())
}

fn selfcheck(a: SelfcheckArgs) -> Result<(), AnyErr> {
    println!("baton {VERSION} — self-check\n");
    let mut mask = a.cpumask.clone();
    if engine::cpumask::parse(&mask)?
        .iter()
        .any(|&c| c as usize >= core_count())
    {
        mask = "0x1".into();
    }
    let reactors = start_reactors(&mask, IdleMode::Poll)?;
    println!("reactors on cores {:?}", reactors.cores());
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let file = std::path::PathBuf::from(dir).join(format!("baton-demo-{}.img", std::process::id()));
    let specs = [
        ("Malloc0", "malloc,size=64M".to_string()),
        ("Uring0", format!("uring:{},size=64M", file.display())),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let mut ok = true;
    for (name, spec) in &specs {
        let b = perf::spec::create_bdev(name, spec)?;
        println!(
            "\n{name}: {} ({} blocks of {} B)",
            b.product_name(),
            b.num_blocks(),
            b.block_size()
        );
        let mut opts = WorkloadOpts::new(Pattern::RandRw, 32, 4096, Duration::from_secs_f64(a.time));
        opts.verify = true;
        let res = perf::run_bdev(&reactors, b.clone(), &opts, stop.clone(), |_, _| {})?;
        let r = Report::new(&format!("{name} randrw verify"), &opts, res);
        print!("{}", r.table(true, false));
        let st = b.io_stats();
        println!(
            "bdev iostat: {} reads, {} writes, {} errors",
            st.num_read_ops, st.num_write_ops, st.num_errors
        );
        if r.total.verify_failures > 0 || r.total.errors > 0 || r.total.ios == 0 {
            ok = false;
        }
    }
    let _ = std::fs::remove_file(&file);
    reactors.shutdown();
    reactors.wait();
    if ok {
        println!("\nself-check passed: every read returned the data last written to its block");
        Ok(())
    } else {
        Err("self-check FAILED: see errors above".into())
    }
}

fn limits() -> Result<(), AnyErr> {
    let cps = perf::limits::memcpy_4k_per_s(Duration::from_secs(2));
    println!(
        "4 KiB memcpy (1 GiB source, one core): {:.2} M/s ({:.3} us each)",
        cps / 1e6,
        1e6 / cps
    );
    for size in [64usize, 4096] {
        let rtt = perf::limits::tcp_rtt_us(size, 20_000)?;
        println!("loopback TCP round trip, busy polling, {size} B: p50 {rtt:.2} us");
    }
    Ok(())
}

/// Every crate's JSON-RPC methods, in one registry.
fn register_all_rpcs(reg: &mut engine::rpc::Registry) {
    engine::rpc::methods::register_rpcs(reg);
    nvme::rpc::register_rpcs(reg);
    relay::rpc::register_rpcs(reg);
    standby::rpc::register_rpcs(reg);
    standby::host::register_rpcs(reg);
}

fn rpc(a: RpcArgs) -> Result<(), AnyErr> {
    let params = engine::rpc::client::build_params(&a.args)?;
    let v = engine::rpc::client::run_cli(&a.server, &a.method, params)?;
    use std::io::Write;
    // A closed pipe (`| head`) is not an error of ours.
    match writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&v)?) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
