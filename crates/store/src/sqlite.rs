//! The embedded SQLite backend: one file in the data directory, WAL mode, `synchronous=FULL`
//! so a committed ledger row survives power loss, and versioned migrations applied on open.
//!
//! This file holds the store itself: its connections (the writer and the reader pools), the
//! checkpointer and the helpers every part shares. The schema is in [`migrations`], the group
//! commit in [`committer`], and each store trait's implementation in a module of its own.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use rusqlite::Connection;

use crate::model::*;
use crate::traits::*;
use crate::{Error, Result};

/// Read-only connections per file-backed store.
const READERS: usize = 4;

/// Read-only connections for key lookups only (see `SqliteStore::lookup_reader`).
const LOOKUP_READERS: usize = 2;

/// SQLite-backed [`Store`](crate::Store).
pub struct SqliteStore {
    // One writing connection, shared with the group committer's thread.
    writer: Arc<Writer>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpointer: Option<Checkpointer>,
    // Readers for everything that does not write: in WAL mode they read the last commit while
    // the writer holds its transaction (and its fsync), so validations never wait on a commit.
    readers: Vec<Mutex<Connection>>,
    /// Readers for single-row lookups by key only (a realm, a client): they never wait behind
    /// a search, so the token endpoint can do them on its own task.
    lookup_readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    directory: Directory,
}

/// The writing connection and the group committer's queue.
struct Writer {
    // Behind a mutex: statements take microseconds and SQLite serialises writers anyway.
    conn: Mutex<Connection>,
    /// Writers outside the group commit (alerts, mail, admin changes) waiting for `conn`. The
    /// committer lets them go first: under a steady stream of audit batches it would otherwise
    /// win the (unfair) mutex back every time and starve them.
    direct_waiting: std::sync::atomic::AtomicUsize,
    /// Transactions committed, for the checkpointer to tell whether there is work.
    commits: std::sync::atomic::AtomicU64,
    /// The generation counters as last read, and when that read began (see
    /// [`GENERATIONS_STALE_AFTER`]). Emptied by every direct write of this process.
    generations: Mutex<Option<(Generations, Instant)>>,
    /// When this process last wrote outside the group commit (see `Drop for SqliteStore`).
    last_direct_write: Mutex<Option<Instant>>,
    queue: Mutex<Queue>,
    /// Signalled when the queue stops being empty (or the store closes).
    work: Condvar,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and migrates it to the current schema.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        // The checkpointer below does this work; SQLite's own stays as a backstop against an
        // ever-growing WAL should that thread fall far behind.
        conn.pragma_update(None, "wal_autocheckpoint", BACKSTOP_CHECKPOINT_PAGES)?;
        let mut store = Self::init(conn)?;
        store.checkpointer = Some(Checkpointer::start(path, store.writer.clone())?);
        for i in 0..READERS + LOOKUP_READERS {
            let r = Connection::open(path)?;
            r.busy_timeout(std::time::Duration::from_secs(10))?;
            r.pragma_update(None, "query_only", "ON")?;
            add_functions(&r)?;
            if i < READERS {
                store.readers.push(Mutex::new(r));
            } else {
                store.lookup_readers.push(Mutex::new(r));
            }
        }
        Ok(store)
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // WAL lets the CLI read and write while `serve` runs; FULL makes every commit durable.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Statement journals (for statements that may fail midway) would otherwise be
        // temporary files; in memory they cost a copy.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // Every write transaction here begins IMMEDIATE (see `transaction_with_behavior`): many
        // read before they write (chain heads, alert de-duplication), and a deferred transaction
        // that must upgrade to a write lock fails at once with "database is locked" when another
        // process (the CLI beside `serve`) committed meanwhile, where IMMEDIATE simply waits.
        add_functions(&conn)?;
        let writer = Arc::new(Writer {
            conn: Mutex::new(conn),
            direct_waiting: Default::default(),
            commits: Default::default(),
            generations: Mutex::default(),
            last_direct_write: Mutex::default(),
            queue: Mutex::default(),
            work: Condvar::new(),
        });
        let committer = {
            let writer = writer.clone();
            std::thread::Builder::new()
                .name("keypost-commit".into())
                .spawn(move || writer.run_committer())
                .map_err(|e| Error::Backend(format!("starting the committer: {e}")))?
        };
        let store = Self {
            writer,
            committer: Mutex::new(Some(committer)),
            checkpointer: None,
            readers: Vec::new(),
            lookup_readers: Vec::new(),
            next_reader: Default::default(),
            directory: Directory::default(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// The schema version this database is at.
    pub fn schema_version(&self) -> Result<u32> {
        let v: u32 = self
            .reader()?
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        Ok(v)
    }

    /// A read-only connection: a free one if there is one, else the next in turn. An
    /// in-memory database has no separate readers (each connection would be its own database).
    fn reader(&self) -> Result<MutexGuard<'_, Connection>> {
        self.pick(&self.readers)
    }

    /// A reader for one lookup by key, never held by a long query: callers on an async task
    /// wait at most for another such lookup.
    fn lookup_reader(&self) -> Result<MutexGuard<'_, Connection>> {
        self.pick(&self.lookup_readers)
    }

