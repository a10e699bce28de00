//! The embedded store in the state directory (SQLite, WAL): decisions, the durable outbox of side
//! effects, and the incidents still pending. Several processes (openQA's prefork web UI) share one
//! state directory; SQLite's locking makes "record this decision" succeed in exactly one of them.

use crate::decision::{Decision, Delivery};
use crate::incident::{Kind, Submission};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a decision goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sink {
    Amqp,
    Obs,
    /// Gitea pull requests (decisions of `Kind::Gitea`).
    Gitea,
}

impl Sink {
    pub fn as_str(self) -> &'static str {
        match self {
            Sink::Amqp => "amqp",
            Sink::Obs => "obs",
            Sink::Gitea => "gitea",
        }
    }

    /// Whether the sink reports to the service of submissions of this kind (the event is for all).
    pub fn serves(self, kind: Kind) -> bool {
        match self {
            Sink::Amqp => true,
            Sink::Obs => kind == Kind::Ibs,
            Sink::Gitea => kind == Kind::Gitea,
        }
    }

    /// Sinks that report a decision to the submission's service: one decision of a submission at
    /// a time, never a decision a newer one replaced.
    pub fn reports(self) -> bool {
        self != Sink::Amqp
    }
}

#[derive(Debug)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "state store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: i64,
    pub sink: Sink,
    pub attempts: u32,
    pub decision: Decision,
    /// The lease this process holds on the item (its expiry, ms): identifies the lease for
    /// `release`, so a process never drops a lease that expired and went to another process.
    pub lease_until: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecisionRow {
    pub key: String,
    pub incident: u64,
    pub kind: Kind,
    pub request: Option<u64>,
    pub result: String,
    pub decided_at: String,
    /// Per sink: `queued`, `done` or `final`, with the last outcome.
    pub deliveries: Vec<DeliveryRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRow {
    pub sink: String,
    pub state: String,
    pub attempts: u32,
    pub outcome: Option<String>,
}

/// What the state directory holds, for `ig_gate_status` and `incident-gate status`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub recent_decisions: Vec<DecisionRow>,
    /// IBS incidents as numbers, Gitea pull requests as `"git:<pr>"`.
    pub pending_incidents: Vec<Submission>,
    pub outbox_backlog: Backlog,
    pub catchup: CatchupStatus,
}

/// Where catch-up from openQA stands (see `engine::catch_up`), for status output.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CatchupStatus {
    /// Every job up to this id was looked at by a catch-up (twice, see `engine::catch_up`);
    /// None before the first catch-up.
    pub after_id: Option<u64>,
    /// Every job of an incident up to this id had ended when a catch-up looked at it: the
    /// lowest id of a job still waited on, less one (or `after_id`).
    pub watermark: Option<u64>,
    /// Jobs of incidents seen not final, looked at again by each catch-up.
    pub waiting_jobs: u64,
    /// The highest job id a catch-up saw.
    pub newest_seen: Option<u64>,
    pub last_run_at: Option<String>,
    /// openQA requests of the last catch-up (of any process).
    pub last_requests: Option<u64>,
}

/// What a catch-up starts from (`Store::claim_catchup`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchupStart {
    pub after_id: Option<u64>,
    pub newest_seen: Option<u64>,
}

