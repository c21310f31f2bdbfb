//! `baton perf`: the perf harness (`spdk_nvme_perf` / `bdevperf` flags): builds each target
//! (`perf_targets.rs`), runs the workload on it (`perf::run_bdev_on`), prints the reports.

use crate::perf_targets::{self, parse_ack, parse_compare, parse_target, ReplOpts};
use crate::role::start_reactors;
use crate::AnyErr;
use clap::Args;
use engine::bdev::spec::parse_size;
use engine::reactor::{IdleMode, Reactors};
use perf::report::{compare_table, plot_svg, Report};
use perf::{Pattern, WorkloadOpts};
use relay::volume::AckPolicy;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Clone)]
pub(crate) struct PerfArgs {
    /// Bdev to drive: malloc[,size=N][,bs=N] | null[,size=N] | uring:PATH[,size=N][,bs=N],
    /// optionally with ,replicate=N (see docs/perf.md).
    #[arg(long, default_value = "malloc,size=256M", value_parser = parse_target)]
    bdev: perf_targets::Target,
    /// Drive a remote NVMe/TCP or NVMe/RDMA namespace instead of --bdev: a transport ID as
    /// spdk_nvme_perf takes it, 'trtype:TCP adrfam:IPv4 traddr:IP trsvcid:PORT [subnqn:NQN] [ns:N]'
    /// (trtype:RDMA needs the `rdma` cargo feature).
    #[arg(short = 'r', long = "transport-id", conflicts_with = "bdev", value_parser = parse_target)]
    trid: Option<perf_targets::Target>,
    /// Replicate the target (--bdev or -r) over N relays.
    #[arg(long)]
    replicate: Option<usize>,
    /// Compare with a second target run the same way (prints both and the ratio): a bdev spec
    /// [,replicate=N], a transport ID, `plain` (the first target unreplicated) or
    /// `replicate=N` (the first target's base over N relays).
    #[arg(long, value_parser = parse_compare)]
    compare: Option<perf_targets::CompareSpec>,
    /// Relays' journal directory (in-process relays; default a temporary dir under /dev/shm).
    #[arg(long)]
    journal_dir: Option<std::path::PathBuf>,
    /// Acknowledgement policy of the replicated volume: all | quorum:K | any.
    #[arg(long, default_value = "all", value_parser = parse_ack)]
    ack: AckPolicy,
    /// Use running relays (`baton relay`) HOST:PORT or rdma://IP:PORT,... instead of
    /// starting them in-process.
    #[arg(long, value_delimiter = ',', value_parser = relay_addr)]
    relays: Vec<rdma_transport::Endpoint>,
    /// Cores of in-process relays (default: the -m cores); reactors start on both masks,
    /// workers only on -m.
    #[arg(long)]
    relay_cpumask: Option<String>,
    /// Bound of each in-process relay journal (K/M/G suffixes).
    #[arg(long, default_value = "8G", value_parser = parse_size)]
    journal_bytes_max: u64,
    /// Buffered journal writes for in-process relays instead of O_DIRECT.
    #[arg(long)]
    journal_no_direct: bool,
    /// Bytes of segment files each in-process relay journal creates before the run
    /// (K/M/G; 0: none): the run measures relays whose journals write into allocated
    /// pages/blocks, as a relay in service does once its released segments are reused.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    journal_preallocate: u64,
    /// Queue depth per core.
    #[arg(short = 'q', long = "queue-depth", default_value_t = 32)]
    queue_depth: u32,
    /// I/O size in bytes.
    #[arg(short = 'o', long = "io-size", default_value_t = 4096)]
    io_size: u32,
    /// Pattern: read, write, randread, randwrite, rw, randrw.
    #[arg(short = 'w', long = "workload", default_value = "randread", value_parser = pattern)]
    workload: Pattern,
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
    /// Microseconds each core waits after I/O completes before it submits more; with
    /// `-q 1 --think-us 1000000` every I/O meets a target idle for a second (how fast
    /// an idle reactor wakes).
    #[arg(long, default_value_t = 0)]
    think_us: u64,
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
    /// Whose rings and buffer pools: `baton` or `dpdk` (the same workload over either, for
    /// side-by-side runs; `dpdk` needs a build with the `dpdk` feature).
    #[arg(long)]
    env: Option<engine::env::EnvKind>,
    /// PCI functions DPDK may probe (`--env dpdk`; repeat or separate with commas): the
    /// controller of an `spdk-nvme:trtype:PCIe traddr:BDF` bdev (docs/spdk.md).
    #[arg(long = "pci-allow", value_delimiter = ',')]
    pci_allow: Vec<String>,
    /// TLS on the replication links. In-process relays share this process's identity, so
    /// with them use --tls-psk; certificates (naming primary.<site>) suit --relays.
    #[command(flatten)]
    tls: crate::role::TlsArgs,
}

