//! The process's environment: whose rings and buffer pools the engine uses.
//!
//! - [`EnvKind::Baton`] (the default, and the only one without the `dpdk`
//!   cargo feature): [`crate::ring::Ring`] is a `crossbeam` array queue and
//!   [`crate::buf::BufPool`] an `mmap`ed region with a lock-free free list.
//! - [`EnvKind::Dpdk`] (feature `dpdk`): DPDK's EAL is started once, rings are
//!   `rte_ring`s and buffer pools take their memory from DPDK's (hugepage)
//!   heap and their free list from an `rte_mempool` (see `docs/dpdk.md`).
//!
//! The choice is process-wide and made before reactors and pools exist:
//! either explicitly with [`init`], or on first use from the `BATON_ENV`
//! environment variable (`baton` or `dpdk`; see [`EnvOpts::from_env`]), which
//! is how the engine's test suite runs in both modes unchanged. Everything
//! above this module sees the same `Ring` and `BufPool` in either mode.
//!
//! PCI: DPDK's EAL is started with `--no-pci` unless PCI devices are asked for
//! ([`EnvOpts::dpdk_pci_allow`], `BATON_DPDK_PCI_ALLOW`, `--pci-allow`); then only
//! those functions are visible to DPDK (an allow-list), on hugepages (VFIO maps
//! pinned memory for the device's DMA). [`pci_allowed`] tells a driver (SPDK's NVMe
//! driver over PCIe) whether its device can be reached in this process.

#[cfg(feature = "dpdk")]
pub(crate) mod dpdk;

use std::sync::OnceLock;
use thiserror::Error;

/// Whose rings and buffer pools the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnvKind {
    /// baton's own (crossbeam ring, mmap + lock-free free list).
    Baton,
    /// DPDK's (`rte_ring`, `rte_mempool` over DPDK memory). Needs the `dpdk` feature.
    Dpdk,
}

impl EnvKind {
    pub fn name(self) -> &'static str {
        match self {
            EnvKind::Baton => "baton",
            EnvKind::Dpdk => "dpdk",
        }
    }
}

impl std::str::FromStr for EnvKind {
    type Err = EnvError;
    fn from_str(s: &str) -> Result<EnvKind, EnvError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "baton" => Ok(EnvKind::Baton),
            "dpdk" => Ok(EnvKind::Dpdk),
            other => Err(EnvError::UnknownEnv(other.to_string())),
        }
    }
}

impl std::fmt::Display for EnvKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How to set the environment up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvOpts {
    pub kind: EnvKind,
    /// DPDK only: memory for EAL in MiB when no hugepages are reserved (it is
    /// reserved address space, touched lazily). Ignored with hugepages, where
    /// DPDK grows its heap on demand.
    pub dpdk_mem_mb: u32,
    /// DPDK only: run with this `--file-prefix` instead of `--in-memory` when
    /// hugepages are reserved (for a secondary process or `dpdk-proc-info`).
    pub dpdk_file_prefix: Option<String>,
    /// DPDK only: more EAL arguments, appended last.
    pub dpdk_extra_args: Vec<String>,
    /// DPDK only: the PCI functions (canonical `DDDD:BB:DD.F`, see [`pci_addr`]) DPDK
    /// may probe, for a PCIe driver running on DPDK (SPDK's NVMe driver). Empty (the
    /// default): EAL runs with `--no-pci`. Not empty: EAL gets one `-a BDF` each instead
    /// and must run on hugepages.
    pub dpdk_pci_allow: Vec<String>,
}

impl Default for EnvOpts {
    fn default() -> Self {
        EnvOpts {
            kind: EnvKind::Baton,
            dpdk_mem_mb: 2048,
            dpdk_file_prefix: None,
            dpdk_extra_args: Vec::new(),
            dpdk_pci_allow: Vec::new(),
        }
    }
}

impl EnvOpts {
    /// Options from the process environment: `BATON_ENV` (`baton`|`dpdk`),
    /// `BATON_DPDK_MEM_MB`, `BATON_DPDK_FILE_PREFIX`, `BATON_DPDK_EAL_ARGS`
    /// (space-separated), `BATON_DPDK_PCI_ALLOW` (PCI addresses, separated by commas or
    /// spaces).
    pub fn from_env() -> Result<EnvOpts, EnvError> {
        let mut o = EnvOpts {
            kind: std::env::var("BATON_ENV").unwrap_or_default().parse()?,
            ..EnvOpts::default()
        };
        if let Ok(v) = std::env::var("BATON_DPDK_MEM_MB") {
            o.dpdk_mem_mb = v.trim().parse().map_err(|_| EnvError::BadVar("BATON_DPDK_MEM_MB", v))?;
        }
        o.dpdk_file_prefix = std::env::var("BATON_DPDK_FILE_PREFIX").ok().filter(|s| !s.is_empty());
        if let Ok(v) = std::env::var("BATON_DPDK_EAL_ARGS") {
            o.dpdk_extra_args = v.split_whitespace().map(str::to_string).collect();
        }
        if let Ok(v) = std::env::var("BATON_DPDK_PCI_ALLOW") {
            o.allow_pci(v.split([',', ' ', '\t']).filter(|s| !s.is_empty()))?;
        }
        Ok(o)
    }