/// What a catch-up leaves behind (`Store::finish_catchup`).
#[derive(Debug, Clone, Default)]
pub struct CatchupEnd {
    pub after_id: Option<u64>,
    pub newest_seen: Option<u64>,
    /// Jobs of incidents seen not final.
    pub waiting: Vec<u64>,
    /// Jobs of incidents seen final (their incidents are marked pending already).
    pub ended: Vec<u64>,
    /// Jobs looked at again that openQA no longer has.
    pub gone: Vec<u64>,
    /// Jobs looked at again that are still not final.
    pub still_waiting: Vec<u64>,
    pub requests: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Backlog {
    pub amqp: u64,
    pub obs: u64,
    pub gitea: u64,
}

impl Backlog {
    pub fn total(&self) -> u64 {
        self.amqp + self.obs + self.gitea
    }
}

/// What the incidents page asks for (`ig_gate_incidents`): all fields optional.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentQuery {
    /// `pending`, `delivery_pending`, `reported`, or a result (`passed`, `failed`, `no_jobs`).
    pub state: Option<String>,
    /// Digits the incident number contains.
    pub search: Option<String>,
    /// Exactly this IBS incident, with every decision of it.
    pub incident: Option<u64>,
    /// Exactly this submission (`12345`, `git:124`), with every decision of it.
    pub submission: Option<String>,
    /// At most this many incidents (default 200, at most 1000).
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IncidentRow {
    /// The submission's number; `kind` says whose (`ibs` or `gitea`).
    pub incident: u64,
    pub kind: &'static str,
    /// As the pages and routes name it: `12345`, `git:124`.
    pub submission: String,
    pub request: Option<u64>,
    pub state: String,
    pub why: Option<String>,
    pub result: Option<String>,
    pub decided_at: Option<String>,
    #[serde(skip)]
    pub updated_ms: i64,
    pub deliveries: Vec<DeliveryRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecisionHistory {
    pub key: String,
    pub result: String,
    pub decided_at: String,
    pub request: Option<u64>,
    pub jobs: Option<crate::verdict::Counts>,
    pub blocking: Vec<crate::verdict::BlockingJob>,
    /// Whom to contact per job group with a blocking job (`Responsible:` lines).
    pub contacts: std::collections::BTreeMap<String, Vec<String>>,
    pub deliveries: Vec<DeliveryRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IncidentList {
    pub incidents: Vec<IncidentRow>,
    /// How many matched before `limit`.
    pub total: u64,
    /// How many incidents are in each state (before filtering).
    pub states: std::collections::BTreeMap<String, u64>,
    /// With `incident`: its decisions, newest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decisions: Option<Vec<DecisionHistory>>,
}

/// What `record_decision` did with a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded and queued for the sinks.
    New,
    /// The incident's latest decision already says this.
    Repeat,
    /// An evaluation that started later decided already: this one read older data.
    Stale,
}

/// A pending incident's state and reason on the incidents page, from what its last evaluation
/// waited for (nothing noted yet: its jobs, as an event said).
fn pending_state(waiting: (Option<String>, Option<String>)) -> (String, Option<String>) {
    match waiting {
        (Some(state), why) => (state, why),
        (None, _) => ("pending".to_string(), Some("waiting for jobs to finish".to_string())),
    }
}

/// Adds a column that state directories created by an older version lack.
/// The outbox rows of one decision, for `deliveries` prepared as
/// `SELECT sink, state, attempts, outcome FROM outbox WHERE key = ?1 ORDER BY id`.
fn delivery_rows(
    deliveries: &mut rusqlite::Statement<'_>,
    key: &str,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let rows = deliveries.query_map([key], |r| {
        Ok(DeliveryRow { sink: r.get(0)?, state: r.get(1)?, attempts: r.get(2)?, outcome: r.get(3)? })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

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

pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// How long a process owns an outbox item it took; after that another process may take it.
pub const LEASE_S: i64 = 60;
const MAX_BACKOFF_MS: i64 = 30_000;

/// The ticket of the newest evaluation begun so far (`begin_evaluation`), 0 before any.
fn current_ticket(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row("SELECT value FROM counters WHERE name = 'evaluation'", [], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// The ticket of the newest evaluation that found the incident's testing not finished
/// (`note_unfinished`), 0 when none did.
fn unfinished_ticket(conn: &Connection, incident: i64) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row("SELECT ticket FROM unfinished WHERE incident = ?1", [incident], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Replaces the comments (id, job) an incident's latest decision relied on.
fn replace_relied(conn: &Connection, incident: i64, comments: &[(u64, u64)]) -> rusqlite::Result<()> {
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

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Exponential backoff for a delivery that failed `attempts` times: 0.5 s, 1 s, 2 s … 30 s.
pub fn backoff_ms(attempts: u32) -> i64 {
    (500i64 << attempts.min(16)).min(MAX_BACKOFF_MS)
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("cannot create state directory {}: {e}", dir.display())))?;
        let path = dir.join("incident-gate.sqlite");
        // SQLite opens lazily: an unwritable directory or a file that is no database shows only
        // at the first statement. Each error names the file: it is the operator's to fix.
        let named = |e: rusqlite::Error| StoreError(format!("cannot use {}: {e}", path.display()));
        let mut conn = Connection::open(&path).map_err(named)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(named)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(named)?;
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
        add_column(&mut conn, "decisions", "seen", "INTEGER NOT NULL DEFAULT 0")
            .map_err(|e| StoreError(format!("cannot use {}: {}", path.display(), e.0)))?;
        // the evaluation ticket current when an incident was marked pending: only an evaluation
        // that began later (a higher ticket) may clear the mark
        add_column(&mut conn, "pending", "ticket", "INTEGER NOT NULL DEFAULT 0")
            .map_err(|e| StoreError(format!("cannot use {}: {}", path.display(), e.0)))?;
        // what the last evaluation of a pending incident waited for, for the incidents page
        for column in ["wait_state", "wait_why"] {
            add_column(&mut conn, "pending", column, "TEXT")
                .map_err(|e| StoreError(format!("cannot use {}: {}", path.display(), e.0)))?;
        }
        Ok(Store { conn: Mutex::new(conn), path })
    }

    /// A ticket for an evaluation about to read openQA, from one counter shared by every process
    /// of the state directory: an evaluation with a higher ticket started later and read newer
    /// data, so its decision outranks one of a lower ticket (see `record_decision`).
    pub fn begin_evaluation(&self) -> Result<i64, StoreError> {
        Ok(self.conn().query_row(
            "INSERT INTO counters (name, value) VALUES ('evaluation', 1)
             ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
            [],
            |r| r.get(0),
        )?)
    }

    /// Proves the store usable for a service that acknowledges work only once it is stored: an
    /// integrity check and one real write. The error names the file.
    pub fn check_writable(&self) -> Result<(), StoreError> {
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // a panic while holding the lock leaves SQLite consistent (transactions roll back)
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a decision of the evaluation holding ticket `seen` (`begin_evaluation`) and queues
    /// it for `sinks`, unless it repeats the incident's latest decision or that decision comes from
    /// an evaluation that started later (whichever process recorded it): evaluations finish in any
    /// order, and one that read older data must not replace what a newer one decided.
    ///
    /// A verdict that comes back after another one (passed, failed, passed over the same jobs) is
    /// a new decision: it gets a key of its own, derived so that every process derives the same.
    ///
    /// `relied` are the comments (id, job) the verdict relied on (`set_relied_comments`); they
    /// replace the incident's set in the same transaction, and only when the decision counts (new
    /// or a repeat): a stale evaluation must not replace the set of the newer decision.
    pub fn record_decision(
        &self,
        d: &mut Decision,
        sinks: &[Sink],
        seen: i64,
        relied: &[(u64, u64)],
    ) -> Result<Recorded, StoreError> {
        let base = crate::decision::decision_key(&d.verdict);
        let incident = d.verdict.submission().store_key();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let latest: Option<(String, i64)> = tx
            .query_row(
                "SELECT base, seen FROM decisions WHERE incident = ?1 ORDER BY rowid DESC LIMIT 1",
                [incident],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        // an evaluation that began later and found testing not finished outranks this one too
        let unfinished = unfinished_ticket(&tx, incident)?;
        if unfinished > seen {
            return Ok(Recorded::Stale);
        }
        match &latest {
            Some((_, newer)) if *newer > seen => return Ok(Recorded::Stale),
            // the same verdict again, unless testing resumed in between: then the latest
            // decision's reports were withheld (`is_latest`), and this one is new
            Some((latest, latest_seen)) if *latest == base && unfinished < *latest_seen => {
                tx.execute(
                    "DELETE FROM pending WHERE incident = ?1 AND ticket < ?2",
                    params![incident, seen],
                )?;
                replace_relied(&tx, incident, relied)?;
                tx.commit()?;
                return Ok(Recorded::Repeat);
            }
            _ => {}
        }
        let earlier: i64 =
            tx.query_row("SELECT COUNT(*) FROM decisions WHERE incident = ?1", [incident], |r| r.get(0))?;
        let taken: bool =
            tx.query_row("SELECT EXISTS(SELECT 1 FROM decisions WHERE key = ?1)", [&base], |r| r.get(0))?;
        d.key = if taken { crate::decision::salted_key(&base, earlier as u64) } else { base.clone() };
        // what the deliveries and the page's history need (counts, blocking jobs, job ids), not
        // a note for every job looked at: those are a fresh evaluation's, and they are most of
        // the size (hundreds of KB for an incident in a few large aggregate builds)
        let notes = std::mem::take(&mut d.verdict.notes);
        let body = serde_json::to_string(&*d).map_err(|e| StoreError(e.to_string()));
        d.verdict.notes = notes;
        let body = body?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO decisions (key, base, incident, request, result, decided_at, body, seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                d.key,
                base,
                incident,
                d.verdict.request.map(|r| r as i64),
                d.verdict.result.as_str(),
                d.decided_at,
                body,
                seen
            ],
        )? == 1;
        if inserted {
            for sink in sinks {
                tx.execute("INSERT INTO outbox (key, sink) VALUES (?1, ?2)", params![d.key, sink.as_str()])?;
            }
        }
        tx.execute("DELETE FROM pending WHERE incident = ?1 AND ticket < ?2", params![incident, seen])?;
        replace_relied(&tx, incident, relied)?;
        tx.commit()?;
        Ok(if inserted { Recorded::New } else { Recorded::Repeat })
    }

    /// Whether `key` is the incident's latest decision and no evaluation that began after it
    /// found testing going on again (a restarted job, a new build): an older decision, or one
    /// overtaken that way, must not act on IBS or Gitea.
    pub fn is_latest(&self, incident: impl Into<Submission>, key: &str) -> Result<bool, StoreError> {
        let incident = incident.into().store_key();
        let conn = self.conn();
        let latest: Option<(String, i64)> = conn
            .query_row(
                "SELECT key, seen FROM decisions WHERE incident = ?1 ORDER BY rowid DESC LIMIT 1",
                [incident],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let unfinished = unfinished_ticket(&conn, incident)?;
        Ok(latest.is_some_and(|(latest, seen)| latest == key && unfinished < seen))
    }

    /// The evaluation holding ticket `ticket` found the incident's testing not finished, waiting
    /// for `state` (`pending`: jobs to finish or to be created; `coverage`: a job the coverage policy
    /// expects does not exist): the incident is pending, and no decision of an evaluation
    /// that began before this one is recorded or reported any more. One transaction: evaluations
    /// of running incidents are most of them.
    pub fn note_unfinished(
        &self,
        incident: impl Into<Submission>,
        ticket: i64,
        state: &str,
        why: &str,
    ) -> Result<(), StoreError> {
        let incident = incident.into().store_key();
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO unfinished (incident, ticket) VALUES (?1, ?2)
             ON CONFLICT(incident) DO UPDATE SET ticket = MAX(ticket, ?2)",
            params![incident, ticket],
        )?;
        let current = current_ticket(&tx)?;
        tx.execute(
            "INSERT INTO pending (incident, since, checked_at, ticket, wait_state, wait_why)
             VALUES (?1, ?2, ?2, ?3, ?4, ?5)
             ON CONFLICT(incident) DO UPDATE SET checked_at = ?2, ticket = MAX(ticket, ?3),
                 wait_state = ?4, wait_why = ?5",
            params![incident, now, current, state, why],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Takes up to `limit` due items of `sink` for this process. A decision's sinks go in the order
    /// they were queued (the event first, then IBS, DESIGN section 4): an item waits while an
    /// earlier one of the same decision is still queued. A review service (IBS, later Gitea) hears
    /// one decision of an incident at a time: its item waits while another one of the same
    /// incident and sink is leased (being delivered by some process), and one take holds at most
    /// one per incident, the oldest first, so the comments and review changes of two decisions
    /// never interleave. Events are not held back: each is a message of its own. Taking an item
    /// leases it (`LEASE_S`). An item whose decision no longer parses is marked final with the
    /// reason instead of being taken.
    pub fn take_due(&self, sink: Sink, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let now = now_ms();
        let lease_until = now + LEASE_S * 1000;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut items = Vec::new();
        let mut unreadable = Vec::new();
        {
            let mut stmt = tx.prepare(
                "SELECT o.id, o.attempts, o.key, d.incident, d.body FROM outbox AS o
                 JOIN decisions AS d ON d.key = o.key
                 WHERE o.sink = ?1 AND o.state = 'queued' AND o.next_at <= ?2 AND o.lease_until <= ?2
                 AND NOT EXISTS (SELECT 1 FROM outbox AS earlier WHERE earlier.key = o.key
                     AND earlier.id < o.id AND earlier.state = 'queued')
                 AND (o.sink = 'amqp' OR NOT EXISTS (
                     SELECT 1 FROM outbox AS busy JOIN decisions AS bd ON bd.key = busy.key
                     WHERE busy.sink = o.sink AND busy.state = 'queued' AND busy.lease_until > ?2
                     AND busy.id != o.id AND bd.incident = d.incident))
                 ORDER BY o.id",
            )?;
            let mut rows = stmt.query(params![sink.as_str(), now])?;
            let mut incidents = std::collections::HashSet::new();
            while items.len() < limit {
                let Some(row) = rows.next()? else { break };
                let (id, attempts, key, incident, body): (i64, u32, String, i64, String) =
                    (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?);
                if sink.reports() && incidents.contains(&incident) {
                    continue;
                }
                match serde_json::from_str(&body) {
                    Ok(decision) => {
                        incidents.insert(incident);
                        items.push(OutboxItem { id, sink, attempts, decision, lease_until });
                    }
                    Err(e) => unreadable.push((id, format!("decision {key} is unreadable: {e}"))),
                }
            }
        }
        // a body that does not parse now never will: failing the whole take for it would stop
        // this sink for good, so the item is given up (once, shown in status) and the rest go out
        for (id, why) in &unreadable {
            tracing::error!("{} outbox: {why}; not delivered", sink.as_str());
            tx.execute(
                "UPDATE outbox SET state = 'final', outcome = ?1, lease_until = 0 WHERE id = ?2",
                params![why, id],
            )?;
        }
        for item in &items {
            tx.execute("UPDATE outbox SET lease_until = ?1 WHERE id = ?2", params![lease_until, item.id])?;
        }
        tx.commit()?;
        Ok(items)
    }

    /// Records how a delivery went: done and final leave the outbox, retry comes back later.
    pub fn complete(&self, item: &OutboxItem, outcome: &Delivery) -> Result<(), StoreError> {
        let conn = self.conn();
        match outcome {
            Delivery::Done(msg) | Delivery::Final(msg) => {
                let state = if matches!(outcome, Delivery::Done(_)) { "done" } else { "final" };
                conn.execute(
                    "UPDATE outbox SET state = ?1, outcome = ?2, attempts = attempts + 1, lease_until = 0
                     WHERE id = ?3",
                    params![state, msg, item.id],
                )?;
            }
            Delivery::Retry(_) | Delivery::Denied(..) => {
                let (msg, wait) = match outcome {
                    Delivery::Denied(msg, wait) => (msg, *wait),
                    Delivery::Retry(msg) | Delivery::Done(msg) | Delivery::Final(msg) => {
                        (msg, backoff_ms(item.attempts))
                    }
                };
                let next = now_ms() + wait;
                // only while the lease is still ours: after it ran out another process may hold it
                conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1, next_at = ?1, lease_until = 0, outcome = ?2
                     WHERE id = ?3 AND lease_until = ?4",
                    params![next, msg, item.id, item.lease_until],
                )?;
            }
        }
        Ok(())
    }

    /// Retention: removes decisions decided before `cutoff` (RFC 3339, as `decided_at`) that are
    /// not their incident's latest and have nothing left to deliver, with their outbox rows. The
    /// latest decision of each incident stays: it is what a repeated verdict is compared with.
    /// Returns how many decisions were removed.
    pub fn prune(&self, cutoff: &str) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let old = "SELECT d.key FROM decisions AS d WHERE d.decided_at < ?1
             AND d.rowid < (SELECT MAX(l.rowid) FROM decisions AS l WHERE l.incident = d.incident)
             AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.key = d.key AND o.state = 'queued')";
        tx.execute(&format!("DELETE FROM outbox WHERE key IN ({old})"), [cutoff])?;
        let removed = tx.execute(&format!("DELETE FROM decisions WHERE key IN ({old})"), [cutoff])?;
        tx.commit()?;
        Ok(removed)
    }

    /// Forgets jobs reported finished more than `older_than_ms` ago: a waiting incident reads
    /// them within moments, and one that missed them is evaluated by reconciliation anyway.
    pub fn forget_finished_jobs(&self, older_than_ms: i64) -> Result<usize, StoreError> {
        Ok(self.conn().execute("DELETE FROM finished_jobs WHERE at < ?1", [now_ms() - older_than_ms])?)
    }

    /// Makes every queued delivery due now, whatever its backoff (not one another process holds):
    /// for `incident-gate hook`, whose runs are the only chance to deliver.
    pub fn expedite_queued(&self) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE outbox SET next_at = 0 WHERE state = 'queued' AND next_at > ?1 AND lease_until <= ?1",
            [now_ms()],
        )?;
        Ok(())
    }

    /// Gives up this process's lease on an item it took but did not deliver (shutting down in the
    /// middle of a delivery): it is due again at once for any process, with no attempt counted.
    /// A lease that expired and was taken by another process in the meantime stays untouched.
    pub fn release(&self, item: &OutboxItem) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE outbox SET lease_until = 0 WHERE id = ?1 AND state = 'queued' AND lease_until = ?2",
            params![item.id, item.lease_until],
        )?;
        Ok(())
    }

    /// Milliseconds until the next queued item of `sink` is due (None: nothing queued). A review
    /// item of an incident whose other item of that sink is being delivered is due when that
    /// lease ends.
    pub fn next_due_in(&self, sink: Sink) -> Result<Option<i64>, StoreError> {
        let next: Option<i64> = self.conn().query_row(
            "SELECT MIN(MAX(o.next_at, o.lease_until, CASE WHEN o.sink != 'amqp' THEN COALESCE((
                 SELECT MAX(busy.lease_until) FROM outbox AS busy JOIN decisions AS bd ON bd.key = busy.key
                 WHERE busy.sink = o.sink AND busy.state = 'queued' AND busy.id != o.id
                 AND bd.incident = d.incident), 0) ELSE 0 END))
             FROM outbox AS o JOIN decisions AS d ON d.key = o.key
             WHERE o.sink = ?1 AND o.state = 'queued'
             AND NOT EXISTS (SELECT 1 FROM outbox AS earlier WHERE earlier.key = o.key
                             AND earlier.id < o.id AND earlier.state = 'queued')",
            [sink.as_str()],
            |r| r.get(0),
        )?;
        Ok(next.map(|at| (at - now_ms()).max(0)))
    }

    pub fn summary(&self, recent: usize) -> Result<Summary, StoreError> {
        Ok(Summary {
            recent_decisions: self.recent_decisions(recent)?,
            pending_incidents: self.pending()?,
            outbox_backlog: self.backlog()?,
            catchup: self.catchup_status()?,
        })
    }

    pub fn backlog(&self) -> Result<Backlog, StoreError> {
        let conn = self.conn();
        let count = |sink: Sink| -> Result<u64, StoreError> {
            Ok(conn.query_row(
                "SELECT COUNT(*) FROM outbox WHERE sink = ?1 AND state = 'queued'",
                [sink.as_str()],
                |r| r.get::<_, i64>(0),
            )? as u64)
        };
        Ok(Backlog { amqp: count(Sink::Amqp)?, obs: count(Sink::Obs)?, gitea: count(Sink::Gitea)? })
    }

    pub fn mark_pending(&self, incident: impl Into<Submission>) -> Result<(), StoreError> {
        self.mark_pending_many(&[incident.into()], &[])
    }

    /// Clears the incident's pending marks up to evaluation ticket `ticket` (inclusive): that
    /// evaluation decided, with nothing left to wait for, after seeing every job the events
    /// behind those marks were about. Marks of later evaluations' time stay.
    pub fn settle_pending(&self, incident: impl Into<Submission>, ticket: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM pending WHERE incident = ?1 AND ticket <= ?2",
            params![incident.into().store_key(), ticket],
        )?;
        Ok(())
    }

    /// Marks incidents pending in one transaction, with the current evaluation ticket: an
    /// evaluation that began before the mark (and so may have read openQA before the event that
    /// caused it) does not clear it; the incident stays pending until one that began later
    /// decides. This is what lets the listener acknowledge a message once the mark is stored.
    ///
    /// `finished` are the jobs the events reported finished, kept for every process of the state
    /// directory (see `reported_finished`).
    pub fn mark_pending_many(&self, incidents: &[Submission], finished: &[u64]) -> Result<(), StoreError> {
        if incidents.is_empty() && finished.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ticket = current_ticket(&tx)?;
        for incident in incidents {
            tx.execute(
                "INSERT INTO pending (incident, since, checked_at, ticket) VALUES (?1, ?2, ?2, ?3)
                 ON CONFLICT(incident) DO UPDATE SET checked_at = ?2, ticket = MAX(ticket, ?3)",
                params![incident.store_key(), now, ticket],
            )?;
        }
        for job in finished {
            tx.execute(
                "INSERT INTO finished_jobs (job_id, at) VALUES (?1, ?2) ON CONFLICT(job_id) DO UPDATE SET at = ?2",
                params![*job as i64, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Which of `jobs` an event reported finished, to any process of this state directory.
    pub fn reported_finished(&self, jobs: &[u64]) -> Result<HashSet<u64>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT 1 FROM finished_jobs WHERE job_id = ?1")?;
        let mut done = HashSet::new();
        for job in jobs {
            if stmt.exists([*job as i64])? {
                done.insert(*job);
            }
        }
        Ok(done)
    }

    /// Pending incidents not evaluated for `older_than_ms`, claimed for this process: several
    /// processes reconcile the same state directory, and each stale incident goes to one of them.
    pub fn claim_stale_pending(&self, older_than_ms: i64) -> Result<Vec<Submission>, StoreError> {
        let now = now_ms();
        let conn = self.conn();
        let mut stmt =
            conn.prepare("UPDATE pending SET checked_at = ?1 WHERE checked_at <= ?2 RETURNING incident")?;
        let rows = stmt.query_map([now, now - older_than_ms], |r| r.get::<_, i64>(0))?;
        let mut incidents: Vec<Submission> =
            rows.collect::<Result<Vec<_>, _>>()?.into_iter().map(Submission::from_store_key).collect();
        incidents.sort_unstable();
        Ok(incidents)
    }

    pub fn pending(&self) -> Result<Vec<Submission>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT incident FROM pending ORDER BY incident")?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        let mut pending: Vec<Submission> =
            rows.collect::<Result<Vec<_>, _>>()?.into_iter().map(Submission::from_store_key).collect();
        pending.sort_unstable();
        Ok(pending)
    }

    /// The most recent decisions, newest first, with how their deliveries went.
    pub fn recent_decisions(&self, limit: usize) -> Result<Vec<DecisionRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT key, incident, request, result, decided_at FROM decisions ORDER BY rowid DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            let submission = Submission::from_store_key(r.get(1)?);
            Ok(DecisionRow {
                key: r.get(0)?,
                incident: submission.number,
                kind: submission.kind,
                request: r.get::<_, Option<i64>>(2)?.map(|r| r as u64),
                result: r.get(3)?,
                decided_at: r.get(4)?,
                deliveries: Vec::new(),
            })
        })?;
        let mut out = rows.collect::<Result<Vec<_>, _>>()?;
        let mut stmt =
            conn.prepare("SELECT sink, state, attempts, outcome FROM outbox WHERE key = ?1 ORDER BY sink")?;
        for row in &mut out {
            let it = stmt.query_map([&row.key], |r| {
                Ok(DeliveryRow { sink: r.get(0)?, state: r.get(1)?, attempts: r.get(2)?, outcome: r.get(3)? })
            })?;
            row.deliveries = it.collect::<Result<_, _>>()?;
        }
        Ok(out)
    }

    /// The latest decision recorded for an incident, if any.
    pub fn latest_decision(&self, incident: impl Into<Submission>) -> Result<Option<Decision>, StoreError> {
        let body: Option<String> = self
            .conn()
            .query_row(
                "SELECT body FROM decisions WHERE incident = ?1 ORDER BY rowid DESC LIMIT 1",
                [incident.into().store_key()],
                |r| r.get(0),
            )
            .optional()?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| StoreError(e.to_string()))).transpose()
    }

    /// Replaces the comments (id, job) the incident's latest final verdict relied on: the
    /// `acceptable_for` comments that made failed jobs acceptable. openQA's in-process deletion
    /// events carry only comment ids; this is how they find their incident. The engine writes
    /// them with the decision (`record_decision`); this is for tests and tools.
    pub fn set_relied_comments(
        &self,
        incident: impl Into<Submission>,
        comments: &[(u64, u64)],
    ) -> Result<(), StoreError> {
        let incident = incident.into().store_key();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        replace_relied(&tx, incident, comments)?;
        tx.commit()?;
        Ok(())
    }

    /// Incidents whose latest final verdict relied on one of these comments.
    pub fn incidents_relying_on(&self, comments: &[u64]) -> Result<Vec<Submission>, StoreError> {
        if comments.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT incident FROM relied_comments WHERE comment_id = ?1")?;
        let mut incidents = Vec::new();
        for c in comments {
            let rows = stmt.query_map([*c as i64], |r| r.get::<_, i64>(0))?;
            for row in rows {
                incidents.push(Submission::from_store_key(row?));
            }
        }
        incidents.sort_unstable();
        incidents.dedup();
        Ok(incidents)
    }

    /// Relied-on comments (comment, incident, job) not checked for `older_than_ms`, claimed for
    /// this process. Deletions openQA tells nobody about (its AMQP plugin does not forward the
    /// bulk route; a hook never hears of comments) are found by looking whether they still exist.
    pub fn claim_relied_comments(
        &self,
        older_than_ms: i64,
        limit: usize,
    ) -> Result<Vec<(u64, Submission, u64)>, StoreError> {
        let now = now_ms();
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "UPDATE relied_comments SET checked_at = ?1 WHERE rowid IN (
                SELECT rowid FROM relied_comments WHERE checked_at <= ?2 ORDER BY checked_at LIMIT ?3)
             RETURNING comment_id, incident, job_id",
        )?;
        let rows = stmt.query_map(params![now, now - older_than_ms, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                Submission::from_store_key(r.get(1)?),
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The incidents this state directory knows (a decision or a pending evaluation), newest
    /// first, each with its state for the incidents page: `pending` (waiting for jobs), the latest
    /// decision's result, `delivery_pending` while one of its deliveries waits (with the last
    /// outcome as the reason) and `reported` once IBS (or Gitea) took it.
    pub fn incidents(&self, q: &IncidentQuery) -> Result<IncidentList, StoreError> {
        let exactly = match (&q.submission, q.incident) {
            (Some(text), _) => Some(Submission::parse(text).ok_or_else(|| {
                StoreError(format!("not a submission: {text:?} (12345, ibs:12345 or git:124)"))
            })?),
            (None, incident) => incident.map(Submission::ibs),
        };
        let conn = self.conn();
        let mut rows: Vec<IncidentRow> = Vec::new();
        {
            let mut stmt = conn.prepare(
                "SELECT d.key, d.incident, d.request, d.result, d.decided_at, p.since, p.wait_state, p.wait_why
                 FROM decisions AS d
                 LEFT JOIN pending AS p ON p.incident = d.incident
                 WHERE d.rowid IN (SELECT MAX(rowid) FROM decisions GROUP BY incident)",
            )?;
            let it = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    (r.get::<_, Option<String>>(6)?, r.get::<_, Option<String>>(7)?),
                ))
            })?;
            let mut deliveries =
                conn.prepare("SELECT sink, state, attempts, outcome FROM outbox WHERE key = ?1 ORDER BY id")?;
            for row in it {
                let (key, incident, request, result, decided_at, pending_since, waited) = row?;
                let incident = Submission::from_store_key(incident as i64);
                let d = delivery_rows(&mut deliveries, &key)?;
                let decided_ms = humantime::parse_rfc3339(&decided_at)
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let waiting = d.iter().find(|x| x.state == "queued");
                // a failure reported while testing goes on shows as failed: that is what blocks
                let (state, why) = if pending_since.is_some_and(|s| s >= decided_ms) && result != "failed" {
                    pending_state(waited)
                } else if let Some(w) = waiting {
                    let why = match &w.outcome {
                        Some(o) => format!("{} after {} attempt(s): {o}", w.sink, w.attempts),
                        None => format!("{}: not delivered yet", w.sink),
                    };
                    ("delivery_pending".to_string(), Some(why))
                } else {
                    // what IBS (or Gitea) was told, when it was
                    let told = d.iter().rev().find(|x| x.sink != "amqp" && x.outcome.is_some());
                    let reported = told.is_some_and(|x| x.state == "done");
                    let state = if reported && result == "passed" { "reported" } else { result.as_str() };
                    (state.to_string(), told.and_then(|x| x.outcome.clone()))
                };
                let updated = pending_since.unwrap_or(0).max(decided_ms);
                rows.push(IncidentRow {
                    incident: incident.number,
                    kind: incident.kind.as_str(),
                    submission: incident.to_string(),
                    request,
                    state,
                    why,
                    result: Some(result),
                    decided_at: Some(decided_at),
                    updated_ms: updated,
                    deliveries: d,
                });
            }
        }
        {
            let mut stmt = conn.prepare(
                "SELECT incident, since, wait_state, wait_why FROM pending
                 WHERE incident NOT IN (SELECT incident FROM decisions)",
            )?;
            let it = stmt.query_map([], |r| {
                Ok((
                    Submission::from_store_key(r.get(0)?),
                    r.get::<_, i64>(1)?,
                    (r.get::<_, Option<String>>(2)?, r.get::<_, Option<String>>(3)?),
                ))
            })?;
            for row in it {
                let (incident, since, waiting) = row?;
                let (state, why) = pending_state(waiting);
                rows.push(IncidentRow {
                    incident: incident.number,
                    kind: incident.kind.as_str(),
                    submission: incident.to_string(),
                    request: None,
                    state,
                    why,
                    result: None,
                    decided_at: None,
                    updated_ms: since,
                    deliveries: Vec::new(),
                });
            }
        }
        let mut counts = std::collections::BTreeMap::new();
        for r in &rows {
            *counts.entry(r.state.clone()).or_insert(0u64) += 1;
        }
        rows.retain(|r| {
            q.state.as_deref().is_none_or(|s| r.state == s || r.result.as_deref() == Some(s))
                && q.search.as_deref().is_none_or(|s| r.incident.to_string().contains(s))
                && exactly.is_none_or(|s| r.submission == s.to_string())
        });
        rows.sort_by(|a, b| b.updated_ms.cmp(&a.updated_ms).then(b.incident.cmp(&a.incident)));
        let total = rows.len() as u64;
        rows.truncate(q.limit.unwrap_or(200).clamp(1, 1000));
        let decisions = match exactly {
            Some(i) => Some(Self::history(&conn, i)?),
            None => None,
        };
        Ok(IncidentList { incidents: rows, total, states: counts, decisions })
    }

    /// Every decision of an incident, newest first, with what was sent where and how it went.
    fn history(conn: &Connection, incident: Submission) -> Result<Vec<DecisionHistory>, StoreError> {
        let mut stmt = conn.prepare(
            "SELECT key, result, decided_at, body FROM decisions WHERE incident = ?1 ORDER BY rowid DESC LIMIT 50",
        )?;
        let mut deliveries =
            conn.prepare("SELECT sink, state, attempts, outcome FROM outbox WHERE key = ?1 ORDER BY id")?;
        let it = stmt.query_map([incident.store_key()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in it {
            let (key, result, decided_at, body) = row?;
            let decision: Option<Decision> = serde_json::from_str(&body).ok();
            let d = delivery_rows(&mut deliveries, &key)?;
            out.push(DecisionHistory {
                key,
                result,
                decided_at,
                request: decision.as_ref().and_then(|d| d.verdict.request),
                jobs: decision.as_ref().map(|d| d.verdict.jobs.clone()),
                contacts: decision.as_ref().map(|d| d.contacts.clone()).unwrap_or_default(),
                blocking: decision.map(|d| d.verdict.blocking).unwrap_or_default(),
                deliveries: d,
            });
        }
        Ok(out)
    }

    /// A job of `incident` was created (or seen for the first time): the quiet period starts
    /// again. Kept in the store because every process of the state directory waits on it.
    pub fn note_job(
        &self,
        incident: impl Into<Submission>,
        job: u64,
        created: bool,
    ) -> Result<(), StoreError> {
        let incident = incident.into().store_key();
        // an evaluation notes every job it sees: only a newer job than any noted restarts the
        // clock; a creation event always does
        self.conn().execute(
            "INSERT INTO job_activity (incident, newest_job, at) VALUES (?1, ?2, ?3)
             ON CONFLICT(incident) DO UPDATE SET newest_job = max(newest_job, ?2), at = ?3
             WHERE ?4 OR ?2 > newest_job",
            params![incident, job as i64, now_ms(), created],
        )?;
        Ok(())
    }

    /// When the incident's newest job was created or first seen (unix ms).
    pub fn last_job_at(&self, incident: impl Into<Submission>) -> Result<Option<i64>, StoreError> {
        use rusqlite::OptionalExtension;
        let incident = incident.into().store_key();
        Ok(self
            .conn()
            .query_row("SELECT at FROM job_activity WHERE incident = ?1", [incident], |r| r.get(0))
            .optional()?)
    }

    /// A scheduled product naming `incidents` has `status`; one still scheduling holds them back.
    pub fn note_product(
        &self,
        product: u64,
        incidents: &[Submission],
        status: &str,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        if !matches!(status, "added" | "scheduling") {
            // done creating jobs: nothing to wait for, nothing to keep
            conn.execute("DELETE FROM scheduling WHERE product = ?1", [product as i64])?;
            return Ok(());
        }
        for incident in incidents {
            conn.execute(
                "INSERT INTO scheduling (product, incident, status, since) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(product, incident) DO UPDATE SET status = ?3",
                params![product as i64, incident.store_key(), status, now_ms()],
            )?;
        }
        Ok(())
    }

    /// Scheduled products naming `incident` last known to be still scheduling: (product, since ms).
    pub fn scheduling_products(
        &self,
        incident: impl Into<Submission>,
    ) -> Result<Vec<(u64, i64)>, StoreError> {
        let incident = incident.into().store_key();
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT product, since FROM scheduling WHERE incident = ?1 AND status IN ('added', 'scheduling')
             ORDER BY product",
        )?;
        let rows = stmt.query_map([incident], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Claims the next catch-up for this process, unless one runs elsewhere (its lease has not
    /// expired) or one ended less than `min_gap_ms` ago: the processes sharing a state directory
    /// ask openQA once, not each.
    pub fn claim_catchup(&self, min_gap_ms: i64, lease_ms: i64) -> Result<Option<CatchupStart>, StoreError> {
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let get = |name: &str| -> Result<Option<i64>, rusqlite::Error> {
            tx.query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| r.get(0)).optional()
        };
        if get("catchup_lease")?.is_some_and(|until| until > now)
            || get("catchup_last_run")?.is_some_and(|last| now - last < min_gap_ms)
        {
            return Ok(None);
        }
        let start = CatchupStart {
            after_id: get("catchup_after_id")?.map(|v| v.max(0) as u64),
            newest_seen: get("catchup_newest_seen")?.map(|v| v.max(0) as u64),
        };
        tx.execute(
            "INSERT INTO counters (name, value) VALUES ('catchup_lease', ?1)
             ON CONFLICT(name) DO UPDATE SET value = ?1",
            [now + lease_ms],
        )?;
        tx.commit()?;
        Ok(Some(start))
    }

    /// Jobs of incidents a catch-up saw not final, least recently looked at first.
    pub fn catchup_waiting(&self, limit: usize) -> Result<Vec<u64>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id FROM catchup_jobs WHERE final = 0 ORDER BY checked_at, id LIMIT ?1")?;
        let rows = stmt.query_map([limit as i64], |r| r.get::<_, i64>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?.into_iter().map(|id| id as u64).collect())
    }

    /// Which of these jobs an earlier catch-up already took as ended.
    pub fn catchup_taken(&self, ids: &[u64]) -> Result<std::collections::HashSet<u64>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT 1 FROM catchup_jobs WHERE id = ?1 AND final = 1")?;
        let mut taken = std::collections::HashSet::new();
        for id in ids {
            if stmt.exists([*id as i64])? {
                taken.insert(*id);
            }
        }
        Ok(taken)
    }

    /// Records a catch-up's progress and releases its lease. The id bounds only move up (two
    /// processes whose leases overlapped each record what they saw).
    pub fn finish_catchup(&self, end: &CatchupEnd) -> Result<(), StoreError> {
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for id in &end.waiting {
            tx.execute(
                "INSERT INTO catchup_jobs (id, final, checked_at) VALUES (?1, 0, ?2) ON CONFLICT(id) DO NOTHING",
                params![*id as i64, now],
            )?;
        }
        for id in &end.still_waiting {
            tx.execute("UPDATE catchup_jobs SET checked_at = ?2 WHERE id = ?1", params![*id as i64, now])?;
        }
        for id in &end.ended {
            tx.execute(
                "INSERT INTO catchup_jobs (id, final, checked_at) VALUES (?1, 1, ?2)
                 ON CONFLICT(id) DO UPDATE SET final = 1, checked_at = ?2",
                params![*id as i64, now],
            )?;
        }
        for id in &end.gone {
            tx.execute("DELETE FROM catchup_jobs WHERE id = ?1", [*id as i64])?;
        }
        let set_max = |name: &str, value: Option<u64>| -> Result<(), rusqlite::Error> {
            if let Some(v) = value {
                tx.execute(
                    "INSERT INTO counters (name, value) VALUES (?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET value = MAX(value, ?2)",
                    params![name, v.min(i64::MAX as u64) as i64],
                )?;
            }
            Ok(())
        };
        set_max("catchup_after_id", end.after_id)?;
        set_max("catchup_newest_seen", end.newest_seen)?;
        for (name, value) in
            [("catchup_lease", 0), ("catchup_last_run", now), ("catchup_last_requests", end.requests as i64)]
        {
            tx.execute(
                "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = ?2",
                params![name, value],
            )?;
        }
        // ended jobs below the bound are never looked at again: nothing to remember them for
        tx.execute(
            "DELETE FROM catchup_jobs WHERE final = 1
             AND id <= (SELECT value FROM counters WHERE name = 'catchup_after_id')",
            [],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn catchup_status(&self) -> Result<CatchupStatus, StoreError> {
        let conn = self.conn();
        let get = |name: &str| -> Result<Option<i64>, rusqlite::Error> {
            conn.query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| r.get(0)).optional()
        };
        let after_id = get("catchup_after_id")?.map(|v| v.max(0) as u64);
        let (waiting, lowest): (i64, Option<i64>) =
            conn.query_row("SELECT COUNT(*), MIN(id) FROM catchup_jobs WHERE final = 0", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let watermark = match (after_id, lowest) {
            (Some(a), Some(l)) => Some(a.min((l.max(1) - 1) as u64)),
            (a, _) => a,
        };
        let t = |ms: i64| {
            let at = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
            humantime::format_rfc3339_seconds(at).to_string()
        };
        Ok(CatchupStatus {
            after_id,
            watermark,
            waiting_jobs: waiting.max(0) as u64,
            newest_seen: get("catchup_newest_seen")?.map(|v| v.max(0) as u64),
            last_run_at: get("catchup_last_run")?.map(t),
            last_requests: get("catchup_last_requests")?.map(|v| v.max(0) as u64),
        })
    }

    pub fn decision_count(&self) -> Result<u64, StoreError> {
        Ok(self.conn().query_row("SELECT COUNT(*) FROM decisions", [], |r| r.get::<_, i64>(0))? as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{Counts, Outcome, Verdict};

    /// Evaluation tickets in the order the tests take them.
    fn s_next() -> i64 {
        static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn decision(incident: u64, jobs: Vec<u64>) -> Decision {
        let v = Verdict {
            incident,
            kind: Default::default(),
            sha: None,
            repo: None,
            request: Some(300001),
            rrid: None,
            result: Outcome::Passed,
            jobs: Counts::default(),
            blocking: vec![],
            job_ids: jobs,
            notes: vec![],
            complete: true,
            waiting: vec![],
        };
        Decision::new(v, "http://openqa")
    }

    #[test]
    fn a_stored_decision_keeps_what_deliveries_need_not_a_note_per_job() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        // an incident in 10 aggregate builds of 400 jobs
        let mut d = decision(77, (1..=4000).collect());
        d.verdict.notes = (1..=4000)
            .map(|id| crate::verdict::JobNote {
                id,
                name: format!(
                    "sle-15-SP6-Server-DVD-Updates-x86_64-Build20261128-1-mau-aggregate-{id}@64bit"
                ),
                state: "done".into(),
                result: "passed".into(),
                group: "Maintenance: SLE 15 SP6 Updates".into(),
                role: "aggregate".into(),
                counts: true,
                why: "newest build 20261128-1 of sle 15-SP6 Server-DVD-Updates x86_64 lists incident 77"
                    .into(),
                comment: None,
            })
            .collect();
        s.record_decision(&mut d, &[Sink::Amqp], s_next(), &[]).unwrap();
        assert_eq!(d.verdict.notes.len(), 4000, "the caller keeps its notes");
        let stored = s.latest_decision(77).unwrap().unwrap();
        assert!(stored.verdict.notes.is_empty());
        assert_eq!(stored.verdict.job_ids.len(), 4000);
        let bytes: i64 = s.conn().query_row("SELECT length(body) FROM decisions", [], |r| r.get(0)).unwrap();
        assert!(bytes < 40_000, "{bytes} bytes for one decision");
    }

    #[test]
    fn an_incident_and_a_pull_request_of_the_same_number_have_their_own_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut ibs = decision(124, vec![1]);
        let mut pr = decision(124, vec![2]);
        pr.verdict.kind = Kind::Gitea;
        pr.verdict.sha = Some("abc".into());
        pr.key = crate::decision::decision_key(&pr.verdict);
        s.mark_pending(Submission::gitea(124)).unwrap();
        s.mark_pending(124).unwrap();
        assert_eq!(s.pending().unwrap(), vec![Submission::ibs(124), Submission::gitea(124)]);
        let t = s.begin_evaluation().unwrap();
        assert_eq!(s.record_decision(&mut ibs, &[Sink::Amqp, Sink::Obs], t, &[]).unwrap(), Recorded::New);
        assert_eq!(s.pending().unwrap(), vec![Submission::gitea(124)], "only the incident is decided");
        assert_eq!(s.record_decision(&mut pr, &[Sink::Amqp, Sink::Gitea], t, &[]).unwrap(), Recorded::New);
        assert!(s.is_latest(124, &ibs.key).unwrap() && s.is_latest(Submission::gitea(124), &pr.key).unwrap());
        assert_eq!(s.latest_decision(Submission::gitea(124)).unwrap().unwrap().verdict.kind, Kind::Gitea);
        assert_eq!(s.latest_decision(124).unwrap().unwrap().verdict.kind, Kind::Ibs);
        for item in s.take_due(Sink::Amqp, 10).unwrap() {
            s.complete(&item, &Delivery::Done("published".into())).unwrap();
        }
        // both reports are due at once: one per submission, not one per number
        assert_eq!(s.take_due(Sink::Obs, 10).unwrap().len(), 1);
        let gitea = s.take_due(Sink::Gitea, 10).unwrap();
        assert_eq!(gitea.len(), 1);
        assert_eq!(gitea[0].decision.verdict.submission(), Submission::gitea(124));
    }

    #[test]
    fn a_decision_is_recorded_once_across_connections() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Store::open(dir.path()).unwrap(), Store::open(dir.path()).unwrap());
        let d = decision(1, vec![1, 2]);
        assert_eq!(
            a.record_decision(&mut d.clone(), &[Sink::Amqp, Sink::Obs], s_next(), &[]).unwrap(),
            Recorded::New
        );
        assert_eq!(
            b.record_decision(&mut d.clone(), &[Sink::Amqp, Sink::Obs], s_next(), &[]).unwrap(),
            Recorded::Repeat
        );
        assert_eq!(
            b.record_decision(&mut decision(1, vec![1, 3]), &[Sink::Amqp], s_next(), &[]).unwrap(),
            Recorded::New
        );
        assert_eq!(a.decision_count().unwrap(), 2);
        assert_eq!(a.backlog().unwrap().amqp, 2);
    }

    #[test]
    fn a_verdict_that_comes_back_is_a_new_decision() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let passed = decision(9, vec![1, 2]);
        let mut failed = decision(9, vec![1, 2]);
        failed.verdict.result = crate::verdict::Outcome::Failed;
        failed.key = crate::decision::decision_key(&failed.verdict);
        let mut first = passed.clone();
        assert_eq!(s.record_decision(&mut first, &[Sink::Amqp], s_next(), &[]).unwrap(), Recorded::New);
        assert_eq!(
            s.record_decision(&mut failed.clone(), &[Sink::Amqp], s_next(), &[]).unwrap(),
            Recorded::New
        );
        let mut again = passed.clone();
        assert_eq!(
            s.record_decision(&mut again, &[Sink::Amqp], s_next(), &[]).unwrap(),
            Recorded::New,
            "passed again after failed"
        );
        assert_ne!(again.key, first.key, "a key of its own, so it is published and reported");
        assert!(s.is_latest(9, &again.key).unwrap());
        assert!(!s.is_latest(9, &first.key).unwrap());
        assert_eq!(
            s.record_decision(&mut passed.clone(), &[Sink::Amqp], s_next(), &[]).unwrap(),
            Recorded::Repeat,
            "repeats the latest"
        );
        assert_eq!(s.backlog().unwrap().amqp, 3);
    }

    #[test]
    fn ibs_waits_until_the_event_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.record_decision(&mut decision(8, vec![1]), &[Sink::Amqp, Sink::Obs], s_next(), &[]).unwrap();
        assert!(s.take_due(Sink::Obs, 10).unwrap().is_empty(), "the event goes first");
        let amqp = s.take_due(Sink::Amqp, 10).unwrap();
        s.complete(&amqp[0], &Delivery::Retry("broker down".into())).unwrap();
        assert!(s.take_due(Sink::Obs, 10).unwrap().is_empty(), "still waiting for the broker");
        assert_eq!(s.next_due_in(Sink::Obs).unwrap(), None, "nothing of its own is due: no busy wait");
        s.conn().execute("UPDATE outbox SET next_at = 0", []).unwrap();
        let amqp = s.take_due(Sink::Amqp, 10).unwrap();
        s.complete(&amqp[0], &Delivery::Done("confirmed".into())).unwrap();
        assert_eq!(s.take_due(Sink::Obs, 10).unwrap().len(), 1);
    }

    #[test]
    fn outbox_leases_retries_and_completes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Store::open(dir.path()).unwrap(), Store::open(dir.path()).unwrap());
        a.record_decision(&mut decision(7, vec![1]), &[Sink::Amqp], s_next(), &[]).unwrap();
        let taken = a.take_due(Sink::Amqp, 10).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].decision.verdict.incident, 7);
        assert!(b.take_due(Sink::Amqp, 10).unwrap().is_empty(), "leased to a");
        a.complete(&taken[0], &Delivery::Retry("broker down".into())).unwrap();
        assert!(b.take_due(Sink::Amqp, 10).unwrap().is_empty(), "backing off");
        assert!(b.next_due_in(Sink::Amqp).unwrap().unwrap() > 0);
        a.conn().execute("UPDATE outbox SET next_at = 0", []).unwrap();
        let again = b.take_due(Sink::Amqp, 10).unwrap();
        assert_eq!(again[0].attempts, 1);
        b.complete(&again[0], &Delivery::Done("confirmed".into())).unwrap();
        assert_eq!(a.backlog().unwrap().amqp, 0);
        let rows = a.recent_decisions(5).unwrap();
        assert_eq!(rows[0].deliveries[0].state, "done");
        assert_eq!(rows[0].deliveries[0].attempts, 2);
    }

    #[test]
    fn an_unreadable_decision_is_given_up_alone_and_the_others_go_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut broken = decision(8, vec![1]);
        s.record_decision(&mut broken, &[Sink::Amqp, Sink::Obs], s_next(), &[]).unwrap();
        s.record_decision(&mut decision(9, vec![2]), &[Sink::Amqp], s_next(), &[]).unwrap();
        s.conn().execute("UPDATE decisions SET body = '{\"verdict\": 1' WHERE incident = 8", []).unwrap();
        let taken = s.take_due(Sink::Amqp, 10).unwrap();
        assert_eq!(taken.iter().map(|i| i.decision.verdict.incident).collect::<Vec<_>>(), vec![9]);
        // IBS's turn comes once the event is out of the way, and it cannot read it either
        assert!(s.take_due(Sink::Obs, 10).unwrap().is_empty());
        let given_up: Vec<(String, String, String)> = {
            let conn = s.conn();
            let mut stmt =
                conn.prepare("SELECT sink, state, outcome FROM outbox WHERE key = ?1 ORDER BY id").unwrap();
            let rows = stmt.query_map([&broken.key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
            rows.map(Result::unwrap).collect()
        };
        assert_eq!(given_up.len(), 2, "{given_up:?}");
        for (sink, state, outcome) in &given_up {
            assert_eq!(state, "final", "{sink}: {outcome}");
            assert!(outcome.starts_with(&format!("decision {} is unreadable", broken.key)), "{outcome}");
            assert!(outcome.contains("invalid type: integer `1`, expected struct Verdict"), "{outcome}");
        }
        // nothing is left to fail again: the next takes find nothing, with no error
        assert!(s.take_due(Sink::Amqp, 10).unwrap().is_empty());
        assert!(s.take_due(Sink::Obs, 10).unwrap().is_empty());
    }

    #[test]
    fn a_released_lease_is_due_at_once_but_a_stale_release_takes_nothing_away() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Store::open(dir.path()).unwrap(), Store::open(dir.path()).unwrap());
        a.record_decision(&mut decision(8, vec![1]), &[Sink::Amqp], s_next(), &[]).unwrap();
        a.record_decision(&mut decision(9, vec![2]), &[Sink::Amqp], s_next(), &[]).unwrap();
        let taken = a.take_due(Sink::Amqp, 1).unwrap();
        assert_eq!(taken.len(), 1, "only what is asked for is leased");
        let other = b.take_due(Sink::Amqp, 10).unwrap();
        assert_eq!(other.len(), 1, "the item a never started is not blocked by a's lease");
        assert_eq!(other[0].decision.verdict.incident, 9);
        a.release(&taken[0]).unwrap();
        // leases are told apart by their expiry (ms); a real stale release comes a lease later
        std::thread::sleep(std::time::Duration::from_millis(2));
        let again = b.take_due(Sink::Amqp, 10).unwrap();
        assert_eq!(again.len(), 1, "released: due at once");
        assert_eq!(again[0].decision.verdict.incident, 8);
        assert_eq!(again[0].attempts, 0, "a release is no attempt");
        a.release(&taken[0]).unwrap();
        assert!(a.take_due(Sink::Amqp, 10).unwrap().is_empty(), "a's old lease cannot free b's");
    }

    #[test]
    fn retention_keeps_each_incidents_latest_decision_and_what_is_undelivered() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for (incident, jobs) in [(1, vec![1]), (1, vec![1, 2]), (2, vec![3]), (2, vec![3, 4])] {
            let seen = s.begin_evaluation().unwrap();
            let mut d = decision(incident, jobs);
            d.decided_at = "2020-01-01T00:00:00Z".into();
            assert_eq!(s.record_decision(&mut d, &[Sink::Amqp], seen, &[]).unwrap(), Recorded::New);
        }
        // incident 1's first decision was delivered, incident 2's is still queued
        let items = s.take_due(Sink::Amqp, 10).unwrap();
        let first_of_1 = items.iter().find(|i| i.decision.verdict.incident == 1).unwrap();
        s.complete(first_of_1, &Delivery::Done("sent".into())).unwrap();
        assert_eq!(s.prune("2019-01-01T00:00:00Z").unwrap(), 0, "nothing old enough");
        assert_eq!(s.prune("2021-01-01T00:00:00Z").unwrap(), 1);
        assert_eq!(s.decision_count().unwrap(), 3);
        assert_eq!(s.latest_decision(1).unwrap().unwrap().verdict.job_ids, vec![1, 2]);
    }

    #[test]
    fn pending_incidents_come_back_when_stale() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.mark_pending(5).unwrap();
        s.mark_pending(6).unwrap();
        let other = Store::open(dir.path()).unwrap();
        assert_eq!(s.claim_stale_pending(0).unwrap(), vec![Submission::ibs(5), Submission::ibs(6)]);
        assert!(other.claim_stale_pending(1_000).unwrap().is_empty(), "claimed by the first process");
        assert!(s.claim_stale_pending(60_000).unwrap().is_empty());
        s.record_decision(&mut decision(5, vec![1]), &[], s_next(), &[]).unwrap();
        assert_eq!(s.pending().unwrap(), vec![Submission::ibs(6)]);
    }

    #[test]
    fn an_evaluation_that_read_older_data_does_not_replace_a_newer_decision() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Store::open(dir.path()).unwrap(), Store::open(dir.path()).unwrap());
        // a slow evaluation starts, then a faster one (after an acceptable_for comment) overtakes it
        let (slow, fast) = (a.begin_evaluation().unwrap(), b.begin_evaluation().unwrap());
        assert!(fast > slow, "one counter for every process");
        let passed = decision(3, vec![1, 2]);
        let mut failed = decision(3, vec![1, 2]);
        failed.verdict.result = Outcome::Failed;
        assert_eq!(b.record_decision(&mut passed.clone(), &[Sink::Obs], fast, &[]).unwrap(), Recorded::New);
        assert_eq!(a.record_decision(&mut failed.clone(), &[Sink::Obs], slow, &[]).unwrap(), Recorded::Stale);
        let latest = a.latest_decision(3).unwrap().unwrap();
        assert_eq!(latest.verdict.result, Outcome::Passed);
        assert!(a.is_latest(3, &latest.key).unwrap(), "the passed report is not superseded");
        assert_eq!(a.backlog().unwrap().obs, 1, "the stale failure is never reported");
        // an evaluation started afterwards that finds the failure again is a decision
        let later = a.begin_evaluation().unwrap();
        assert_eq!(a.record_decision(&mut failed.clone(), &[Sink::Obs], later, &[]).unwrap(), Recorded::New);
    }

    #[test]
    fn a_pass_read_before_testing_resumed_is_neither_recorded_nor_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Store::open(dir.path()).unwrap(), Store::open(dir.path()).unwrap());
        // a slow evaluation reads every job passed; a job is restarted, and a later evaluation
        // finds its clone scheduled before the slow one records
        let (slow, later) = (a.begin_evaluation().unwrap(), b.begin_evaluation().unwrap());
        b.note_unfinished(7, later, "pending", "a clone").unwrap();
        assert_eq!(
            a.record_decision(&mut decision(7, vec![1, 2]), &[Sink::Obs], slow, &[]).unwrap(),
            Recorded::Stale
        );
        assert_eq!(a.backlog().unwrap().obs, 0);
        // a pass queued for IBS, then testing resumes: the queued report is no longer the latest
        let first = a.begin_evaluation().unwrap();
        let mut passed = decision(7, vec![1, 3]);
        assert_eq!(a.record_decision(&mut passed, &[Sink::Obs], first, &[]).unwrap(), Recorded::New);
        assert!(a.is_latest(7, &passed.key).unwrap());
        b.note_unfinished(7, b.begin_evaluation().unwrap(), "pending", "a clone").unwrap();
        assert!(!a.is_latest(7, &passed.key).unwrap());
        // the same verdict over the same jobs afterwards is a decision of its own, reported
        let again = a.begin_evaluation().unwrap();
        let mut repeat = decision(7, vec![1, 3]);
        assert_eq!(a.record_decision(&mut repeat, &[Sink::Obs], again, &[]).unwrap(), Recorded::New);
        assert_ne!(repeat.key, passed.key);
        assert!(a.is_latest(7, &repeat.key).unwrap());
        let once_more = a.begin_evaluation().unwrap();
        assert_eq!(
            a.record_decision(&mut decision(7, vec![1, 3]), &[Sink::Obs], once_more, &[]).unwrap(),
            Recorded::Repeat
        );
    }

    #[test]
    fn ibs_hears_one_decision_of_an_incident_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Store::open(dir.path()).unwrap(), Store::open(dir.path()).unwrap());
        let mut failed = decision(5, vec![1]);
        failed.verdict.result = Outcome::Failed;
        a.record_decision(&mut failed, &[Sink::Obs], s_next(), &[]).unwrap();
        a.record_decision(&mut decision(6, vec![2]), &[Sink::Obs], s_next(), &[]).unwrap();
        a.record_decision(&mut decision(5, vec![1]), &[Sink::Obs], s_next(), &[]).unwrap();
        let first = a.take_due(Sink::Obs, 10).unwrap();
        let taken: Vec<(u64, Outcome)> =
            first.iter().map(|i| (i.decision.verdict.incident, i.decision.verdict.result)).collect();
        assert_eq!(taken, vec![(5, Outcome::Failed), (6, Outcome::Passed)], "one per incident, oldest first");
        assert!(b.take_due(Sink::Obs, 10).unwrap().is_empty(), "5's newer decision waits for the older one");
        let wait = b.next_due_in(Sink::Obs).unwrap().unwrap();
        assert!(wait > (LEASE_S - 5) * 1000, "no busy wait while another process delivers: {wait} ms");
        a.complete(&first[0], &Delivery::Done("commented".into())).unwrap();
        let next = b.take_due(Sink::Obs, 10).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(
            (next[0].decision.verdict.incident, next[0].decision.verdict.result),
            (5, Outcome::Passed)
        );
        // an older decision backing off does not hold the newer one up: it is superseded anyway
        b.complete(&next[0], &Delivery::Retry("IBS down".into())).unwrap();
        a.record_decision(&mut decision(5, vec![1, 2]), &[Sink::Obs], s_next(), &[]).unwrap();
        let newest = a.take_due(Sink::Obs, 10).unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].decision.verdict.job_ids, vec![1, 2]);
    }

    #[test]
    fn a_state_directory_of_an_older_version_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let old = Connection::open(dir.path().join("incident-gate.sqlite")).unwrap();
        old.execute_batch(
            "CREATE TABLE decisions (key TEXT PRIMARY KEY, base TEXT NOT NULL, incident INTEGER NOT NULL,
                request INTEGER, result TEXT NOT NULL, decided_at TEXT NOT NULL, body TEXT NOT NULL);",
        )
        .unwrap();
        let mut before = decision(4, vec![1]);
        before.verdict.result = Outcome::Failed;
        let body = serde_json::to_string(&before).unwrap();
        old.execute("INSERT INTO decisions VALUES ('k', 'k', 4, 300001, 'failed', 'then', ?1)", [body])
            .unwrap();
        drop(old);
        let (a, b) = (Store::open(dir.path()).unwrap(), Store::open(dir.path()).unwrap());
        let ticket = b.begin_evaluation().unwrap();
        assert_eq!(
            a.record_decision(&mut decision(4, vec![1]), &[Sink::Obs], ticket, &[]).unwrap(),
            Recorded::New
        );
        assert_eq!(a.latest_decision(4).unwrap().unwrap().verdict.result, Outcome::Passed);
    }

    #[test]
    fn relied_comments_lead_to_their_incidents() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.set_relied_comments(12345, &[(7, 70), (8, 80)]).unwrap();
        s.set_relied_comments(12346, &[(8, 80)]).unwrap();
        assert_eq!(
            s.incidents_relying_on(&[8]).unwrap(),
            vec![Submission::ibs(12345), Submission::ibs(12346)]
        );
        assert_eq!(s.incidents_relying_on(&[7, 99]).unwrap(), vec![Submission::ibs(12345)]);
        s.set_relied_comments(12345, &[]).unwrap();
        assert!(s.incidents_relying_on(&[7]).unwrap().is_empty(), "replaced by the newer verdict");
        assert_eq!(s.claim_relied_comments(0, 10).unwrap(), vec![(8, Submission::ibs(12346), 80)]);
        assert!(s.claim_relied_comments(60_000, 10).unwrap().is_empty(), "just checked");
    }

    #[test]
    fn a_stale_evaluation_keeps_the_comments_of_the_newer_decision() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (slow, fast) = (s.begin_evaluation().unwrap(), s.begin_evaluation().unwrap());
        // the newer evaluation passes thanks to an acceptable_for comment
        assert_eq!(
            s.record_decision(&mut decision(12, vec![1, 2]), &[Sink::Obs], fast, &[(7, 70)]).unwrap(),
            Recorded::New
        );
        let mut failed = decision(12, vec![1, 2]);
        failed.verdict.result = Outcome::Failed;
        assert_eq!(s.record_decision(&mut failed, &[Sink::Obs], slow, &[]).unwrap(), Recorded::Stale);
        assert_eq!(
            s.incidents_relying_on(&[7]).unwrap(),
            vec![Submission::ibs(12)],
            "deleting the comment still leads to the passed incident"
        );
        // a repeat of the decision brings the set up to date
        let again = s.begin_evaluation().unwrap();
        assert_eq!(
            s.record_decision(&mut decision(12, vec![1, 2]), &[Sink::Obs], again, &[(8, 70)]).unwrap(),
            Recorded::Repeat
        );
        assert!(s.incidents_relying_on(&[7]).unwrap().is_empty());
        assert_eq!(s.incidents_relying_on(&[8]).unwrap(), vec![Submission::ibs(12)]);
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_ms(0), 500);
        assert_eq!(backoff_ms(1), 1000);
        assert_eq!(backoff_ms(10), MAX_BACKOFF_MS);
        assert_eq!(backoff_ms(u32::MAX), MAX_BACKOFF_MS);
    }

    #[test]
    fn incidents_list_their_state_newest_first_with_filters() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let both = [Sink::Amqp, Sink::Obs];
        // 101: delivered everywhere → reported
        s.record_decision(&mut decision(101, vec![1]), &both, s_next(), &[]).unwrap();
        for sink in both {
            let item = s.take_due(sink, 10).unwrap().remove(0);
            s.complete(&item, &Delivery::Done("ok".into())).unwrap();
        }
        // 102: IBS failed once → delivery pending, with the reason
        s.record_decision(&mut decision(102, vec![2]), &both, s_next(), &[]).unwrap();
        let item = s.take_due(Sink::Amqp, 10).unwrap().remove(0);
        s.complete(&item, &Delivery::Done("ok".into())).unwrap();
        let item = s.take_due(Sink::Obs, 10).unwrap().remove(0);
        s.complete(&item, &Delivery::Retry("IBS: 503 Service Unavailable".into())).unwrap();
        // 103: only an event, published → its result
        s.record_decision(&mut decision(103, vec![3]), &[Sink::Amqp], s_next(), &[]).unwrap();
        let item = s.take_due(Sink::Amqp, 10).unwrap().remove(0);
        s.complete(&item, &Delivery::Final("dry-run".into())).unwrap();
        // 204: waiting for jobs
        std::thread::sleep(std::time::Duration::from_millis(5));
        s.mark_pending(204).unwrap();

        let all = s.incidents(&IncidentQuery::default()).unwrap();
        let states: Vec<(u64, &str)> = all.incidents.iter().map(|r| (r.incident, r.state.as_str())).collect();
        assert_eq!(states[0], (204, "pending"), "the newest first: {states:?}");
        assert!(states.contains(&(101, "reported")), "{states:?}");
        assert!(states.contains(&(102, "delivery_pending")), "{states:?}");
        assert!(states.contains(&(103, "passed")), "{states:?}");
        let pending = all.incidents.iter().find(|r| r.incident == 102).unwrap();
        let why = pending.why.as_deref().unwrap_or("");
        assert!(why.contains("obs") && why.contains("503"), "{why}");
        assert_eq!(all.total, 4);
        assert_eq!(all.states.get("pending"), Some(&1));

        let q = |state: Option<&str>, search: Option<&str>| {
            let q = IncidentQuery {
                state: state.map(str::to_string),
                search: search.map(str::to_string),
                ..Default::default()
            };
            s.incidents(&q).unwrap().incidents.iter().map(|r| r.incident).collect::<Vec<_>>()
        };
        assert_eq!(q(Some("reported"), None), vec![101]);
        assert_eq!(q(Some("pending"), None), vec![204]);
        assert_eq!(q(None, Some("02")), vec![102]);
        assert_eq!(q(Some("failed"), None), Vec::<u64>::new());

        let one = s.incidents(&IncidentQuery { incident: Some(102), ..Default::default() }).unwrap();
        let history = one.decisions.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].deliveries.len(), 2);
        assert_eq!(history[0].deliveries[1].outcome.as_deref(), Some("IBS: 503 Service Unavailable"));
    }

    #[test]
    fn incidents_list_pull_requests_by_kind_and_what_a_pending_one_waits_for() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        // an IBS incident and a pull request of the same number, both waiting
        s.note_unfinished(
            124,
            s.begin_evaluation().unwrap(),
            "coverage",
            "expected, not in openQA: an aggregate job",
        )
        .unwrap();
        s.mark_pending(Submission::gitea(124)).unwrap();
        let all = s.incidents(&IncidentQuery::default()).unwrap();
        let rows: Vec<(&str, &str, &str)> =
            all.incidents.iter().map(|r| (r.submission.as_str(), r.kind, r.state.as_str())).collect();
        assert!(rows.contains(&("124", "ibs", "coverage")), "{rows:?}");
        assert!(rows.contains(&("git:124", "gitea", "pending")), "{rows:?}");
        assert!(all.incidents.iter().all(|r| r.incident == 124), "numbers, never a negated store key");
        let pr = IncidentQuery { submission: Some("git:124".into()), ..Default::default() };
        let one = s.incidents(&pr).unwrap();
        assert_eq!(one.incidents.len(), 1);
        assert_eq!(one.incidents[0].why.as_deref(), Some("waiting for jobs to finish"));
        let coverage = IncidentQuery { state: Some("coverage".into()), ..Default::default() };
        let waits = s.incidents(&coverage).unwrap();
        assert_eq!(waits.incidents.len(), 1);
        assert_eq!(waits.incidents[0].why.as_deref(), Some("expected, not in openQA: an aggregate job"));
        let bad = IncidentQuery { submission: Some("pr:1".into()), ..Default::default() };
        assert!(s.incidents(&bad).unwrap_err().0.contains("not a submission"));
    }

    #[test]
    fn scheduling_products_hold_their_incidents_until_scheduled() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let both = [Submission::ibs(100), Submission::ibs(200)];
        s.note_product(7, &both, "added").unwrap();
        s.note_product(7, &both, "scheduling").unwrap();
        assert_eq!(s.scheduling_products(100).unwrap().iter().map(|p| p.0).collect::<Vec<_>>(), [7]);
        // another process of the same state directory sees it too
        let other = Store::open(dir.path()).unwrap();
        assert_eq!(other.scheduling_products(200).unwrap().len(), 1);
        other.note_product(7, &[], "scheduled").unwrap();
        assert!(s.scheduling_products(100).unwrap().is_empty(), "scheduled: nothing to wait for");
        assert!(s.scheduling_products(200).unwrap().is_empty());
    }

    #[test]
    fn a_newer_job_or_a_creation_restarts_the_quiet_period() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.last_job_at(1).unwrap(), None);
        s.note_job(1, 50, false).unwrap();
        let first = s.last_job_at(1).unwrap().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        s.note_job(1, 40, false).unwrap();
        assert_eq!(s.last_job_at(1).unwrap(), Some(first), "an older job seen again changes nothing");
        s.note_job(1, 50, false).unwrap();
        assert_eq!(s.last_job_at(1).unwrap(), Some(first), "nor the same job");
        s.note_job(1, 51, false).unwrap();
        assert!(s.last_job_at(1).unwrap().unwrap() > first, "a newer job does");
        let second = s.last_job_at(1).unwrap().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        s.note_job(1, 45, true).unwrap();
        assert!(s.last_job_at(1).unwrap().unwrap() > second, "a creation event always does");
    }
}
