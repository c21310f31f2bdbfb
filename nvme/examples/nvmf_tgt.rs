//! A minimal stand-alone NVMe/TCP target for end-to-end tests with other initiators (the
//! Linux kernel's nvme-tcp in a QEMU guest, see `ci/nvme-tcp-e2e.sh`).
//!
//! `nvmf_tgt ADDR:PORT [MiB]` serves two subsystems on ADDR:PORT with RAM namespaces:
//! `nqn.2016-06.io.baton:e2e` (any host) and `nqn.2016-06.io.baton:restricted` (only host
//! `nqn.2014-08.org.nvmexpress:uuid:baton-e2e-allowed`). Runs until killed.

use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use nvme::nvmf::{SubsystemParams, Target};

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4420".into())
        .parse()
        .expect("ADDR:PORT");
    let mib: u64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(256);
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
    }
    println!("nvmf_tgt: ready");
    r.wait();
}
