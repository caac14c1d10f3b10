//! One syncer per database: the lease.
//!
//! Per-relay ordering and the revision guard hold inside one process. Two processes sending
//! the same database's relays to zooid (a new daemon started before the old one stopped, a host
//! that links the worker while an operator runs the binary, a manual `sync` beside the daemon)
//! can overwrite a newer configuration with an older one. So whatever sends (the worker, or
//! `zooid-sync sync` when no worker runs) first holds the database's lease, and every other
//! process sees it.
//!
//! The lease is an exclusive kernel file lock (`flock`) on `<database>.lock`, beside the
//! database. The kernel releases it the instant its holder dies, `SIGKILL` included, so a
//! standby takes over without waiting for any timeout and nothing needs cleaning up; a lease
//! row with a heartbeat would need a clock, a period and a grace time, and a standby would
//! wait out the grace time after every crash. (Like SQLite's own locks, it needs a local file
//! system: the database must not be on NFS anyway.) The holder writes its pid and host name
//! into the file, so that a standby can say whom it waits for.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError};

/// How often a standby looks whether the lease is free.
pub const STANDBY_POLL: Duration = Duration::from_millis(250);

/// The held lease. Dropping it releases it.
#[derive(Debug)]
pub struct Lease {
    _file: File,
    path: PathBuf,
}

/// Who holds a lease, as its holder wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder(pub String);

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("another process")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// The lock file of the database at `database`.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn open(database: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = lock_path(database);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o660)
        .open(&path)
        .with_context(|| format!("cannot open the lease file {}", path.display()))
}

impl Lease {
    /// Takes the lease of `database` if it is free; otherwise answers who holds it.
    pub fn try_acquire(database: &Path) -> Result<Result<Lease, Holder>> {
        let mut file = open(database)?;
        match file.try_lock() {
            Ok(()) => {
                let me = format!(
                    "pid {} on host {}",
                    std::process::id(),
                    host_name().unwrap_or_else(|| "?".into())
                );
                file.set_len(0)?;
                file.seek(SeekFrom::Start(0))?;
                file.write_all(me.as_bytes())?;
                file.flush()?;
                Ok(Ok(Lease {
                    _file: file,
                    path: lock_path(database),
                }))
            }
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                Ok(Err(Holder(crate::quote::strip_controls(holder.trim()))))
            }
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", lock_path(database).display()))
            }
        }
    }

    /// Takes the lease of `database`, standing by while another process holds it: `standing_by`
    /// is told once whom it waits for, and the lease is looked at every [`STANDBY_POLL`].
    /// `None` when `stop` receives (or disconnects) first.
    pub fn wait(
        database: &Path,
        stop: &Receiver<()>,
        standing_by: impl FnOnce(&Holder),
    ) -> Result<Option<Lease>> {
        let mut told = Some(standing_by);
        loop {
            match Lease::try_acquire(database)? {
                Ok(lease) => return Ok(Some(lease)),
                Err(holder) => {
                    if let Some(tell) = told.take() {
                        tell(&holder);
                    }
                }
            }
            match stop.recv_timeout(STANDBY_POLL) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return Ok(None),
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// This machine's host name, from the kernel.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_string()).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_the_next_sees_who() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("platform.db");
        let first = Lease::try_acquire(&db).unwrap().unwrap();
        let holder = Lease::try_acquire(&db).unwrap().unwrap_err();
        assert!(
            holder.0.contains(&format!("pid {}", std::process::id())),
            "{holder}"
        );
        drop(first);
        assert!(Lease::try_acquire(&db).unwrap().is_ok(), "released on drop");
    }

    #[test]
    fn a_standby_stops_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("platform.db");
        let _held = Lease::try_acquire(&db).unwrap().unwrap();
        let (stop, stopped) = crossbeam_channel::bounded(1);
        stop.send(()).unwrap();
        let mut told = None;
        let got = Lease::wait(&db, &stopped, |h| told = Some(h.clone())).unwrap();
        assert!(got.is_none());
        assert!(told.is_some(), "told whom it waited for");
    }
}
