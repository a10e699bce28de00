//! A typed client for the read routes of openQA's REST API that the verdict needs.
//!
//! Reads are public on openQA, but requests are signed anyway when a key and secret are configured
//! (the server ignores bad credentials on read routes, so signing never hurts). Every request goes
//! through one semaphore so that a burst of events cannot open more than `concurrency` connections
//! to the web UI; transient failures (connection errors, timeouts, 5xx) are retried with exponential
//! backoff, everything else is reported at once with the route that failed.

use crate::config::{Config, Secret};
use crate::openqa::auth;
use crate::openqa::model::{Comment, Job, JobEnvelope, JobGroup, JobIds, JobList, ScheduledProduct};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// Ids per `GET /api/v1/jobs?ids=` request: keeps the request line below Mojolicious' 8 KiB
/// limit even for 10-digit ids (each costs up to 13 bytes with its `%2C`: 6.5 KiB).
pub const IDS_PER_REQUEST: usize = 500;

/// The `limit` sent with `job_settings/jobs?value=`: openQA caps exact-value lookups at
/// `generic_default_limit` rows unless asked for more, and silently clamps to `generic_max_limit`.
pub const SETTINGS_VALUE_LIMIT: usize = 10_000;

/// Jobs asked per page of `GET /api/v1/jobs?build=`: upstream's default page. openQA may answer
/// fewer (`generic_max_limit`), so the end is read from its `Link` header, never from the count.
pub const BUILD_PAGE: usize = 1000;

/// Pages read for one build at most; a build beyond this many jobs means no verdict.
const MAX_BUILD_PAGES: usize = 200;

/// Route shown in errors is cut here: an `ids=` query of a full chunk says nothing more after that.
const ROUTE_SHOWN_MAX: usize = 160;

/// How often and how patiently transient failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Delay before the first retry; doubled before each further one.
    pub base_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { retries: 3, base_delay: Duration::from_millis(100) }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `retry` (1 = the first retry).
    pub fn delay_before(&self, retry: u32) -> Duration {
        self.base_delay.saturating_mul(1 << retry.saturating_sub(1).min(16))
    }
}

/// A failed openQA API call. `route` is `METHOD /path?query` relative to the configured openQA URL;
/// no variant ever carries a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The client cannot be built from the configuration.
    Config(String),
    /// No HTTP answer (connection refused, reset, timeout), after `attempts` attempts.
    Transport { route: String, detail: String, attempts: u32 },
    /// An HTTP status that is not success (and not a 404 the caller treats as "gone").
    Status { route: String, status: u16, message: String, attempts: u32 },
    /// A success status whose body is not what the route returns.
    Malformed { route: String, detail: String },
}

impl ApiError {
    pub fn route(&self) -> Option<&str> {
        match self {
            ApiError::Config(_) => None,
            ApiError::Transport { route, .. }
            | ApiError::Status { route, .. }
            | ApiError::Malformed { route, .. } => Some(route),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Worth trying again later: the service was unreachable or failed, rather than refusing.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Transport { .. } => true,
            ApiError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tries = |n: u32| {
            if n > 1 {
                format!(" (after {n} attempts)")
            } else {
                String::new()
            }
        };
        match self {
            ApiError::Config(msg) => write!(f, "openQA client: {msg}"),
            ApiError::Transport { route, detail, attempts } => {
                write!(f, "{route}: no response{}: {detail}", tries(*attempts))
            }
            ApiError::Status { route, status, message, attempts } => {
                write!(f, "{route}: HTTP {status}{}", tries(*attempts))?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            ApiError::Malformed { route, detail } => write!(f, "{route}: malformed body: {detail}"),
        }
    }
}

impl std::error::Error for ApiError {}

struct Inner {
    http: reqwest::Client,
    /// The configured openQA URL without a trailing slash; routes are appended to it.
    base: String,
    /// The path part of `base` (e.g. `/openqa` behind a proxy): openQA signs it with the route.
    base_path: String,
    credentials: Option<(String, Secret)>,
    limiter: Semaphore,
    concurrency: usize,
    requests: AtomicU64,
    /// What `job_settings/jobs` understands, learnt from the first answer (see [`SettingsQuery`]).
    settings_query: AtomicU8,
    /// The most rows one list answer of openQA held: its `generic_max_limit` is at least that, so a
    /// `job_settings/jobs?value=` answer with fewer rows was not cut (see `prove_uncut`).
    rows_seen: AtomicU64,
}

/// How `job_settings/jobs` is asked for an exact value. openQA before the array job settings
/// (upstream 2025-09-30, e.g. Debian 12's 4.6.1674490999) only knows `list_value` and answers
/// `value=` with 400 "list_value missing"; newer ones know both. `list_value` would do on both for a
/// single-valued setting, but it only searches the newest `job_settings_max_recent_jobs` jobs, so
/// `value=` is used where openQA has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingsQuery {
    /// Not asked yet.
    Unknown,
    /// `value=` works.
    Value,
    /// Only `list_value=`: an old openQA.
    ListValueOnly,
}

impl SettingsQuery {
    pub fn as_str(self) -> &'static str {
        match self {
            SettingsQuery::Unknown => "unknown",
            SettingsQuery::Value => "value",
            SettingsQuery::ListValueOnly => "list_value",
        }
    }
}

