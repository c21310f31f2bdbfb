//! TLS 1.3 on the replication links with real processes on loopback: a primary (this
//! binary's child), a `baton relay` and a `baton standby`, credentials made by
//! `baton tls-certs`. A restart point crosses both encrypted hops and the standby's image
//! matches the primary's; then a relay holding another deployment's certificate and a
//! primary of the first deployment refuse each other (the relay's log says so), the standby
//! refuses that relay when a primary of its own deployment feeds it (the standby's log says
//! so), and the standby's image is untouched. (Refusal of every wrong credential, on both sides of a link, is
//! shown connection by connection in the transport's own tests.)

mod support;

use std::path::{Path, PathBuf};

use support::*;

/// The primary's body when this binary runs as the child (ignored otherwise).
#[test]
#[ignore]
fn standby_primary_child() {
    primary_child_main();
}

/// Makes a CA and the three role certificates in `dir` with `baton tls-certs`.
fn certs(dir: &Path) -> PathBuf {
    let out = baton()
        .args(["tls-certs", "--dir"])
        .arg(dir)
        .args([
            "--name",
            "primary.tokyo",
            "--name",
            "relay.osaka",
            "--name",
            "standby.osaka",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir.to_path_buf()
}

fn flags(dir: &Path, name: &str) -> Vec<String> {
    let p = |f: String| dir.join(f).display().to_string();
    vec![
        "--tls-ca".into(),
        p("ca.pem".into()),
        "--tls-cert".into(),
        p(format!("{name}.pem")),
        "--tls-key".into(),
        p(format!("{name}.key")),
    ]
}

fn primary_env(dir: &Path) -> Vec<(&'static str, String)> {
    let p = |f: &str| dir.join(f).display().to_string();
    vec![(
        "BATON_SP_TLS",
        format!("{},{},{}", p("ca.pem"), p("primary.tokyo.pem"), p("primary.tokyo.key")),
    )]
}

fn log_of(dir: &Path, logs: &Path) -> String {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_to_string(logs.join(format!("{name}.stderr"))).unwrap_or_default()
}

#[test]
fn replication_over_tls_and_refusals_at_every_listener() {
    let logs = TempDir::new("/dev/shm", "tls-logs");
    // Children's stderr goes to files in `logs` (read by the refusal checks below).
    std::env::set_var("BATON_TEST_STDERR", &logs.0);
    let good = TempDir::new("/dev/shm", "tls-pki");
    let other = TempDir::new("/dev/shm", "tls-pki-other");
    let (good, other) = (certs(&good.0), certs(&other.0));
    let sd = TempDir::new("/dev/shm", "tls-standby");
    let d1 = TempDir::new("/dev/shm", "tls-relay");
    let f = |d: &Path, n: &str| flags(d, n);
    let sbf = f(&good, "standby.osaka");
    let sb = StandbyProc::start_with(&sd.0, free_port(), &sbf.iter().map(String::as_str).collect::<Vec<_>>());
    let rf = f(&good, "relay.osaka");
    let r1 = RelayProc::for_standby(
        &d1.0,
        free_port(),
        sb.addr(),
        &rf.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut p = Primary::start_with(&[r1.addr()], &primary_env(&good), None);
    let mut m = Model::new("vold");
    m.write(&mut p, 700);
    assert_eq!(m.restart_point(&mut p, "rp1"), 1);
    let st = sb.wait_epoch("vold", 1);
    assert_eq!(st["applied_tag"], "rp1", "{st}");
    assert_image(&read_delayed(&sb), &m, "delayed volume over TLS");

    // A relay of another deployment: the standby refuses it at the handshake.
    let d2 = TempDir::new("/dev/shm", "tls-relay-other");
    let bad = f(&other, "relay.osaka");
    let r2 = RelayProc::for_standby(
        &d2.0,
        free_port(),
        sb.addr(),
        &bad.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // A primary of the good deployment at that relay: each refuses the other.
    let mut p2 = Primary::start_with(&[r2.addr()], &primary_env(&good), None);
    p2.cmd("W vold 1 5");
    wait_for(
        "the other deployment's relay refuses the primary",
        || log_of(&d2.0, &logs.0).contains("TLS handshake failed").then_some(()),
        || log_of(&d2.0, &logs.0),
    );
    // A primary of the other deployment is served by that relay, which then forwards to
    // the standby: the standby refuses the relay at the handshake.
    let mut p3 = Primary::start_with(&[r2.addr()], &primary_env(&other), None);
    p3.cmd("W vold 1 5");
    wait_for(
        "the standby refuses the other deployment's relay",
        || {
            let l = log_of(&sd.0, &logs.0);
            (l.contains("TLS handshake failed") || l.contains("peer's certificate refused")).then_some(())
        },
        || log_of(&sd.0, &logs.0),
    );
    // Nothing of it reached the standby, which kept its epoch and image.
    let st = sb.status("vold").unwrap();
    assert_eq!(st["applied_epoch"].as_u64(), Some(1), "{st}");
    assert_image(&read_delayed(&sb), &m, "delayed volume after the refusals");
    drop((p2, p3, r2, r1, sb));
}

#[test]
fn tls_by_json_rpc_is_kept_by_save_config_without_secrets() {
    let pki = TempDir::new("/dev/shm", "tls-rpc-pki");
    let dir = certs(&pki.0);
    let d = TempDir::new("/dev/shm", "tls-rpc-relay");
    let r = RelayProc::start(&d.0, free_port(), &[]);
    let st = rpc(&r.sock, "replication_get_tls", None).unwrap();
    assert_eq!(st["enabled"], false, "{st}");
    // A primary's certificate does not fit a relay.
    let p = |f: &str| dir.join(f).display().to_string();
    let wrong = serde_json::json!({"ca": p("ca.pem"), "cert": p("primary.tokyo.pem"), "key": p("primary.tokyo.key")});
    let e = rpc(&r.sock, "replication_set_tls", Some(wrong)).unwrap_err();
    assert!(e.contains("relay"), "{e}");
    let right = serde_json::json!({"ca": p("ca.pem"), "cert": p("relay.osaka.pem"), "key": p("relay.osaka.key")});
    assert_eq!(rpc(&r.sock, "replication_set_tls", Some(right.clone())).unwrap(), true);
    let st = rpc(&r.sock, "replication_get_tls", None).unwrap();
    assert_eq!(
        (st["enabled"].clone(), st["name"].clone()),
        (true.into(), "relay.osaka".into()),
        "{st}"
    );
    // Once per process.
    let e = rpc(&r.sock, "replication_set_tls", Some(right)).unwrap_err();
    assert!(e.contains("restart"), "{e}");
    // save_config keeps the call with paths, and no key material.
    let cfg = rpc(&r.sock, "save_config", None).unwrap().to_string();
    assert!(
        cfg.contains("replication_set_tls") && cfg.contains("relay.osaka.key"),
        "{cfg}"
    );
    let key = std::fs::read_to_string(dir.join("relay.osaka.key")).unwrap();
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!cfg.contains(&body[..40]), "key bytes in save_config");
    assert!(!cfg.contains("PRIVATE KEY"), "key bytes in save_config");
}