    /// Adds PCI functions to [`EnvOpts::dpdk_pci_allow`] (checked and made canonical,
    /// duplicates dropped).
    pub fn allow_pci<S: AsRef<str>>(&mut self, addrs: impl IntoIterator<Item = S>) -> Result<(), EnvError> {
        for a in addrs {
            let a = pci_addr(a.as_ref())?;
            if !self.dpdk_pci_allow.contains(&a) {
                self.dpdk_pci_allow.push(a);
            }
        }
        Ok(())
    }
}

/// A PCI function address in canonical form, `DDDD:BB:DD.F` in lower-case hex (domain
/// 0000 when `s` has none, as `lspci` prints it): what DPDK's `-a` and SPDK's PCIe
/// `traddr` take. Bus 00–ff, device 00–1f, function 0–7.
pub fn pci_addr(s: &str) -> Result<String, EnvError> {
    let bad = |why: &str| EnvError::BadPciAddr(s.to_string(), why.to_string());
    let t = s.trim();
    let (rest, func) = t.rsplit_once('.').ok_or_else(|| bad("no .function"))?;
    let parts: Vec<&str> = rest.split(':').collect();
    let (dom, bus, dev) = match parts.as_slice() {
        [b, d] => ("0", *b, *d),
        [x, b, d] => (*x, *b, *d),
        _ => return Err(bad("expected [DOMAIN:]BUS:DEVICE.FUNCTION")),
    };
    let hex = |v: &str, max: u32, what: &str| {
        if v.is_empty() || v.len() > 8 || !v.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad(&format!("{what} {v:?} is not hexadecimal")));
        }
        let n = u32::from_str_radix(v, 16).map_err(|_| bad(&format!("{what} {v:?} is not hexadecimal")))?;
        if n > max {
            return Err(bad(&format!("{what} {v} is above {max:x}")));
        }
        Ok(n)
    };
    let (dom, bus, dev, func) = (
        hex(dom, 0xffff, "domain")?,
        hex(bus, 0xff, "bus")?,
        hex(dev, 0x1f, "device")?,
        hex(func, 7, "function")?,
    );
    Ok(format!("{dom:04x}:{bus:02x}:{dev:02x}.{func:x}"))
}

/// PCI functions DPDK was allowed to probe when its EAL started in this process
/// (empty: none, or DPDK is not running).
static PCI_ALLOWED: OnceLock<Vec<String>> = OnceLock::new();

/// Whether the PCI function `addr` (any form [`pci_addr`] takes) is on the allow-list
/// this process's DPDK EAL was started with; false when EAL runs with `--no-pci` or
/// is not running.
pub fn pci_allowed(addr: &str) -> bool {
    let Ok(a) = pci_addr(addr) else { return false };
    PCI_ALLOWED.get().is_some_and(|l| l.contains(&a))
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("unknown env {0:?}: expected `baton` or `dpdk`")]
    UnknownEnv(String),
    #[error("bad value {1:?} for {0}")]
    BadVar(&'static str, String),
    #[error("env `dpdk` asked for, but this baton was built without the `dpdk` cargo feature")]
    NotBuilt,
    #[error("the env is already {current}; it cannot change to {asked} in a running process")]
    AlreadySet { current: EnvKind, asked: EnvKind },
    #[error("DPDK's EAL failed to start ({args}): {reason}")]
    Eal { args: String, reason: String },
    #[error("DPDK: {what}: {reason}")]
    Dpdk { what: String, reason: String },
    #[error("bad PCI address {0:?}: {1}")]
    BadPciAddr(String, String),
    #[error("PCI devices ({0}) were asked for, but the env is not dpdk: PCI devices are probed by DPDK only (run with --env dpdk or BATON_ENV=dpdk)")]
    PciNeedsDpdk(String),
    #[error("PCI devices ({0}) were asked for, but no hugepages are reserved: VFIO maps pinned memory for DMA (echo N > /proc/sys/vm/nr_hugepages)")]
    PciNeedsHugepages(String),
}

static CURRENT: OnceLock<Result<EnvKind, EnvError>> = OnceLock::new();

/// Chooses the process's env (starting DPDK's EAL for [`EnvKind::Dpdk`]).
/// Call once, before any reactor or buffer pool exists; calling it again with
/// the same kind is a no-op, with another kind an error.
pub fn init(opts: EnvOpts) -> Result<EnvKind, EnvError> {
    let asked = opts.kind;
    let got = CURRENT.get_or_init(|| start(&opts)).clone()?;
    if got != asked {
        return Err(EnvError::AlreadySet { current: got, asked });
    }
    Ok(got)
}

