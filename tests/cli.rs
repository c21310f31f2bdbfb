//! End-to-end: the real `baton` binary, as a newcomer runs it.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

#[test]
fn selfcheck_passes() {
    let out = baton().args(["selfcheck", "-t", "0.3"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "selfcheck failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("self-check passed"), "{stdout}");
    assert!(stdout.contains("Malloc0") && stdout.contains("Uring0"), "{stdout}");
}

#[test]
fn rdma_addresses_are_refused_without_the_feature() {
    if cfg!(feature = "rdma") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("baton-cli-rdma-{}", std::process::id()));
    let out = baton()
        .args(["relay", "--listen", "rdma://192.0.2.1:4520", "--journal-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lacks RDMA support") && err.contains("`rdma`"), "{err}");
    let out = baton()
        .args(["perf", "--relays", "rdma://192.0.2.1:4520", "-t", "0.1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lacks RDMA support"));
}

#[test]
fn perf_json_and_errors() {
    let out = baton()
        .args([
            "perf",
            "--bdev",
            "null,size=64M",
            "-q",
            "8",
            "-w",
            "randread",
            "-t",
            "0.3",
            "--warmup",
            "0",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["total"]["ios"].as_u64().unwrap() > 0);

    let out = baton()
        .args(["perf", "--bdev", "floppy", "-t", "0.1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("floppy"));
    let out = baton().args(["perf", "-w", "sideways", "-t", "0.1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sideways"));
}

#[test]
fn target_stops_cleanly_on_sigterm() {
    let mut child = baton()
        .args(["target", "-m", "0x1", "--bdev", "Malloc0=malloc,size=8M"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "target exited early");
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let st = wait_exit(&mut child, Duration::from_secs(20)).expect("target did not stop after SIGTERM");
    assert!(st.success(), "target exit status {st}");
}

/// The management plane end to end: a target process, `baton rpc` calls,
/// errors with non-zero exit, `save_config`, and a restart from that config.
#[test]
fn rpc_and_config_round_trip_through_processes() {
    let tmp = temp_dir("cli-rpc");
    let dir = &tmp.0;
    let sock = dir.join("rpc.sock");
    let start = |extra: &[&str]| {
        let mut args = vec!["target", "-m", "0x1", "-r", sock.to_str().unwrap()];
        args.extend_from_slice(extra);
        let child = baton()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(Duration::from_secs(20), "RPC socket", || sock.exists());
        child
    };
    let rpc = |args: &[&str]| {
        let mut a = vec!["rpc", "-s", sock.to_str().unwrap()];
        a.extend_from_slice(args);
        baton().args(&a).output().unwrap()
    };
    let mut child = start(&[]);
    let out = rpc(&[
        "bdev_malloc_create",
        "--name",
        "M1",
        "--num_blocks",
        "256",
        "--block_size",
        "4096",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = rpc(&[
        "bdev_malloc_create",
        "--name",
        "M1",
        "--num_blocks",
        "256",
        "--block_size",
        "4096",
    ]);
    assert!(!out.status.success(), "duplicate name must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("M1"));
    let out = rpc(&["bdev_malloc_create", "--name", "M2", "--num_blocks", "many"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("num_blocks"));
    let out = rpc(&["save_config"]);
    assert!(out.status.success());
    let cfg = dir.join("cfg.json");
    std::fs::write(&cfg, &out.stdout).unwrap();
    assert!(rpc(&["spdk_kill_instance", "--sig_name", "SIGTERM"]).status.success());
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_file(&sock);

    let mut child = start(&["--json", cfg.to_str().unwrap()]);
    let out = rpc(&["bdev_get_bdevs", "--name", "M1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["num_blocks"], 256);
    assert_eq!(v[0]["block_size"], 4096);
    let again = rpc(&["save_config"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&again.stdout).unwrap(),
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&cfg).unwrap()).unwrap(),
        "config does not round-trip"
    );
    assert!(rpc(&["spdk_kill_instance", "--sig_name", "SIGINT"]).status.success());
    assert!(child.wait().unwrap().success());
}

/// The management socket of a real process is the owner's only by default; a group mode
/// is taken; a mode that lets others in is refused at start with a message naming it.
#[test]
fn rpc_socket_is_owner_only_and_a_world_mode_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = temp_dir("cli-mode");
    let sock = tmp.0.join("rpc.sock");
    let run = |extra: &[&str]| {
        let mut args = vec!["target", "-m", "0x1", "-r", sock.to_str().unwrap()];
        args.extend_from_slice(extra);
        baton()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    for (extra, want) in [
        (&[][..], 0o600),
        (&["--rpc-socket-mode", "660", "--rpc-socket-group", "0"][..], 0o660),
    ] {
        let mut child = run(extra);
        wait_until(Duration::from_secs(20), "RPC socket", || sock.exists());
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "{extra:?}");
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&sock);
    }
    let child = run(&["--rpc-socket-mode", "666"]);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "a world-writable socket must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("others must have no access"), "{err}");
    assert!(!sock.exists());
}
