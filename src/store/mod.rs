//! The store: decisions, the durable outbox of side effects, the incidents still pending and
//! what catch-up, waivers and scheduled products leave behind. Several processes share one store
//! (openQA's prefork web UI; listeners on several hosts), and the store makes "record this
//! decision", "deliver this item", "run this catch-up" succeed in exactly one of them.
//!
//! One interface, two backends: SQLite in the state directory (the embedded default, `sqlite`)
//! and PostgreSQL in a schema `incident_gate` of a database named by `store_url` (`postgres`).
//! The operations are grouped by concern, each a trait implemented once per backend in its file:
//! `decisions`, `outbox`, `pending` (evaluation tickets, pending and unfinished incidents),
//! `catchup`, `activity` (jobs, scheduled products, relied-on comments), `incidents` (the
//! incidents page) and `metrics` (what `crate::metrics` reports). Adding a query is adding it to its trait and to both implementations.

use crate::decision::{Decision, Delivery};
use crate::incident::{Kind, Submission};
use serde::Serialize;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

mod activity;
mod catchup;
pub mod copy;
mod decisions;
mod incidents;
mod metrics;
mod outbox;
mod pending;
pub mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

use activity::Activity;
use catchup::Catchup;
use decisions::Decisions;
use incidents::Incidents;
use metrics::Metrics;
use outbox::Outbox;
use pending::Pending;

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

#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: i64,
    pub sink: Sink,
    pub attempts: u32,
    pub decision: Decision,
    /// The lease this process holds on the item (its expiry, ms): identifies the lease for
    /// `release`, so a process never drops a lease that expired and went to another process.
    pub lease_until: i64,
    /// What the previous attempt came to (None before the first): a refusal or a wait that says
    /// the same again is not logged again.
    pub last_outcome: Option<String>,
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

/// How long a process owns an outbox item it took; after that another process may take it.
pub const LEASE_S: i64 = 60;
const MAX_BACKOFF_MS: i64 = 30_000;

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Exponential backoff for a delivery that failed `attempts` times: 0.5 s, 1 s, 2 s … 30 s.
pub fn backoff_ms(attempts: u32) -> i64 {
    (500i64 << attempts.min(16)).min(MAX_BACKOFF_MS)
}

/// Every operation of a store, whichever database keeps it.
trait Backend: Decisions + Outbox + Pending + Catchup + Activity + Incidents + Metrics + Send + Sync {
    /// An integrity check and one real write (`Store::check_writable`).
    fn check_writable(&self) -> Result<(), StoreError>;
    /// Runs a statement the tests need to set the scene (one both databases understand).
    #[cfg(test)]
    fn execute_for_test(&self, sql: &str) -> Result<(), StoreError>;
}

pub struct Store {
    db: Box<dyn Backend>,
    /// The SQLite file, or the PostgreSQL URL without its password: what status shows.
    path: PathBuf,
}

