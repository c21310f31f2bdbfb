//! The `baton relay` and `baton standby` processes of the end-to-end tests, each killed on
//! drop, and what the tests read of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use serde_json::{json, Value};

use super::{in_netns, rpc, stderr_for, wait_for, Proc, BLOCKS, BS};

/// A `baton relay` process, killed on drop.
pub struct RelayProc {
    pub child: Proc,
    /// The address it listens on (127.0.0.1 unless started in a namespace).
    pub ip: String,
    pub port: u16,
    /// Its JSON-RPC socket (beside its journal directory).
    pub sock: PathBuf,
    /// Its journal directory.
    pub dir: PathBuf,
}

impl RelayProc {
    /// Starts `baton relay` with its journal in `dir` and its RPC socket beside it
    /// (`<dir>.sock`), listening on `port`, with `extra` arguments; returns once it answers
    /// RPC (panics if it exits first).
    pub fn start(dir: &Path, port: u16, extra: &[&str]) -> RelayProc {
        RelayProc::start_at(dir, "127.0.0.1", port, extra, None)
    }
    /// As [`RelayProc::start`], listening on `ip` inside network namespace `ns`.
    pub fn start_at(dir: &Path, ip: &str, port: u16, extra: &[&str], ns: Option<&str>) -> RelayProc {
        let sock = dir.with_extension("sock");
        let child = in_netns(ns, env!("CARGO_BIN_EXE_baton"))
            .args(["relay", "-m", "0x1", "--listen", &format!("{ip}:{port}")])
            .arg("-r")
            .arg(&sock)
            .arg("--journal-dir")
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr_for(dir))
            .spawn()
            .unwrap();
        let mut r = RelayProc {
            child: Proc(child),
            ip: ip.to_string(),
            port,
            sock,
            dir: dir.to_path_buf(),
        };
        wait_started(
            &mut r.child,
            &r.sock,
            "relay_get_status",
            &format!("relay on port {port}"),
        );
        r
    }
    /// As [`RelayProc::start`], forwarding to the standby at `standby` over TCP only
    /// (`--no-direct`).
    pub fn for_standby(dir: &Path, port: u16, standby: SocketAddr, extra: &[&str]) -> RelayProc {
        let standby = standby.to_string();
        let mut args = vec!["--standby", &standby, "--no-direct"];
        args.extend_from_slice(extra);
        RelayProc::start(dir, port, &args)
    }
    /// `relay_get_status`'s entry for volume `vol`.
    pub fn volume_status(&self, vol: &str) -> Option<Value> {
        let st = rpc(&self.sock, "relay_get_status", None).ok()?;
        st["volumes"].as_array()?.iter().find(|v| v["name"] == vol).cloned()
    }
    /// Changes the forward policy by RPC (`relay_set_forward_policy`).
    pub fn set_forward_policy(&self, policy: Value) {
        rpc(&self.sock, "relay_set_forward_policy", Some(policy.clone()))
            .unwrap_or_else(|e| panic!("relay_set_forward_policy {policy}: {e}"));
    }
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
    pub fn kill9(&mut self) {
        self.child.kill9();
    }
}

/// The `baton standby` process, killed on drop.
pub struct StandbyProc {
    pub child: Proc,
    pub sock: PathBuf,
    pub dir: PathBuf,
    /// The address it listens on for relays (127.0.0.1 unless started in a namespace).
    pub ip: String,
    pub port: u16,
}

