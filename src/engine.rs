//! The engine: turns job events into evaluations of the affected incidents, coalesced per incident
//! (at most one in flight and one follow-up), records final verdicts once as decisions, and feeds
//! the outbox. Incidents still pending are re-evaluated periodically, because openQA finishes some
//! jobs without any event (stale-job detection, obsoletion), and openQA is asked for jobs that
//! ended while events were lost (`crate::catchup`).

use crate::config::Config;
use crate::decision::Decision;
use crate::events::Event;
use crate::incident::{submissions_of, Kind, Submission};
use crate::openqa::client::{ApiError, OpenQaClient, SettingsQuery};
use crate::openqa::model::{is_final_state, Comment, Job};
use crate::store::{Recorded, Sink, Store};
use crate::verdict::{self, Outcome, Rules, Verdict, Wait};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

#[derive(Debug)]
pub enum EngineError {
    Api(ApiError),
    Store(crate::store::StoreError),
    /// openQA answered, but not enough to decide on.
    Incomplete(String),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Api(e) => write!(f, "openQA: {e}"),
            EngineError::Store(e) => write!(f, "{e}"),
            EngineError::Incomplete(why) => write!(f, "openQA: incomplete answer: {why}"),
        }
    }
}

impl std::error::Error for EngineError {}

impl From<ApiError> for EngineError {
    fn from(e: ApiError) -> Self {
        EngineError::Api(e)
    }
}

impl From<crate::store::StoreError> for EngineError {
    fn from(e: crate::store::StoreError) -> Self {
        EngineError::Store(e)
    }
}

#[derive(Default)]
struct IncidentState {
    running: bool,
    /// An event arrived while evaluating: evaluate once more right after.
    again: bool,
    /// Jobs still pending at the last evaluation. While one of them has not reported, the
    /// incident is pending for sure and an event about another job needs no API call.
    waiting_on: Option<HashSet<u64>>,
    /// Jobs reported finished while an evaluation ran: it may have seen them still running.
    finished_meanwhile: HashSet<u64>,
    /// Every job the last pending evaluation looked at. A job outside it (a newer request, a
    /// newer build, a re-triggered scenario) can make the jobs waited on stop counting, so an
    /// event about one is evaluated instead of waiting on jobs that may no longer count.
    known: HashSet<u64>,
    /// Jobs of events that arrived while an evaluation ran, checked against what it looked at.
    heard_meanwhile: HashSet<u64>,
}

/// Which submissions each job tests, within `JOB_CACHE_BYTES`.
#[derive(Default)]
struct JobCache {
    map: HashMap<u64, Vec<Submission>>,
    bytes: usize,
}

impl JobCache {
    /// An entry's share of memory: the key, the vector, its elements and the table's overhead.
    fn cost(submissions: &[Submission]) -> usize {
        std::mem::size_of::<(u64, Vec<Submission>)>() + 16 + std::mem::size_of_val(submissions)
    }

    /// Starts over when full: dropping everything is cheap, and the next events look their jobs
    /// up again in one request per batch.
    fn insert(&mut self, job: u64, submissions: Vec<Submission>) {
        let cost = Self::cost(&submissions);
        if self.bytes + cost > JOB_CACHE_BYTES {
            self.map.clear();
            self.bytes = 0;
        }
        if let Some(old) = self.map.insert(job, submissions) {
            self.bytes -= Self::cost(&old);
        }
        self.bytes += cost;
    }
}

/// What an evaluation leaves behind for the events that follow.
struct Looked {
    /// Counted jobs that are not final; None when the verdict is final.
    pending: Option<HashSet<u64>>,
    /// Every job looked at.
    known: HashSet<u64>,
    /// Evaluate again after this long: a quiet period ends, or a scheduled product may be done.
    recheck_in: Option<Duration>,
    /// The evaluation's ticket, when its verdict was final and complete (nothing left to wait
    /// for): the pending marks of events about jobs it saw are settled by it.
    settled: Option<i64>,
}

/// An error openQA will answer again however often it is asked (a 4xx, a malformed answer, an
/// id it refuses), grouped by route and message for status output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    pub route: String,
    pub status: Option<u16>,
    pub message: String,
    /// What was given up (or deferred to reconciliation) because of it.
    pub affected: String,
    pub count: u64,
    pub first_at: String,
    pub last_at: String,
}

/// Distinct refusals kept for status output.
const REFUSALS_KEPT: usize = 20;
/// Comments known deleted, kept so that no evaluation counts them (see `Event::deleted_comments`).
const DELETED_COMMENTS_MAX: usize = 100_000;
/// Relied-on comments looked at per reconciliation round.
const RELIED_AUDIT_BATCH: usize = 50;

impl EngineError {
    /// Asking again soon may help (openQA unreachable or failing, the store busy); otherwise the
    /// same question gets the same answer and is left to reconciliation.
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Api(e) => e.is_transient(),
            EngineError::Store(_) => true,
            EngineError::Incomplete(_) => false,
        }
    }
}

fn refusal_parts(e: &EngineError) -> (String, Option<u16>, String) {
    match e {
        EngineError::Api(ApiError::Status { route, status, message, .. }) => {
            (route.clone(), Some(*status), message.clone())
        }
        EngineError::Api(ApiError::Malformed { route, detail }) => (route.clone(), None, detail.clone()),
        EngineError::Api(other) => (other.route().unwrap_or("").to_string(), None, other.to_string()),
        other => (String::new(), None, other.to_string()),
    }
}

#[derive(Default)]
struct Stats {
    events: AtomicU64,
    evaluations: AtomicU64,
    evaluations_skipped: AtomicU64,
    api_errors: AtomicU64,
    refused: AtomicU64,
    events_refused: AtomicU64,
    decisions: AtomicU64,
    duplicate_decisions: AtomicU64,
    stale_decisions: AtomicU64,
    /// Fresh evaluations right before an irreversible report, and the reports they withheld.
    rechecks: AtomicU64,
    withheld: AtomicU64,
    catchups: AtomicU64,
    catchup_ended_jobs: AtomicU64,
    catchup_unheard_jobs: AtomicU64,
}

/// Caps the job → incidents cache of each process (every prefork worker has one) in bytes, as
/// estimated by `cache_cost`: an aggregate job lists dozens of incidents, so a count of entries
/// would not bound it. Job settings never change, so entries never go stale.
const JOB_CACHE_BYTES: usize = 8 << 20;
/// Decisions listed in status output.
pub const RECENT_DECISIONS: usize = 20;
/// How long the jobs events reported finished are remembered for waiting incidents.
const FINISHED_JOBS_KEPT: Duration = Duration::from_secs(86_400);
/// How long `check_waiting` gathers incidents before one read of the store for all of them.
const CHECK_GATHER: Duration = Duration::from_millis(10);
/// Restarts of one job followed at most within one evaluation.
const MAX_CLONE_ROUNDS: usize = 50;
/// Rounds of fetching newest aggregate builds whole; one is the rule, a second only when a whole
/// build changes which build is newest.
const MAX_BUILD_ROUNDS: usize = 5;
/// How many events one intake round takes from the queue at most.
const INTAKE_BATCH: usize = 512;