impl Store {
    /// The SQLite store in the state directory `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sqlite::Sqlite::open(dir)?;
        let path = db.path().to_path_buf();
        Ok(Store { db: Box::new(db), path })
    }

    /// The store `store_url` names (`postgresql://…`), or SQLite in `state_dir` when it is empty.
    pub fn open_url(store_url: &str, state_dir: &Path) -> Result<Store, StoreError> {
        if store_url.trim().is_empty() {
            return Store::open(state_dir);
        }
        let db = postgres::Postgres::open(store_url)?;
        let path = PathBuf::from(db.shown().to_string());
        Ok(Store { db: Box::new(db), path })
    }

    /// Proves the store usable for a service that acknowledges work only once it is stored: an
    /// integrity check and one real write. The error names the file (or database).
    pub fn check_writable(&self) -> Result<(), StoreError> {
        self.db.check_writable()
    }

    /// The SQLite file, or the PostgreSQL URL without its password.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A ticket for an evaluation about to read openQA, from one counter shared by every process
    /// of the store: an evaluation with a higher ticket started later and read newer data, so its
    /// decision outranks one of a lower ticket (see `record_decision`).
    pub fn begin_evaluation(&self) -> Result<i64, StoreError> {
        self.db.begin_evaluation()
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
        // what the deliveries and the page's history need (counts, blocking jobs, job ids), not
        // a note for every job looked at: those are a fresh evaluation's, and they are most of
        // the size (hundreds of KB for an incident in a few large aggregate builds)
        let notes = std::mem::take(&mut d.verdict.notes);
        let recorded = self.db.record_decision(&base, d, sinks, seen, relied);
        d.verdict.notes = notes;
        recorded
    }

    /// Whether `key` is the incident's latest decision and no evaluation that began after it
    /// found testing going on again (a restarted job, a new build): an older decision, or one
    /// overtaken that way, must not act on IBS or Gitea.
    pub fn is_latest(&self, incident: impl Into<Submission>, key: &str) -> Result<bool, StoreError> {
        self.db.is_latest(incident.into(), key)
    }

    /// The latest decision recorded for an incident, if any.
    pub fn latest_decision(&self, incident: impl Into<Submission>) -> Result<Option<Decision>, StoreError> {
        self.db.latest_decision(incident.into())
    }

    /// The most recent decisions, newest first, with how their deliveries went.
    pub fn recent_decisions(&self, limit: usize) -> Result<Vec<DecisionRow>, StoreError> {
        self.db.recent_decisions(limit)
    }

    pub fn decision_count(&self) -> Result<u64, StoreError> {
        self.db.decision_count()
    }

    /// Retention: removes decisions decided before `cutoff` (RFC 3339, as `decided_at`) that are
    /// not their incident's latest and have nothing left to deliver, with their outbox rows. The
    /// latest decision of each incident stays: it is what a repeated verdict is compared with.
    /// Returns how many decisions were removed.
    pub fn prune(&self, cutoff: &str) -> Result<usize, StoreError> {
        self.db.prune(cutoff)
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
        self.db.note_unfinished(incident.into(), ticket, state, why)
    }

    /// Takes up to `limit` due items of `sink` for this process. A decision's sinks go in the order
    /// they were queued (the event first, then IBS, DESIGN section 4): an item waits while an
    /// earlier one of the same decision is still queued. A review service (IBS, Gitea) hears
    /// one decision of an incident at a time: its item waits while another one of the same
    /// incident and sink is leased (being delivered by some process), and one take holds at most
    /// one per incident, the oldest first, so the comments and review changes of two decisions
    /// never interleave. Events are not held back: each is a message of its own. Taking an item
    /// leases it (`LEASE_S`). An item whose decision no longer parses is marked final with the
    /// reason instead of being taken.
    pub fn take_due(&self, sink: Sink, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        self.db.take_due(sink, limit)
    }

    /// Records how a delivery went: done and final leave the outbox; retry, denied and waiting
    /// come back later (waiting and denied after the delay they carry).
    pub fn complete(&self, item: &OutboxItem, outcome: &Delivery) -> Result<(), StoreError> {
        self.db.complete(item, outcome)
    }

    /// Makes every queued delivery due now, whatever its backoff (not one another process holds):
    /// for `incident-gate hook`, whose runs are the only chance to deliver. A report waiting for
    /// the other side keeps its `reconcile_interval_s`: asking IBS or Gitea at every hook run of
    /// every job would not make the review come sooner.
    pub fn expedite_queued(&self) -> Result<(), StoreError> {
        self.db.expedite_queued()
    }

    /// Queued deliveries, not counting reports waiting for the other side: what a hook run
    /// leaves undone (a later run, or any other process, tries the waiting ones when due).
    pub fn undelivered(&self) -> Result<u64, StoreError> {
        self.db.undelivered()
    }

    /// Gives up this process's lease on an item it took but did not deliver (shutting down in the
    /// middle of a delivery): it is due again at once for any process, with no attempt counted.
    /// A lease that expired and was taken by another process in the meantime stays untouched.
    pub fn release(&self, item: &OutboxItem) -> Result<(), StoreError> {
        self.db.release(item)
    }

    /// Milliseconds until the next queued item of `sink` is due (None: nothing queued). A review
    /// item of an incident whose other item of that sink is being delivered is due when that
    /// lease ends.
    pub fn next_due_in(&self, sink: Sink) -> Result<Option<i64>, StoreError> {
        self.db.next_due_in(sink)
    }

    pub fn backlog(&self) -> Result<Backlog, StoreError> {
        self.db.backlog()
    }

    pub fn summary(&self, recent: usize) -> Result<Summary, StoreError> {
        Ok(Summary {
            recent_decisions: self.recent_decisions(recent)?,
            pending_incidents: self.pending()?,
            outbox_backlog: self.backlog()?,
            catchup: self.catchup_status()?,
        })
    }

    pub fn mark_pending(&self, incident: impl Into<Submission>) -> Result<(), StoreError> {
        self.mark_pending_many(&[incident.into()], &[])
    }

    /// Marks incidents pending in one transaction, with the current evaluation ticket: an
    /// evaluation that began before the mark (and so may have read openQA before the event that
    /// caused it) does not clear it; the incident stays pending until one that began later
    /// decides. This is what lets the listener acknowledge a message once the mark is stored.
    ///
    /// `finished` are the jobs the events reported finished, kept for every process of the store
    /// (see `reported_finished`).
    pub fn mark_pending_many(&self, incidents: &[Submission], finished: &[u64]) -> Result<(), StoreError> {
        if incidents.is_empty() && finished.is_empty() {
            return Ok(());
        }
        self.db.mark_pending_many(incidents, finished)
    }

    /// Clears the incident's pending marks up to evaluation ticket `ticket` (inclusive): that
    /// evaluation decided, with nothing left to wait for, after seeing every job the events
    /// behind those marks were about. Marks of later evaluations' time stay.
    pub fn settle_pending(&self, incident: impl Into<Submission>, ticket: i64) -> Result<(), StoreError> {
        self.db.settle_pending(incident.into(), ticket)
    }

    /// Which of `jobs` an event reported finished, to any process of this store.
    pub fn reported_finished(&self, jobs: &[u64]) -> Result<HashSet<u64>, StoreError> {
        self.db.reported_finished(jobs)
    }

    /// Forgets jobs reported finished more than `older_than_ms` ago: a waiting incident reads
    /// them within moments, and one that missed them is evaluated by reconciliation anyway.
    pub fn forget_finished_jobs(&self, older_than_ms: i64) -> Result<usize, StoreError> {
        self.db.forget_finished_jobs(older_than_ms)
    }

    /// Pending incidents not evaluated for `older_than_ms`, claimed for this process: several
    /// processes reconcile the same store, and each stale incident goes to one of them.
    pub fn claim_stale_pending(&self, older_than_ms: i64) -> Result<Vec<Submission>, StoreError> {
        let mut incidents = self.db.claim_stale_pending(older_than_ms)?;
        incidents.sort_unstable();
        Ok(incidents)
    }

    pub fn pending(&self) -> Result<Vec<Submission>, StoreError> {
        let mut pending = self.db.pending()?;
        pending.sort_unstable();
        Ok(pending)
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
        self.db.set_relied_comments(incident.into(), comments)
    }

    /// Incidents whose latest final verdict relied on one of these comments.
    pub fn incidents_relying_on(&self, comments: &[u64]) -> Result<Vec<Submission>, StoreError> {
        if comments.is_empty() {
            return Ok(Vec::new());
        }
        let mut incidents = self.db.incidents_relying_on(comments)?;
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
        self.db.claim_relied_comments(older_than_ms, limit)
    }

    /// A job of `incident` was created (or seen for the first time): the quiet period starts
    /// again. Kept in the store because every process of the store waits on it.
    pub fn note_job(
        &self,
        incident: impl Into<Submission>,
        job: u64,
        created: bool,
    ) -> Result<(), StoreError> {
        self.db.note_job(incident.into(), job, created)
    }

    /// When the incident's newest job was created or first seen (unix ms, the store's clock).
    pub fn last_job_at(&self, incident: impl Into<Submission>) -> Result<Option<i64>, StoreError> {
        self.db.last_job_at(incident.into())
    }

    /// A scheduled product naming `incidents` has `status`; one still scheduling holds them back.
    pub fn note_product(
        &self,
        product: u64,
        incidents: &[Submission],
        status: &str,
    ) -> Result<(), StoreError> {
        self.db.note_product(product, incidents, status)
    }

    /// Scheduled products naming `incident` last known to be still scheduling: (product, since ms).
    pub fn scheduling_products(
        &self,
        incident: impl Into<Submission>,
    ) -> Result<Vec<(u64, i64)>, StoreError> {
        self.db.scheduling_products(incident.into())
    }

    /// Claims the next catch-up for this process, unless one runs elsewhere (its lease has not
    /// expired) or one ended less than `min_gap_ms` ago: the processes sharing a store ask
    /// openQA once, not each.
    pub fn claim_catchup(&self, min_gap_ms: i64, lease_ms: i64) -> Result<Option<CatchupStart>, StoreError> {
        self.db.claim_catchup(min_gap_ms, lease_ms)
    }

    /// Jobs of incidents a catch-up saw not final, least recently looked at first.
    pub fn catchup_waiting(&self, limit: usize) -> Result<Vec<u64>, StoreError> {
        self.db.catchup_waiting(limit)
    }

    /// Which of these jobs an earlier catch-up already took as ended.
    pub fn catchup_taken(&self, ids: &[u64]) -> Result<HashSet<u64>, StoreError> {
        self.db.catchup_taken(ids)
    }

    /// Records a catch-up's progress and releases its lease. The id bounds only move up (two
    /// processes whose leases overlapped each record what they saw).
    pub fn finish_catchup(&self, end: &CatchupEnd) -> Result<(), StoreError> {
        self.db.finish_catchup(end)
    }

    pub fn catchup_status(&self) -> Result<CatchupStatus, StoreError> {
        self.db.catchup_status()
    }

    /// The incidents this store knows (a decision or a pending evaluation), newest first, each
    /// with its state for the incidents page: `pending` (waiting for jobs), the latest decision's
    /// result, `delivery_pending` while one of its deliveries waits (with the last outcome as the
    /// reason) and `reported` once IBS (or Gitea) took it.
    pub fn incidents(&self, q: &IncidentQuery) -> Result<IncidentList, StoreError> {
        incidents::list(&*self.db, q)
    }

    // ---- metrics (`crate::metrics`): one read, then `count` for what only the engine sees ----

    /// Adds `n` to the counter `name`, shared by every process of the store.
    pub fn count(&self, name: &str, n: i64) -> Result<(), StoreError> {
        self.db.count(name, n)
    }

    /// What the metrics are made of, as the store holds it (no clock, no arithmetic: see
    /// `crate::metrics::render`), in one read transaction. `window`: how many of the newest
    /// decisions the latency is taken over. Reads only; aggregates and indexed lookups.
    pub fn metrics_read(&self, window: usize) -> Result<MetricsRead, StoreError> {
        self.db.metrics_read(window)
    }

    #[cfg(test)]
    fn execute_for_test(&self, sql: &str) {
        self.db.execute_for_test(sql).unwrap()
    }
}

/// The store's part of the metrics (`Store::metrics_read`).
#[derive(Debug, Clone, Default)]
pub struct MetricsRead {
    /// Decisions the store keeps, by kind and result.
    pub decisions: Vec<DecisionCount>,
    /// Evaluations begun by every process (the evaluation ticket).
    pub evaluations: u64,
    pub openqa_refused: u64,
    /// Submissions waiting to be decided, and since when the longest-waiting one waits (unix ms).
    pub waiting: u64,
    pub oldest_waiting_since_ms: Option<i64>,
    pub sinks: Vec<SinkRead>,
    /// Catch-up: the highest job id seen, and the id every incident job up to which ended.
    pub newest_seen: u64,
    pub watermark: u64,
    /// The newest decisions: (decided_at, last_job_end), newest first.
    pub recent: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone)]
pub struct DecisionCount {
    pub kind: Kind,
    pub result: String,
    pub count: u64,
}

#[derive(Debug, Clone)]
pub struct SinkRead {
    pub sink: Sink,
    /// Reports not delivered yet, the decision time of the oldest, and how many of them were
    /// last refused for our credentials.
    pub queued: u64,
    pub oldest_decided_at: Option<String>,
    pub credentials_refused: u64,
}
