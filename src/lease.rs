//! One syncer per database: the lease.
//!
//! Per-relay ordering and the revision guard hold inside one process. Two processes sending
//! the same database's relays to zooid (a new daemon started before the old one stopped, a host
//! that links the worker while an operator runs the binary, a manual `sync` beside the daemon)
//! can overwrite a newer configuration with an older one. So whatever sends (the worker, or
//! `zooid-sync sync` when no worker runs) first holds the database's lease, and every other
//! process sees it.
//!
//! The lease is an exclusive kernel file lock (`flock`) on **the database file itself**: on
//! its inode, not on a name. Any path to the database (a symlink, a hard link, `./` or not)
//! finds the same lock, and no file beside it can be removed or replaced to fool it. The kernel
//! releases it the instant its holder dies, `SIGKILL` included, so a standby takes over
//! without waiting for any timeout; a lease row with a heartbeat would need a clock, a period
//! and a grace time. (Like SQLite's own locks, it needs a local file system.) `flock` and the
//! POSIX locks SQLite takes on the same file are independent on Linux.
//!
//! One rule makes this safe: **a process never closes a descriptor of the database file that
//! it opened for the lease.** Closing any descriptor of a file drops every POSIX lock the
//! process holds on it, SQLite's included, and that corrupts databases. So each process opens
//! the database once for its leases, keeps that descriptor until it exits, and tracks in
//! memory which of its own leases are held (`flock` does not stop a second lock through the
//! same descriptor).
//!
//! The holder writes its pid and host name into `<database>.lock` (beside the database's real
//! path), so that a standby can say whom it waits for. That file is only information: removing
//! it changes nothing. The holder also checks ([`Lease::check`]) that its path still names the
//! file it locked: a database replaced or removed under a running daemon makes it step down.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError};

/// How often a standby looks whether the lease is free.
pub const STANDBY_POLL: Duration = Duration::from_millis(250);

/// A file's identity: its device and inode.
type FileId = (u64, u64);

/// This process's descriptors of the databases it leased, by file, kept open until it exits;
/// and whether this process holds each lease now.
static DESCRIPTORS: LazyLock<Mutex<HashMap<FileId, Descriptor>>> = LazyLock::new(Mutex::default);

struct Descriptor {
    file: File,
    held: bool,
}

/// The held lease. Dropping it releases it.
#[derive(Debug)]
pub struct Lease {
    file: FileId,
    database: PathBuf,
    info: PathBuf,
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

/// The file beside the database where its lease's holder says who it is: next to the
/// database's real path, so that every path to it names the same file.
pub fn info_path(database: &Path) -> PathBuf {
    let real = std::fs::canonicalize(database).unwrap_or_else(|_| database.to_path_buf());
    let mut name = real.into_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

fn file_id(meta: &std::fs::Metadata) -> FileId {
    (meta.dev(), meta.ino())
}

/// The identity of the file at `database`, following links.
fn identify(database: &Path) -> Result<FileId> {
    let meta = std::fs::metadata(database).with_context(|| {
        format!(
            "cannot take the lease of the database {}: it cannot be read",
            database.display()
        )
    })?;
    Ok(file_id(&meta))
}

impl Lease {
    /// Takes the lease of `database` if it is free; otherwise answers who holds it. The
    /// database file must exist.
    pub fn try_acquire(database: &Path) -> Result<Result<Lease, Holder>> {
        Ok(Lease::try_lock(database)?.ok_or_else(|| read_holder(&info_path(database))))
    }

    /// Takes the lease of `database` if it is free; `None` while another holds it (without
    /// looking who: a standby polls this, and says whom it waits for only once).
    fn try_lock(database: &Path) -> Result<Option<Lease>> {
        let mut descriptors = DESCRIPTORS.lock().unwrap_or_else(PoisonError::into_inner);
        let mut id = identify(database)?;
        if !descriptors.contains_key(&id) {
            let file = File::open(database)
                .with_context(|| format!("cannot open the database {}", database.display()))?;
            // The path may have been replaced between the look and the open: the descriptor
            // is kept under the identity of what it opened, whatever that is.
            id = file_id(&file.metadata()?);
            match descriptors.entry(id) {
                // Already open under that identity: this second descriptor is never closed
                // either (closing it would drop SQLite's locks on that file).
                std::collections::hash_map::Entry::Occupied(_) => std::mem::forget(file),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(Descriptor { file, held: false });
                }
            }
        }
        let descriptor = descriptors.get_mut(&id).expect("inserted above");
        if descriptor.held {
            return Ok(None);
        }
        match descriptor.file.try_lock() {
            Ok(()) => {
                descriptor.held = true;
                let info = info_path(database);
                write_holder(&info);
                Ok(Some(Lease {
                    file: id,
                    database: database.to_path_buf(),
                    info,
                }))
            }
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock the database {}", database.display()))
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
            if let Some(lease) = Lease::try_lock(database)? {
                return Ok(Some(lease));
            }
            if let Some(tell) = told.take() {
                tell(&read_holder(&info_path(database)));
            }
            match stop.recv_timeout(STANDBY_POLL) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return Ok(None),
            }
        }
    }

