//! Shared set-up for the NVMe/TCP integration tests: one set of reactors per test binary,
//! a target per test with RAM bdevs, listening on 127.0.0.1 with a random port.
#![allow(dead_code)]

use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use nvme::host::{Controller, Data, HostOpts, Qpair};
use nvme::nvmf::{SubsystemParams, Target};
use nvme::spec::Sqe;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const BLOCK: u32 = 512;
pub const BLOCKS: u64 = 16384; // 8 MiB

static REACTORS: OnceLock<Reactors> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Starts two unpinned reactors once per process.
pub fn reactors() {
    REACTORS.get_or_init(|| {
        let mut o = ReactorOpts::new(vec![0, 1]);
        o.pin = false;
        o.idle = IdleMode::Adaptive {
            idle_before_sleep_us: 2000,
            sleep_us_max: 200,
        };
        Reactors::start(o).expect("reactors start")
    });
}

pub struct Fixture {
    pub target: Arc<Target>,
    pub nqn: String,
    pub addr: SocketAddr,
    pub bdev: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.target.shutdown();
    }
}

/// A target with one subsystem (allow any host) and one RAM namespace of `BLOCKS` blocks.
pub fn fixture() -> Fixture {
    fixture_with(true)
}

pub fn fixture_with(allow_any_host: bool) -> Fixture {
    reactors();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let bdev = format!("Malloc{pid}_{n}");
    let b = engine::bdev::malloc::create(&bdev, BLOCKS, BLOCK, None).unwrap();
    engine::bdev::register(b).unwrap();
    let target = Target::new();
    let nqn = format!("nqn.2016-06.io.baton:test{n}");
    target
        .create_subsystem(SubsystemParams {
            nqn: nqn.clone(),
            serial_number: Some(format!("SN{n}")),
            model_number: None,
            allow_any_host,
            max_namespaces: None,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(target.add_namespace(&nqn, &bdev, None, None).unwrap(), 1);
    let addr = target.add_listener(&nqn, "127.0.0.1:0".parse().unwrap()).unwrap();
    Fixture {
        target,
        nqn,
        addr,
        bdev,
    }
}

/// A new target on the fixture's address with the same subsystem and namespace (bdev):
/// the target "restarted" after `f.target.shutdown()`.
pub fn restart(f: &Fixture) -> Arc<Target> {
    let t = Target::new();
    t.create_subsystem(SubsystemParams {
        nqn: f.nqn.clone(),
        allow_any_host: true,
        ..Default::default()
    })
    .unwrap();
    t.add_namespace(&f.nqn, &f.bdev, None, None).unwrap();
    let t0 = std::time::Instant::now();
    while let Err(e) = t.add_listener(&f.nqn, f.addr) {
        assert!(t0.elapsed() < T, "cannot listen on {} again: {e}", f.addr);
        std::thread::sleep(Duration::from_millis(20));
    }
    t
}

/// The fixture's namespace 1 as a transport ID (what `baton perf -r` takes).
pub fn trid(f: &Fixture) -> nvme::host::TransportId {
    nvme::host::TransportId::parse(&format!(
        "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{} subnqn:{} ns:1",
        f.addr.port(),
        f.nqn
    ))
    .unwrap()
}

/// Host bdev options with the test timeouts and a 32-entry queue.
pub fn host_bdev_opts() -> nvme::host::bdev::HostBdevOpts {
    nvme::host::bdev::HostBdevOpts {
        host: opts(),
        queue_entries: 32,
        reconnect: Default::default(),
    }
}

pub fn opts() -> HostOpts {
    HostOpts {
        timeout: Duration::from_secs(20),
        ..HostOpts::default()
    }
}

pub const T: Duration = Duration::from_secs(20);

/// Deterministic test pattern for block `lba`.
pub fn pattern(lba: u64, seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (lba as usize * 31 + i * 7 + seed as usize) as u8)
        .collect()
}

pub fn buf_from(v: &[u8]) -> engine::buf::DmaBuf {
    let mut b = engine::buf::DmaBuf::alloc(v.len());
    b.copy_from_slice(v);
    b
}

/// Writes then reads back `nlb` blocks at `slba` and checks the data.
pub fn write_read(q: &mut Qpair, slba: u64, nlb: u32, seed: u8) {
    let len = (nlb * BLOCK) as usize;
    let data = pattern(slba, seed, len);
    let c = q
        .sync(nvme::host::cmd::write(1, slba, nlb), Data::ToCtrl(buf_from(&data)), T)
        .unwrap();
    assert!(c.status().is_success(), "write {slba}+{nlb}: {}", c.status());
    let c = q
        .sync(
            nvme::host::cmd::read(1, slba, nlb),
            Data::FromCtrl(engine::buf::DmaBuf::alloc(len)),
            T,
        )
        .unwrap();
    assert!(c.status().is_success(), "read {slba}+{nlb}: {}", c.status());
    assert!(c.buf.unwrap()[..] == data[..], "data mismatch at {slba}+{nlb}");
}

pub fn connect(f: &Fixture, o: &HostOpts) -> (Controller, Qpair) {
    let mut c = Controller::connect(f.addr, &f.nqn, o).unwrap();
    let q = c.create_io_qpair().unwrap();
    (c, q)
}

pub fn raw_sqe(opc: u8, nsid: u32) -> Sqe {
    Sqe {
        opc,
        nsid,
        ..Sqe::default()
    }
}
