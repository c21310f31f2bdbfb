//! A planned switchover end to end, with real processes on loopback: a `baton target`
//! primary (replicated volume over RAM, exported over NVMe/TCP and written by this test
//! through the NVMe/TCP host) -> two `baton relay` processes -> a `baton standby`; then
//! `baton switchover` demotes the primary and promotes and exports the standby.
//!
//! What must hold (`docs/switchover.md`): every write the host had acknowledged before the
//! switchover is in the promoted volume, read back over NVMe/TCP from the standby's export,
//! block for block; the promoted epoch is the final restart point's; the old primary
//! refuses writes afterwards (and its relays refuse its generation).

mod support;

use nvme::host::Qpair;
use serde_json::{json, Value};
use support::*;

const NQN: &str = "nqn.2016-06.io.baton:switch-primary";
const NQN_NEW: &str = "nqn.2016-06.io.baton:switch-standby";

#[test]
fn a_planned_switchover_loses_no_acknowledged_write() {
    let sd = TempDir::new("/dev/shm", "switch-s");
    let d1 = TempDir::new("/dev/shm", "switch-r1");
    let d2 = TempDir::new("/dev/shm", "switch-r2");
    let dp = TempDir::new("/dev/shm", "switch-p");
    let sb = StandbyProc::start(&sd.0, free_port());
    let r1 = RelayProc::for_standby(&d1.0, free_port(), sb.addr(), &[]);
    let r2 = RelayProc::for_standby(&d2.0, free_port(), sb.addr(), &["--backup"]);

    // The primary: a `baton target` with the replicated volume exported over NVMe/TCP.
    let ps = dp.0.join("primary.sock");
    let _primary = Proc::spawn(
        baton()
            .args(["target", "-m", "0x1", "-r"])
            .arg(&ps)
            .args(["--bdev", "Base=malloc,size=4M,bs=4096"]),
        &dp.0.join("primary.log"),
    );
    wait_rpc(&ps);
    rpc(
        &ps,
        "replication_create_volume",
        Some(json!({"name": "vold", "base_bdev": "Base", "relays": [r1.addr(), r2.addr()]})),
    )
    .unwrap();
    let (c, mut q) = connect(export(&ps, NQN, "vold", true), NQN);

    // The application: two groups closed by restart points, then writes after the last
    // one (acknowledged, not yet under a restart point: the switchover's own point must
    // cover them).
    let mut img = vec![0u8; BLOCKS as usize * BS];
    let mut stamp = 0u64;
    let mut put = |q: &mut Qpair, lba: u64, img: &mut Vec<u8>| {
        stamp += 1;
        assert!(write_block(q, lba, stamp), "write {lba} acknowledged");
        fill(&mut img[lba as usize * BS..(lba as usize + 1) * BS], stamp);
    };
    for group in 0..2u64 {
        for i in 0..150u64 {
            put(&mut q, (i * 7 + group * 13) % BLOCKS, &mut img);
        }
        let rp = rpc(
            &ps,
            "replication_declare_restart_point",
            Some(json!({"name": "vold", "tag": format!("g{group}")})),
        )
        .unwrap();
        assert_eq!(rp["epoch"], group + 1);
    }
    for i in 0..40u64 {
        put(&mut q, (i * 11 + 5) % BLOCKS, &mut img);
    }

    // The switchover, per volume, exporting the promoted volume.
    let eport = free_port();
    let out = baton()
        .arg("switchover")
        .arg("--primary-rpc")
        .arg(&ps)
        .arg("--standby-rpc")
        .arg(&sb.sock)
        .args(["--volume", "vold=vold", "--export-nqn", NQN_NEW])
        .args(["--export-listen", &format!("127.0.0.1:{eport}"), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "switchover failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["no_acknowledged_write_lost"], true, "{rep}");
    let v = &rep["volumes"][0];
    assert_eq!(v["final_epoch"], 3, "the writes after g1 got their own point: {rep}");
    assert_eq!(v["final_point_reused"], false, "{rep}");
    assert_eq!(v["promoted_epoch"], 3, "{rep}");
    assert!(rep["downtime_ms"].as_f64().unwrap() > 0.0, "{rep}");
    println!(
        "switchover downtime {:.1} ms (fenced at {:.1} ms)",
        rep["downtime_ms"].as_f64().unwrap(),
        rep["fenced_ms"].as_f64().unwrap()
    );

    // The old primary refuses writes now.
    assert!(
        !write_block(&mut q, 3, 999_999),
        "a write after the switchover succeeded"
    );
    c.disconnect();
    let st = rpc(&ps, "replication_get_volumes", Some(json!({"name": "vold"}))).unwrap();
    assert_eq!(st[0]["demoted"], true, "{st}");

    // The promoted volume, read over NVMe/TCP from the standby's export, is every
    // acknowledged write.
    let got = read_all(format!("127.0.0.1:{eport}").parse().unwrap(), NQN_NEW, BLOCKS);
    assert_eq!(first_block_diff(&got, &img), None, "promoted volume differs");
    let s = sb.status("vold").unwrap();
    assert!(s["generation"].as_u64() > Some(1) || s["promoted"] == true, "{s}");
    drop((r1, r2));
}
