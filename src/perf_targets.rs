//! What `baton perf` drives besides a local bdev: a remote NVMe/TCP namespace (`-r`, the
//! host library's bdev) and a replicated volume (relay crate) over either, with relays
//! started in this process on loopback or running elsewhere (`--relays`). Lives in the root
//! crate because the perf crate must not depend on relay; the workload itself is
//! `perf::run_bdev_on` for every kind.
//!
//! Target grammar (`--bdev`, `-r`, `--compare`), documented in `docs/perf.md`:
//!
//! ```text
//! TARGET := TRID                         a transport ID: contains "trtype:" (spdk_nvme_perf -r)
//!         | BDEV_SPEC[,replicate=N]      a local bdev, replicated over N relays when N > 0
//!                                        (`spdk-nvme:TRID[,ns=N]` is one: SPDK's driver, docs/spdk.md)
//!         | plain                        (--compare only) the first target without replication
//!         | replicate=N                  (--compare only) the first target's base over N relays
//! ```

use engine::bdev::Bdev;
use nvme::host::bdev::{HostBdevOpts, NvmeHostBdev};
use nvme::host::TransportId;
use relay::relay::{Relay, RelayConfig};
use relay::volume::{AckPolicy, ReplicatedVolume, VolumeConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

type AnyErr = Box<dyn std::error::Error>;

/// Most relays a perf target is replicated to.
pub const RELAYS_MAX: usize = 16;

/// The thing under test, before replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// A local bdev spec (`engine::bdev::spec::create_bdev`).
    Bdev(String),
    /// A remote NVMe/TCP namespace.
    Nvme(TransportId),
}

/// One parsed TARGET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub base: Base,
    /// Relays the volume is replicated to (0: not replicated).
    pub replicate: usize,
}

/// A `--compare` TARGET: a full target, or one relative to the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareSpec {
    Target(Target),
    /// The first target's base, unreplicated.
    Plain,
    /// The first target's base over N relays.
    Replicate(usize),
}

fn parse_replicate(v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .ok()
        .filter(|n| (1..=RELAYS_MAX).contains(n))
        .ok_or_else(|| format!("replicate={v}: expected a relay count 1..={}", RELAYS_MAX))
}

/// Parses a TARGET (not the `--compare`-only forms).
pub fn parse_target(s: &str) -> Result<Target, String> {
    let s = s.trim();
    // `spdk-nvme:TRID` is a bdev spec (SPDK's driver), not baton's own NVMe/TCP host.
    if s.to_ascii_lowercase().contains("trtype") && !s.starts_with("spdk-nvme:") {
        let t = TransportId::parse(s).map_err(|e| e.to_string())?;
        return Ok(Target {
            base: Base::Nvme(t),
            replicate: 0,
        });
    }
    let mut replicate = 0;
    let mut parts = Vec::new();
    for p in s.split(',') {
        match p.split_once('=') {
            Some(("replicate", v)) => replicate = parse_replicate(v)?,
            _ => parts.push(p),
        }
    }
    if parts.is_empty() || parts[0].is_empty() {
        return Err(format!(
            "{s:?}: no bdev kind (malloc, null, uring:PATH) before the options"
        ));
    }
    Ok(Target {
        base: Base::Bdev(parts.join(",")),
        replicate,
    })
}

/// Parses a `--compare` TARGET.
pub fn parse_compare(s: &str) -> Result<CompareSpec, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("plain") {
        return Ok(CompareSpec::Plain);
    }
    if let Some(v) = t.strip_prefix("replicate=") {
        return Ok(CompareSpec::Replicate(parse_replicate(v)?));
    }
    parse_target(t).map(CompareSpec::Target)
}

impl CompareSpec {
    /// The full target, given the first one.
    pub fn resolve(&self, first: &Target) -> Target {
        match self {
            CompareSpec::Target(t) => t.clone(),
            CompareSpec::Plain => Target {
                base: first.base.clone(),
                replicate: 0,
            },
            CompareSpec::Replicate(n) => Target {
                base: first.base.clone(),
                replicate: *n,
            },
        }
    }
}

/// Parses `all`, `any`, `quorum:K`.
pub fn parse_ack(s: &str) -> Result<AckPolicy, String> {
    match s.split_once(':') {
        None if s == "all" => Ok(AckPolicy::All),
        None if s == "any" => Ok(AckPolicy::Any),
        Some(("quorum", k)) => k
            .parse::<u32>()
            .ok()
            .filter(|&k| k >= 1)
            .map(AckPolicy::Quorum)
            .ok_or_else(|| "quorum needs K >= 1".to_string()),
        _ => Err("expected all, any or quorum:K".to_string()),
    }
}

