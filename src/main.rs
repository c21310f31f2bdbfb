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
//!
//! The long-running roles (target, relay, standby) share one start-up (`role/mod.rs`);
//! `baton perf` is `perf_cmd.rs` with its targets in `perf_targets.rs`.

mod chaos;
mod chaos_report;
mod chaos_writer;
mod demo;
mod demo_lifecycle;
mod ledger;
mod perf_cmd;
mod perf_targets;
mod plan;
mod procs;
mod role;
mod switchover;
mod wire_limit;

use clap::{Args, Parser, Subcommand};
use engine::reactor::IdleMode;
use perf::report::Report;
use perf::{Pattern, WorkloadOpts};
use perf_cmd::PerfArgs;
use role::{RelayArgs, StandbyArgs, TargetArgs};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

pub(crate) const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BATON_GIT_COMMIT"), ")");

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
    /// trip, the replication wire limit) to report baton's figures as ratios to them.
    Limits(LimitsArgs),
    /// Plan relay placement: which relay sets meet a write-latency budget outside the
    /// disaster radius (probes the relays given by address).
    Plan(plan::PlanArgs),
    /// Make a deployment's TLS credentials: a CA and one certificate per `<role>.<site>`
    /// name, or (with --psk) a pre-shared key file.
    TlsCerts(TlsCertsArgs),
}

#[derive(Args)]
struct LimitsArgs {
    /// Only the replication wire limit (skip memcpy and the round trip).
    #[arg(long)]
    wire_only: bool,
    /// Writes outstanding for the throughput rows (the QD of the replicated runs).
    #[arg(long, default_value_t = 32)]
    outstanding: usize,
    /// Seconds per wire-limit row.
    #[arg(long, default_value_t = 3.0)]
    time: f64,
    /// Core of the sender (the primary's link reactor).
    #[arg(long)]
    sender_core: Option<usize>,
    /// Core of the receivers (the relays).
    #[arg(long)]
    receiver_core: Option<usize>,
}

#[derive(Args)]
struct TlsCertsArgs {
    /// Directory to write into (ca.pem, ca.key, NAME.pem, NAME.key; keys mode 0600).
    #[arg(long)]
    dir: std::path::PathBuf,
    /// Certificate names, `<role>.<site>` with role primary, relay or standby.
    #[arg(long = "name")]
    names: Vec<String>,
    /// Write a random 32-byte pre-shared key to DIR/psk.key instead.
    #[arg(long)]
    psk: bool,
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

/// Bdev spec kinds of crates above the engine (`--bdev NAME=SPEC`, `baton perf --bdev`).
fn register_bdev_kinds() {
    #[cfg(feature = "spdk")]
    nvme::spdk::register_spec_kind();
    #[cfg(not(feature = "spdk"))]
    engine::bdev::spec::register_kind("spdk-nvme", |_, _| {
        Err(engine::bdev::spec::SpecError::Invalid(
            "spdk-nvme: this baton was built without the `spdk` cargo feature (docs/spdk.md)".into(),
        ))
    });
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
    register_bdev_kinds();
    let r = match cli.cmd {
        Cmd::Demo(a) => demo::run(a),
        Cmd::Switchover(a) => switchover::run(a),
        Cmd::Chaos(a) => chaos::run(a),
        Cmd::Ledger(a) => ledger::run(a).map_err(|e| e.into()),
        Cmd::Selfcheck(a) => selfcheck(a),
        Cmd::Perf(a) => perf_cmd::perf_cmd(a),
        Cmd::Target(a) => role::target(a),
        Cmd::Limits(a) => limits(a),
        Cmd::Relay(a) => role::relay_cmd(a),
        Cmd::Standby(a) => role::standby_cmd(a),
        Cmd::Rpc(a) => rpc(a),
        Cmd::Plan(a) => plan::run(a).map_err(|e| e.into()),
        Cmd::TlsCerts(a) => tls_certs(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) type AnyErr = Box<dyn std::error::Error>;

fn tls_certs(a: TlsCertsArgs) -> Result<(), AnyErr> {
    use rdma_transport::tls::pki;
    if a.psk {
        std::fs::create_dir_all(&a.dir)?;
        let f = a.dir.join("psk.key");
        pki::generate_psk(&f)?;
        println!(
            "pre-shared key: {} (give it to every process with --tls-psk)",
            f.display()
        );
        return Ok(());
    }
    if a.names.is_empty() {
        return Err("give at least one --name <role>.<site>, or --psk".into());
    }
    let g = pki::generate(&a.dir, &a.names)?;
    println!("CA: {} (give it to every process with --tls-ca)", g.ca.display());
    for (name, cert, key) in &g.certs {
        println!("{name}: --tls-cert {} --tls-key {}", cert.display(), key.display());
    }
    Ok(())
}

fn selfcheck(a: SelfcheckArgs) -> Result<(), AnyErr> {
    println!("baton {VERSION} — self-check\n");
    let mut mask = a.cpumask.clone();
    if engine::cpumask::parse(&mask)?
        .iter()
        .any(|&c| c as usize >= role::core_count())
    {
        mask = "0x1".into();
    }
    let reactors = role::start_reactors(&mask, IdleMode::Poll)?;
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
        let b = engine::bdev::spec::create_bdev(name, spec)?;
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

fn limits(a: LimitsArgs) -> Result<(), AnyErr> {
    if !a.wire_only {
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
    }
    for n in 1..=3 {
        let o = |outstanding| wire_limit::WireLimitOpts {
            receivers: n,
            outstanding,
            time: Duration::from_secs_f64(a.time),
            min_writes: 1,
            sender_core: a.sender_core,
            receiver_core: a.receiver_core,
        };
        let thr = wire_limit::measure(o(a.outstanding))?;
        let lat = wire_limit::measure(o(1))?;
        println!(
            "replication wire limit, {n} receiver(s): {:.0} writes/s at {} outstanding; QD1 p50 {:.2} us",
            thr.writes_per_s, a.outstanding, lat.p50_us
        );
    }
    Ok(())
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
