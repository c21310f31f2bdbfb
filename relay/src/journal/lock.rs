//! Exclusive use of a journal directory by one process.
//!
//! A relay takes `flock(LOCK_EX | LOCK_NB)` on `<dir>/.lock` for as long as it journals
//! into the directory (its `--journal-dir`, and every journal directory it opens), and
//! writes its PID into the file once it holds the lock. A second relay on the same
//! directory fails to take it and refuses to start, naming the holder; without the lock it
//! would recover the live journal and create the next segment, and the live relay would
//! fail at its next roll-over. The kernel drops the lock when the holder's file
//! description closes (the process ends, even by SIGKILL), so a stale lock file is never
//! an obstacle: the file stays, the lock does not.
//!
//! `flock` locks belong to an open file description, so two acquisitions in one process
//! (two `open`s) conflict as two processes do: a relay cannot open one directory twice.
//! Not for NFS-like file systems whose `flock` is local to a host.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::JournalError;

/// Name of the lock file inside a journal directory.
pub const LOCK_FILE: &str = ".lock";

/// The held lock of a journal directory; released when dropped.
#[derive(Debug)]
pub struct DirLock {
    /// The open lock file: closing it releases the lock.
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock of `dir` (which must exist) without waiting: `InUse` naming the
    /// holder's PID when another open file description holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, JournalError> {
        let path = dir.join(LOCK_FILE);
        let io_err = |op: &'static str| {
            let path = path.display().to_string();
            move |source| JournalError::Io { op, path, source }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false) // the holder's PID stays until we hold the lock
            .open(&path)
            .map_err(io_err("open lock file"))?;
        loop {
            // SAFETY: flock only reads its two integer arguments; the descriptor belongs
            // to `file`, which is open for the whole call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => {
                    return Err(JournalError::InUse {
                        dir: dir.display().to_string(),
                        pid: read_pid(&file),
                    })
                }
                _ => return Err(io_err("flock")(e)),
            }
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0).map_err(io_err("truncate lock file"))?;
        file.write_all_at(pid.as_bytes(), 0)
            .map_err(io_err("write lock file"))?;
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The PID the holder wrote (`None` if it has not written it yet, or it is unreadable).
fn read_pid(file: &File) -> Option<u32> {
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

/// How an `InUse` error names the holder.
pub(super) fn holder(pid: &Option<u32>) -> String {
    match *pid {
        Some(p) if p == std::process::id() => format!("pid {p}, this process"),
        Some(p) => format!("pid {p}"),
        None => "pid unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_directory_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("baton-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = DirLock::acquire(&dir).unwrap();
        let pid = std::process::id();
        assert_eq!(std::fs::read_to_string(first.path()).unwrap().trim(), pid.to_string());
        match DirLock::acquire(&dir) {
            Err(e @ JournalError::InUse { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&format!("pid {pid}")), "{msg}");
                assert!(msg.contains(&dir.display().to_string()), "{msg}");
                assert!(msg.contains("--journal-dir"), "{msg}");
            }
            other => panic!("second lock: {other:?}"),
        }
        // The refused attempt did not disturb the holder's PID.
        assert_eq!(std::fs::read_to_string(first.path()).unwrap().trim(), pid.to_string());
        drop(first);
        let again = DirLock::acquire(&dir).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
