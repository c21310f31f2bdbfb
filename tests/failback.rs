//! Failover, then failback by delta, end to end with real processes on loopback
//! (`docs/failback.md`).
//!
//! Site A runs the primary (`baton target`, base on a file so it survives the disaster)
//! replicating through two relays to site B's standby. The application writes two groups
//! closed by restart points, then writes that no restart point covers. Site A dies
//! (SIGKILL). Site B promotes: the uncovered writes are rolled back, and their blocks
//! start the promoted volume's record of changes. The application runs on at B and changes
//! 1 % of the blocks. Site A is repaired as a standby over its old base, and B replicates
//! back to it through two new relays with an initial sync of only the union of B's record
//! and A's own dirty-block record.
//!
//! What must hold:
//! - A's image at the first restart point after the sync is B's, block for block (read
//!   from A's base file and from B over NVMe/TCP);
//! - the sync moved only the blocks in that union: here at most 2 % of the volume.

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::*;

/// 64 MiB of 4 KiB blocks.
const VB: u64 = 16384;
const VOL_BYTES: usize = VB as usize * BS;

fn uring(dir: &Path, name: &str) -> String {
    format!("{name}=uring:{}/{name}.img,size=64M,bs=4096", dir.display())
}

fn standby_proc(dir: &Path, port: u16, bdevs: &[&str]) -> Proc {
    let mut c = baton();
    c.args(["standby", "-m", "0x1", "--listen", &format!("127.0.0.1:{port}")])
        .arg("-r")
        .arg(dir.join("rpc.sock"));
    for b in bdevs {
        c.args(["--bdev", &uring(dir, b)]);
    }
    let p = Proc::spawn(&mut c, &dir.join("standby.log"));
    wait_rpc(&dir.join("rpc.sock"));
    p
}

fn status(sock: &Path, name: &str) -> Value {
    rpc(sock, "standby_get_status", Some(json!({"name": name}))).unwrap()[0].clone()
}

/// Writes `n` distinct blocks from `first` on with stride `stride` (mod the volume),
/// recording them in `img`; returns the blocks written.
fn write_many(q: &mut nvme::host::Qpair, img: &mut [u8], stamp: &mut u64, first: u64, stride: u64, n: u64) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let lba = (first + i * stride) % VB;
            *stamp += 1;
            assert!(write_block(q, lba, *stamp), "write {lba} acknowledged");
            fill(&mut img[lba as usize * BS..(lba as usize + 1) * BS], *stamp);
            lba
        })
        .collect()
}

