//! Helpers shared by the commands that run baton roles as child processes on loopback
//! (`baton demo`, `baton chaos`): free ports, children killed on drop, JSON-RPC calls to
//! a child's socket, bounded waits, and the small seeded PRNG whose seed replays a run.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub type AnyErr = Box<dyn std::error::Error>;

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A TCP port nothing listens on right now (the kernel's choice).
pub fn free_port() -> Result<u16, AnyErr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log` (kept across restarts).
    pub fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Result<Proc, AnyErr> {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = cmd
            .stdout(Stdio::from(f.try_clone()?))
            .stderr(Stdio::from(f))
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        Ok(Proc { name, child })
    }
    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn check_alive(&mut self) -> Result<(), AnyErr> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Err(format!("{} exited unexpectedly: {st}", self.name).into());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// This very binary (every role is a `baton` subcommand).
pub fn baton() -> Result<Command, AnyErr> {
    Ok(Command::new(std::env::current_exe()?))
}

/// One JSON-RPC call on a Unix socket (`params` null: none).
pub fn rpc(sock: &Path, method: &str, params: Value) -> Result<Value, AnyErr> {
    let p = if params.is_null() { None } else { Some(params) };
    engine::rpc::client::run_cli(sock, method, p).map_err(|e| format!("{method}: {e}").into())
}

/// Waits until the process's RPC socket answers.
pub fn wait_rpc(p: &mut Proc, sock: &Path, within: Duration) -> Result<(), AnyErr> {
    let start = Instant::now();
    loop {
        if rpc(sock, "spdk_get_version", Value::Null).is_ok() {
            return Ok(());
        }
        p.check_alive()?;
        if start.elapsed() > within {
            return Err(format!("{} never answered on {}", p.name, sock.display()).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Xorshift64: the same seed gives the same sequence (seeds must not be 0).
pub fn rand(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// A directory for a run's files: /dev/shm when there is one (RAM), else /tmp.
pub fn work_base() -> &'static str {
    if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    }
}