/// The openQA REST client. Cheap to clone: clones share the connection pool, the in-flight limit
/// and the request counter.
#[derive(Clone)]
pub struct OpenQaClient {
    inner: Arc<Inner>,
    retry: RetryPolicy,
}

impl fmt::Debug for OpenQaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenQaClient")
            .field("base", &crate::config::redact_url(&self.inner.base))
            .field("signed", &self.inner.credentials.is_some())
            .field("concurrency", &self.inner.concurrency)
            .field("retry", &self.retry)
            .finish()
    }
}

/// A response that arrived (any status), with its body read.
struct Reply {
    status: u16,
    body: Vec<u8>,
    /// The `Link` header: openQA's paginated lists name their next page there.
    link: Option<String>,
    /// Attempts it took, this one included.
    attempts: u32,
}

impl OpenQaClient {
    pub fn new(config: &Config) -> Result<Self, ApiError> {
        let base = config.openqa_url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| ApiError::Config(format!("openqa_url is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ApiError::Config("openqa_url must be an http:// or https:// URL".into()));
        }
        let base_path = parsed.path().trim_end_matches('/').to_string();
        let credentials = match (&config.openqa_api_key, &config.openqa_api_secret) {
            (Some(key), Some(secret)) if !key.is_empty() && !secret.is_empty() => {
                Some((key.clone(), secret.clone()))
            }
            _ => None,
        };
        let concurrency = config.concurrency.max(1);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.http_timeout_s.max(1)))
            .connect_timeout(Duration::from_secs(config.http_timeout_s.clamp(1, 10)))
            .user_agent(concat!("incident-gate/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(concurrency)
            // openQA's prefork workers serve one connection each (`-c 1`): an idle kept-alive
            // connection of ours holds a whole worker, so none stays idle past one burst
            .pool_idle_timeout(Duration::from_millis(300))
            .build()
            .map_err(|e| ApiError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(OpenQaClient {
            inner: Arc::new(Inner {
                http,
                base,
                base_path,
                credentials,
                limiter: Semaphore::new(concurrency),
                concurrency,
                requests: AtomicU64::new(0),
                settings_query: AtomicU8::new(0),
                rows_seen: AtomicU64::new(0),
            }),
            retry: RetryPolicy::default(),
        })
    }

    /// The same client with another retry policy (tests use fewer and shorter retries).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// HTTP requests sent so far by this client and its clones, retries included.
    pub fn requests_made(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// `GET /api/v1/jobs/<id>`; `Ok(None)` when openQA answers 404 (the job was deleted or never existed).
    pub async fn job(&self, id: u64) -> Result<Option<Job>, ApiError> {
        let path = format!("/api/v1/jobs/{id}");
        let Some(envelope) = self.get_json::<JobEnvelope>(&path, &[], true).await? else {
            return Ok(None);
        };
        Ok(Some(envelope.job))
    }

    /// `GET /api/v1/jobs?ids=...&limit=500` for each chunk of [`IDS_PER_REQUEST`] distinct ids,
    /// chunks fetched concurrently (bounded by `concurrency`). Jobs that no longer exist are simply
    /// absent; the result is sorted by id. No request at all for an empty list: `GET /api/v1/jobs`
    /// without `ids` would list every job of the instance. openQA cuts the list at `limit`
    /// (`generic_default_limit` when none is sent) and clamps that to `generic_max_limit`: an
    /// answer whose `Link` header names a next page is an error, since the jobs left out would
    /// pass for deleted ones.
    pub async fn jobs(&self, ids: &[u64]) -> Result<Vec<Job>, ApiError> {
        let mut seen = HashSet::with_capacity(ids.len());
        let unique: Vec<u64> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        let chunks: Vec<String> = unique
            .chunks(IDS_PER_REQUEST)
            .map(|chunk| chunk.iter().map(u64::to_string).collect::<Vec<_>>().join(","))
            .collect();
        let lists: Vec<Vec<Job>> = stream::iter(chunks)
            .map(|ids| async move {
                let limit = IDS_PER_REQUEST.to_string();
                let query = [("ids", ids.as_str()), ("limit", limit.as_str())];
                let (list, link) = self.get_page::<JobList>("/api/v1/jobs", &query).await?;
                self.saw_rows(list.jobs.len());
                if link.as_deref().is_some_and(link_has_next) {
                    let asked = ids.split(',').count();
                    return Err(ApiError::Malformed {
                        route: shown_route("GET", "/api/v1/jobs", &auth::encode_query(&query)),
                        detail: format!(
                            "the list was cut: {} of {asked} jobs, and a next page \
                             (openQA's [misc_limits] generic_max_limit is below {IDS_PER_REQUEST}?)",
                            list.jobs.len()
                        ),
                    });
                }
                Ok::<_, ApiError>(list.jobs)
            })
            .buffer_unordered(self.inner.concurrency)
            .try_collect()
            .await?;
        let mut jobs: Vec<Job> = lists.into_iter().flatten().collect();
        jobs.sort_by_key(|j| j.id);
        jobs.dedup_by_key(|j| j.id);
        Ok(jobs)
    }

    /// Ids of the jobs with setting `key` exactly equal to `value`, newest first, each once.
    /// The key is matched literally (no globs with `value=`). On an openQA that only knows
    /// `list_value` (learnt from its first answer and remembered), the value must be one word and
    /// the setting single-valued, as `INCIDENT_ID` is: `list_value` then matches it exactly.
    pub async fn job_ids_by_setting(&self, key: &str, value: &str) -> Result<Vec<u64>, ApiError> {
        if self.settings_query() != SettingsQuery::ListValueOnly {
            let limit = SETTINGS_VALUE_LIMIT.to_string();
            let query = [("key", key), ("value", value), ("limit", limit.as_str())];
            match self.job_settings_jobs(&query).await {
                Ok(ids) => {
                    self.set_settings_query(SettingsQuery::Value);
                    if ids.len() >= SETTINGS_VALUE_LIMIT {
                        // openQA cut the list: older jobs are missing, and a verdict over them
                        // would be one on partial data.
                        return Err(ApiError::Malformed {
                            route: format!("GET /api/v1/job_settings/jobs?key={key}"),
                            detail: format!(
                                "{} rows, the most openQA answers: the list may be cut",
                                ids.len()
                            ),
                        });
                    }
                    self.prove_uncut(key, ids.len()).await?;
                    return Ok(dedupe(ids));
                }
                Err(ApiError::Status { status: 400, ref message, .. })
                    if message.contains("list_value missing") =>
                {
                    tracing::info!(
                        "openQA answers job_settings/jobs?value= with 400 ({message}): an openQA before \
                         2025-09-30; asking with list_value= from now on"
                    );
                    self.set_settings_query(SettingsQuery::ListValueOnly);
                }
                Err(e) => return Err(e),
            }
        }
        let ids = self.job_settings_jobs(&[("key", key), ("list_value", value)]).await?;
        Ok(dedupe(ids))
    }

    fn saw_rows(&self, rows: usize) {
        self.inner.rows_seen.fetch_max(rows as u64, Ordering::Relaxed);
    }

    /// Proves that a `job_settings/jobs?value=` answer of `rows` rows was not cut. openQA answers
    /// at most `min(generic_max_limit, limit)` rows, newest first, and says nothing when it cut
    /// (no `Link` header): `rows` below the limit asked for proves nothing while the admin's
    /// `generic_max_limit` is unknown. Every list route is clamped to the same limit, so an answer
    /// of more rows than `rows` anywhere proves it; when none was seen yet, `GET
    /// /api/v1/jobs?limit=<rows+1>` is asked once (remembered for the client's life): fewer jobs
    /// with a next page means the limit is `rows`, and the settings answer was cut.
    async fn prove_uncut(&self, key: &str, rows: usize) -> Result<(), ApiError> {
        if rows == 0 || (rows as u64) < self.inner.rows_seen.load(Ordering::Relaxed) {
            return Ok(());
        }
        let limit = (rows + 1).to_string();
        let (page, link) = self.get_page::<JobList>("/api/v1/jobs", &[("limit", limit.as_str())]).await?;
        let jobs = page.jobs;
        self.saw_rows(jobs.len());
        // more jobs than the answer had rows, or (a `Link` header naming no next page) every job
        // of the instance: nothing was left out
        if jobs.len() > rows || link.as_deref().is_some_and(|l| !link_has_next(l)) {
            return Ok(());
        }
        Err(ApiError::Malformed {
            route: format!("GET /api/v1/job_settings/jobs?key={key}"),
            detail: format!(
                "{rows} rows, and openQA answers no list longer than {} (its [misc_limits] \
                 generic_max_limit): older jobs may be missing; raise generic_max_limit",
                jobs.len()
            ),
        })
    }

    /// What this client learnt about `job_settings/jobs` (shown in status output).
    pub fn settings_query(&self) -> SettingsQuery {
        match self.inner.settings_query.load(Ordering::Relaxed) {
            1 => SettingsQuery::Value,
            2 => SettingsQuery::ListValueOnly,
            _ => SettingsQuery::Unknown,
        }
    }

    fn set_settings_query(&self, q: SettingsQuery) {
        let v = match q {
            SettingsQuery::Unknown => 0,
            SettingsQuery::Value => 1,
            SettingsQuery::ListValueOnly => 2,
        };
        self.inner.settings_query.store(v, Ordering::Relaxed);
    }

    /// Ids of the jobs whose setting `key` (may contain `*` globs) is a comma-separated list with
    /// `list_value` as one whole element, newest first, each once. openQA only looks at its most
    /// recent `job_settings_max_recent_jobs` (default 20000) jobs for this query.
    pub async fn job_ids_by_list_setting(&self, key: &str, list_value: &str) -> Result<Vec<u64>, ApiError> {
        let ids = self.job_settings_jobs(&[("key", key), ("list_value", list_value)]).await?;
        Ok(dedupe(ids))
    }

    async fn job_settings_jobs(&self, query: &[(&str, &str)]) -> Result<Vec<u64>, ApiError> {
        let list = self.get_json::<JobIds>("/api/v1/job_settings/jobs", query, false).await?;
        Ok(list.map(|l| l.jobs).unwrap_or_default())
    }

    /// Every job of aggregate build `build` of one product (DISTRI, VERSION, FLAVOR, ARCH):
    /// `GET /api/v1/jobs?build=&distri=&version=&flavor=&arch=`, which openQA 4.6 (Debian 12) and
    /// current openQA both answer newest first, one page at a time. Pages go on below the lowest id
    /// seen (`before=`), so jobs created meanwhile cannot push one out of view; the answer is
    /// complete only when openQA's `Link` header names no next page (or, without a `Link` header,
    /// when a page comes back empty). Sorted by id.
    pub async fn jobs_of_build(&self, build: &str, product: [&str; 4]) -> Result<Vec<Job>, ApiError> {
        self.build_jobs(build, Some(product)).await
    }

    /// Every job of `build` whatever its product (`GET /api/v1/jobs?build=`), paged as
    /// [`Self::jobs_of_build`]: an incident's own build, `:<incident>:<package>`.
    pub async fn jobs_of_any_product(&self, build: &str) -> Result<Vec<Job>, ApiError> {
        self.build_jobs(build, None).await
    }

    async fn build_jobs(&self, build: &str, product: Option<[&str; 4]>) -> Result<Vec<Job>, ApiError> {
        // (query parameter, setting, value)
        let product = product.map(|[distri, version, flavor, arch]| {
            [
                ("distri", "DISTRI", distri),
                ("version", "VERSION", version),
                ("flavor", "FLAVOR", flavor),
                ("arch", "ARCH", arch),
            ]
        });
        let limit = BUILD_PAGE.to_string();
        let mut before: Option<u64> = None;
        let mut jobs: Vec<Job> = Vec::new();
        for _ in 0..MAX_BUILD_PAGES {
            let before_text = before.map(|b| b.to_string());
            let mut query = vec![("build", build)];
            query.extend(product.iter().flatten().map(|(param, _, value)| (*param, *value)));
            query.push(("limit", limit.as_str()));
            if let Some(b) = &before_text {
                query.push(("before", b.as_str()));
            }
            let (page, link) = self.get_page::<JobList>("/api/v1/jobs", &query).await?;
            self.saw_rows(page.jobs.len());
            let lowest = page.jobs.iter().map(|j| j.id).min();
            let route = || shown_route("GET", "/api/v1/jobs", &auth::encode_query(&query));
            if let (Some(lowest), Some(before)) = (lowest, before) {
                if lowest >= before {
                    return Err(ApiError::Malformed {
                        route: route(),
                        detail: format!("job {lowest} is not below before={before}: paging would not end"),
                    });
                }
            }
            let more = match link {
                Some(link) => link_has_next(&link),
                None => lowest.is_some(),
            };
            // an empty string filter is no filter to openQA: keep only the product asked for
            jobs.extend(page.jobs.into_iter().filter(|j| {
                j.setting("BUILD") == build
                    && product.iter().flatten().all(|(_, setting, value)| j.setting(setting) == *value)
            }));
            match (more, lowest) {
                (true, Some(lowest)) => before = Some(lowest),
                (true, None) => {
                    return Err(ApiError::Malformed {
                        route: route(),
                        detail: "an empty page that names a next one".into(),
                    })
                }
                (false, _) => {
                    jobs.sort_by_key(|j| j.id);
                    jobs.dedup_by_key(|j| j.id);
                    return Ok(jobs);
                }
            }
        }
        Err(ApiError::Malformed {
            route: format!("GET /api/v1/jobs?build={build}"),
            detail: format!("more than {MAX_BUILD_PAGES} pages of {BUILD_PAGE} jobs"),
        })
    }

    /// One page of `GET /api/v1/jobs?after=A[&before=B]&limit=L`: jobs with `A < id < B`, the
    /// highest ids first when there are more than `limit` (openQA 4.6 in Debian 12 and current
    /// openQA alike order by id descending and know no other order, nor a filter on finishing
    /// time), and whether openQA's `Link` header names a next page (without one: whether the page
    /// came back full). openQA ignores `after=0` and `before=0`, so they are not sent.
    pub async fn jobs_between(
        &self,
        after: u64,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Job>, bool), ApiError> {
        let (after, before, limit_text) =
            (after.to_string(), before.map(|b| b.to_string()), limit.to_string());
        let mut query = vec![("limit", limit_text.as_str())];
        if after != "0" {
            query.push(("after", after.as_str()));
        }
        if let Some(b) = before.as_deref().filter(|b| *b != "0") {
            query.push(("before", b));
        }
        let (page, link) = self.get_page::<JobList>("/api/v1/jobs", &query).await?;
        self.saw_rows(page.jobs.len());
        let more = match link {
            Some(link) => link_has_next(&link),
            None => page.jobs.len() >= limit,
        };
        Ok((page.jobs, more))
    }

    /// GETs one page of a paginated list: the decoded 200 body and the `Link` header.
    async fn get_page<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<(T, Option<String>), ApiError> {
        let query = auth::encode_query(query);
        let route = shown_route("GET", path, &query);
        let reply = self.send_with_retries(path, &query, &route).await?;
        match reply.status {
            200..=299 => Ok((decode(&route, &reply.body)?, reply.link)),
            status => Err(ApiError::Status {
                route,
                status,
                message: error_message(&reply.body),
                attempts: reply.attempts,
            }),
        }
    }

    /// `GET /api/v1/jobs/<id>/comments`, oldest first; a job that is gone has no comments.
    pub async fn comments(&self, job_id: u64) -> Result<Vec<Comment>, ApiError> {
        let path = format!("/api/v1/jobs/{job_id}/comments");
        Ok(self.get_json::<Vec<Comment>>(&path, &[], true).await?.unwrap_or_default())
    }

    /// `GET /api/v1/job_groups/<id>`: one job group (openQA answers a list of one); None when gone.
    pub async fn job_group(&self, id: u64) -> Result<Option<JobGroup>, ApiError> {
        let path = format!("/api/v1/job_groups/{id}");
        Ok(self.get_json::<Vec<JobGroup>>(&path, &[], true).await?.and_then(|g| g.into_iter().next()))
    }

    /// `GET /api/v1/isos/<id>?include_job_ids=1`: a scheduled product, None when it is gone.
    pub async fn scheduled_product(&self, id: u64) -> Result<Option<ScheduledProduct>, ApiError> {
        let path = format!("/api/v1/isos/{id}");
        self.get_json::<ScheduledProduct>(&path, &[("include_job_ids", "1")], true).await
    }

    /// `GET /api/v1/job_groups`: every job group.
    pub async fn job_groups(&self) -> Result<Vec<JobGroup>, ApiError> {
        Ok(self.get_json::<Vec<JobGroup>>("/api/v1/job_groups", &[], false).await?.unwrap_or_default())
    }

    /// GETs `path?query` and decodes a 200 body as `T`. A 404 is `Ok(None)` when `not_found_is_none`.
    async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        not_found_is_none: bool,
    ) -> Result<Option<T>, ApiError> {
        let query = auth::encode_query(query);
        let route = shown_route("GET", path, &query);
        let reply = self.send_with_retries(path, &query, &route).await?;
        match reply.status {
            200..=299 => decode(&route, &reply.body).map(Some),
            404 if not_found_is_none => Ok(None),
            status => Err(ApiError::Status {
                route,
                status,
                message: error_message(&reply.body),
                attempts: reply.attempts,
            }),
        }
    }

    /// Sends one GET, retrying transient failures. Returns every answer that is not a 5xx; a 5xx
    /// that persists and a transport failure that persists become errors.
    async fn send_with_retries(&self, path: &str, query: &str, route: &str) -> Result<Reply, ApiError> {
        let attempts = self.retry.retries + 1;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.send_once(path, query).await;
            let failure = match outcome {
                Ok(reply) if reply.status < 500 => return Ok(Reply { attempts: attempt, ..reply }),
                Ok(reply) => ApiError::Status {
                    route: route.to_string(),
                    status: reply.status,
                    message: error_message(&reply.body),
                    attempts: attempt,
                },
                Err(detail) => ApiError::Transport { route: route.to_string(), detail, attempts: attempt },
            };
            if attempt >= attempts {
                return Err(failure);
            }
            let delay = self.retry.delay_before(attempt);
            tracing::debug!(error = %failure, delay_ms = delay.as_millis() as u64, "openQA request failed, retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// One HTTP exchange under the in-flight limit; the permit is released before any backoff.
    async fn send_once(&self, path: &str, query: &str) -> Result<Reply, String> {
        let inner = &*self.inner;
        // The semaphore lives as long as the client and is never closed.
        let _permit = inner.limiter.acquire().await.map_err(|_| "client is shutting down".to_string())?;
        let mut url = format!("{}{path}", inner.base);
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        let mut request = inner.http.get(&url).header("Accept", "application/json");
        if let Some((key, secret)) = &inner.credentials {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let signed_path = format!("{}{path}", inner.base_path);
            for (name, value) in auth::auth_headers(key, secret.expose(), &signed_path, query, now) {
                request = request.header(name, value);
            }
        }
        inner.requests.fetch_add(1, Ordering::Relaxed);
        let response = request.send().await.map_err(describe)?;
        let status = response.status().as_u16();
        let link = response.headers().get("link").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = response.bytes().await.map_err(describe)?;
        Ok(Reply { status, body: body.to_vec(), link, attempts: 1 })
    }
}

/// Whether a `Link` header (`<url>; rel="first", <url>; rel="next"`, as Mojolicious writes it)
/// names a next page. URLs are skipped whole: Mojolicious leaves commas in them unescaped.
fn link_has_next(link: &str) -> bool {
    let mut params = String::new();
    let mut rest = link;
    while let Some(open) = rest.find('<') {
        params.push_str(&rest[..open]);
        match rest[open..].find('>') {
            Some(close) => rest = &rest[open + close + 1..],
            None => return false,
        }
    }
    params.push_str(rest);
    params.split([',', ';']).any(|p| {
        let p = p.trim();
        p.eq_ignore_ascii_case("rel=\"next\"") || p.eq_ignore_ascii_case("rel=next")
    })
}

fn dedupe(ids: Vec<u64>) -> Vec<u64> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.into_iter().filter(|id| seen.insert(*id)).collect()
}

fn shown_route(method: &str, path: &str, query: &str) -> String {
    let mut route =
        if query.is_empty() { format!("{method} {path}") } else { format!("{method} {path}?{query}") };
    if route.len() > ROUTE_SHOWN_MAX {
        let mut cut = ROUTE_SHOWN_MAX;
        while !route.is_char_boundary(cut) {
            cut -= 1;
        }
        route.truncate(cut);
        route.push_str("...");
    }
    route
}

fn decode<T: DeserializeOwned>(route: &str, body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Malformed {
        route: route.to_string(),
        detail: format!("{e} (body starts with {:?})", snippet(body)),
    })
}

/// openQA's `{"error": ...}` text when the body has one, else the start of the body.
fn error_message(body: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(serde_json::Value::String(e)) = map.get("error") {
            return e.trim_end().chars().take(300).collect();
        }
    }
    snippet(body)
}

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(80)]).trim().to_string()
}