pub struct Core {
    cfg: Arc<Config>,
    client: OpenQaClient,
    store: Arc<Store>,
    sinks: Vec<Sink>,
    incidents: Mutex<HashMap<Submission, IncidentState>>,
    job_incidents: Mutex<JobCache>,
    stats: Stats,
    /// Events taken from the queue but not processed, plus evaluations running or scheduled.
    busy: AtomicUsize,
    /// Evaluations holding openQA's answers at once. Unbounded, a burst of events had every
    /// incident's jobs parsed and waiting for an HTTP permit: 390 MiB resident after the bench's
    /// synthetic day, which the allocator then keeps.
    evaluations: tokio::sync::Semaphore,
    /// Incidents for `check_waiting`, and its wake-up.
    to_check: Mutex<HashSet<Submission>>,
    check_wake: Notify,
    /// Woken when a decision lands in the outbox.
    pub outbox_wake: Notify,
    shutdown: AtomicBool,
    shutdown_notify: Notify,
    refusals: Mutex<Vec<Refusal>>,
    deleted_comments: Mutex<HashSet<u64>>,
    /// When this core was made (ms): pending marks older than that were left by a process before.
    started_ms: i64,
}

impl Core {
    /// Opens the store and the openQA client and spawns the engine's tasks on the current runtime.
    pub fn start(cfg: Arc<Config>, rx: mpsc::Receiver<Event>) -> Result<Arc<Core>, EngineError> {
        let core = Arc::new(Core::new(cfg)?);
        tokio::spawn(intake(core.clone(), rx));
        core.spawn_background();
        Ok(core)
    }

    /// Reconciliation of pending incidents and the outbox dispatchers, for a core that gets its
    /// events some other way (the AMQP listener).
    pub fn spawn_background(self: &Arc<Self>) {
        tokio::spawn(reconcile(self.clone()));
        self.spawn_checker();
        crate::outbox::spawn_dispatchers(self);
    }

    /// What looks at incidents waiting on jobs when events about those jobs arrive: needed by
    /// every core that takes events, also one that runs no reconciliation (a hook's catch-up).
    pub fn spawn_checker(self: &Arc<Self>) {
        tokio::spawn(checker(self.clone()));
    }

