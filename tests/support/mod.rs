//! What the root end-to-end tests share, so each test file holds only its tests: the
//! `baton` binary and its `baton rpc` client, free ports, temporary directories, child
//! processes killed on drop, and bounded waits (this file); the relay and standby
//! processes (`roles.rs`); the primary child and its image model (`primary.rs`); and the
//! relay crate's test helpers (`common`: the test sink, write driver, `fill`, `TempDir`,
//! `wait_until`). Every test file declares `mod support;` and `use support::*;`. One that
//! starts a [`Primary`] also declares
//!
//! ```ignore
//! #[test]
//! #[ignore]
//! fn standby_primary_child() {
//!     support::primary_child_main();
//! }
//! ```

// Each test binary compiles all of this and uses a part of it.
#![allow(dead_code, unused_imports)]

#[path = "../../relay/tests/common/mod.rs"]
pub mod common;
pub mod netns;
mod nvme_io;
mod primary;
mod roles;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use common::{fill, wait_until, TempDir};
pub use engine::testing::{free_port, WAIT};
pub use nvme_io::*;
pub use primary::*;
pub use roles::*;

/// Blocks of each primary volume (4 KiB each).
pub const BLOCKS: u64 = 1024;
pub const BS: usize = 4096;
pub const VOLS: [&str; 2] = ["vold", "vols"];

/// The `baton` binary of this build.
pub fn baton() -> Command {
    Command::new(env!("CARGO_BIN_EXE_baton"))
}

/// `program`, run inside network namespace `ns` (`ip netns exec`, which execs it: the
/// child's pid is the program's), or directly without one.
pub fn in_netns(ns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match ns {
        None => Command::new(program),
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
    }
}

/// A temporary directory under the system's (`$TMPDIR`, else /tmp), removed on drop.
pub fn temp_dir(name: &str) -> TempDir {
    TempDir::in_tmp(name)
}

/// `baton rpc -s SOCK METHOD [PARAMS]`: the JSON result, or the client's stderr.
pub fn rpc(sock: &Path, method: &str, params: Option<Value>) -> Result<Value, String> {
    let mut c = baton();
    c.args(["rpc", "-s"]).arg(sock).arg(method);
    if let Some(p) = params {
        c.arg(p.to_string());
    }
    let out = c.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Waits (bounded) until the process behind `sock` answers RPC.
pub fn wait_rpc(sock: &Path) {
    wait_for(
        &format!("{} answers RPC", sock.display()),
        || rpc(sock, "spdk_get_version", None).ok(),
        String::new,
    );
}

/// Polls `f` until it gives `Some`; panics naming `what` (and the last value `show`
/// returns) after [`WAIT`].
pub fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>, show: impl Fn() -> String) -> T {
    engine::testing::wait_for(WAIT, what, f, show)
}

/// Waits up to `within` for `child` to exit; `None` if it is still running then.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lines a child writes to `out` (its piped stdout), as they come, on a channel that
/// ends when the child closes it.
pub fn lines_of(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    lines
}

/// A child process, killed (SIGKILL) on drop; otherwise used as the [`Child`] it holds.
pub struct Proc(pub Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Proc {
    /// Spawns `cmd` with stdout discarded and stderr written to `log`.
    pub fn spawn(cmd: &mut Command, log: &Path) -> Proc {
        let f = std::fs::File::create(log).unwrap();
        Proc(cmd.stdout(Stdio::null()).stderr(f).spawn().unwrap())
    }
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Where a child's stderr goes: nowhere, or with `BATON_TEST_STDERR=DIR` set, to a file in
/// DIR named after `dir` (kept after the test, for debugging).
fn stderr_for(dir: &Path) -> Stdio {
    let Some(out) = std::env::var_os("BATON_TEST_STDERR") else {
        return Stdio::null();
    };
    let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
    match std::fs::File::create(Path::new(&out).join(format!("{name}.stderr"))) {
        Ok(f) => f.into(),
        Err(_) => Stdio::null(),
    }
}