#[test]
fn failback_after_failover_moves_only_the_blocks_that_differ() {
    let da = TempDir::new("/dev/shm", "fb-a");
    let db = TempDir::new("/dev/shm", "fb-b");
    let rd: Vec<TempDir> = (1..=4).map(|i| TempDir::new("/dev/shm", &format!("fb-r{i}"))).collect();

    // Site B: the standby, recording changes after promotion in a file.
    let pb = free_port();
    let _sb = standby_proc(&db.0, pb, &["bvol", "bstg"]);
    let sbs = db.0.join("rpc.sock");
    let changed = db.0.join("v.changed");
    rpc(
        &sbs,
        "standby_create",
        Some(
            json!({"name": "v", "mode": "delayed", "volume_bdev": "bvol", "staging_bdev": "bstg",
                    "format": true, "changed_map": changed.display().to_string()}),
        ),
    )
    .unwrap();
    let r1 = RelayProc::for_standby(&rd[0].0, free_port(), format!("127.0.0.1:{pb}").parse().unwrap(), &[]);
    let r2 = RelayProc::for_standby(
        &rd[1].0,
        free_port(),
        format!("127.0.0.1:{pb}").parse().unwrap(),
        &["--backup"],
    );

    // Site A: the primary, its dirty-block record persisted.
    let sas = da.0.join("primary.sock");
    let mut pa = Proc::spawn(
        baton()
            .args(["target", "-m", "0x1", "-r"])
            .arg(&sas)
            .args(["--bdev", &uring(&da.0, "base")]),
        &da.0.join("primary.log"),
    );
    wait_rpc(&sas);
    let dirty = da.0.join("v.dirty");
    rpc(
        &sas,
        "replication_create_volume",
        Some(
            json!({"name": "v", "base_bdev": "base", "relays": [r1.addr(), r2.addr()],
                    "dirty_map": dirty.display().to_string()}),
        ),
    )
    .unwrap();
    let nqn_a = "nqn.2016-06.io.baton:fb-a";
    let (ca, mut qa) = connect(export(&sas, nqn_a, "v", true), nqn_a);
    let mut img = vec![0u8; VOL_BYTES];
    let mut stamp = 0u64;
    for g in 0..2u64 {
        write_many(&mut qa, &mut img, &mut stamp, g * 7919, 13, 600);
        rpc(
            &sas,
            "replication_declare_restart_point",
            Some(json!({"name": "v", "tag": format!("g{g}")})),
        )
        .unwrap();
    }
    let at_rp2 = img.clone();
    // Let the dirty-block record forget what every relay confirmed (it rotates once a
    // second): what is left in it at the disaster is what a failback must add.
    wait_for(
        "the dirty-block record emptied",
        || {
            let v = rpc(&sas, "replication_get_volumes", Some(json!({"name": "v"}))).ok()?;
            (v[0]["dirty"]["dirty_regions"] == 0).then_some(())
        },
        || format!("{:?}", rpc(&sas, "replication_get_volumes", Some(json!({"name": "v"})))),
    );
    // Acknowledged writes no restart point covers: rolled back at B, still on A's base.
    let diverged = write_many(&mut qa, &mut img, &mut stamp, 101, 17, 50);
    let last_lsn = rpc(&sas, "replication_get_volumes", Some(json!({"name": "v"}))).unwrap()[0]["completed_lsn"]
        .as_u64()
        .unwrap();
    wait_for(
        "B received everything A numbered",
        || (status(&sbs, "v")["lsn_received_max"].as_u64()? >= last_lsn).then_some(()),
        || format!("{}", status(&sbs, "v")),
    );
    // The disaster.
    drop(ca);
    pa.kill9();
    drop((r1, r2));

    // Failover at B, by hand: promote, export, the application runs on there.
    let p = rpc(&sbs, "standby_promote", Some(json!({"name": "v"}))).unwrap();
    let head = p["bdev_name"].as_str().unwrap().to_string();
    let st = status(&sbs, "v");
    assert_eq!(st["applied_epoch"], 2, "{st}");
    assert_eq!(
        st["changed"]["changed_regions"],
        diverged.len() as u64,
        "the rolled-back writes' blocks start the record: {st}"
    );
    let nqn_b = "nqn.2016-06.io.baton:fb-b";
    let (cb, mut qb) = connect(export(&sbs, nqn_b, &head, true), nqn_b);
    let mut img_b = at_rp2;
    let changed_b = write_many(&mut qb, &mut img_b, &mut stamp, 5, 97, VB / 100);
    cb.disconnect();

    // Site A repaired: a standby over its old base, fed by two new relays.
    let pa2 = free_port();
    let _sa2 = standby_proc(&da.0, pa2, &["base", "stage"]);
    let sa2 = da.0.join("rpc.sock");
    rpc(
        &sa2,
        "standby_create",
        Some(
            json!({"name": "v", "mode": "delayed", "volume_bdev": "base", "staging_bdev": "stage",
                    "format": true}),
        ),
    )
    .unwrap();
    let to_a = format!("127.0.0.1:{pa2}").parse().unwrap();
    let r3 = RelayProc::for_standby(&rd[2].0, free_port(), to_a, &[]);
    let r4 = RelayProc::for_standby(&rd[3].0, free_port(), to_a, &["--backup"]);

    // B replicates back, syncing only the union of both records.
    rpc(
        &sbs,
        "replication_create_volume",
        Some(json!({"name": "v", "base_bdev": head, "relays": [r3.addr(), r4.addr()],
                    "initial_sync_maps": [changed.display().to_string(), dirty.display().to_string()]})),
    )
    .unwrap();
    let nqn_r = "nqn.2016-06.io.baton:fb-rev";
    let (cr, mut qr) = connect(export(&sbs, nqn_r, "v", false), nqn_r);
    // The application keeps writing during the sync.
    write_many(&mut qr, &mut img_b, &mut stamp, 3, 31, 40);
    let sync = wait_for(
        "the failback sync done",
        || {
            let v = rpc(&sbs, "replication_get_volumes", Some(json!({"name": "v"}))).ok()?;
            let s = v[0]["sync"].clone();
            (s["state"] == "done").then_some(s)
        },
        || format!("{:?}", rpc(&sbs, "replication_get_volumes", Some(json!({"name": "v"})))),
    );
    let rp = rpc(
        &sbs,
        "replication_declare_restart_point",
        Some(json!({"name": "v", "tag": "home"})),
    )
    .unwrap();
    cr.disconnect();
    let a = wait_for(
        "A at the restart point after the sync",
        || {
            let s = status(&sa2, "v");
            let idle = s["delayed"]["apply_phase"] == "idle";
            (s["applied_epoch"].as_u64()? >= rp["epoch"].as_u64()? && idle).then_some(s)
        },
        || format!("{}", status(&sa2, "v")),
    );
    assert_eq!(a["failover_target"], "valid", "{a}");

    // A's base is B's volume, block for block.
    let mut base_a = std::fs::read(da.0.join("base.img")).unwrap();
    base_a.truncate(VOL_BYTES);
    assert_eq!(
        first_block_diff(&base_a, &img_b),
        None,
        "A's base differs from B's volume"
    );

    // Only the blocks that differ moved.
    let sent = sync["bytes_sent"].as_u64().unwrap();
    let mut union: Vec<u64> = changed_b.iter().chain(&diverged).copied().collect();
    union.sort_unstable();
    union.dedup();
    let ratio = sent as f64 / VOL_BYTES as f64;
    println!(
        "failback moved {sent} bytes = {:.2} % of the {} MiB volume ({} blocks changed at B, {} diverged at A, {} in the union)",
        ratio * 100.0,
        VOL_BYTES >> 20,
        changed_b.len(),
        diverged.len(),
        union.len()
    );
    assert!(
        sent <= union.len() as u64 * BS as u64,
        "more than the union moved: {sync}"
    );
    assert!(ratio <= 0.02, "{sync}");
    drop((r3, r4));
}