    /// A free connection of `pool` if there is one, else waits for one (the writer's, for an
    /// in-memory store, which has no readers).
    fn pick<'a>(&'a self, pool: &'a [Mutex<Connection>]) -> Result<MutexGuard<'a, Connection>> {
        let n = pool.len();
        if n == 0 {
            // An in-memory store: its only connection is the writer's.
            return Ok(self.writer.lock_conn());
        }
        let start = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..n {
            if let Some(Ok(g)) = pool.get((start + i) % n).map(Mutex::try_lock) {
                return Ok(g);
            }
        }
        let slot = pool
            .get(start % n)
            .ok_or_else(|| Error::Backend("no reader".into()))?;
        Ok(slot.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn conn(&self) -> Result<Direct<'_>> {
        self.writer.conn()
    }
}

// How this backend keeps `GENERATIONS_STALE_AFTER` (the contract is in traits.rs): the counters
// are read at most that often and the copy shared between reads, since reading them costs a
// SQLite read (≈ 2.5 µs, as much as the rest of a cached validation); every direct write of
// this process empties the shared copy; and a store that wrote waits the bound out before it
// closes, so a revoking command has taken effect everywhere when it returns.

/// The writing connection, held for a write outside the group commit. Dropping it empties the
/// shared generation counters: the write may have bumped one (the triggers of migration 4 do).
pub(crate) struct Direct<'a> {
    conn: MutexGuard<'a, Connection>,
    writer: &'a Writer,
}

impl std::ops::Deref for Direct<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Direct<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Drop for Direct<'_> {
    fn drop(&mut self) {
        self.writer.changed();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// WAL pages after which a commit checkpoints by itself (SQLite's default is 1,000).
const BACKSTOP_CHECKPOINT_PAGES: i64 = 20_000;

/// How often the checkpointer looks for committed work.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Copies committed WAL frames into the database file on a thread of its own, on its own
/// connection. SQLite's automatic checkpoint runs inside whichever commit crosses its
/// threshold — on the committer thread, the serial part of every write — and costs it an
/// fsync of the database file and a copy of every page; a passive checkpoint here runs beside
/// the commits instead of between them.
struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path, writer: Arc<Writer>) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // The WAL is reused only after the database file is synced: FULL, like the writer.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = stop.clone();
        let thread = std::thread::Builder::new()
            .name("keypost-checkpoint".into())
            .spawn(move || {
                use std::sync::atomic::Ordering;
                let mut seen = 0;
                let (stopped, wake) = &*signal;
                let mut s = stopped.lock().unwrap_or_else(|p| p.into_inner());
                while !*s {
                    s = wake
                        .wait_timeout(s, CHECKPOINT_INTERVAL)
                        .map_or_else(|p| p.into_inner().0, |r| r.0);
                    let commits = writer.commits.load(Ordering::Relaxed);
                    if commits == seen {
                        continue;
                    }
                    seen = commits;
                    // Busy (another checkpoint running) or failed: the next round retries,
                    // and the backstop still bounds the WAL.
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                    }
                }
            })
            .map_err(|e| Error::Backend(format!("starting the checkpointer: {e}")))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // A process that changed something (a revoked key, a disabled account) returns only
        // once every other process's validators are bound to see it.
        // (An in-memory store, which has no checkpointer, has no other process to wait for.)
        let last_write = *lock(&self.writer.last_direct_write);
        if let Some(w) = last_write
            && self.checkpointer.is_some()
        {
            crate::clock::sleep(GENERATIONS_STALE_AFTER.saturating_sub(w.elapsed()));
        }
        drop(self.checkpointer.take());
        // The committer drains what is queued, then ends.
        self.writer.lock_queue().closing = true;
        self.writer.work.notify_one();
        if let Some(t) = self
            .committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = t.join();
        }
    }
}

/// SQL functions the queries use: `base_subject(text)` for sorting by subject.
fn add_functions(conn: &Connection) -> Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "base_subject",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| Ok(crate::base_subject(&ctx.get::<String>(0)?)),
    )?;
    Ok(())
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(e.to_string()))
}

fn parse_id<T: std::str::FromStr>(s: String) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| Error::Corrupt(e.to_string()))
}

fn parse_opt<T: std::str::FromStr>(s: Option<String>) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    s.map(parse_id).transpose()
}

impl Writer {
    /// Records that this process has just committed something that may have bumped a
    /// generation counter: the shared copy is emptied, so every later call reads them again.
    fn changed(&self) {
        // In this order: see `SqliteStore::generations`.
        *lock(&self.last_direct_write) = Some(Instant::now());
        *lock(&self.generations) = None;
    }

    /// The connection, for a write outside the group commit.
    fn conn(&self) -> Result<Direct<'_>> {
        use std::sync::atomic::Ordering;
        self.direct_waiting.fetch_add(1, Ordering::SeqCst);
        let conn = self.lock_conn();
        self.direct_waiting.fetch_sub(1, Ordering::SeqCst);
        // Most direct uses write: count one for the checkpointer (a spare pass is harmless).
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(Direct { conn, writer: self })
    }

    fn lock_conn(&self) -> MutexGuard<'_, Connection> {
        // A poisoned lock means a panic mid-statement; SQLite rolled the statement back, so the
        // connection itself is still consistent.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

mod alerts;
mod audit;
mod audit_chain;
mod committer;
mod directory;
mod keys;
mod ledger;
mod mail;
mod migrations;
mod query;
mod sending;
mod sessions;

use committer::Queue;
use directory::Directory;

#[cfg(test)]
mod tests;
