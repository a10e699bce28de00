//! Catch-up from openQA itself: at engine start and every reconciliation interval, ask openQA for
//! the jobs that ended since the last catch-up and hand their incidents to the engine as if their
//! events had come. Events get lost (a web UI worker killed, the web UI, the listener or the broker
//! down for an hour); openQA's job table does not.
//!
//! openQA's `GET /api/v1/jobs` filters by `state`, `result`, `ids` and by id (`after`, `before`),
//! never by finishing time, and answers highest ids first (Debian 12's 4.6.1674490999 and current
//! openQA alike, `complex_query`). Job ids grow with creation, not with finishing: a job created
//! early can end last. So a catch-up keeps two things in the state directory:
//!
//! - `after_id`: every job up to it was looked at. New ids are read in windows of [`PAGE`] ids
//!   above it (`after=A&before=A+PAGE+1`, at most `PAGE` jobs, so one request each);
//! - the jobs of incidents that were not final when looked at (`catchup_jobs`): each catch-up asks
//!   for them by `ids=`, so one that ends after the window moved past it is still found. The
//!   lowest of them (less one) is the watermark shown in status: every incident job below it ended.
//!
//! PostgreSQL hands out ids at insert, visible at commit: a scheduling transaction still open can
//! hold a lower id than jobs already visible. `after_id` therefore only moves up to the newest id
//! the previous catch-up saw: every id at or below it is read twice, one interval apart.
//!
//! Requests per catch-up are capped by `catchup_max_requests`: at most half go to the jobs waited
//! on (least recently looked at first), the rest to new ids; a backlog is worked off over the
//! following catch-ups. Processes sharing a state directory take turns through a lease.

use crate::engine::{Core, EngineError};
use crate::events::{Event, EventKind};
use crate::incident::{submissions_of, Submission};
use crate::openqa::client::{ApiError, IDS_PER_REQUEST};
use crate::openqa::model::Job;
use crate::store::{CatchupEnd, CatchupStart};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Ids per window of new jobs, and jobs asked per page: openQA's default page
/// (`generic_default_limit`), well below its default `generic_max_limit`.
pub const PAGE: usize = 500;
/// How long a catch-up may run before another process may start one.
const LEASE: Duration = Duration::from_secs(600);

/// What one catch-up did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CatchupReport {
    /// openQA requests sent (each retried on a 5xx like every request of the client).
    pub requests: u64,
    /// Jobs of incidents found ended that no catch-up had taken before.
    pub ended_jobs: usize,
    /// Of those, jobs no decision counted yet: their incidents are evaluated.
    pub unheard_jobs: usize,
    /// Jobs of incidents found not final.
    pub waiting_jobs: usize,
    /// Where the next catch-up starts.
    pub after_id: Option<u64>,
    pub newest_seen: Option<u64>,
    /// Why it stopped early, when openQA failed.
    pub error: Option<String>,
}

/// What one catch-up saw.
struct Seen {
    budget: u64,
    requests: u64,
    /// Jobs of incidents, by id; a later answer replaces an earlier one.
    jobs: HashMap<u64, Job>,
}

impl Seen {
    fn spend(&mut self) -> bool {
        let ok = self.requests < self.budget;
        self.requests += u64::from(ok);
        ok
    }

    fn keep(&mut self, jobs: Vec<Job>) {
        for job in jobs {
            if !submissions_of(&job.settings).is_empty() {
                self.jobs.insert(job.id, job);
            }
        }
    }
}

/// One catch-up, unless another process runs one or one ended less than `min_gap` ago (`None`).
pub async fn catch_up(core: &Arc<Core>, min_gap: Duration) -> Result<Option<CatchupReport>, EngineError> {
    let max = u64::from(core.config().catchup_max_requests);
    if max == 0 {
        return Ok(None);
    }
    let store = core.store();
    let Some(start) = store.claim_catchup(min_gap.as_millis() as i64, LEASE.as_millis() as i64)? else {
        return Ok(None);
    };
    let outcome = run(core, start, max).await;
    if outcome.is_err() {
        // nothing recorded as taken: the next catch-up, here or in another process, reads the
        // same jobs; only the lease is given back (best effort: the store just failed)
        let _ = store.finish_catchup(&CatchupEnd::default());
    }
    outcome.map(Some)
}