/// A reqwest error as text without the URL (which could carry user info) but with its causes,
/// since "error sending request" alone does not say whether the connection was refused or timed out.
fn describe(e: reqwest::Error) -> String {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if timeout && !text.contains("timed out") {
        text.push_str(" (timed out)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_in_errors_are_short_and_named() {
        let ids: Vec<String> = (1000..1100).map(|i| i.to_string()).collect();
        let q = auth::encode_query(&[("ids", ids.join(","))]);
        let r = shown_route("GET", "/api/v1/jobs", &q);
        assert!(
            r.starts_with("GET /api/v1/jobs?ids=1000%2C1001") && r.ends_with("...") && r.len() < 170,
            "{r}"
        );
        let e = ApiError::Malformed { route: "GET /api/v1/jobs?ids=1%2C2".into(), detail: "x".into() };
        assert_eq!(e.to_string(), "GET /api/v1/jobs?ids=1%2C2: malformed body: x");
        let e = ApiError::Status {
            route: "GET /api/v1/jobs/1".into(),
            status: 503,
            message: String::new(),
            attempts: 4,
        };
        assert_eq!(e.to_string(), "GET /api/v1/jobs/1: HTTP 503 (after 4 attempts)");
        assert!(e.is_transient());
    }

    #[test]
    fn error_messages_prefer_openqa_error_text() {
        assert_eq!(
            error_message(br#"{"error":"Erroneous parameters (result invalid)\n","error_status":400}"#),
            "Erroneous parameters (result invalid)"
        );
        assert_eq!(error_message(b"<html>Bad Gateway</html>"), "<html>Bad Gateway</html>");
    }

    #[test]
    fn next_pages_are_read_from_the_link_header() {
        // Mojolicious' rendering of openQA's pagination_links_header
        let more = "<http://o/api/v1/jobs?build=b&limit=2&offset=0>; rel=\"first\", \
                    <http://o/api/v1/jobs?build=b&limit=2&offset=2>; rel=\"next\"";
        assert!(link_has_next(more));
        assert!(!link_has_next("<http://o/api/v1/jobs?build=b&limit=2&offset=0>; rel=\"first\""));
        assert!(!link_has_next("<http://o/api/v1/jobs?next=1>; rel=\"prev\""));
        assert!(!link_has_next("<http://o/api/v1/jobs?ids=1,rel=\"next\">; rel=\"first\""));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        /// Whatever openQA (or a proxy) puts into the URLs, only the parameters outside them count.
        #[test]
        fn link_headers_with_any_urls(
            first in "[^>]{0,30}([,;] ?rel=\"?next\"?)?[^>]{0,30}",
            next in "[^>]{0,60}",
            junk in "\\PC{0,80}",
        ) {
            let only_first = format!("<{first}>; rel=\"first\"");
            proptest::prop_assert!(!link_has_next(&only_first), "{}", only_first);
            let with_next = format!("<{first}>; rel=\"first\", <{next}>; rel=\"next\"");
            proptest::prop_assert!(link_has_next(&with_next), "{}", with_next);
            let _ = link_has_next(&junk);
            proptest::prop_assert!(error_message(junk.as_bytes()).len() <= junk.len().max(1) + 16);
        }
    }

    #[test]
    fn config_errors() {
        let config = Config { openqa_url: "not a url".into(), ..Config::default() };
        assert!(matches!(OpenQaClient::new(&config), Err(ApiError::Config(_))));
        let config = Config { openqa_url: "http://openqa.example.com/prefix/".into(), ..Config::default() };
        let client = OpenQaClient::new(&config).expect("client");
        assert_eq!(client.inner.base_path, "/prefix");
        assert_eq!(client.inner.base, "http://openqa.example.com/prefix");
    }
}
