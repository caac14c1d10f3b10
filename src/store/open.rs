//! Opening the database: the options, the connections (WAL, busy timeout, private file
//! mode), the schema brought up to date, and the pool of read connections.

use super::*;

/// How the store opens its connections and sizes its bus.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long a statement waits for another connection's lock before failing.
    pub busy_timeout: Duration,
    /// How many activities each bus subscriber may have queued before it lags.
    pub bus_capacity: usize,
    /// The most read connections open at once; a reader beyond this waits for one to be
    /// free, so no burst of readers (scrapers, say) can open connections without bound.
    pub max_readers: usize,
    /// How long the writer thread lets outcomes gather before it commits the first one that
    /// arrived: one commit then carries every outcome of that span. Each commit writes the
    /// pages it touched to the WAL whatever it carries, so under load this is most of the
    /// cost of recording an outcome; alone, an outcome is recorded this much later. Zero
    /// commits each outcome as soon as the writer wakes.
    pub write_linger: Duration,
    /// How often the store looks for activity that other processes committed while it flows
    /// (it backs off when quiet, and on Linux then sleeps until the database's files are
    /// written), once anything listens to its bus: [`Command::outcomes`], a worker. A change
    /// another process makes is on this process's bus within about this long.
    pub feed_interval: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            busy_timeout: Duration::from_secs(5),
            bus_capacity: 4096,
            max_readers: 8,
            write_linger: Duration::from_millis(8),
            feed_interval: Duration::from_millis(20),
        }
    }
}

/// The pool of read connections: the idle ones, and how many exist in all.
#[derive(Default)]
pub(super) struct Readers {
    pub(super) idle: Vec<Connection>,
    pub(super) open: usize,
}

impl Store {
    /// Opens the database at `path` with default options, creating it if needed.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(path, StoreOptions::default())
    }

    /// Opens the database at `path`, creating it and its tables if needed.
    pub fn open_with(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        create_private(&path)?;
        let mut writer = open_connection(&path, options.busy_timeout)?;
        schema::migrate(&mut writer)
            .with_context(|| format!("cannot prepare the database {}", path.display()))?;
        let db = Arc::new(Db::new(path, false, writer, &options)?);
        Ok(Store {
            query: Query { db: db.clone() },
            command: Command {
                db,
                notify: Bus::new(options.bus_capacity),
                own_writes: Arc::new(OwnWrites::default()),
            },
        })
    }
}

impl Db {
    fn new(
        path: PathBuf,
        read_only: bool,
        writer: Connection,
        options: &StoreOptions,
    ) -> Result<Db> {
        let relay_zooid = schema::has_column(&writer, "relay", "zooid")?;
        Ok(Db {
            path,
            read_only,
            relay_zooid,
            busy_timeout: options.busy_timeout,
            readers: Mutex::new(Readers::default()),
            reader_returned: Condvar::new(),
            max_readers: options.max_readers.max(1),
            writer: Mutex::new(writer),
            queue: Mutex::new(WriteQueue::default()),
            queued: Condvar::new(),
            write_linger: options.write_linger,
            retrying: AtomicBool::new(false),
            watch: Mutex::new(None),
            feed_interval: options.feed_interval.max(Duration::from_millis(1)),
            feed_running: AtomicBool::new(false),
            bad_activity_rows: Default::default(),
        })
    }
}

impl Query {
    /// Opens the database at `path` only to read it, for commands that report (`status`):
    /// every connection is read-only, no lock beyond a reader's is ever taken, and nothing
    /// is created or migrated. The file must exist and its schema be current.
    #[doc(hidden)]
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Query> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            bail!("there is no database at {}", path.display());
        }
        let options = StoreOptions::default();
        let conn = open_read_only_connection(&path, options.busy_timeout)?;
        schema::require_current(&conn)
            .with_context(|| format!("cannot read the database {}", path.display()))?;
        Ok(Query {
            db: Arc::new(Db::new(path, true, conn, &options)?),
        })
    }
}

/// Creates the database file, if it does not exist yet, readable by its owner and (as the
/// umask allows) its group, never by other users: it names every relay and its owner.
/// SQLite gives the `-wal` and `-shm` files the same permissions. An existing file is left
/// as the host made it.
pub(super) fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot open the database {}: creating it failed",
                path.display()
            )
        }),
    }
}

/// Opens one connection the way every connection of zooid-sync is opened.
pub(crate) fn open_connection(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    conn.busy_timeout(busy_timeout)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .with_context(|| format!("cannot use the database {}", path.display()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        log::warn!(
            "the database {} is in journal mode {mode}, not WAL; readers may wait for writers",
            path.display()
        );
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // 1 MiB of page cache per connection (SQLite's default is 2 MiB): the working set of a
    // sync is a handful of pages, and a daemon holds several connections.
    conn.pragma_update(None, "cache_size", -1024)?;
    Ok(conn)
}

/// Opens one connection that can only read: no `journal_mode` change, no creation.
pub(super) fn open_read_only_connection(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("cannot open the database {} to read it", path.display()))?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "cache_size", -1024)?;
    Ok(conn)
}
