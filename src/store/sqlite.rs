//! The SQLite backend: one file in the state directory, in WAL mode. Several processes (openQA's
//! prefork web UI) share it; SQLite's write lock (`BEGIN IMMEDIATE`) makes each check-then-write
//! of the concern modules atomic across them.

use super::{now_ms, StoreError};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::cell::{Cell, RefCell};
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

pub(super) struct Sqlite {
    // closed inside the fork gate (see `Drop`)
    conn: ManuallyDrop<Mutex<Connection>>,
    path: PathBuf,
}

// SQLite keeps process-wide mutexes of its own (the VFS's list of open files, each file's lock
// state). fork() copies only the forking thread: had an engine thread been inside SQLite at that
// moment, the child (the plugin's verdict route forks a worker whose engine keeps writing) would
// wait for that mutex forever when it opens the state directory. Every use of SQLite therefore
// holds this gate shared, and the forking thread takes it exclusively for the fork, so a fork
// happens only while no thread is inside SQLite. A fork may wait for a statement in progress,
// at most SQLite's busy timeout.
static GATE: RwLock<()> = RwLock::new(());
static AT_FORK: AtomicBool = AtomicBool::new(false);

thread_local! {
    // how deep this thread is inside the gate: the shared hold is taken once, as a nested read
    // of a writer-preferring lock could wait behind a fork that waits for this very thread
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    static HELD_OVER_FORK: RefCell<Option<RwLockWriteGuard<'static, ()>>> = const { RefCell::new(None) };
}

/// This thread's shared hold of the gate while it uses SQLite.
struct Inside {
    _held: Option<RwLockReadGuard<'static, ()>>,
}

fn inside() -> Inside {
    let depth = DEPTH.with(|d| d.replace(d.get() + 1));
    Inside { _held: (depth == 0).then(|| GATE.read().unwrap_or_else(|p| p.into_inner())) }
}

impl Drop for Inside {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

extern "C" fn before_fork() {
    // a thread that forks from inside SQLite keeps its own hold: waiting for itself would hang
    if DEPTH.with(|d| d.get()) == 0 {
        let held = GATE.write().unwrap_or_else(|p| p.into_inner());
        HELD_OVER_FORK.with(|h| *h.borrow_mut() = Some(held));
    }
}

extern "C" fn after_fork() {
    HELD_OVER_FORK.with(|h| drop(h.borrow_mut().take()));
}

// Not a `Once`: a child forked while another thread ran its closure would wait for it forever.
fn guard_forks() {
    if AT_FORK.swap(true, Ordering::SeqCst) {
        return;
    }
    // the log queue's handlers first: prepare handlers run in reverse order of registration, so
    // the gate is taken before the queue, while threads inside SQLite may still log
    crate::log::guard_forks();
    // SAFETY: the handlers take and release a lock the forking thread does not hold (checked with
    // DEPTH), and never unwind.
    unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork)) };
}

/// A connection in use: the connection's lock, then this thread's hold of the fork gate, which is
/// let go of last (fields drop in order).
pub(super) struct Conn<'a> {
    conn: MutexGuard<'a, Connection>,
    _inside: Inside,
}

impl Deref for Conn<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        let _inside = inside();
        // SAFETY: dropped once, here, and never used again
        unsafe { ManuallyDrop::drop(&mut self.conn) };
    }
}

/// Adds a column that state directories created by an older version lack.
fn add_column(conn: &mut Connection, table: &str, column: &str, decl: &str) -> Result<(), StoreError> {
    // immediate: two processes opening an old state directory at once add it once
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let present: bool = tx.query_row(
        &format!("SELECT EXISTS(SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1)"),
        [column],
        |r| r.get(0),
    )?;
    if !present {
        tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
    }
    tx.commit()?;
    Ok(())
}

