//! A minimal stand-alone NVMe/TCP target for end-to-end tests with other initiators (the
//! Linux kernel's nvme-tcp in a QEMU guest, see `ci/nvme-tcp-e2e.sh`).
//!
//! `nvmf_tgt ADDR:PORT [MiB]` serves two subsystems on ADDR:PORT with RAM namespaces:
//! `nqn.2016-06.io.baton:e2e` (any host) and `nqn.2016-06.io.baton:restricted` (only host
//! `nqn.2014-08.org.nvmexpress:uuid:baton-e2e-allowed`). Runs until killed.
//!
//! Also `nqn.2016-06.io.baton:ana` (any host, ANA reporting, one RAM namespace with a fixed
//! UUID) on ADDR:PORT, plus, for multipath tests:
//! - `--ana-listen ADDR:PORT=STATE` (repeatable): another listener of it, its groups in STATE;
//! - `--ana-state STATE`: the state on ADDR:PORT (default optimized);
//! - `--cntlid MIN-MAX`: its controller ID range (two processes exporting it as two paths
//!   must not overlap);
//! - `--ctl FIFO`: reads lines `ana ADDR:PORT STATE` from FIFO (made with `mkfifo`) and
//!   sets that listener's ANA state, as `nvmf_subsystem_listener_set_ana_state` does, and
//!   `stats`, which prints `nvmf_get_stats`'s answer on one line (`nvmf_tgt: stats {...}`).
//!
//! `--auth HOSTNQN=KEYFILE[,CTRLKEYFILE]` (repeatable): subsystem `nqn.2016-06.io.baton:auth`
//! on ADDR:PORT admits HOSTNQN only after DH-HMAC-CHAP with the secret in KEYFILE (a
//! `DHHC-1` secret, mode 0600), bidirectional with CTRLKEYFILE (`docs/nvme-tcp.md`,
//! "In-band authentication"); with `--rdma`, on the RDMA address too.
//!
//! `--tls ADDR:PORT` with `--tls-host HOSTNQN=KEYFILE` (repeatable): subsystem
//! `nqn.2016-06.io.baton:tls` on a secure-channel listener at ADDR:PORT (TLS 1.3 with a PSK
//! only), admitting each HOSTNQN with the PSK in KEYFILE (`NVMeTLSkey-1:...`, mode 0600;
//! `docs/security.md`, "NVMe/TCP TLS").
//!
//! `--rdma ADDR:PORT` (feature `rdma`): the e2e and restricted subsystems also listen over
//! NVMe/RDMA at ADDR:PORT (an address of an RDMA device, e.g. Soft-RoCE's;
//! `docs/nvme-rdma.md`), with the RDMA transport's default options.
//!
//! `--rp-sink`: the e2e subsystem's namespace takes restart points (`docs/restart-points.md`)
//! through a test sink: each tag is answered with the next epoch (1, 2, ...) and printed as
//! `nvmf_tgt: restart point EPOCH tag 'TAG'`; Flush is a restart point too (empty tag); the
//! tag `hold` is never answered (the command times out after 3 s), the tag `late` is
//! answered after 2 s from another thread (for a host that disconnects meanwhile).
//!
//! `--pcie BDF` (feature `vfio`): attaches the NVMe controller at BDF (bound to vfio-pci)
//! with baton's user-space driver and exports its first namespace as
//! `nqn.2016-06.io.baton:pcie` on ADDR:PORT.

use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use nvme::nvmf::ana::AnaState;
use nvme::nvmf::restart::{self, RestartPointDone, RestartPointSink};
use nvme::nvmf::{SubsystemParams, Target};
use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ANA_NQN: &str = "nqn.2016-06.io.baton:ana";

#[derive(Default)]
struct AnaArgs {
    listen: Vec<(SocketAddr, AnaState)>,
    state: Option<AnaState>,
    cntlid: Option<(u16, u16)>,
    ctl: Option<String>,
    pcie: Option<String>,
    auth: Vec<String>,
    tls: Option<SocketAddr>,
    tls_hosts: Vec<String>,
    rdma: Option<SocketAddr>,
    rp_sink: bool,
}

