//! End-to-end: the real `baton` binary, as a newcomer runs it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn baton() -> Command {
    Command::new(env!("CARGO_BIN_EXE_baton"))
}

#[test]
fn demo_self_check_passes() {
    let out = baton().args(["demo", "-t", "0.3"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("self-check passed"), "{stdout}");
    assert!(stdout.contains("Malloc0") && stdout.contains("Uring0"), "{stdout}");
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
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "target exit status {st}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "target did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