    /// Whether the database's path still names the file this lease locked. When the database
    /// was removed or replaced (restored from a backup by renaming, say), another process
    /// opening that path would lock another file and become a second syncer beside this one,
    /// writing to a database nobody reads: the holder must step down.
    pub fn check(&self) -> Result<()> {
        match std::fs::metadata(&self.database) {
            Ok(meta) if file_id(&meta) == self.file => Ok(()),
            Ok(_) => bail!(
                "the database {} was replaced by another file while this process synced it; \
                 stopping so that a new start opens the new file",
                self.database.display()
            ),
            Err(e) => bail!(
                "the database {} is gone ({e}) while this process synced it; stopping",
                self.database.display()
            ),
        }
    }

    /// The file where the holder says who it is.
    pub fn info_path(&self) -> &Path {
        &self.info
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut descriptors = DESCRIPTORS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(descriptor) = descriptors.get_mut(&self.file) {
            // The descriptor stays open (see the module's doc); only the lock goes.
            let _ = descriptor.file.unlock();
            descriptor.held = false;
        }
    }
}

/// Writes who holds the lease, for standbys to show. Only information: a failure to write it
/// changes nothing but what they show.
fn write_holder(info: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let me = format!(
        "pid {} on host {}",
        std::process::id(),
        host_name().unwrap_or_else(|| "?".into())
    );
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o660)
        .open(info)
        .and_then(|mut f| f.write_all(me.as_bytes()));
    if let Err(e) = written {
        log::debug!("cannot write {}: {e}", info.display());
    }
}

fn read_holder(info: &Path) -> Holder {
    let text = std::fs::read_to_string(info).unwrap_or_default();
    let text: String = text.chars().take(200).collect();
    Holder(crate::quote::strip_controls(text.trim()))
}

/// This machine's host name, from the kernel.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_string()).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("platform.db");
        std::fs::write(&db, b"").unwrap();
        (dir, db)
    }

    #[test]
    fn one_holder_at_a_time_and_the_next_sees_who() {
        let (_dir, db) = database();
        let first = Lease::try_acquire(&db).unwrap().unwrap();
        let holder = Lease::try_acquire(&db).unwrap().unwrap_err();
        assert!(
            holder.0.contains(&format!("pid {}", std::process::id())),
            "{holder}"
        );
        let host = host_name().expect("the kernel names this machine");
        assert!(!host.is_empty());
        assert!(holder.0.ends_with(&format!("on host {host}")), "{holder}");
        drop(first);
        assert!(Lease::try_acquire(&db).unwrap().is_ok(), "released on drop");
    }

    #[test]
    fn every_path_to_the_database_finds_the_same_lease() {
        let (dir, db) = database();
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&db, &link).unwrap();
        let hard = dir.path().join("hard.db");
        std::fs::hard_link(&db, &hard).unwrap();
        let held = Lease::try_acquire(&link).unwrap().unwrap();
        for other in [&db, &hard, &dir.path().join(".").join("platform.db")] {
            assert!(
                Lease::try_acquire(other).unwrap().is_err(),
                "{} took a second lease",
                other.display()
            );
        }
        assert_eq!(held.info_path(), info_path(&db), "one information file");
        drop(held);
        assert!(Lease::try_acquire(&hard).unwrap().is_ok());
    }

    #[test]
    fn removing_the_information_file_frees_nothing() {
        let (_dir, db) = database();
        let held = Lease::try_acquire(&db).unwrap().unwrap();
        std::fs::remove_file(held.info_path()).unwrap();
        let holder = Lease::try_acquire(&db).unwrap().unwrap_err();
        assert_eq!(holder.to_string(), "another process");
        assert!(held.check().is_ok());
    }

    #[test]
    fn a_replaced_or_removed_database_is_noticed_by_its_holder() {
        let (dir, db) = database();
        let held = Lease::try_acquire(&db).unwrap().unwrap();
        let restored = dir.path().join("restored.db");
        std::fs::write(&restored, b"").unwrap();
        std::fs::rename(&restored, &db).unwrap();
        let error = held.check().unwrap_err().to_string();
        assert!(error.contains("was replaced"), "{error}");
        std::fs::remove_file(&db).unwrap();
        let error = held.check().unwrap_err().to_string();
        assert!(error.contains("is gone"), "{error}");
    }

    #[test]
    fn a_missing_database_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("platfrom.db");
        let error = format!("{:#}", Lease::try_acquire(&db).unwrap_err());
        assert!(error.contains("platfrom.db"), "{error}");
        assert!(!db.exists(), "nothing created");
    }

    #[test]
    fn two_databases_have_two_leases() {
        let (_dir, first) = database();
        let (_other, second) = database();
        let _a = Lease::try_acquire(&first).unwrap().unwrap();
        assert!(Lease::try_acquire(&second).unwrap().is_ok());
    }

    #[test]
    fn a_standby_takes_the_lease_when_its_holder_lets_go() {
        let (_dir, db) = database();
        let held = Lease::try_acquire(&db).unwrap().unwrap();
        let (_stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let release = std::thread::spawn(move || {
            std::thread::sleep(STANDBY_POLL * 2);
            drop(held);
        });
        let taken = Lease::wait(&db, &stopped, |_| {}).unwrap();
        release.join().unwrap();
        assert!(taken.is_some(), "it waited through its polls and took over");
    }

    #[test]
    fn a_standby_stops_when_asked() {
        let (_dir, db) = database();
        let _held = Lease::try_acquire(&db).unwrap().unwrap();
        let (stop, stopped) = crossbeam_channel::bounded(1);
        stop.send(()).unwrap();
        let mut told = None;
        let got = Lease::wait(&db, &stopped, |h| told = Some(h.clone())).unwrap();
        assert!(got.is_none());
        assert!(told.is_some(), "told whom it waited for");
    }
}