    pub fn new(cfg: Arc<Config>) -> Result<Core, EngineError> {
        let store = Arc::new(Store::open_url(cfg.store_url.expose(), &cfg.state_dir)?);
        let client = OpenQaClient::new(&cfg)?;
        let mut sinks = Vec::new();
        if cfg.publish_amqp {
            sinks.push(Sink::Amqp);
        }
        if cfg.report_obs {
            sinks.push(Sink::Obs);
        }
        // Gitea answers every write without a token with 401: an installation that has not set
        // one up publishes its pull requests' decisions and leaves Gitea alone
        if cfg.report_gitea && cfg.gitea_token.is_some() {
            sinks.push(Sink::Gitea);
        } else if cfg.report_gitea {
            tracing::info!(
                "no gitea_token: decisions about Gitea pull requests are published, not reported to Gitea"
            );
        }
        let evaluations = tokio::sync::Semaphore::new(cfg.concurrency.max(1));
        Ok(Core {
            cfg,
            client,
            store,
            sinks,
            incidents: Mutex::default(),
            job_incidents: Mutex::default(),
            to_check: Mutex::default(),
            check_wake: Notify::new(),
            stats: Stats::default(),
            busy: AtomicUsize::new(0),
            evaluations,
            outbox_wake: Notify::new(),
            shutdown: AtomicBool::new(false),
            shutdown_notify: Notify::new(),
            refusals: Mutex::default(),
            deleted_comments: Mutex::default(),
            started_ms: crate::store::now_ms(),
        })
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    pub fn sinks(&self) -> &[Sink] {
        &self.sinks
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn client(&self) -> &OpenQaClient {
        &self.client
    }

    /// The gate counts an event as work before queueing it, so `is_idle` never misses one that
    /// is between the queue and the engine.
    pub fn count_queued(&self, n: isize) {
        if n >= 0 {
            self.busy.fetch_add(n as usize, Relaxed);
        } else {
            self.busy.fetch_sub(n.unsigned_abs(), Relaxed);
        }
    }

    pub fn is_idle(&self) -> bool {
        self.busy.load(Relaxed) == 0
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Relaxed)
    }

    pub fn shutdown(&self) {
        self.shutdown.store(true, Relaxed);
        self.shutdown_notify.notify_waiters();
        self.outbox_wake.notify_waiters();
    }

    /// Resolves when `shutdown()` is called.
    pub async fn until_shutdown(&self) {
        let notified = self.shutdown_notify.notified();
        if !self.is_shutting_down() {
            notified.await;
        }
    }

    pub fn status(&self) -> serde_json::Value {
        let s = &self.stats;
        let mut status = serde_json::json!({
            "events": s.events.load(Relaxed),
            "evaluations": s.evaluations.load(Relaxed),
            "evaluations_skipped": s.evaluations_skipped.load(Relaxed),
            "api_errors": s.api_errors.load(Relaxed),
            "refused": s.refused.load(Relaxed),
            "events_refused": s.events_refused.load(Relaxed),
            "refusals": self.refusals.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            "openqa_settings_query": self.client.settings_query().as_str(),
            "decisions": s.decisions.load(Relaxed),
            "duplicate_decisions": s.duplicate_decisions.load(Relaxed),
            "stale_decisions": s.stale_decisions.load(Relaxed),
            "rechecks": s.rechecks.load(Relaxed),
            "withheld_reports": s.withheld.load(Relaxed),
            "openqa_requests": self.client.requests_made(),
            "busy": self.busy.load(Relaxed),
            "job_cache_bytes": self.job_incidents.lock().unwrap_or_else(|p| p.into_inner()).bytes,
        });
        match self.store.summary(RECENT_DECISIONS) {
            Ok(summary) => {
                status["recent_decisions"] = serde_json::json!(summary.recent_decisions);
                status["pending_incidents"] = serde_json::json!(summary.pending_incidents);
                status["outbox_backlog"] = serde_json::json!(summary.outbox_backlog);
                let mut catchup = serde_json::json!(summary.catchup);
                catchup["runs_here"] = s.catchups.load(Relaxed).into();
                catchup["ended_jobs_here"] = s.catchup_ended_jobs.load(Relaxed).into();
                catchup["unheard_jobs_here"] = s.catchup_unheard_jobs.load(Relaxed).into();
                catchup["max_requests"] = self.cfg.catchup_max_requests.into();
                status["catchup"] = catchup;
            }
            Err(e) => status["store_error"] = e.to_string().into(),
        }
        status
    }

    /// Asks openQA for jobs that ended since the last catch-up and takes their incidents like
    /// events (see `crate::catchup`). `None` when catch-up is off, another process runs one, or
    /// one ended less than `min_gap` ago.
    pub async fn catch_up(
        self: &Arc<Self>,
        min_gap: Duration,
    ) -> Result<Option<crate::catchup::CatchupReport>, EngineError> {
        let report = crate::catchup::catch_up(self, min_gap).await?;
        if let Some(r) = &report {
            self.stats.catchups.fetch_add(1, Relaxed);
            self.stats.catchup_ended_jobs.fetch_add(r.ended_jobs as u64, Relaxed);
            self.stats.catchup_unheard_jobs.fetch_add(r.unheard_jobs as u64, Relaxed);
            match &r.error {
                Some(e) => tracing::warn!(
                    "catch-up stopped after {} requests, up to job {}: {e}",
                    r.requests,
                    crate::log::or_none(r.after_id)
                ),
                None if r.unheard_jobs > 0 => tracing::info!(
                    "catch-up: {} ended jobs of incidents no decision counted yet ({} requests, up to job {})",
                    r.unheard_jobs,
                    r.requests,
                    crate::log::or_none(r.after_id)
                ),
                None => tracing::debug!("catch-up: {} requests, up to job {}", r.requests, crate::log::or_none(r.after_id)),
            }
        }
        Ok(report)
    }

    /// The current verdict, straight from openQA; no side effects.
    pub async fn evaluate(&self, incident: impl Into<Submission>) -> Result<Verdict, EngineError> {
        Ok(self.evaluation(incident.into()).await?.verdict)
    }

    async fn evaluation(&self, incident: Submission) -> Result<Evaluation, EngineError> {
        let deleted = self.deleted_comments.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let evaluation =
            evaluate_with(&self.client, &self.cfg, incident, &deleted, Some(&self.store)).await?;
        self.remember_jobs(&evaluation.jobs);
        Ok(evaluation)
    }

    /// Records an error openQA will repeat: counted, kept for status, logged the first time only.
    fn refused(&self, e: &EngineError, affected: String) {
        self.stats.refused.fetch_add(1, Relaxed);
        // shared by every process of the state directory, for the metrics (a lost count is no harm)
        let _ = self.store.count("openqa_refused", 1);
        let (route, status, message) = refusal_parts(e);
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = refusals.iter_mut().find(|r| r.route == route && r.message == message) {
            r.count += 1;
            r.last_at = now;
            tracing::debug!("openQA refused again ({affected}): {e}");
            r.affected = affected;
            return;
        }
        tracing::warn!("openQA refuses, not retrying ({affected}): {e}");
        if refusals.len() >= REFUSALS_KEPT {
            refusals.remove(0);
        }
        refusals.push(Refusal {
            route,
            status,
            message,
            affected,
            count: 1,
            first_at: now.clone(),
            last_at: now,
        });
    }

    fn forget_deleted_comments(&self, ids: &[u64]) {
        let mut deleted = self.deleted_comments.lock().unwrap_or_else(|p| p.into_inner());
        if deleted.len() + ids.len() > DELETED_COMMENTS_MAX {
            deleted.clear();
        }
        deleted.extend(ids.iter().copied());
    }

    pub(crate) fn remember_jobs(&self, jobs: &[Job]) {
        let mut cache = self.job_incidents.lock().unwrap_or_else(|p| p.into_inner());
        for job in jobs {
            cache.insert(job.id, submissions_of(&job.settings).into_iter().collect());
        }
    }

    /// The incidents each of these jobs tests, asking openQA for the ones not seen before.
    async fn incidents_of_jobs(&self, ids: &[u64]) -> Result<HashMap<u64, Vec<Submission>>, ApiError> {
        let unknown: Vec<u64> = {
            let cache = self.job_incidents.lock().unwrap_or_else(|p| p.into_inner());
            ids.iter().copied().filter(|id| !cache.map.contains_key(id)).collect()
        };
        if !unknown.is_empty() {
            let jobs = self.client.jobs(&unknown).await?;
            self.remember_jobs(&jobs);
        }
        let cache = self.job_incidents.lock().unwrap_or_else(|p| p.into_inner());
        Ok(ids.iter().filter_map(|id| cache.map.get(id).map(|i| (*id, i.clone()))).collect())
    }

    /// Takes a batch of events: finds the incidents they touch, records them pending in the store
    /// and schedules what must be evaluated. `Ok` means the batch's effect is durable (or the
    /// events touch no incident): a caller may acknowledge it. `Err` (shutting down before the
    /// jobs could be looked up, or the store refused the write) means it must not: the incidents
    /// may be scheduled in memory, but only the sender still holds the events for a restart.
    pub async fn take_events(self: &Arc<Self>, mut batch: Vec<Event>) -> Result<(), EngineError> {
        if self.cfg.quiet_period_s == 0 {
            // a created job only starts a quiet period; without one, looking it up in openQA
            // would be a request for nothing (its done event looks it up when it matters)
            batch.retain(|e| !e.creates_jobs());
        }
        let ids: Vec<u64> = {
            let mut ids: Vec<u64> = batch.iter().flat_map(|e| e.jobs.iter().copied()).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let deleted: Vec<u64> = batch.iter().flat_map(|e| e.deleted_comments.iter().copied()).collect();
        if !deleted.is_empty() {
            self.forget_deleted_comments(&deleted);
        }
        let products: Vec<u64> = batch.iter().flat_map(|e| e.products.iter().copied()).collect();
        if !products.is_empty() {
            self.busy.fetch_add(1, Relaxed);
            tokio::spawn(watch_products(self.clone(), products));
        }
        let Some(map) = self.look_up_jobs(ids).await else {
            return Err(EngineError::Incomplete("shutting down".into()));
        };
        let mut touched: HashMap<Submission, (bool, Vec<u64>)> = HashMap::new();
        let mut finished: HashSet<u64> = HashSet::new();
        for event in &batch {
            if event.creates_jobs() {
                // a new job only restarts the quiet period: it is not final, so it cannot make
                // a verdict final; its own done event evaluates
                for job in &event.jobs {
                    for incident in map.get(job).into_iter().flatten() {
                        if let Err(e) = self.store.note_job(*incident, *job, true) {
                            tracing::warn!("{}: {e}", incident.named());
                        }
                    }
                }
                continue;
            }
            for job in &event.jobs {
                if event.finishes_jobs() {
                    finished.insert(*job);
                }
                for incident in map.get(job).into_iter().flatten() {
                    let entry = touched.entry(*incident).or_default();
                    entry.0 |= event.forces_evaluation();
                    entry.1.push(*job);
                }
            }
        }
        if !deleted.is_empty() {
            match self.store.incidents_relying_on(&deleted) {
                Ok(incidents) => {
                    for i in incidents {
                        touched.entry(i).or_default().0 = true;
                    }
                }
                Err(e) => tracing::warn!(
                    "cannot look up the incidents of deleted comments {}: {e}",
                    crate::log::list(&deleted)
                ),
            }
        }
        let mut incidents: Vec<Submission> = touched.keys().copied().collect();
        incidents.sort_unstable();
        let mut reported: Vec<u64> = finished.iter().copied().collect();
        reported.sort_unstable();
        let stored = self.store.mark_pending_many(&incidents, &reported);
        if let Err(e) = &stored {
            tracing::warn!(
                "cannot record {} as pending: {e}",
                crate::log::list(incidents.iter().map(|i| i.named()))
            );
        }
        let mut queued = 0;
        {
            let mut to_check = self.to_check.lock().unwrap_or_else(|p| p.into_inner());
            for (incident, (must, jobs)) in touched {
                if self.touch(incident, must, &jobs, &finished) && to_check.insert(incident) {
                    queued += 1;
                }
            }
        }
        if queued > 0 {
            self.busy.fetch_add(queued, Relaxed);
            self.check_wake.notify_one();
        }
        Ok(stored?)
    }

    /// The incidents of these jobs (`None` when shutting down first). Transient failures are
    /// retried with backoff: events are never dropped for an outage. A chunk openQA refuses is
    /// split until each refused id is alone; those are given up (counted, shown in status), so one
    /// bad id never holds up the events of the others.
    async fn look_up_jobs(&self, ids: Vec<u64>) -> Option<HashMap<u64, Vec<Submission>>> {
        let mut map = HashMap::new();
        let mut todo = vec![ids];
        let mut delay = Duration::from_millis(100);
        while let Some(chunk) = todo.pop() {
            loop {
                let e = match self.incidents_of_jobs(&chunk).await {
                    Ok(found) => {
                        map.extend(found);
                        break;
                    }
                    Err(_) if self.is_shutting_down() => return None,
                    Err(e) => e,
                };
                if e.is_transient() {
                    self.stats.api_errors.fetch_add(1, Relaxed);
                    tracing::warn!(
                        "cannot look up {} jobs of events, retrying in {}: {e}",
                        chunk.len(),
                        humantime::format_duration(delay)
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
                if chunk.len() > 1 {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    todo.push(b.to_vec());
                    todo.push(a.to_vec());
                } else {
                    self.stats.events_refused.fetch_add(1, Relaxed);
                    self.refused(&EngineError::Api(e), format!("events of job {}", chunk[0]));
                }
                break;
            }
        }
        Some(map)
    }

    /// Incidents whose latest verdict relied on an `acceptable_for` comment that is gone, looking
    /// at comments not checked for `older_than`. openQA tells nobody of some deletions (its AMQP
    /// plugin does not forward the bulk route, a job-done hook never hears of comments).
    pub async fn audit_relied_comments(&self, older_than: Duration) -> Vec<Submission> {
        let claimed =
            match self.store.claim_relied_comments(older_than.as_millis() as i64, RELIED_AUDIT_BATCH) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("relied-on comments: {e}");
                    return Vec::new();
                }
            };
        let mut by_job: HashMap<u64, Vec<(u64, Submission)>> = HashMap::new();
        for (comment, incident, job) in claimed {
            by_job.entry(job).or_default().push((comment, incident));
        }
        let mut gone_for = Vec::new();
        for (job, relied) in by_job {
            match self.client.comments(job).await {
                Ok(present) => {
                    let gone: Vec<(u64, Submission)> =
                        relied.into_iter().filter(|(c, _)| !present.iter().any(|p| p.id == *c)).collect();
                    self.forget_deleted_comments(&gone.iter().map(|(c, _)| *c).collect::<Vec<_>>());
                    gone_for.extend(gone.into_iter().map(|(_, i)| i));
                }
                Err(e) => tracing::warn!("cannot read the comments of job {job}: {e}"),
            }
        }
        gone_for.sort_unstable();
        gone_for.dedup();
        gone_for
    }

    /// Incidents that still wait on jobs whose events this process has not seen: under prefork
    /// another process may have had them, and stored them. No request to openQA: an incident
    /// whose jobs all were reported finished somewhere is evaluated, the others keep waiting.
    async fn check_waiting(self: &Arc<Self>) {
        let incidents: Vec<Submission> =
            std::mem::take(&mut *self.to_check.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        let samples: Vec<(Submission, Vec<u64>)> = {
            let states = self.incidents.lock().unwrap_or_else(|p| p.into_inner());
            incidents
                .iter()
                .map(|i| {
                    let waiting = states.get(i).and_then(|s| s.waiting_on.as_ref());
                    (*i, waiting.map(|w| w.iter().copied().collect()).unwrap_or_default())
                })
                .collect()
        };
        let ids: Vec<u64> = samples.iter().flat_map(|(_, s)| s.iter().copied()).collect();
        // every process stores the jobs its events reported finished: a job none reported is
        // still running as far as events go (one that finished silently is reconciliation's)
        let unfinished: Option<HashSet<u64>> = match self.store.reported_finished(&ids) {
            Ok(done) => Some(ids.iter().copied().filter(|j| !done.contains(j)).collect()),
            Err(e) => {
                // evaluate instead: an evaluation asks openQA
                tracing::warn!("cannot look at the jobs {} incidents wait on: {e}", samples.len());
                None
            }
        };
        for (incident, sample) in &samples {
            self.after_check(*incident, sample, unfinished.as_ref());
        }
        self.busy.fetch_sub(incidents.len(), Relaxed);
    }

    /// An event about `jobs` touched `incident`: evaluate it now, or answer true while its last
    /// evaluation waits on jobs not reported finished here (see `check_waiting`) and the event is
    /// about a job that evaluation looked at.
    fn touch(
        self: &Arc<Self>,
        incident: Submission,
        must: bool,
        jobs: &[u64],
        finished: &HashSet<u64>,
    ) -> bool {
        let mut incidents = self.incidents.lock().unwrap_or_else(|p| p.into_inner());
        let state = incidents.entry(incident).or_default();
        if let Some(waiting) = &mut state.waiting_on {
            waiting.retain(|j| !finished.contains(j));
        }
        let waiting = state.waiting_on.as_ref().is_some_and(|w| !w.is_empty());
        let unknown = jobs.iter().any(|j| !state.known.contains(j));
        if state.running {
            state.finished_meanwhile.extend(finished.iter().copied());
            state.heard_meanwhile.extend(jobs.iter().copied());
            state.again |= must;
        } else if must || !waiting || unknown {
            state.running = true;
            self.spawn_evaluation(incident);
        } else {
            return true;
        }
        false
    }

    /// After looking at `sample`: still waiting if one of them is unfinished, else evaluate.
    fn after_check(
        self: &Arc<Self>,
        incident: Submission,
        sample: &[u64],
        unfinished: Option<&HashSet<u64>>,
    ) {
        let mut incidents = self.incidents.lock().unwrap_or_else(|p| p.into_inner());
        let state = incidents.entry(incident).or_default();
        if state.running {
            return;
        }
        if let (Some(unfinished), Some(waiting)) = (unfinished, &mut state.waiting_on) {
            waiting.retain(|j| !sample.contains(j) || unfinished.contains(j));
            if !waiting.is_empty() && sample.iter().any(|j| unfinished.contains(j)) {
                self.stats.evaluations_skipped.fetch_add(1, Relaxed);
                return;
            }
        }
        state.running = true;
        self.spawn_evaluation(incident);
    }

    /// Schedules an evaluation regardless of what the incident waits on (reconciliation).
    fn schedule(self: &Arc<Self>, incident: Submission) {
        let mut incidents = self.incidents.lock().unwrap_or_else(|p| p.into_inner());
        let state = incidents.entry(incident).or_default();
        if state.running {
            state.again = true;
        } else {
            state.running = true;
            self.spawn_evaluation(incident);
        }
    }

    fn spawn_evaluation(self: &Arc<Self>, incident: Submission) {
        self.busy.fetch_add(1, Relaxed);
        let core = self.clone();
        tokio::spawn(async move {
            if core.cfg.settle_ms > 0 {
                tokio::time::sleep(Duration::from_millis(core.cfg.settle_ms)).await;
            }
            let mut failures = 0u32;
            loop {
                {
                    // what was heard before this evaluation takes its ticket, it reads anyway
                    let mut incidents = core.incidents.lock().unwrap_or_else(|p| p.into_inner());
                    let state = incidents.entry(incident).or_default();
                    state.finished_meanwhile.clear();
                    state.heard_meanwhile.clear();
                }
                let outcome = {
                    // never closed; without a permit it would only cost memory, not correctness
                    let _permit = core.evaluations.acquire().await.ok();
                    core.evaluate_and_decide(incident).await
                };
                let retry = match &outcome {
                    Ok(_) => {
                        failures = 0;
                        false
                    }
                    Err(e) if e.is_transient() => {
                        core.stats.api_errors.fetch_add(1, Relaxed);
                        tracing::warn!("{}: no verdict now, will retry: {e}", incident.named());
                        failures += 1;
                        true
                    }
                    Err(e) => {
                        // asked again only by reconciliation (or a new event), not in a loop
                        core.refused(e, incident.named());
                        if let Err(e) = core.store.mark_pending(incident) {
                            tracing::warn!("{}: {e}", incident.named());
                        }
                        false
                    }
                };
                let (go_on, settle) = {
                    let mut incidents = core.incidents.lock().unwrap_or_else(|p| p.into_inner());
                    let state = incidents.entry(incident).or_default();
                    let meanwhile = std::mem::take(&mut state.finished_meanwhile);
                    let heard = std::mem::take(&mut state.heard_meanwhile);
                    if let Ok(Looked { recheck_in: Some(delay), .. }) = &outcome {
                        let (core, delay) = (core.clone(), *delay);
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => core.schedule(incident),
                                _ = core.until_shutdown() => {}
                            }
                        });
                    }
                    let mut settle = None;
                    if let Ok(Looked { mut pending, known, settled, .. }) = outcome {
                        if let Some(w) = &mut pending {
                            w.retain(|j| !meanwhile.contains(j));
                            // everything it waited on finished during the evaluation: look again
                            state.again |= w.is_empty();
                        }
                        // an event came about a job it did not see (a newer request or build
                        // may have started): its verdict may be about jobs that no longer count
                        let unseen = heard.iter().any(|j| !known.contains(j));
                        state.again |= unseen;
                        // the stored pending marks of events that came during the evaluation
                        // carry its ticket, which `record_decision` leaves alone (it cannot tell
                        // whether it read openQA before or after them); events about jobs it saw,
                        // when it decided with nothing left to wait for, add nothing
                        if !heard.is_empty() && !unseen && !state.again {
                            settle = settled;
                        }
                        state.known = if pending.is_some() { known } else { HashSet::new() };
                        state.waiting_on = pending;
                    }
                    let go_on = !core.is_shutting_down() && (retry || state.again);
                    state.again = false;
                    state.running = go_on;
                    if !go_on && state.waiting_on.is_none() {
                        // decided: the next event starts from scratch anyway, so keep no state
                        incidents.remove(&incident);
                    }
                    (go_on, settle)
                };
                if let Some(ticket) = settle {
                    if let Err(e) = core.store.settle_pending(incident, ticket) {
                        tracing::warn!("{}: {e}", incident.named());
                    }
                }
                if !go_on {
                    break;
                }
                if retry {
                    let delay = crate::store::backoff_ms(failures - 1) as u64;
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
            }
            core.busy.fetch_sub(1, Relaxed);
        });
    }

    /// One evaluation; a final verdict becomes a decision (recorded once, queued for the sinks).
    pub async fn decide(&self, incident: impl Into<Submission>) -> Result<Verdict, EngineError> {
        Ok(self.decide_with_ticket(incident.into()).await?.0)
    }

    /// `decide`, with the evaluation's ticket.
    async fn decide_with_ticket(&self, incident: Submission) -> Result<(Verdict, i64), EngineError> {
        self.stats.evaluations.fetch_add(1, Relaxed);
        // before reading openQA: the ticket orders this evaluation's decision among all processes'
        let seen = self.store.begin_evaluation()?;
        let Evaluation { verdict, relied_comments, jobs } = self.evaluation(incident).await?;
        if verdict.result == Outcome::Pending {
            let (state, why) = waiting_for(&verdict);
            self.store.note_unfinished(incident, seen, state, &why)?;
            return Ok((verdict, seen));
        }
        // an incomplete failure is reported, but the incident stays pending: reconciliation
        // comes back to it should no event or timer do it first
        let incomplete = !verdict.complete;
        let mut decision = Decision::new(verdict, &crate::config::link_base(&self.cfg.openqa_url));
        decision.contacts = contacts(&self.client, &decision.verdict, &jobs).await;
        decision.builds = builds(&decision.verdict, &jobs);
        decision.last_job_end = crate::decision::last_job_end(&decision.verdict, &jobs);
        // the event for every submission, a report to the service the submission belongs to
        let sinks: Vec<Sink> = self.sinks.iter().copied().filter(|s| s.serves(incident.kind)).collect();
        match self.store.record_decision(&mut decision, &sinks, seen, &relied_comments)? {
            Recorded::New => {
                self.stats.decisions.fetch_add(1, Relaxed);
                tracing::info!("{}", decision.log_line());
                self.outbox_wake.notify_waiters();
            }
            Recorded::Repeat => {
                self.stats.duplicate_decisions.fetch_add(1, Relaxed);
            }
            Recorded::Stale => {
                self.stats.stale_decisions.fetch_add(1, Relaxed);
                tracing::info!(
                    "{}: {} not recorded: an evaluation that started later decided already",
                    incident.named(),
                    decision.verdict.result.as_str()
                );
            }
        }
        if incomplete {
            self.store.mark_pending(incident)?;
        }
        Ok((decision.verdict, seen))
    }

    /// `decide`, returning the jobs a pending incident still waits on and every job looked at.
    async fn evaluate_and_decide(&self, incident: Submission) -> Result<Looked, EngineError> {
        let (verdict, ticket) = self.decide_with_ticket(incident).await?;
        // waiting on jobs only while some counted job runs: a verdict held back for coverage, a
        // quiet period or scheduling has nothing to wait on here (and an empty set would mean
        // "look again at once")
        let running: HashSet<u64> =
            verdict.notes.iter().filter(|n| n.counts && !is_final_state(&n.state)).map(|n| n.id).collect();
        let pending = (verdict.result == Outcome::Pending && !running.is_empty()).then_some(running);
        let recheck_in = verdict
            .waiting
            .iter()
            .filter_map(|w| match w.kind.as_str() {
                "quiet" => quiet_left(&self.cfg, self.store.last_job_at(incident).ok().flatten()),
                "scheduling" => Some(SCHEDULING_RECHECK),
                // the clone's own events decide it; this is for a restart openQA never made
                "restart" => Some(RESTART_RECHECK),
                _ => None,
            })
            .min();
        let settled = (verdict.result.is_final() && verdict.complete).then_some(ticket);
        Ok(Looked { pending, known: verdict.notes.iter().map(|n| n.id).collect(), recheck_in, settled })
    }
}

/// The check at the point of no return: one fresh evaluation, recorded like any other (a new
/// verdict becomes the new decision and takes over), and the report goes ahead only while the
/// decision it carries is still the submission's latest.
impl crate::decision::Recheck for Core {
    fn recheck<'a>(
        &'a self,
        submission: Submission,
        key: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<(), crate::decision::Delivery>> {
        use crate::decision::Delivery;
        Box::pin(async move {
            self.stats.rechecks.fetch_add(1, Relaxed);
            let verdict = match self.decide_with_ticket(submission).await {
                Ok((verdict, _)) => verdict,
                Err(e) => {
                    if !e.is_transient() {
                        self.refused(&e, format!("{submission}: the check before reporting"));
                    }
                    return Err(Delivery::Retry(format!(
                        "cannot evaluate {submission} again before reporting: {e}"
                    )));
                }
            };
            let latest = match self.store.is_latest(submission, key) {
                Ok(latest) => latest,
                Err(e) => return Err(Delivery::Retry(e.to_string())),
            };
            if latest && verdict.result.is_final() {
                return Ok(());
            }
            self.stats.withheld.fetch_add(1, Relaxed);
            let now = if verdict.result.is_final() {
                format!(
                    "is {} now (decision {})",
                    verdict.result.as_str(),
                    crate::decision::decision_key(&verdict)
                )
            } else {
                format!("is pending again ({})", waiting_for(&verdict).1)
            };
            tracing::info!("{submission}: decision {key} withheld: a fresh evaluation {now}");
            Err(Delivery::Final(format!("withheld: a fresh evaluation right before reporting {now}")))
        })
    }
}

/// An incident's current verdict from openQA, and the jobs it looked at. Opens the state directory
/// only for what holds testing open (scheduled products, the quiet period), so a process that only
/// evaluates (the plugin's verdict route, in a forked child) starts no engine.
pub async fn evaluate(
    client: &OpenQaClient,
    cfg: &Config,
    incident: impl Into<Submission>,
) -> Result<(Verdict, Vec<Job>), EngineError> {
    // the state directory knows of scheduled products and the quiet period; without it (not
    // writable here) the verdict is explained from openQA alone
    let store = Store::open_url(cfg.store_url.expose(), &cfg.state_dir).ok();
    let e = evaluate_with(client, cfg, incident.into(), &HashSet::new(), store.as_ref()).await?;
    Ok((e.verdict, e.jobs))
}

/// What one evaluation found.
pub struct Evaluation {
    pub verdict: Verdict,
    /// The jobs it looked at.
    pub jobs: Vec<Job>,
    /// (comment, job): the `acceptable_for` comments for this incident on the jobs whose
    /// comments were read; deleting one of them can change the verdict.
    pub relied_comments: Vec<(u64, u64)>,
}

/// [`evaluate`], ignoring the comments in `deleted` (openQA announces a single deletion before
/// the row is gone, so a read right after may still list it).
pub async fn evaluate_with(
    client: &OpenQaClient,
    cfg: &Config,
    incident: Submission,
    deleted: &HashSet<u64>,
    store: Option<&Store>,
) -> Result<Evaluation, EngineError> {
    let id = incident.number.to_string();
    let mut asked: HashSet<u64> = match incident.kind {
        Kind::Ibs => {
            let ids_own = client.job_ids_by_setting("INCIDENT_ID", &id);
            let ids_aggregate = client.job_ids_by_list_setting("*_TEST_ISSUES", &id);
            let (own, aggregate) = tokio::try_join!(ids_own, ids_aggregate)?;
            own.into_iter().chain(aggregate).collect()
        }
        // a pull request's own jobs only (aggregates list IBS incidents); INCIDENT_ID=<pr> finds
        // those that carry neither SUBMISSION_ID nor _GITEA_PR, selection drops IBS jobs
        Kind::Gitea => {
            let git = format!("git:{id}");
            // an openQA without `value=` (Debian 12's 4.6) takes only one word as `list_value`
            // and refuses `git:<pr>` (400 "list_value invalid"): there the jobs are found by
            // `_GITEA_PR` and `INCIDENT_ID=<pr>`, which qem-bot's Gitea jobs carry as well
            let by_submission = async {
                match client.job_ids_by_setting("SUBMISSION_ID", &git).await {
                    Err(ApiError::Status { status: 400, message, .. })
                        if message.contains("list_value invalid")
                            && client.settings_query() == SettingsQuery::ListValueOnly =>
                    {
                        Ok(Vec::new())
                    }
                    other => other,
                }
            };
            let by_pr = client.job_ids_by_setting("_GITEA_PR", &id);
            let by_incident = client.job_ids_by_setting("INCIDENT_ID", &id);
            let (a, b, c) = tokio::try_join!(by_submission, by_pr, by_incident)?;
            a.into_iter().chain(b).chain(c).collect()
        }
    };
    let mut jobs = client.jobs(&asked.iter().copied().collect::<Vec<_>>()).await?;
    let link_base = crate::config::link_base(&cfg.openqa_url);
    let rules = Rules { ignore_groups: &cfg.ignore_groups, openqa_url: &link_base };
    let mut whole: HashSet<(verdict::Product, String)> = HashSet::new();
    let mut own_builds_read: HashSet<String> = HashSet::new();
    for round in 0.. {
        newest_aggregate_builds_whole(client, incident, &rules, &mut jobs, &mut asked, &mut whole).await?;
        let builds = own_builds_to_read(client, incident, &jobs, &rules, &own_builds_read);
        if builds.is_empty() {
            break;
        }
        if round == MAX_BUILD_ROUNDS {
            return Err(EngineError::Incomplete(format!(
                "the submission's own builds still change after {MAX_BUILD_ROUNDS} rounds"
            )));
        }
        let fetched =
            futures_util::future::try_join_all(builds.iter().map(|b| client.jobs_of_any_product(b))).await?;
        merge_jobs(&mut jobs, &mut asked, fetched.into_iter().flatten());
        own_builds_read.extend(builds);
    }
    let selection = verdict::select_submission(incident, &jobs, &rules);
    let wanted = selection.needs_comments();
    let fetched = futures_util::future::try_join_all(wanted.iter().map(|&id| client.comments(id))).await?;
    let mut comments: HashMap<u64, Vec<Comment>> = wanted.into_iter().zip(fetched).collect();
    let mut relied_comments = Vec::new();
    for (job, list) in comments.iter_mut() {
        list.retain(|c| !deleted.contains(&c.id));
        for c in list.iter() {
            if verdict::acceptable_for(std::slice::from_ref(c), incident).is_some() {
                relied_comments.push((c.id, *job));
            }
        }
    }
    relied_comments.sort_unstable();
    let mut verdict = verdict::judge(&selection, &comments, &rules);
    let mut waiting: Vec<Wait> = verdict::missing_coverage(&selection, &cfg.coverage_rules())
        .into_iter()
        .map(|what| Wait::new("coverage", what, None))
        .collect();
    waiting.extend(verdict::expected_restarts(&selection, &comments, std::time::SystemTime::now()));
    if let Some(store) = store {
        waiting.extend(holds(client, cfg, store, incident, &selection).await?);
    }
    let started: HashMap<u64, String> =
        selection.counted.iter().filter_map(|j| j.t_started.clone().map(|t| (j.id, t))).collect();
    verdict::hold(&mut verdict, waiting, &started);
    Ok(Evaluation { verdict, jobs, relied_comments })
}

/// The submission's own builds to read whole, by BUILD, before a verdict may be final. Without
/// `value=` (openQA before 2025-09-30, e.g. Debian 12's 4.6) the own jobs were found with
/// `list_value`, which only searches openQA's newest `job_settings_max_recent_jobs` jobs: an older
/// one (a failure nobody restarted) would be missing. Their build, `:<incident>:<package>`, has no
/// such window. Read whenever the jobs that count have all ended, whatever else was found: a job
/// that does not count (a Devel group, an older request) must not decide whether the list is
/// made complete. While a counted job runs nothing is decided, so the read waits for then.
fn own_builds_to_read(
    client: &OpenQaClient,
    incident: Submission,
    jobs: &[Job],
    rules: &Rules<'_>,
    read: &HashSet<String>,
) -> Vec<String> {
    if client.settings_query() != SettingsQuery::ListValueOnly {
        return Vec::new();
    }
    let selection = verdict::select_submission(incident, jobs, rules);
    if !selection.counted.iter().all(|j| j.is_final()) {
        return Vec::new();
    }
    let mut builds: Vec<String> = jobs
        .iter()
        .filter(|j| crate::incident::parse_build(j.setting("BUILD")) == Some(incident.number))
        .filter(|j| submissions_of(&j.settings).contains(&incident))
        .map(|j| j.setting("BUILD").to_string())
        .filter(|b| !read.contains(b))
        .collect();
    builds.sort_unstable();
    builds.dedup();
    builds
}

/// `list_value` only searches openQA's newest jobs, so the newest build of a product may be
/// listed in part: each such build is fetched whole, by BUILD and product, before it is judged.
async fn newest_aggregate_builds_whole(
    client: &OpenQaClient,
    incident: Submission,
    rules: &Rules<'_>,
    jobs: &mut Vec<Job>,
    asked: &mut HashSet<u64>,
    whole: &mut HashSet<(verdict::Product, String)>,
) -> Result<(), EngineError> {
    for round in 0.. {
        follow_clones(client, jobs, asked).await?;
        let builds: Vec<(verdict::Product, String)> =
            verdict::newest_aggregate_builds_of(incident, jobs, rules)
                .into_iter()
                .filter(|b| !whole.contains(b))
                .collect();
        if builds.is_empty() {
            return Ok(());
        }
        if round == MAX_BUILD_ROUNDS {
            return Err(EngineError::Incomplete(format!(
                "the newest aggregate builds still change after {MAX_BUILD_ROUNDS} rounds"
            )));
        }
        let fetched = futures_util::future::try_join_all(
            builds
                .iter()
                .map(|(product, build)| client.jobs_of_build(build, product.each_ref().map(String::as_str))),
        )
        .await?;
        merge_jobs(jobs, asked, fetched.into_iter().flatten());
        whole.extend(builds);
    }
    Ok(())
}

/// Adds `fetched` to `jobs`, a job already there replaced by its newer answer.
fn merge_jobs(jobs: &mut Vec<Job>, asked: &mut HashSet<u64>, fetched: impl IntoIterator<Item = Job>) {
    let at: HashMap<u64, usize> = jobs.iter().enumerate().map(|(i, j)| (j.id, i)).collect();
    for job in fetched {
        asked.insert(job.id);
        match at.get(&job.id) {
            Some(&i) => jobs[i] = job,
            None => jobs.push(job),
        }
    }
}

/// How the incidents page names what a pending verdict waits for: expected coverage when a job
/// the policy requires does not exist (nothing running will change that), else jobs.
fn waiting_for(verdict: &Verdict) -> (&'static str, String) {
    let coverage: Vec<&str> =
        verdict.waiting.iter().filter(|w| w.kind == "coverage").map(|w| w.what.as_str()).collect();
    if !coverage.is_empty() {
        return ("coverage", format!("expected, not in openQA: {}", coverage.join("; ")));
    }
    let mut what: Vec<&str> = verdict.waiting.iter().map(|w| w.what.as_str()).take(3).collect();
    if verdict.waiting.len() > what.len() {
        what.push("…");
    }
    let why = if what.is_empty() {
        "waiting for jobs to finish".to_string()
    } else {
        format!("waiting for {}", what.join(", "))
    };
    ("pending", why)
}

/// The `BUILD`s of the jobs that count, sorted, each once.
fn builds(verdict: &Verdict, jobs: &[Job]) -> Vec<String> {
    let counted: std::collections::HashSet<u64> = verdict.job_ids.iter().copied().collect();
    let builds: std::collections::BTreeSet<&str> = jobs
        .iter()
        .filter(|j| counted.contains(&j.id))
        .map(|j| j.setting("BUILD"))
        .filter(|b| !b.is_empty())
        .collect();
    builds.into_iter().map(str::to_string).collect()
}

/// Whom to contact for each job group with a blocking job, from the `Responsible:` lines of the
/// groups' descriptions. Best effort: a group openQA does not answer for names nobody.
async fn contacts(
    client: &OpenQaClient,
    verdict: &Verdict,
    jobs: &[Job],
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut groups: Vec<u64> = verdict
        .blocking
        .iter()
        .filter_map(|b| jobs.iter().find(|j| j.id == b.id).and_then(|j| j.group_id))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let mut out = std::collections::BTreeMap::new();
    for id in groups.into_iter().take(20) {
        match client.job_group(id).await {
            Ok(Some(g)) => {
                let lines = crate::decision::responsible_lines(g.description.as_deref().unwrap_or(""));
                if !lines.is_empty() {
                    out.insert(g.name, lines);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!("job group {id}: {e}; its contacts are not named"),
        }
    }
    out
}

/// How often an incident named by a scheduled product still being scheduled is looked at again.
const SCHEDULING_RECHECK: Duration = Duration::from_secs(2);
/// How often an incident held for a restart openQA announced is looked at again (the hold ends
/// with the clone, or after `verdict::RESTART_GRACE`).
const RESTART_RECHECK: Duration = Duration::from_secs(60);
/// How long a scheduled product is watched after `openqa_iso_create` at most; openQA schedules
/// in seconds to minutes. Later, evaluations look at it when they come.
const PRODUCT_WATCH: Duration = Duration::from_secs(3600);

fn ms_rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// What is left of the quiet period after the incident's last job appeared at `last` (unix ms).
fn quiet_left(cfg: &Config, last: Option<i64>) -> Option<Duration> {
    let quiet = cfg.quiet_period_s as i64 * 1000;
    let left = last? + quiet - crate::store::now_ms();
    (quiet > 0 && left > 0).then(|| Duration::from_millis(left as u64))
}

/// What the state directory says testing still waits for besides jobs and coverage: scheduled
/// products naming the incident that are still being scheduled (asked again from openQA, so a
/// process that stopped watching one leaves nothing stuck), and the quiet period after its
/// newest job.
async fn holds(
    client: &OpenQaClient,
    cfg: &Config,
    store: &Store,
    incident: crate::incident::Submission,
    selection: &verdict::Selection<'_>,
) -> Result<Vec<Wait>, EngineError> {
    let mut waiting = Vec::new();
    for (product, since) in store.scheduling_products(incident)? {
        match client.scheduled_product(product).await? {
            Some(p) if p.is_scheduling() => {
                let what =
                    format!("scheduled product {product} ({}, {} jobs so far)", p.status, p.job_ids.len());
                waiting.push(Wait::new("scheduling", what, Some(ms_rfc3339(since))));
            }
            Some(p) => store.note_product(product, &[], &p.status)?,
            None => store.note_product(product, &[], "gone")?,
        }
    }
    if cfg.quiet_period_s > 0 {
        if let Some(newest) = selection.counted.iter().map(|j| j.id).max() {
            // jobs nobody announced (listen mode, hooks) start the quiet period when first seen
            store.note_job(incident, newest, false)?;
        }
        let last = store.last_job_at(incident)?;
        if quiet_left(cfg, last).is_some() {
            let last = last.unwrap_or_default();
            let what = format!(
                "no new job for {} s (until {})",
                cfg.quiet_period_s,
                ms_rfc3339(last + cfg.quiet_period_s as i64 * 1000)
            );
            waiting.push(Wait::new("quiet", what, Some(ms_rfc3339(last))));
        }
    }
    Ok(waiting)
}

/// Follows a scheduled product from `openqa_iso_create` until openQA created all its jobs: its
/// incidents wait meanwhile (in the store, for every process), then are evaluated.
async fn watch_products(core: Arc<Core>, products: Vec<u64>) {
    let started = std::time::Instant::now();
    let mut todo = products;
    let mut noted: HashMap<u64, Vec<Submission>> = HashMap::new();
    // busy only until the products are noted: a flush must not wait for openQA to schedule
    let mut busy = true;
    while !todo.is_empty() && started.elapsed() < PRODUCT_WATCH && !core.is_shutting_down() {
        let mut next = Vec::new();
        for id in todo {
            match core.client.scheduled_product(id).await {
                Ok(Some(p)) => {
                    // a pull request's product (`SUBMISSION_ID=git:<pr>`) holds the pull request,
                    // not the IBS incident of the same number
                    let incidents: Vec<Submission> =
                        crate::incident::submissions_of(&p.string_settings()).into_iter().collect();
                    if let Err(e) = core.store.note_product(id, &incidents, &p.status) {
                        tracing::warn!("scheduled product {id}: {e}");
                    }
                    if p.is_scheduling() {
                        noted.insert(id, incidents);
                        next.push(id);
                    } else {
                        // its jobs exist now: whatever they say is decided on them, with them
                        let incidents = noted.remove(&id).unwrap_or(incidents);
                        incidents.into_iter().for_each(|i| core.schedule(i));
                    }
                }
                Ok(None) => {
                    let _ = core.store.note_product(id, &[], "gone");
                }
                Err(e) if !e.is_transient() => {
                    // openQA repeats a refusal: asking every 500 ms for an hour only fills the log.
                    // openQA (4.6 in Debian 12) shows scheduled products to operators only: without
                    // their API key the product's incidents cannot be known, so nothing waits for it.
                    let hint = if matches!(e.status(), Some(401 | 403)) {
                        " (openQA shows scheduled products only with an operator's openqa_api_key and openqa_api_secret)"
                    } else {
                        ""
                    };
                    core.refused(
                        &e.into(),
                        format!(
                            "scheduled product {id}: not followed, its incidents do not wait for it{hint}"
                        ),
                    );
                }
                Err(e) => {
                    tracing::warn!("cannot look at scheduled product {id}, retrying: {e}");
                    next.push(id);
                }
            }
        }
        todo = next;
        if std::mem::take(&mut busy) {
            core.busy.fetch_sub(1, Relaxed);
        }
        if !todo.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if busy {
        core.busy.fetch_sub(1, Relaxed);
    }
}

/// Follows clone chains the settings queries did not list. A clone that is gone (404) simply
/// stays missing; one that is never reached means no verdict.
async fn follow_clones(
    client: &OpenQaClient,
    jobs: &mut Vec<Job>,
    asked: &mut HashSet<u64>,
) -> Result<(), EngineError> {
    for round in 0.. {
        let known: HashSet<u64> = jobs.iter().map(|j| j.id).collect();
        let missing: Vec<u64> = jobs
            .iter()
            .filter_map(|j| j.clone_id)
            .filter(|c| !known.contains(c) && !asked.contains(c))
            .collect();
        if missing.is_empty() {
            break;
        }
        if round == MAX_CLONE_ROUNDS {
            return Err(EngineError::Incomplete(format!(
                "clone chains longer than {MAX_CLONE_ROUNDS} restarts"
            )));
        }
        asked.extend(&missing);
        jobs.extend(client.jobs(&missing).await?);
    }
    Ok(())
}

async fn intake(core: Arc<Core>, mut rx: mpsc::Receiver<Event>) {
    let mut batch = Vec::with_capacity(INTAKE_BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, INTAKE_BATCH) => if n == 0 { return },
            _ = core.until_shutdown() => return,
        }
        let n = batch.len();
        core.stats.events.fetch_add(n as u64, Relaxed);
        // the plugin's intake: what could not be stored is caught up by reconciliation
        let _ = core.take_events(std::mem::take(&mut batch)).await;
        core.busy.fetch_sub(n, Relaxed);
    }
}

async fn checker(core: Arc<Core>) {
    loop {
        tokio::select! {
            _ = core.check_wake.notified() => {}
            _ = core.until_shutdown() => return,
        }
        tokio::time::sleep(CHECK_GATHER).await;
        core.check_waiting().await;
    }
}

async fn reconcile(core: Arc<Core>) {
    let interval = Duration::from_secs(core.cfg.reconcile_interval_s);
    // on start: every incident left pending (a process killed after storing an event's mark,
    // before deciding) is evaluated at once, not one interval later
    let mut first = true;
    loop {
        let claimed = if first {
            // marked before this core existed: not being evaluated by this process
            let since_start = crate::store::now_ms() - core.started_ms + 1;
            core.store.claim_stale_pending(since_start)
        } else {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = core.until_shutdown() => return,
            }
            core.store.claim_stale_pending(interval.as_millis() as i64)
        };
        match claimed {
            Ok(incidents) => incidents.into_iter().for_each(|i| core.schedule(i)),
            Err(e) => tracing::warn!("reconciliation: {e}"),
        }
        // about once an interval among all processes of the state directory, also at start:
        // prefork workers start their engines one by one as events reach them, and each one
        // reading every job created since the last catch-up cost openQA hundreds of ms (6 workers:
        // last set_done -> incident.done p99 394 ms, 57 ms without). After a longer stop, at once.
        let gap = interval.mul_f64(0.9);
        first = false;
        if let Err(e) = core.catch_up(gap).await {
            tracing::warn!("catch-up: {e}");
        }
        core.audit_relied_comments(interval).await.into_iter().for_each(|i| core.schedule(i));
        if let Err(e) = core.store.forget_finished_jobs(FINISHED_JOBS_KEPT.as_millis() as i64) {
            tracing::warn!("reconciliation: {e}");
        }
        if core.cfg.retention_days > 0 {
            let keep = Duration::from_secs(core.cfg.retention_days.saturating_mul(86_400));
            let cutoff = std::time::SystemTime::now().checked_sub(keep).unwrap_or(std::time::UNIX_EPOCH);
            let cutoff = humantime::format_rfc3339_seconds(cutoff).to_string();
            match core.store.prune(&cutoff) {
                Ok(0) => {}
                Ok(n) => tracing::info!("retention: removed {n} decisions decided before {cutoff}"),
                Err(e) => tracing::warn!("retention: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_cache_stays_within_its_bytes_whatever_the_jobs_list() {
        let mut cache = JobCache::default();
        // aggregate jobs listing 60 incidents each cost far more than an incident's own job
        let listed: Vec<Submission> = (0..60).map(Submission::ibs).collect();
        for job in 0..100_000u64 {
            cache.insert(job, listed.clone());
            assert!(cache.bytes <= JOB_CACHE_BYTES);
        }
        assert!(cache.map.len() < 100_000, "started over when full");
        let kept: usize = cache.map.values().map(|s| JobCache::cost(s)).sum();
        assert_eq!(kept, cache.bytes, "the estimate follows what is held");
        cache.insert(7, vec![Submission::ibs(1)]);
        cache.insert(7, vec![Submission::ibs(1)]);
        let kept: usize = cache.map.values().map(|s| JobCache::cost(s)).sum();
        assert_eq!(kept, cache.bytes, "a replaced entry is not counted twice");
    }
}
