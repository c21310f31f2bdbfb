//! A standby whose initial sync is not complete never held the primary's image at a
//! restart point: the failover refuses it by default (`docs/failover.md`, "Syncing
//! standbys"), `standby_promote` refuses it without `force`, and a declaration with
//! `force` promotes it anyway with a loud warning.

mod common;
use common::{call, wait_until, write};

use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use engine::rpc::Registry;
use rdma_transport::wire::SyncMark;
use serde_json::json;
use standby::host::{FailoverState, FailoverVolume, StandbyHost, StandbyHostConfig};
use standby::{OpBody, OwnedOp};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn op(lsn: u64, body: OpBody) -> OwnedOp {
    OwnedOp {
        lsn,
        generation: 1,
        body,
    }
}

#[test]
fn a_syncing_standby_is_refused_unless_forced() {
    let mut o = ReactorOpts::new(vec![0, 1]);
    o.pin = false;
    o.idle = IdleMode::Adaptive {
        idle_before_sleep_us: 2000,
        sleep_us_max: 200,
    };
    let _reactors = Reactors::start(o).unwrap();
    let mut reg = Registry::new();
    engine::rpc::methods::register_rpcs(&mut reg);
    standby::rpc::register_rpcs(&mut reg);
    for (n, b) in [("sy_vol", 64), ("sy_stg", 256)] {
        call(
            &reg,
            "bdev_malloc_create",
            json!({"name": n, "num_blocks": b, "block_size": 512}),
        )
        .unwrap();
    }
    call(
        &reg,
        "standby_create",
        json!({"name": "sy", "mode": "delayed", "volume_bdev": "sy_vol",
               "staging_bdev": "sy_stg", "format": true}),
    )
    .unwrap();
    // An initial sync under way: the marker, two chunks, a restart point (dropped: the
    // image is not the primary's yet).
    standby::registry::with_standby("sy", |v| {
        v.offer_owned(
            op(
                1,
                OpBody::Sync {
                    mark: SyncMark::Initial,
                    skipped: false,
                },
            ),
            0,
        );
        v.offer_owned(write(2, 0, 0x11), 0);
        v.offer_owned(write(3, 1, 0x22), 0);
        v.offer_owned(
            op(
                4,
                OpBody::RestartPoint {
                    epoch: 1,
                    last_lsn: 3,
                    tag: b"inside".to_vec(),
                },
            ),
            0,
        );
    })
    .unwrap();
    wait_until(WAIT, "taken in", || {
        standby::registry::with_standby("sy", |v| v.status().next_lsn).unwrap() == 5
    });
    let st = call(&reg, "standby_get_status", json!({"name": "sy"})).unwrap();
    assert_eq!(st[0]["failover_target"], "not_valid", "{st}");
    assert!(
        st[0]["failover_note"]
            .as_str()
            .unwrap()
            .contains("not a valid failover target"),
        "{st}"
    );
    assert_eq!(st[0]["applied_epoch"], 0, "the point inside the sync is not applied");

    // Per-volume promotion refuses without force.
    let e = call(&reg, "standby_promote", json!({"name": "sy"})).unwrap_err();
    assert!(e.message.contains("force"), "{e:?}");

    // The host's failover refuses by policy and says why.
    let mut cfg = StandbyHostConfig::new(vec![FailoverVolume {
        primary_volume: "pvol".into(),
        standby: "sy".into(),
        head_bdev: None,
        nsid: None,
    }]);
    cfg.auto_failover = false;
    cfg.drain_timeout_ms = 0;
    let host = StandbyHost::start_with_target(cfg, None, nvme::nvmf::Target::new()).unwrap();
    standby::host::register_rpcs_for(&mut reg, host.clone());
    call(&reg, "standby_host_declare_failure", json!({"reason": "rehearsal"})).unwrap();
    let rep = host.wait_failover(WAIT).expect("failover finishes");
    assert_eq!(rep.state, FailoverState::Failed, "{rep:?}");
    let err = rep.error.clone().unwrap();
    assert!(
        err.contains("not a valid failover target") && err.contains("refused"),
        "{err}"
    );
    // Refused before anything was rolled back: the standby still takes the stream in.
    assert!(rep.rolled_back_us.is_none(), "{rep:?}");
    assert!(!standby::registry::with_standby("sy", |v| v.promoted()).unwrap());
    // A second declaration without force is refused; with force it promotes, loudly.
    assert!(call(&reg, "standby_host_declare_failure", json!({})).is_err());
    call(&reg, "standby_host_declare_failure", json!({"force": true})).unwrap();
    wait_until(WAIT, "forced failover done", || {
        host.status().failover.is_some_and(|r| r.state == FailoverState::Done)
    });
    let rep = host.status().failover.unwrap();
    assert!(rep.warnings.iter().any(|w| w.contains("promoted anyway")), "{rep:?}");
    assert!(standby::registry::with_standby("sy", |v| v.promoted()).unwrap());
}