/// The process's env, chosen on first use from `BATON_ENV` when [`init`] was
/// not called. An error when that choice failed (DPDK missing, EAL failed).
pub fn current() -> Result<EnvKind, EnvError> {
    CURRENT
        .get_or_init(|| EnvOpts::from_env().and_then(|o| start(&o)))
        .clone()
}

fn start(opts: &EnvOpts) -> Result<EnvKind, EnvError> {
    if !opts.dpdk_pci_allow.is_empty() && opts.kind != EnvKind::Dpdk {
        return Err(EnvError::PciNeedsDpdk(opts.dpdk_pci_allow.join(" ")));
    }
    match opts.kind {
        EnvKind::Baton => Ok(EnvKind::Baton),
        EnvKind::Dpdk => {
            ensure(EnvKind::Dpdk, opts)?;
            log::info!("env: dpdk (rte_ring message rings, rte_mempool buffer pools)");
            Ok(EnvKind::Dpdk)
        }
    }
}

/// Makes `kind` usable in this process whatever the current env is (for
/// benchmarks that build both kinds side by side): for DPDK, starts the EAL
/// with `opts` unless it is already running.
pub fn ensure(kind: EnvKind, opts: &EnvOpts) -> Result<(), EnvError> {
    match kind {
        EnvKind::Baton => Ok(()),
        #[cfg(feature = "dpdk")]
        EnvKind::Dpdk => {
            dpdk::eal_init(opts)?;
            PCI_ALLOWED.get_or_init(|| dpdk::eal_pci_allowed().to_vec());
            Ok(())
        }
        #[cfg(not(feature = "dpdk"))]
        EnvKind::Dpdk => {
            let _ = opts;
            Err(EnvError::NotBuilt)
        }
    }
}

/// Marks the calling thread as a reactor for the env's lifetime of the guard
/// (DPDK: registers it as a non-EAL lcore, so it gets per-lcore mempool
/// caches). A no-op for baton's env and when DPDK is not running.
pub(crate) fn reactor_thread() -> ThreadGuard {
    #[cfg(feature = "dpdk")]
    {
        ThreadGuard {
            registered: dpdk::register_thread(),
        }
    }
    #[cfg(not(feature = "dpdk"))]
    ThreadGuard {}
}

pub(crate) struct ThreadGuard {
    #[cfg(feature = "dpdk")]
    registered: bool,
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        #[cfg(feature = "dpdk")]
        if self.registered {
            dpdk::unregister_thread();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_parses() {
        assert_eq!("".parse::<EnvKind>(), Ok(EnvKind::Baton));
        assert_eq!("DPDK".parse::<EnvKind>(), Ok(EnvKind::Dpdk));
        assert!("spdk".parse::<EnvKind>().is_err());
    }

    #[test]
    fn pci_addresses_are_checked_and_made_canonical() {
        assert_eq!(pci_addr("0000:00:04.0").unwrap(), "0000:00:04.0");
        assert_eq!(pci_addr(" 00:1F.7 ").unwrap(), "0000:00:1f.7");
        assert_eq!(pci_addr("1:af:00.1").unwrap(), "0001:af:00.1");
        for bad in [
            "",
            "00:04",
            "0000:00:20.0",
            "00:04.8",
            "0000:100:00.0",
            "x:00:04.0",
            "0:0:0:0.0",
            "00:04.-1",
        ] {
            assert!(
                matches!(pci_addr(bad), Err(EnvError::BadPciAddr(..))),
                "{bad:?} accepted"
            );
        }
        let mut o = EnvOpts::default();
        o.allow_pci(["00:04.0", "0000:00:04.0", "0000:00:05.0"]).unwrap();
        assert_eq!(o.dpdk_pci_allow, ["0000:00:04.0", "0000:00:05.0"]);
        assert!(o.allow_pci(["04.0"]).is_err());
    }

    #[test]
    fn pci_needs_the_dpdk_env() {
        let mut o = EnvOpts::default();
        o.allow_pci(["00:04.0"]).unwrap();
        assert_eq!(start(&o), Err(EnvError::PciNeedsDpdk("0000:00:04.0".into())));
        assert!(!pci_allowed("00:04.0"), "nothing is allowed before EAL starts with it");
    }

    /// The env the suite was asked to run in is the one it runs in: a CI run
    /// with `BATON_ENV=dpdk` whose EAL failed must fail here, not quietly fall
    /// back to baton's rings.
    #[test]
    fn env_is_the_one_asked_for() {
        let asked = EnvOpts::from_env().unwrap().kind;
        assert_eq!(current(), Ok(asked));
        let ring = crate::ring::Ring::<u64>::new(8);
        assert_eq!(ring.kind(), asked);
        let pool = crate::buf::BufPool::new("t-env", 4, 4096).unwrap();
        assert_eq!(pool.env(), asked);
    }
}