async fn run(core: &Arc<Core>, start: CatchupStart, max: u64) -> Result<CatchupReport, EngineError> {
    let store = core.store();
    let client = core.client();
    let mut seen = Seen { budget: max, requests: 0, jobs: HashMap::new() };
    let mut failure: Option<ApiError> = None;

    // jobs seen running before: has any of them ended?
    let waited = store.catchup_waiting(IDS_PER_REQUEST * (max / 2) as usize)?;
    let (mut gone, mut rechecked) = (Vec::new(), HashSet::new());
    for chunk in waited.chunks(IDS_PER_REQUEST) {
        if !seen.spend() {
            break;
        }
        match client.jobs(chunk).await {
            Ok(jobs) => {
                let present: HashSet<u64> = jobs.iter().map(|j| j.id).collect();
                gone.extend(chunk.iter().filter(|id| !present.contains(id)));
                rechecked.extend(chunk.iter().copied());
                seen.keep(jobs);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }

    // new ids, window by window upwards from `after_id`
    let mut newest = start.newest_seen.unwrap_or(0);
    let mut base = start.after_id;
    let mut lo = base.unwrap_or(0);
    // ids above this were all in one answer of this catch-up: no window needed up to `newest`
    let mut top_from: Option<u64> = None;
    let mut page = PAGE;
    while failure.is_none() {
        if top_from.is_some_and(|t| lo >= t) {
            // what is above was in that answer; jobs created since are for the next catch-up
            lo = newest;
            break;
        }
        if !seen.spend() {
            break;
        }
        if base.is_none() {
            // a new state directory: start with openQA's newest page of jobs, not its history
            match client.jobs_between(0, None, page).await {
                Ok((jobs, more)) => {
                    let lowest = jobs.iter().map(|j| j.id).min().unwrap_or(0);
                    newest = newest.max(jobs.iter().map(|j| j.id).max().unwrap_or(0));
                    seen.keep(jobs);
                    base = Some(if more { lowest.saturating_sub(1) } else { 0 });
                    lo = newest;
                }
                Err(e) => failure = Some(e),
            }
            break;
        }
        if lo.saturating_add(page as u64) < newest {
            // inside ids known to exist: a window of `page` ids holds at most `page` jobs
            match client.jobs_between(lo, Some(lo + page as u64 + 1), page).await {
                Ok((jobs, true)) if jobs.is_empty() => {
                    failure = Some(malformed(lo, "an empty page that names a next one"));
                }
                Ok((jobs, true)) => {
                    // openQA answers fewer than asked (`generic_max_limit`): smaller windows
                    page = jobs.len();
                    seen.keep(jobs);
                }
                Ok((jobs, false)) => {
                    seen.keep(jobs);
                    lo += page as u64;
                }
                Err(e) => failure = Some(e),
            }
        } else {
            match client.jobs_between(lo, None, page).await {
                Ok((jobs, more)) => {
                    let lowest = jobs.iter().map(|j| j.id).min();
                    newest = newest.max(jobs.iter().map(|j| j.id).max().unwrap_or(0));
                    seen.keep(jobs);
                    match (more, lowest) {
                        (false, _) => {
                            lo = lo.max(newest);
                            break;
                        }
                        // the newest page above `lo`: the ids below it come window by window
                        (true, Some(lowest)) => top_from = Some(lowest.saturating_sub(1)),
                        (true, None) => failure = Some(malformed(lo, "an empty page that names a next one")),
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
    }
    // every id up to `lo` was read now; up to the previous newest it was read before as well
    let after_id = match (base, start.after_id, start.newest_seen) {
        (Some(b), Some(_), Some(previous)) => Some(b.max(lo.min(previous))),
        (b, _, _) => b,
    };

    let finals: Vec<u64> = seen.jobs.values().filter(|j| j.is_final()).map(|j| j.id).collect();
    let taken = store.catchup_taken(&finals)?;
    let ended: Vec<Job> =
        seen.jobs.values().filter(|j| j.is_final() && !taken.contains(&j.id)).cloned().collect();
    let mut end = CatchupEnd {
        after_id,
        newest_seen: (newest > 0).then_some(newest),
        waiting: seen.jobs.values().filter(|j| !j.is_final()).map(|j| j.id).collect(),
        ended: ended.iter().map(|j| j.id).collect(),
        still_waiting: rechecked
            .iter()
            .copied()
            .filter(|id| seen.jobs.get(id).is_some_and(|j| !j.is_final()))
            .collect(),
        gone,
        requests: seen.requests,
    };
    end.waiting.sort_unstable();
    end.ended.sort_unstable();
    // a job that the latest decision of each of its incidents counted, complete (so every job it
    // counted was final), was heard of already: evaluating again would say the same
    let mut latest: HashMap<Submission, Option<Vec<u64>>> = HashMap::new();
    let mut news: Vec<Job> = Vec::new();
    for job in ended {
        let mut known = true;
        for incident in submissions_of(&job.settings) {
            let counted = match latest.entry(incident) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(
                    store
                        .latest_decision(incident)?
                        .filter(|d| d.verdict.complete)
                        .map(|d| d.verdict.job_ids),
                ),
            };
            known &= counted.as_ref().is_some_and(|c| c.contains(&job.id));
        }
        if !known {
            news.push(job);
        }
    }
    let unheard_jobs = news.len();
    if !news.is_empty() {
        // the path of a job's done event: its incidents marked pending (durably) and evaluated;
        // a decision already made for the same verdict is not made again
        core.remember_jobs(&news);
        let event = Event {
            kind: EventKind::JobDone,
            jobs: news.iter().map(|j| j.id).collect(),
            deleted_comments: vec![],
            products: vec![],
        };
        core.take_events(vec![event]).await?;
    }
    store.finish_catchup(&end)?;
    Ok(CatchupReport {
        requests: seen.requests,
        ended_jobs: end.ended.len(),
        unheard_jobs,
        waiting_jobs: end.waiting.len(),
        after_id: end.after_id,
        newest_seen: end.newest_seen,
        error: failure.map(|e| e.to_string()),
    })
}

fn malformed(after: u64, detail: &str) -> ApiError {
    ApiError::Malformed { route: format!("GET /api/v1/jobs?after={after}"), detail: detail.into() }
}