/// The ticket of the newest evaluation begun so far (`begin_evaluation`), 0 before any.
pub(super) fn current_ticket(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row("SELECT value FROM counters WHERE name = 'evaluation'", [], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// The ticket of the newest evaluation that found the incident's testing not finished
/// (`note_unfinished`), 0 when none did.
pub(super) fn unfinished_ticket(conn: &Connection, incident: i64) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row("SELECT ticket FROM unfinished WHERE incident = ?1", [incident], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Replaces the comments (id, job) an incident's latest decision relied on.
pub(super) fn replace_relied(
    conn: &Connection,
    incident: i64,
    comments: &[(u64, u64)],
) -> rusqlite::Result<()> {
    let now = now_ms();
    conn.execute("DELETE FROM relied_comments WHERE incident = ?1", [incident])?;
    for (comment, job) in comments {
        conn.execute(
            "INSERT OR IGNORE INTO relied_comments (comment_id, incident, job_id, since, checked_at)
             VALUES (?1, ?2, ?3, ?4, ?4)",
            params![*comment as i64, incident, *job as i64, now],
        )?;
    }
    Ok(())
}

impl Sqlite {
    pub(super) fn open(dir: &Path) -> Result<Sqlite, StoreError> {
        guard_forks();
        let _inside = inside();
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("cannot create state directory {}: {e}", dir.display())))?;
        let path = dir.join("incident-gate.sqlite");
        // SQLite opens lazily: an unwritable directory or a file that is no database shows only
        // at the first statement. Each error names the file: it is the operator's to fix.
        let named = |e: rusqlite::Error| StoreError(format!("cannot use {}: {e}", path.display()));
        let mut conn = Connection::open(&path).map_err(named)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(named)?;
        // switching a new file to WAL takes its exclusive lock, and SQLite answers "database is
        // locked" at once, without its busy handler, when another process (prefork workers
        // starting together) or thread is at the same step: wait for it as for any lock
        let waited = std::time::Instant::now();
        while let Err(e) = conn.pragma_update(None, "journal_mode", "WAL") {
            let busy = e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy);
            if !busy || waited.elapsed() > std::time::Duration::from_secs(10) {
                return Err(named(e));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(named)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS decisions (
                key TEXT PRIMARY KEY, base TEXT NOT NULL, incident INTEGER NOT NULL, request INTEGER,
                result TEXT NOT NULL, decided_at TEXT NOT NULL, body TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS decisions_incident ON decisions(incident);
             CREATE TABLE IF NOT EXISTS outbox (
                id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, sink TEXT NOT NULL,
                state TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0,
                next_at INTEGER NOT NULL DEFAULT 0, lease_until INTEGER NOT NULL DEFAULT 0,
                outcome TEXT, UNIQUE(key, sink));
             CREATE INDEX IF NOT EXISTS outbox_due ON outbox(sink, state, next_at);
             CREATE TABLE IF NOT EXISTS pending (
                incident INTEGER PRIMARY KEY, since INTEGER NOT NULL, checked_at INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS relied_comments (
                comment_id INTEGER NOT NULL, incident INTEGER NOT NULL, job_id INTEGER NOT NULL,
                since INTEGER NOT NULL, checked_at INTEGER NOT NULL, PRIMARY KEY (comment_id, incident));
             CREATE INDEX IF NOT EXISTS relied_comments_incident ON relied_comments(incident);
             CREATE TABLE IF NOT EXISTS job_activity (
                incident INTEGER PRIMARY KEY, newest_job INTEGER NOT NULL, at INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS finished_jobs (job_id INTEGER PRIMARY KEY, at INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS catchup_jobs (
                id INTEGER PRIMARY KEY, final INTEGER NOT NULL, checked_at INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS unfinished (incident INTEGER PRIMARY KEY, ticket INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS scheduling (
                product INTEGER NOT NULL, incident INTEGER NOT NULL, status TEXT NOT NULL,
                since INTEGER NOT NULL, PRIMARY KEY (product, incident));",
        )
        .map_err(named)?;
        // columns that state directories of older versions lack
        for (table, column, decl) in [
            ("decisions", "seen", "INTEGER NOT NULL DEFAULT 0"),
            // the evaluation ticket current when an incident was marked pending: only an
            // evaluation that began later (a higher ticket) may clear the mark
            ("pending", "ticket", "INTEGER NOT NULL DEFAULT 0"),
            // what the last evaluation of a pending incident waited for, for the incidents page
            ("pending", "wait_state", "TEXT"),
            ("pending", "wait_why", "TEXT"),
            // a report waiting for the other side (`Delivery::Waiting`): not hurried by hook runs
            ("outbox", "waiting", "INTEGER NOT NULL DEFAULT 0"),
        ] {
            add_column(&mut conn, table, column, decl)
                .map_err(|e| StoreError(format!("cannot use {}: {}", path.display(), e.0)))?;
        }
        Ok(Sqlite { conn: ManuallyDrop::new(Mutex::new(conn)), path })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn conn(&self) -> Conn<'_> {
        let inside = inside();
        // a panic while holding the lock leaves SQLite consistent (transactions roll back)
        Conn { conn: self.conn.lock().unwrap_or_else(|p| p.into_inner()), _inside: inside }
    }

    /// A write transaction that holds SQLite's write lock from its start: what it reads stays
    /// true until it commits, in every process of the state directory.
    pub(super) fn write<R>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let r = f(&tx)?;
        tx.commit()?;
        Ok(r)
    }
}

impl super::Backend for Sqlite {
    fn check_writable(&self) -> Result<(), StoreError> {
        let named = |e: rusqlite::Error| StoreError(format!("cannot use {}: {e}", self.path.display()));
        let conn = self.conn();
        let check: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0)).map_err(named)?;
        if check != "ok" {
            return Err(StoreError(format!(
                "cannot use {}: the database is corrupt: {check}",
                self.path.display()
            )));
        }
        conn.execute(
            "INSERT INTO counters (name, value) VALUES ('opened', 1)
             ON CONFLICT(name) DO UPDATE SET value = value + 1",
            [],
        )
        .map_err(named)?;
        Ok(())
    }

    #[cfg(test)]
    fn execute_for_test(&self, sql: &str) -> Result<(), StoreError> {
        self.conn().execute_batch(sql)?;
        Ok(())
    }
}