/// The `--rp-sink` restart point sink (test code: a mutex and a thread are fine here).
#[derive(Default)]
struct TestSink {
    epoch: AtomicU64,
    held: Mutex<Vec<RestartPointDone>>,
}

impl RestartPointSink for TestSink {
    fn declare(&self, tag: &[u8], done: RestartPointDone) {
        let tag = String::from_utf8_lossy(tag).into_owned();
        match tag.as_str() {
            "hold" => {
                println!("nvmf_tgt: restart point held tag 'hold'");
                self.held.lock().unwrap_or_else(|e| e.into_inner()).push(done);
            }
            _ => {
                let e = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
                println!("nvmf_tgt: restart point {e} tag '{tag}'");
                if tag == "late" {
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_secs(2));
                        println!("nvmf_tgt: restart point {e} answered late");
                        done(Ok(e));
                    });
                } else {
                    done(Ok(e));
                }
            }
        }
    }

    fn flush_is_restart_point(&self) -> bool {
        true
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(3)
    }
}

fn state(s: &str) -> AnaState {
    AnaState::parse(s).unwrap_or_else(|| panic!("unknown ANA state {s:?}"))
}

fn ana_args(args: &[String]) -> AnaArgs {
    let mut a = AnaArgs::default();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        if k == "--rp-sink" {
            a.rp_sink = true;
            continue;
        }
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--ana-listen" => {
                let (addr, st) = v.split_once('=').unwrap_or((v, "optimized"));
                a.listen
                    .push((addr.parse().expect("--ana-listen ADDR:PORT"), state(st)));
            }
            "--ana-state" => a.state = Some(state(v)),
            "--cntlid" => {
                let (lo, hi) = v.split_once('-').expect("--cntlid MIN-MAX");
                a.cntlid = Some((lo.parse().expect("MIN"), hi.parse().expect("MAX")));
            }
            "--ctl" => a.ctl = Some(v.clone()),
            "--pcie" => a.pcie = Some(v.clone()),
            "--auth" => a.auth.push(v.clone()),
            "--tls" => a.tls = Some(v.parse().expect("--tls ADDR:PORT")),
            "--tls-host" => a.tls_hosts.push(v.clone()),
            "--rdma" => a.rdma = Some(v.parse().expect("--rdma ADDR:PORT")),
            _ => panic!("unknown option {k}"),
        }
    }
    a
}

/// The authentication subsystem: hosts admitted only with DH-HMAC-CHAP, keys from files;
/// on TCP, and on RDMA too with `--rdma`.
fn auth_subsystem(t: &Arc<Target>, addr: SocketAddr, rdma: Option<SocketAddr>, mib: u64, hosts: &[String]) {
    const NQN: &str = "nqn.2016-06.io.baton:auth";
    let b = engine::bdev::malloc::create("MallocAuth", mib * 256, 4096, Some(*b"baton-e2e-ns-ath")).expect("malloc");
    engine::bdev::register(b).expect("register");
    t.create_subsystem(SubsystemParams {
        nqn: NQN.into(),
        serial_number: Some("BATONAUTH".into()),
        model_number: Some("baton e2e".into()),
        ..Default::default()
    })
    .expect("subsystem");
    t.add_namespace(NQN, "MallocAuth", None, None).expect("namespace");
    for (i, h) in hosts.iter().enumerate() {
        let (host, files) = h.split_once('=').expect("--auth HOSTNQN=KEYFILE[,CTRLKEYFILE]");
        let (kf, cf) = match files.split_once(',') {
            Some((k, c)) => (k, Some(c)),
            None => (files, None),
        };
        let key = format!("key{i}");
        t.keyring
            .add_file(&key, kf)
            .unwrap_or_else(|e| panic!("--auth {h}: {e}"));
        let ckey = cf.map(|c| {
            let n = format!("ckey{i}");
            t.keyring.add_file(&n, c).unwrap_or_else(|e| panic!("--auth {h}: {e}"));
            n
        });
        t.add_host_keys(
            NQN,
            host,
            Some(nvme::nvmf::HostKeyNames {
                dhchap_key: key,
                dhchap_ctrlr_key: ckey,
            }),
        )
        .expect("host");
    }
    let a = t.add_listener(NQN, addr).expect("listener");
    println!("nvmf_tgt: {NQN} on {a}");
    if let Some(ra) = rdma {
        let a = t
            .add_listener_rdma(NQN, ra, AnaState::Optimized)
            .unwrap_or_else(|e| panic!("--rdma {ra}: {e}"));
        println!("nvmf_tgt: {NQN} on RDMA {a}");
    }
}