pub(crate) fn perf_cmd(a: PerfArgs) -> Result<(), AnyErr> {
    crate::role::init_env(a.env, &a.pci_allow)?;
    rdma_transport::tls::set_process_role(rdma_transport::tls::Role::Primary);
    a.tls.install(rdma_transport::tls::Role::Primary)?;
    let opts = workload_opts(&a)?;
    let targets = targets(&a)?;
    let workers = engine::cpumask::parse(&a.cpumask)?;
    let relay_cores = match &a.relay_cpumask {
        Some(m) => engine::cpumask::parse(m)?,
        None => workers.clone(),
    };
    let ro = repl_opts(&a, relay_cores, workers[0]);
    let idle = if a.adaptive_idle {
        IdleMode::default()
    } else {
        IdleMode::Poll
    };
    let reactors = start_reactors(&reactor_mask(&workers, &ro.relay_cores), idle)?;
    let stop = stop_on_signal()?;
    let (reports, infos) = match measure(&a, &targets, &reactors, &workers, &opts, &ro, &stop) {
        Ok(r) => r,
        Err(e) => {
            reactors.shutdown();
            reactors.wait();
            return Err(e);
        }
    };
    print_reports(&a, &reports, &infos)?;
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

fn workload_opts(a: &PerfArgs) -> Result<WorkloadOpts, AnyErr> {
    Ok(WorkloadOpts {
        queue_depth: a.queue_depth,
        io_size_bytes: a.io_size,
        pattern: a.workload,
        read_pct: a.read_pct,
        time: Duration::from_secs_f64(a.time),
        warmup: Duration::from_secs_f64(a.warmup),
        verify: a.verify,
        seed: 0x5eed,
        drain_timeout: perf::DRAIN_TIMEOUT_DEFAULT,
        think: Duration::from_micros(a.think_us),
    })
}

/// The target (`--bdev` or `-r`, `--replicate`) and the one `--compare` names.
fn targets(a: &PerfArgs) -> Result<Vec<perf_targets::Target>, AnyErr> {
    let mut first = a.trid.clone().unwrap_or_else(|| a.bdev.clone());
    if let Some(n) = a.replicate {
        if n == 0 || n > perf_targets::RELAYS_MAX {
            return Err(format!("--replicate {n}: expected 1..={}", perf_targets::RELAYS_MAX).into());
        }
        first.replicate = n;
    }
    let mut targets = vec![first.clone()];
    if let Some(c) = &a.compare {
        targets.push(c.resolve(&first));
    }
    Ok(targets)
}

/// `--workload`: one of the patterns.
fn pattern(s: &str) -> Result<Pattern, String> {
    Pattern::parse(s).map_err(|e| match e {
        perf::PerfError::InvalidOption { why, .. } => why,
        e => e.to_string(),
    })
}

/// `--relays`: each `IP:PORT` (TCP) or `rdma://IP:PORT` (refused by a build without RDMA).
fn relay_addr(s: &str) -> Result<rdma_transport::Endpoint, String> {
    let ep = rdma_transport::Endpoint::parse(s).map_err(|e| e.to_string())?;
    rdma_transport::any::check_endpoint(&ep).map_err(|e| e.to_string())?;
    Ok(ep)
}

/// How replicated targets are built: relays in this process (journals in `--journal-dir`
/// or a temporary directory) or the running ones `--relays` names.
fn repl_opts(a: &PerfArgs, relay_cores: Vec<u32>, link_core: u32) -> ReplOpts {
    let (journal_dir, journal_dir_is_temp) = match &a.journal_dir {
        Some(d) => (d.clone(), false),
        None => {
            let root = if Path::new("/dev/shm").is_dir() {
                "/dev/shm"
            } else {
                "/tmp"
            };
            (
                PathBuf::from(root).join(format!("baton-perf-{}", std::process::id())),
                true,
            )
        }
    };
    ReplOpts {
        journal_dir,
        journal_dir_is_temp,
        ack: a.ack,
        relays: a.relays.clone(),
        relay_cores,
        link_core,
        journal_bytes_max: a.journal_bytes_max,
        segment_bytes: 256 << 20,
        no_direct: a.journal_no_direct,
        preallocate_bytes: a.journal_preallocate,
    }
}

/// The reactors' mask: the workers' cores and the in-process relays', in order.
fn reactor_mask(workers: &[u32], relay_cores: &[u32]) -> String {
    let mut all = workers.to_vec();
    for c in relay_cores {
        if !all.contains(c) {
            all.push(*c);
        }
    }
    all.sort_unstable();
    format!("[{}]", all.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","))
}