/// How replicated targets are built.
#[derive(Debug, Clone)]
pub struct ReplOpts {
    /// Where in-process relays keep their journals (a directory per run under it).
    pub journal_dir: PathBuf,
    /// The directory was made for this run (removed afterwards with everything in it);
    /// otherwise only the per-run directories under it are removed.
    pub journal_dir_is_temp: bool,
    pub ack: AckPolicy,
    /// Running relays to use instead of in-process ones (the first N).
    pub relays: Vec<rdma_transport::Endpoint>,
    /// Reactors of in-process relays (round robin).
    pub relay_cores: Vec<u32>,
    /// Reactor owning the volume's relay connections.
    pub link_core: u32,
    pub journal_bytes_max: u64,
    pub segment_bytes: u64,
    /// Buffered journal writes (no O_DIRECT).
    pub no_direct: bool,
    /// Bytes each in-process relay journal preallocates.
    pub preallocate_bytes: u64,
}

/// A target ready to drive, with what must be torn down after.
pub struct Built {
    pub bdev: Arc<dyn Bdev>,
    pub label: String,
    pub base: Arc<dyn Bdev>,
    volume: Option<Arc<ReplicatedVolume>>,
    relays: Vec<Arc<Relay>>,
    relay_addrs: Vec<rdma_transport::Endpoint>,
    journal_dirs: Vec<PathBuf>,
}

fn base_label(b: &Base) -> String {
    match b {
        Base::Bdev(s) => s.clone(),
        Base::Nvme(t) => format!("tcp {}:{}", t.traddr, t.trsvcid),
    }
}

/// Creates target `t` as bdev number `i` for a workload of `workers` cores at queue depth
/// `qd`. Blocks (connects, starts relays).
pub fn build(
    t: &Target,
    i: usize,
    workers: usize,
    qd: u32,
    ro: &ReplOpts,
    reconnect: nvme::host::bdev::ReconnectOpts,
) -> Result<Built, AnyErr> {
    let name = format!("perf{i}");
    let base: Arc<dyn Bdev> = match &t.base {
        Base::Bdev(spec) => engine::bdev::spec::create_bdev(&name, spec)?,
        Base::Nvme(trid) => {
            let opts = HostBdevOpts {
                queue_entries: u16::try_from(qd.max(2)).unwrap_or(u16::MAX),
                reconnect,
                ..HostBdevOpts::default()
            };
            let b: Arc<NvmeHostBdev> =
                nvme::host::bdev::connect(&name, trid, &opts).map_err(|e| format!("-r {trid}: {e}"))?;
            b.preconnect(workers)
                .map_err(|e| format!("-r {trid}: I/O queue: {e}"))?;
            log::info!(
                "{}: namespace {} of {} at {} ({} blocks of {} B, {} entries per queue)",
                name,
                b.nsid(),
                b.subnqn(),
                b.addr(),
                b.num_blocks(),
                b.block_size(),
                b.queue_entries()
            );
            b
        }
    };
    let mut label = base_label(&t.base);
    if t.replicate == 0 {
        return Ok(Built {
            bdev: base.clone(),
            label,
            base,
            volume: None,
            relays: Vec::new(),
            relay_addrs: Vec::new(),
            journal_dirs: Vec::new(),
        });
    }
    let n = t.replicate;
    let vname = format!("perfvol{i}-{}", std::process::id());
    let mut relays = Vec::new();
    let mut journal_dirs = Vec::new();
    let addrs: Vec<rdma_transport::Endpoint> = if ro.relays.is_empty() {
        for k in 0..n {
            let dir = ro
                .journal_dir
                .join(format!("baton-perf-{}-{i}-r{k}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| format!("journal dir {}: {e}", dir.display()))?;
            let mut c = RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), &dir);
            c.core = Some(ro.relay_cores[k % ro.relay_cores.len()]);
            c.journal_bytes_max = ro.journal_bytes_max;
            c.segment_bytes = ro.segment_bytes;
            c.direct_io = !ro.no_direct;
            c.journal_preallocate_bytes = ro.preallocate_bytes;
            if ro.preallocate_bytes > 0 {
                prepare_journal(&c, &vname)?;
            }
            journal_dirs.push(dir);
            relays.push(Relay::start(c)?);
        }
        relays.iter().map(|r| r.listen_addr().into()).collect()
    } else {
        if ro.relays.len() < n {
            return Err(format!("replicate={n} needs {n} relays; --relays names {}", ro.relays.len()).into());
        }
        ro.relays[..n].to_vec()
    };
    let mut cfg = VolumeConfig::new(&vname, addrs.clone());
    cfg.ack_policy = ro.ack;
    cfg.core = Some(ro.link_core);
    let v = ReplicatedVolume::create(cfg, base.clone())?;
    wait_relays_up(&v, ro.ack, RELAYS_UP_TIMEOUT)?;
    let ack = match ro.ack {
        AckPolicy::Quorum(k) => format!("quorum:{k}"),
        a => a.name().to_string(),
    };
    // Replication first: the compare table shows a label's first 24 characters.
    label = if ro.relays.is_empty() {
        format!("{n} relays ({ack}): {label}, journals in {}", ro.journal_dir.display())
    } else {
        format!("{n} relays ({ack}): {label}, relays {addrs:?}")
    };
    Ok(Built {
        bdev: v.clone(),
        label,
        base,
        volume: Some(v),
        relays,
        relay_addrs: addrs,
        journal_dirs,
    })
}

