//! Helpers every crate's tests share: bounded waits for an event, scratch directories
//! removed on drop, a free TCP port. Tests only; nothing on a reactor calls these.
//!
//! Waits poll a condition and give up after a bound that only a hang reaches: they say
//! what was awaited (and, for [`wait_for`], the last thing seen) instead of asserting on
//! how long anything took.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The bound of the waits of the end-to-end tests: long enough for a loaded 2-core CI
/// machine, short enough that a hang fails the run.
pub const WAIT: Duration = Duration::from_secs(60);

/// Polls `f` every few milliseconds until it is true; panics naming `what` after `within`.
pub fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    wait_for(within, what, || f().then_some(()), String::new);
}

/// Polls `f` until it gives `Some`; panics naming `what` and the last value `show` returns
/// after `within`.
pub fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>, show: impl Fn() -> String) -> T {
    let start = Instant::now();
    let mut nap = Duration::from_millis(1);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            start.elapsed() < within,
            "{what}: not reached within {within:?}; last: {}",
            show()
        );
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

/// A TCP port nothing listens on right now (the kernel's choice).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on loopback")
}

/// A fresh directory, removed on drop together with the `<dir>.sock` RPC socket beside it
/// that the end-to-end tests give the process using the directory (a process killed with
/// -9 cannot remove its socket itself).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `base/baton-<pid>-<name>`, emptied first (a crashed earlier run may have left it).
    pub fn new(base: impl AsRef<Path>, name: &str) -> TempDir {
        let p = base.as_ref().join(format!("baton-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        TempDir(p)
    }

    /// Under the system's temporary directory (`$TMPDIR`, else /tmp).
    pub fn in_tmp(name: &str) -> TempDir {
        TempDir::new(std::env::temp_dir(), name)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(self.0.with_extension("sock"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dir_is_fresh_and_gone_after_drop() {
        let p = {
            let d = TempDir::in_tmp("testing-self");
            std::fs::write(d.path().join("f"), b"x").unwrap();
            d.path().to_path_buf()
        };
        assert!(!p.exists());
    }

    #[test]
    fn wait_for_returns_the_value_and_names_what_timed_out() {
        let mut n = 0;
        assert_eq!(
            wait_for(
                WAIT,
                "third poll",
                || {
                    n += 1;
                    (n == 3).then_some(n)
                },
                String::new
            ),
            3
        );
        let r = std::panic::catch_unwind(|| wait_until(Duration::ZERO, "never", || false));
        let msg = r.unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(msg.starts_with("never: not reached"), "{msg}");
    }

    #[test]
    fn free_port_can_be_bound() {
        std::net::TcpListener::bind(("127.0.0.1", free_port())).unwrap();
    }
}