/// A flag Ctrl-C sets: it ends the measurement early and prints what was measured.
fn stop_on_signal() -> Result<Arc<AtomicBool>, AnyErr> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook_register(flag.clone())?;
    let s = stop.clone();
    std::thread::spawn(move || loop {
        if flag.load(Ordering::Relaxed) {
            s.store(true, Ordering::Relaxed);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    });
    Ok(stop)
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

/// Builds each target in turn, runs the workload on it and tears it down: a report and
/// the target's description for each.
fn measure(
    a: &PerfArgs,
    targets: &[perf_targets::Target],
    reactors: &Reactors,
    workers: &[u32],
    opts: &WorkloadOpts,
    ro: &ReplOpts,
    stop: &Arc<AtomicBool>,
) -> Result<(Vec<Report>, Vec<serde_json::Value>), AnyErr> {
    let mut reports = Vec::new();
    let mut infos = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let reconnect = nvme::host::bdev::ReconnectOpts {
            ctrlr_loss_timeout_sec: a.ctrlr_loss_timeout_sec,
            reconnect_delay_sec: a.reconnect_delay_sec,
            fast_io_fail_timeout_sec: a.fast_io_fail_timeout_sec,
        };
        let built = perf_targets::build(t, i, workers.len(), a.queue_depth, ro, reconnect)?;
        let quiet = a.json;
        let results = perf::run_bdev_on(reactors, workers, built.bdev.clone(), opts, stop.clone(), |el, ios| {
            if !quiet {
                eprint!("\r  {:>5.1} s  {:>12} I/O  ", el.as_secs_f64(), ios);
            }
        });
        if !quiet {
            eprint!("\r{:60}\r", "");
        }
        let info = built.json();
        let label = built.label.clone();
        built.finish(ro)?;
        reports.push(Report::new(&label, opts, results?));
        infos.push(info);
    }
    Ok((reports, infos))
}

/// One line per relay of a replicated target: frames sent and how the write payloads
/// left (copied into the transport's buffers, or sent from the write's own buffer).
fn relay_lines(info: &serde_json::Value) {
    let Some(relays) = info["replication"]["relays"].as_array() else {
        return;
    };
    for r in relays {
        println!(
            "relay {}: {} frames sent; write payload bytes copied {}, sent in place {}",
            r["addr"].as_str().unwrap_or("?"),
            r["frames_sent"].as_u64().unwrap_or(0),
            r["payload_bytes_copied"].as_u64().unwrap_or(0),
            r["payload_bytes_zero_copy"].as_u64().unwrap_or(0)
        );
    }
}

/// The reports as JSON (`--json`, each with its target) or as tables (`-L`, `-LL`), with
/// the comparison of two.
fn print_reports(a: &PerfArgs, reports: &[Report], infos: &[serde_json::Value]) -> Result<(), AnyErr> {
    if a.json {
        let v: Vec<_> = reports
            .iter()
            .zip(infos)
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
        for r in reports {
            println!("{}", r.table(a.latency >= 1, a.latency >= 2));
        }
        for info in infos {
            relay_lines(info);
        }
        if reports.len() == 2 {
            println!("{}", compare_table(&reports[0], &reports[1]));
        }
    }
    Ok(())
}