/// The TLS subsystem: only on a secure-channel listener, hosts admitted with their PSK.
fn tls_subsystem(t: &Arc<Target>, addr: SocketAddr, mib: u64, hosts: &[String]) {
    const NQN: &str = "nqn.2016-06.io.baton:tls";
    let b = engine::bdev::malloc::create("MallocTls", mib * 256, 4096, Some(*b"baton-e2e-ns-tls")).expect("malloc");
    engine::bdev::register(b).expect("register");
    t.create_subsystem(SubsystemParams {
        nqn: NQN.into(),
        serial_number: Some("BATONTLS".into()),
        model_number: Some("baton e2e".into()),
        ..Default::default()
    })
    .expect("subsystem");
    t.add_namespace(NQN, "MallocTls", None, None).expect("namespace");
    for (i, h) in hosts.iter().enumerate() {
        let (host, file) = h.split_once('=').expect("--tls-host HOSTNQN=KEYFILE");
        let key = format!("psk{i}");
        t.keyring
            .add_file(&key, file)
            .unwrap_or_else(|e| panic!("--tls-host {h}: {e}"));
        t.add_host(NQN, host).expect("host");
        t.set_host_psk(NQN, host, Some(key)).expect("psk");
    }
    let a = t
        .add_listener_secure(NQN, addr, AnaState::Optimized, true)
        .expect("secure listener");
    println!("nvmf_tgt: {NQN} on {a} (TLS)");
}

/// The ANA subsystem: one namespace with a fixed identity, on `addr` and the extra listeners.
fn ana_subsystem(t: &Arc<Target>, addr: SocketAddr, mib: u64, a: &AnaArgs) {
    let b = engine::bdev::malloc::create("MallocAna", mib * 256, 4096, Some(*b"baton-e2e-ns-ana")).expect("malloc");
    engine::bdev::register(b).expect("register");
    t.create_subsystem(SubsystemParams {
        nqn: ANA_NQN.into(),
        serial_number: Some("BATONANA".into()),
        model_number: Some("baton e2e".into()),
        allow_any_host: true,
        ana_reporting: true,
        min_cntlid: a.cntlid.map(|c| c.0),
        max_cntlid: a.cntlid.map(|c| c.1),
        ..Default::default()
    })
    .expect("ANA subsystem");
    t.add_namespace(ANA_NQN, "MallocAna", None, None).expect("namespace");
    let first = t
        .add_listener_ana(ANA_NQN, addr, a.state.unwrap_or(AnaState::Optimized))
        .expect("listener");
    println!("nvmf_tgt: {ANA_NQN} on {first}");
    for (l, st) in &a.listen {
        let b = t.add_listener_ana(ANA_NQN, *l, *st).expect("ANA listener");
        println!("nvmf_tgt: {ANA_NQN} on {b} ({})", st.name());
    }
}

/// The PCIe namespace through baton's own driver, exported over NVMe/TCP.
#[cfg(feature = "vfio")]
fn pcie_subsystem(t: &Arc<Target>, addr: SocketAddr, bdf: &str) {
    let nqn = "nqn.2016-06.io.baton:pcie";
    let c = nvme::pcie::PcieCtrlr::attach(bdf).unwrap_or_else(|e| panic!("--pcie {bdf}: {e}"));
    let nsid = c.namespaces.first().map(|n| n.nsid).expect("a namespace");
    let b = nvme::pcie::PcieBdev::new(&c, "PcieNvme0n1", nsid).expect("bdev");
    engine::bdev::register(b).expect("register");
    t.create_subsystem(SubsystemParams {
        nqn: nqn.into(),
        serial_number: Some("BATONPCIE".into()),
        model_number: Some("baton e2e pcie".into()),
        allow_any_host: true,
        ..Default::default()
    })
    .expect("subsystem");
    t.add_namespace(nqn, "PcieNvme0n1", None, None).expect("namespace");
    let a = t.add_listener(nqn, addr).expect("listener");
    println!("nvmf_tgt: {nqn} on {a} (PCIe {bdf})");
}