impl StandbyProc {
    pub fn start(dir: &Path, port: u16) -> StandbyProc {
        StandbyProc::start_with(dir, port, &[])
    }
    /// As [`StandbyProc::start`] with more `baton standby` arguments (the standby host's).
    pub fn start_with(dir: &Path, port: u16, extra: &[&str]) -> StandbyProc {
        StandbyProc::start_at(dir, "127.0.0.1", port, extra, None)
    }
    /// As [`StandbyProc::start_with`], listening on `ip` inside network namespace `ns`.
    pub fn start_at(dir: &Path, ip: &str, port: u16, extra: &[&str], ns: Option<&str>) -> StandbyProc {
        let cfg = json!({"subsystems": [{"subsystem": "standby", "config": [
            {"method": "standby_create", "params": {"name": "vold", "mode": "delayed",
                "volume_bdev": "dvol", "staging_bdev": "dstg"}},
            {"method": "standby_create", "params": {"name": "vols", "mode": "snapshot",
                "data_bdev": "sdata", "metadata_bdev": "smeta", "volume_blocks": BLOCKS, "keep_last": 2}},
        ]}]});
        let cfg_path = dir.join("standby.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let sock = dir.join("standby.sock");
        let bdev =
            |name: &str, file: &str, size: &str| format!("{name}=uring:{}/{file},size={size},bs=4096", dir.display());
        let child = in_netns(ns, env!("CARGO_BIN_EXE_baton"))
            .args(["standby", "-m", "0x1", "--listen", &format!("{ip}:{port}")])
            .arg("-r")
            .arg(&sock)
            .arg("--json")
            .arg(&cfg_path)
            .args(["--bdev", &bdev("dvol", "dvol.img", "4M")])
            .args(["--bdev", &bdev("dstg", "dstg.img", "32M")])
            .args(["--bdev", &bdev("sdata", "sdata.img", "24M")])
            .args(["--bdev", &bdev("smeta", "smeta.img", "4M")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr_for(dir))
            .spawn()
            .unwrap();
        let mut s = StandbyProc {
            child: Proc(child),
            sock,
            dir: dir.to_path_buf(),
            ip: ip.to_string(),
            port,
        };
        wait_started(&mut s.child, &s.sock, "standby_get_status", "standby");
        s
    }
    pub fn addr(&self) -> SocketAddr {
        format!("{}:{}", self.ip, self.port).parse().unwrap()
    }
    pub fn status(&self, vol: &str) -> Option<Value> {
        let v = rpc(&self.sock, "standby_get_status", Some(json!({"name": vol}))).ok()?;
        v.get(0).cloned()
    }
    /// Waits until `vol` shows restart point `epoch` (applied and, delayed mode, quiescent).
    pub fn wait_epoch(&self, vol: &str, epoch: u64) -> Value {
        wait_for(
            &format!("standby {vol} at epoch {epoch}"),
            || {
                let s = self.status(vol)?;
                assert!(s["error"].is_null(), "standby {vol} stopped: {s}");
                let idle = s["delayed"].is_null() || s["delayed"]["apply_phase"] == "idle";
                (s["applied_epoch"].as_u64()? >= epoch && idle).then_some(s)
            },
            || format!("{:?}", self.status(vol)),
        )
    }
    pub fn kill9(&mut self) {
        self.child.kill9();
    }
}

/// Waits (bounded) until `child` answers `method` on `sock`; panics if it exits first.
fn wait_started(child: &mut Child, sock: &Path, method: &str, what: &str) {
    wait_for(
        &format!("{what} answers RPC"),
        || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("{what} exited at start: {st}");
            }
            rpc(sock, method, None).ok()
        },
        String::new,
    );
}

/// The delayed-mode standby's volume file (quiescent at an applied restart point).
pub fn read_delayed(s: &StandbyProc) -> Vec<u8> {
    let mut v = std::fs::read(s.dir.join("dvol.img")).unwrap();
    v.truncate(BLOCKS as usize * BS);
    v
}

pub fn links(st: &Value) -> Vec<Value> {
    st["links"].as_array().cloned().unwrap_or_default()
}

/// `relay_reports` of each relay the standby host's detector heard about for `vol`.
pub fn relay_reports(sb: &StandbyProc, vol: &str) -> Vec<u64> {
    let Ok(h) = rpc(&sb.sock, "standby_host_get_status", None) else {
        return Vec::new();
    };
    h["detector"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["volume"] == vol)
        .flat_map(|v| v["relays"].as_array().cloned().unwrap_or_default())
        .map(|r| r["reports"].as_u64().unwrap_or(0))
        .collect()
}