/// How long a replicated target's relays have to come up before the run starts.
const RELAYS_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits until as many relays of `v` are up as the ack policy needs, so the run measures
/// replication and not a handshake: a relay that opens a large journal on a loaded
/// machine can miss the volume's handshake timeout, be marked down and come back seconds
/// later, and the writes of that span fail (a run of errors, not of I/O).
fn wait_relays_up(v: &ReplicatedVolume, ack: AckPolicy, timeout: Duration) -> Result<(), AnyErr> {
    let started = Instant::now();
    loop {
        let st = v.status();
        let needed = match ack {
            AckPolicy::All => st.relays.len(),
            AckPolicy::Quorum(k) => k as usize,
            AckPolicy::Any => 1,
        };
        let up = st.relays.iter().filter(|r| r.state == "up").count();
        if !st.relays.is_empty() && up >= needed {
            log::info!(
                "{}: {up} of {} relays up in {:.2} s",
                st.name,
                st.relays.len(),
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() >= timeout {
            let states: Vec<String> = st.relays.iter().map(|r| format!("{} {}", r.addr, r.state)).collect();
            return Err(format!(
                "{}: relays not up after {} s ({}): the run would measure failed writes",
                st.name,
                timeout.as_secs(),
                states.join(", ")
            )
            .into());
        }
        std::thread::sleep(Duration::from_nanos(relay::relay::STATUS_PERIOD_NS));
    }
}

/// Opens the journal relay `c` will give volume `vname` (its default directory) once
/// before the relay serves it, so the preallocation runs here and not on the relay's
/// reactor when the primary's Hello arrives (where it would hold up the handshake past the
/// volume's down timeout). The relay adopts the spare files when it opens the journal.
fn prepare_journal(c: &RelayConfig, vname: &str) -> Result<(), AnyErr> {
    let dir = c.journal_root.join(vname);
    let mut jc = relay::journal::JournalConfig::new(&dir);
    jc.journal_bytes_max = c.journal_bytes_max;
    jc.segment_bytes = c.segment_bytes;
    jc.direct_io = c.direct_io;
    jc.spare_segments = c.spare_segments;
    jc.preallocate_bytes = c.journal_preallocate_bytes;
    jc.validate()?;
    let started = Instant::now();
    let (j, _) = relay::journal::Journal::open(jc).map_err(|e| format!("journal {}: {e}", dir.display()))?;
    log::info!(
        "{vname}: journal {} prepared with {} spare segments in {:.2} s",
        dir.display(),
        j.spare_count(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// An in-process relay's status once its published snapshot (refreshed every
/// `STATUS_PERIOD_NS`) has caught up with the writes the volume completed; under the
/// ack policy `all` those are durable on the relay already, only the snapshot lags.
/// Waits a few periods at most, then reports what the relay published.
fn settled_status(r: &Relay, completed_lsn: u64) -> relay::relay::RelayStatus {
    let deadline = Instant::now() + Duration::from_nanos(20 * relay::relay::STATUS_PERIOD_NS);
    loop {
        let s = r.status();
        let caught_up = s.volumes.iter().all(|v| v.durable_lsn >= completed_lsn);
        if caught_up || Instant::now() >= deadline {
            return s;
        }
        std::thread::sleep(Duration::from_nanos(relay::relay::STATUS_PERIOD_NS / 2));
    }
}

impl Built {
    /// What the JSON report says about the target besides the figures.
    pub fn json(&self) -> serde_json::Value {
        let mut j = serde_json::json!({
            "bdev": self.bdev.name(),
            "driver": self.base.driver(),
            "block_size": self.bdev.block_size(),
            "num_blocks": self.bdev.num_blocks(),
            "base_iostat": iostat_json(&self.base.io_stats()),
        });
        if let Some(v) = &self.volume {
            // The run is over; the volume and relays publish status every
            // STATUS_PERIOD_NS, so let a few periods pass for the snapshots to show it.
            std::thread::sleep(Duration::from_nanos(3 * relay::relay::STATUS_PERIOD_NS));
            let st = v.status();
            j["replication"] = serde_json::json!({
                "volume": st.name,
                "ack_policy": st.ack_policy,
                "quorum_k": st.quorum_k,
                "completed_lsn": st.completed_lsn,
                "relays": st.relays.iter().map(|r| serde_json::json!({
                    "addr": r.addr, "acked_lsn": r.acked_lsn, "state": r.state,
                    "frames_sent": r.frames_sent,
                    "payload_bytes_copied": r.payload_bytes_copied,
                    "payload_bytes_zero_copy": r.payload_bytes_zero_copy,
                })).collect::<Vec<_>>(),
                "relay_addrs": self.relay_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "in_process_relays": self.relays.iter().map(|r| {
                    let s = settled_status(r, st.completed_lsn);
                    serde_json::json!({
                        "listen": s.listen,
                        "volumes": s.volumes.iter().map(|vs| serde_json::json!({
                            "name": vs.name, "appended_lsn": vs.appended_lsn,
                            "durable_lsn": vs.durable_lsn, "journal_used_bytes": vs.journal_used_bytes,
                            "journal_records": vs.journal_records, "journal_commits": vs.journal_commits,
                            "memory_media": vs.memory_media,
                            // Segments started in new files: a run that outgrew its
                            // preallocated journal measured new memory from then on.
                            "segments_created": vs.segments_created,
                            "segments_recycled": vs.segments_recycled,
                        })).collect::<Vec<_>>(),
                    })
                }).collect::<Vec<_>>(),
            });
        }
        j
    }

    /// Stops the volume and the in-process relays and removes their journals.
    pub fn finish(self, ro: &ReplOpts) -> Result<(), AnyErr> {
        let t = Duration::from_secs(10);
        if let Some(v) = &self.volume {
            v.stop(t)?;
        }
        for r in &self.relays {
            r.stop(t)?;
        }
        for d in &self.journal_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        if ro.journal_dir_is_temp && !self.journal_dirs.is_empty() {
            let _ = std::fs::remove_dir(&ro.journal_dir);
        }
        Ok(())
    }
}

fn iostat_json(s: &engine::bdev::IoStats) -> serde_json::Value {
    serde_json::json!({
        "num_read_ops": s.num_read_ops,
        "num_write_ops": s.num_write_ops,
        "bytes_read": s.bytes_read,
        "bytes_written": s.bytes_written,
        "num_errors": s.num_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("malloc,size=1G,replicate=2").unwrap();
        assert_eq!(t.base, Base::Bdev("malloc,size=1G".into()));
        assert_eq!(t.replicate, 2);
        let t = parse_target("trtype:TCP traddr:127.0.0.1 trsvcid:4420").unwrap();
        assert!(matches!(t.base, Base::Nvme(_)));
        // SPDK's driver is a bdev spec holding a transport ID, not baton's own host.
        let t = parse_target("spdk-nvme:trtype:TCP traddr:127.0.0.1 trsvcid:4420,ns=1").unwrap();
        assert_eq!(
            t.base,
            Base::Bdev("spdk-nvme:trtype:TCP traddr:127.0.0.1 trsvcid:4420,ns=1".into())
        );
        assert!(parse_target("TrType:tcp traddr:1.2.3.4 bogus:1")
            .unwrap_err()
            .contains("bogus"));
        assert!(parse_target("malloc,replicate=0").is_err());
        assert!(parse_target("malloc,replicate=x").is_err());
        assert!(parse_target(",size=1G").is_err());
        assert_eq!(parse_compare("plain").unwrap(), CompareSpec::Plain);
        assert_eq!(parse_compare("replicate=3").unwrap(), CompareSpec::Replicate(3));
        let first = parse_target("null,replicate=2").unwrap();
        assert_eq!(CompareSpec::Plain.resolve(&first).replicate, 0);
        assert_eq!(CompareSpec::Replicate(1).resolve(&first).base, first.base);
    }

    #[test]
    fn acks() {
        assert_eq!(parse_ack("all").unwrap(), AckPolicy::All);
        assert_eq!(parse_ack("any").unwrap(), AckPolicy::Any);
        assert_eq!(parse_ack("quorum:2").unwrap(), AckPolicy::Quorum(2));
        assert!(parse_ack("quorum:0").is_err());
        assert!(parse_ack("most").is_err());
    }
}