#[cfg(not(feature = "vfio"))]
fn pcie_subsystem(_: &Arc<Target>, _: SocketAddr, bdf: &str) {
    panic!("--pcie {bdf}: built without the vfio feature");
}

/// Applies `ana ADDR:PORT STATE` lines from the control FIFO for ever.
fn control(t: Arc<Target>, path: String) {
    std::thread::spawn(move || loop {
        let Ok(f) = std::fs::File::open(&path) else { return };
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            let w: Vec<&str> = line.split_whitespace().collect();
            let r = match w.as_slice() {
                ["ana", addr, st] => match (addr.parse(), AnaState::parse(st)) {
                    (Ok(a), Some(s)) => t.set_ana_state(ANA_NQN, a, s, None).map_err(|e| e.to_string()),
                    _ => Err("bad address or state".into()),
                },
                ["stats"] => nvme::rpc::nvmf_get_stats(&t, None)
                    .map(|v| println!("nvmf_tgt: stats {v}"))
                    .map_err(|e| format!("{e:?}")),
                _ => Err("unknown command".into()),
            };
            match r {
                Ok(()) => println!("nvmf_tgt: ctl ok: {line}"),
                Err(e) => println!("nvmf_tgt: ctl error: {line}: {e}"),
            }
        }
    });
}

fn main() {
    // Log lines (connections refused, TLS handshakes) to stderr; RUST_LOG overrides.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:4420".into())
        .parse()
        .expect("ADDR:PORT");
    let mib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(256);
    let ana = ana_args(args.get(3..).unwrap_or(&[]));
    let mut o = ReactorOpts::new(vec![0]);
    o.pin = false;
    o.idle = IdleMode::Adaptive {
        idle_before_sleep_us: 1000,
        sleep_us_max: 500,
    };
    let r = Reactors::start(o).expect("reactors");
    let t = Target::new();
    for (i, (nqn, any)) in [
        ("nqn.2016-06.io.baton:e2e", true),
        ("nqn.2016-06.io.baton:restricted", false),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("Malloc{i}");
        // Stable namespace identity across restarts: hosts refuse a namespace whose
        // NGUID/UUID changed under the same NSID.
        let mut uuid = *b"baton-e2e-ns-000";
        uuid[15] = b'0' + i as u8;
        let b = engine::bdev::malloc::create(&name, mib * 256, 4096, Some(uuid)).expect("malloc bdev");
        engine::bdev::register(b).expect("register");
        t.create_subsystem(SubsystemParams {
            nqn: nqn.into(),
            serial_number: Some(format!("BATON{i:04}")),
            model_number: Some("baton e2e".into()),
            allow_any_host: any,
            max_namespaces: None,
            ..Default::default()
        })
        .expect("subsystem");
        t.add_namespace(nqn, &name, None, None).expect("namespace");
        if !any {
            t.add_host(nqn, "nqn.2014-08.org.nvmexpress:uuid:baton-e2e-allowed")
                .expect("host");
        }
        let a = t.add_listener(nqn, addr).expect("listener");
        println!("nvmf_tgt: {nqn} on {a}");
        if let Some(ra) = ana.rdma {
            let a = t
                .add_listener_rdma(nqn, ra, AnaState::Optimized)
                .unwrap_or_else(|e| panic!("--rdma {ra}: {e}"));
            println!("nvmf_tgt: {nqn} on RDMA {a}");
        }
    }
    if ana.rp_sink {
        // Kept registered for the life of the process.
        restart::register("Malloc0", Arc::new(TestSink::default()));
        println!("nvmf_tgt: restart points on Malloc0");
    }
    ana_subsystem(&t, addr, mib, &ana);
    if !ana.auth.is_empty() {
        auth_subsystem(&t, addr, ana.rdma, mib, &ana.auth);
    }
    if let Some(a) = ana.tls {
        tls_subsystem(&t, a, mib, &ana.tls_hosts);
    }
    if let Some(bdf) = &ana.pcie {
        pcie_subsystem(&t, addr, bdf);
    }
    if let Some(p) = ana.ctl.clone() {
        control(t.clone(), p);
    }
    println!("nvmf_tgt: ready");
    r.wait();
}
