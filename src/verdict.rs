//! The verdict of DESIGN section 4, as pure functions: which jobs count for an incident, and
//! whether they say passed, failed, pending or nothing at all.

use crate::incident::{
    is_gitea_job, is_own_job, is_test_issues_key, parse_issue_list, parse_rrid, Kind, Submission,
};
use crate::openqa::model::{Comment, Job};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pending,
    Passed,
    Failed,
    NoJobs,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::NoJobs => "no_jobs",
        }
    }

    pub fn is_final(self) -> bool {
        self != Outcome::Pending
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: u64,
    pub passed: u64,
    pub softfailed: u64,
    pub failed: u64,
    pub accepted: u64,
    pub pending: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockingJob {
    pub id: u64,
    pub name: String,
    pub result: String,
    pub group: String,
    pub url: String,
}

/// Why a job counts or does not; `incident-gate check` prints these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobNote {
    pub id: u64,
    pub name: String,
    pub state: String,
    pub result: String,
    pub group: String,
    /// `incident`, `aggregate` or `unrelated`.
    pub role: String,
    pub counts: bool,
    pub why: String,
    /// The `acceptable_for` comment that made a failed job acceptable (its id in openQA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The submission's number: the IBS incident, or the Gitea pull request (see `kind`).
    pub incident: u64,
    /// Absent in decisions recorded before Gitea pull requests: those are IBS incidents.
    #[serde(default)]
    pub kind: Kind,
    /// Gitea: the commit the counted jobs tested (`GITEA_SHA`), and `owner/name` (`GITEA_REPO`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    pub request: Option<u64>,
    pub rrid: Option<String>,
    pub result: Outcome,
    pub jobs: Counts,
    pub blocking: Vec<BlockingJob>,
    /// Sorted ids of the jobs that count; part of the identity of a decision.
    pub job_ids: Vec<u64>,
    pub notes: Vec<JobNote>,
    /// Testing is finished: nothing more is expected (no scheduled product naming the incident is
    /// still being scheduled, the coverage policy is met, no quiet period runs, every job is
    /// final). Only a complete verdict is ever approved or declined; verdicts recorded before
    /// this field existed were taken as complete.
    #[serde(default = "complete_by_default")]
    pub complete: bool,
    /// What testing still waits for, and since when: why the verdict is not complete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<Wait>,
}

fn complete_by_default() -> bool {
    true
}

/// One thing an incident's testing still waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wait {
    /// `coverage` (a job the policy requires does not exist), `scheduling` (a scheduled product
    /// naming the incident is still being scheduled), `quiet` (jobs were created too recently),
    /// `running` (a counted job is not final), `restart` (openQA is about to restart a failed job).
    pub kind: String,
    pub what: String,
    /// RFC 3339 (or openQA's own timestamp for jobs), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

impl Wait {
    pub fn new(kind: &str, what: String, since: Option<String>) -> Wait {
        Wait { kind: kind.to_string(), what, since }
    }
}

/// One rule of the coverage policy (config key `coverage`): for the incident's own jobs of a
/// product matching the globs, what must exist besides them before the incident can pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoverageRule {
    /// Globs over DISTRI, VERSION, FLAVOR, ARCH.
    pub product: [String; 4],
    /// An aggregate job of the same DISTRI, VERSION and ARCH must list the incident.
    pub aggregate: bool,
    /// Own jobs of each of these flavors (same DISTRI, VERSION, ARCH) must exist.
    pub flavors: Vec<String>,
    /// Jobs (own or aggregate, same DISTRI, VERSION, ARCH) running each of these tests must exist.
    pub tests: Vec<String>,
}

impl CoverageRule {
    /// `DISTRI/VERSION/FLAVOR/ARCH: [aggregate] [flavors=A|B] [tests=x|y]`, e.g.
    /// `sle/15-SP6/*-Incidents/x86_64: aggregate flavors=Server-DVD-Incidents|Desktop-DVD-Incidents`.
    pub fn parse(text: &str) -> Result<CoverageRule, String> {
        let (product, rest) = text.split_once(':').ok_or("expected `DISTRI/VERSION/FLAVOR/ARCH: ...`")?;
        let parts: Vec<&str> = product.trim().split('/').map(str::trim).collect();
        let [d, v, f, a] = parts.as_slice() else {
            return Err(format!("`{}` is not DISTRI/VERSION/FLAVOR/ARCH", product.trim()));
        };
        let mut rule = CoverageRule {
            product: [d, v, f, a].map(|s| if s.is_empty() { "*".to_string() } else { s.to_string() }),
            aggregate: false,
            flavors: Vec::new(),
            tests: Vec::new(),
        };
        let list =
            |v: &str| v.split('|').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        for word in rest.split_whitespace() {
            match word.split_once('=') {
                None if word == "aggregate" => rule.aggregate = true,
                Some(("flavors", v)) => rule.flavors = list(v),
                Some(("tests", v)) => rule.tests = list(v),
                _ => return Err(format!("unknown requirement `{word}` (aggregate, flavors=A|B, tests=x|y)")),
            }
        }
        Ok(rule)
    }

    fn matches(&self, product: &Product) -> bool {
        self.product.iter().zip(product.iter()).all(|(g, v)| glob_match(g, v))
    }
}

/// What the coverage policy still misses for the counted jobs of `sel`: always at least one job
/// of the incident's own, then every requirement of each rule matching one of its own products.
/// Pure: whether those jobs passed is `judge`'s business.
pub fn missing_coverage(sel: &Selection, policy: &[CoverageRule]) -> Vec<String> {
    let incident = sel.submission;
    let own: Vec<&Job> = sel.counted.iter().copied().filter(|j| is_own_job(&j.settings, incident)).collect();
    if own.is_empty() {
        let n = incident.number;
        return vec![match incident.kind {
            Kind::Ibs => format!("a job of incident {n}'s own (INCIDENT_ID={n})"),
            Kind::Gitea => format!("a job of pull request git:{n}'s own (SUBMISSION_ID=git:{n})"),
        }];
    }
    let products: std::collections::BTreeSet<Product> = own.iter().map(|j| product_of(j)).collect();
    let same_base = |j: &Job, p: &Product| {
        j.setting("DISTRI") == p[0] && j.setting("VERSION") == p[1] && j.setting("ARCH") == p[3]
    };
    let mut missing = Vec::new();
    for product in &products {
        let base = format!("{} {} {}", product[0], product[1], product[3]);
        for rule in policy.iter().filter(|r| r.matches(product)) {
            if rule.aggregate
                && !sel.counted.iter().any(|j| !is_own_job(&j.settings, incident) && same_base(j, product))
            {
                missing.push(format!("an aggregate job listing incident {incident} for {base}"));
            }
            for flavor in &rule.flavors {
                if !own.iter().any(|j| same_base(j, product) && j.setting("FLAVOR") == flavor) {
                    missing.push(format!("jobs of flavor {flavor} for {base}"));
                }
            }
            for test in &rule.tests {
                if !sel.counted.iter().any(|j| same_base(j, product) && j.setting("TEST") == test) {
                    missing.push(format!("test {test} for {base}"));
                }
            }
        }
    }
    missing.sort();
    missing.dedup();
    missing
}

pub struct Rules<'a> {
    pub ignore_groups: &'a [String],
    pub openqa_url: &'a str,
}

/// The outcome of selection: the jobs that count, and a note for every job looked at.
pub struct Selection<'a> {
    pub incident: u64,
    pub submission: Submission,
    /// Gitea: the tested commit and repository of the counted jobs.
    pub sha: Option<String>,
    pub repo: Option<String>,
    pub counted: Vec<&'a Job>,
    pub request: Option<u64>,
    pub rrid: Option<String>,
    pub dropped: Vec<(&'a Job, &'static str, String)>,
}

impl Selection<'_> {
    /// Jobs whose comments decide whether they are acceptable: final and not ok.
    pub fn needs_comments(&self) -> Vec<u64> {
        self.counted.iter().filter(|j| j.is_final() && !j.is_ok()).map(|j| j.id).collect()
    }
}

/// `*` and `?` globs as used for the ignored job groups.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    wildcard_match(pattern, text, '*', '?')
}

/// Wildcard matching with `many` for any run of characters and `one` for any single character
/// (globs here, SQL `LIKE` in the openQA simulator).
pub fn wildcard_match(pattern: &str, text: &str, many: char, one: char) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != many && (p[pi] == one || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == many {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == many)
}

fn lists_incident(job: &Job, incident: u64) -> bool {
    !is_gitea_job(&job.settings)
        && job
            .settings
            .iter()
            .any(|(k, v)| is_test_issues_key(k) && parse_issue_list(v).any(|i| i == incident))
}

/// Aggregate builds are `YYYYMMDD-N`; compare them as numbers so `20261124-10` beats `-9`.
fn build_key(build: &str) -> (u64, u64) {
    let mut it = build.splitn(2, '-');
    let date = it.next().and_then(|d| d.parse().ok()).unwrap_or(0);
    let n = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    (date, n)
}

fn scenario(job: &Job) -> [&str; 7] {
    ["DISTRI", "VERSION", "FLAVOR", "ARCH", "MACHINE", "TEST", "BUILD"].map(|k| job.setting(k))
}

/// The product an aggregate build is scheduled for.
pub type Product = [String; 4];

pub fn product_of(job: &Job) -> Product {
    ["DISTRI", "VERSION", "FLAVOR", "ARCH"].map(|k| job.setting(k).to_string())
}

/// The ignore glob a job's group matches, if any.
fn ignored_by<'r>(job: &Job, rules: &'r Rules) -> Option<&'r String> {
    let group = job.group.as_deref().unwrap_or("");
    rules.ignore_groups.iter().find(|g| glob_match(g, group))
}

/// Rule 3's choice: the newest aggregate build listing `incident`, per product, among the jobs
/// that are not in an ignored group. The engine fetches these builds whole before judging.
pub fn newest_aggregate_builds(incident: u64, jobs: &[Job], rules: &Rules) -> HashMap<Product, String> {
    newest_aggregate_builds_of(Submission::ibs(incident), jobs, rules)
}

/// [`newest_aggregate_builds`] for any submission; aggregates list IBS incidents only.
pub fn newest_aggregate_builds_of(s: Submission, jobs: &[Job], rules: &Rules) -> HashMap<Product, String> {
    let aggregate = jobs
        .iter()
        .filter(|j| ignored_by(j, rules).is_none())
        .filter(|j| s.kind == Kind::Ibs && !is_own_job(&j.settings, s) && lists_incident(j, s.number));
    newest_builds(aggregate)
}

/// Ties on the date go to the build started last (the lowest job id of each build decides).
fn newest_builds<'a>(aggregate: impl Iterator<Item = &'a Job>) -> HashMap<Product, String> {
    let mut builds: BTreeMap<Product, BTreeMap<String, u64>> = BTreeMap::new();
    for job in aggregate {
        let first = builds.entry(product_of(job)).or_default().entry(job.setting("BUILD").to_string());
        let id = first.or_insert(job.id);
        *id = (*id).min(job.id);
    }
    builds
        .into_iter()
        .filter_map(|(p, b)| {
            b.into_iter().max_by_key(|(build, first_id)| (build_key(build), *first_id)).map(|(b, _)| (p, b))
        })
        .collect()
}

/// Rules 1-4 of DESIGN section 4, for an IBS incident.
pub fn select<'a>(incident: u64, jobs: &'a [Job], rules: &Rules) -> Selection<'a> {
    select_submission(Submission::ibs(incident), jobs, rules)
}

/// Rules 1-4 of DESIGN section 4 for a submission. A Gitea pull request's jobs never count for
/// the IBS incident of the same number, nor the other way round; aggregates count for IBS
/// incidents only; for a pull request, rule 2 keeps the jobs of the newest tested commit (the
/// `GITEA_SHA` of its newest job) instead of the newest release request.
pub fn select_submission<'a>(sub: Submission, jobs: &'a [Job], rules: &Rules) -> Selection<'a> {
    let incident = sub.number;
    let what = match sub.kind {
        Kind::Ibs => format!("incident {incident}"),
        Kind::Gitea => format!("pull request {incident}"),
    };
    let mut dropped: Vec<(&Job, &'static str, String)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut own = Vec::new();
    let mut aggregate = Vec::new();
    for job in jobs {
        if !seen.insert(job.id) {
            continue; // job_settings lists a job once per matching row
        }
        let bucket = if is_own_job(&job.settings, sub) {
            &mut own
        } else if sub.kind == Kind::Ibs && lists_incident(job, incident) {
            &mut aggregate
        } else {
            dropped.push((job, "unrelated", format!("does not test {what}")));
            continue;
        };
        // 1. ignored groups first: a Devel job with a newer RRID or a newer build must not push
        // the real jobs out in rules 2 and 3
        match ignored_by(job, rules) {
            Some(glob) => {
                let group = job.group.as_deref().unwrap_or("");
                dropped.push((job, role(job, sub), format!("group {group:?} is ignored ({glob})")));
            }
            None => bucket.push(job),
        }
    }

    // 2. newest release request only
    let request_of =
        |j: &Job| parse_rrid(j.setting("RRID")).filter(|(i, _)| *i == incident && sub.kind == Kind::Ibs);
    let newest = own.iter().filter_map(|j| request_of(j)).map(|(_, r)| r).max();
    let mut counted: Vec<&Job> = Vec::new();
    // 2'. a pull request: the commit tested by its newest job, where a restarted job counts as
    // old as the first job of its clone chain (restarting a job of an older commit, by hand or
    // by openQA's retries, does not take the pull request back to that commit)
    let sha_of = |j: &Job| Some(j.setting("GITEA_SHA").trim()).filter(|s| !s.is_empty()).map(str::to_string);
    let origin: HashMap<u64, u64> = own
        .iter()
        .filter_map(|j| j.clone_id.map(|c| (c, j.id)))
        .chain(own.iter().filter_map(|j| j.origin_id.map(|o| (j.id, o))))
        .collect();
    let first_of_chain = |mut id: u64| {
        for _ in 0..=origin.len() {
            match origin.get(&id) {
                Some(&o) if o < id => id = o,
                _ => break,
            }
        }
        id
    };
    let newest_sha = own
        .iter()
        .filter(|j| sha_of(j).is_some())
        .max_by_key(|j| (first_of_chain(j.id), j.id))
        .and_then(|j| sha_of(j));
    if let Some(head) = &newest_sha {
        own.retain(|job| match sha_of(job) {
            Some(sha) if &sha != head => {
                dropped.push((job, "incident", format!("tested commit {sha} is older than {head}")));
                false
            }
            _ => true,
        });
    }
    let repo = own.iter().map(|j| j.setting("GITEA_REPO").trim()).find(|r| !r.is_empty()).map(str::to_string);
    for job in own {
        match (newest, request_of(job)) {
            (Some(n), Some((_, r))) if r < n => {
                dropped.push((job, "incident", format!("release request {r} is older than {n}")))
            }
            (Some(n), None) => dropped.push((job, "incident", format!("no RRID, request {n} is current"))),
            _ => counted.push(job),
        }
    }

    // 3. newest aggregate build per product
    let newest_build = newest_builds(aggregate.iter().copied());
    for job in aggregate {
        match newest_build.get(&product_of(job)) {
            Some(newest) if newest != job.setting("BUILD") => {
                let why = format!("aggregate build {} is older than {newest}", job.setting("BUILD"));
                dropped.push((job, "aggregate", why));
            }
            _ => counted.push(job),
        }
    }

    // 4. newest job per scenario; a clone always has a higher id than the job it replaces
    let mut newest_in: HashMap<[&str; 7], u64> = HashMap::new();
    for job in &counted {
        let id = newest_in.entry(scenario(job)).or_insert(job.id);
        *id = (*id).max(job.id);
    }
    counted.retain(|job| {
        let newest = newest_in[&scenario(job)];
        if newest == job.id {
            return true;
        }
        let why = match job.clone_id {
            Some(c) if c == newest => format!("restarted as {c}"),
            _ => format!("superseded by {newest} in the same scenario"),
        };
        dropped.push((job, role(job, sub), why));
        false
    });
    counted.sort_by_key(|j| j.id);

    let current = counted.iter().filter_map(|j| request_of(j)).map(|(_, r)| r).max();
    Selection {
        incident,
        submission: sub,
        sha: newest_sha.filter(|_| sub.kind == Kind::Gitea),
        repo: repo.filter(|_| sub.kind == Kind::Gitea),
        counted,
        request: current,
        rrid: current.map(|r| format!("SUSE:Maintenance:{incident}:{r}")),
        dropped,
    }
}

fn role(job: &Job, sub: Submission) -> &'static str {
    if is_own_job(&job.settings, sub) {
        "incident"
    } else {
        "aggregate"
    }
}

/// The reason of the first `@review:acceptable_for:incident_<id>:<reason>` or
/// `@review:acceptable_for:submission_<id>:<reason>` tag for this submission (qem-bot reads
/// both). A pull request is also named by kind, `submission_git:<pr>`; that tag never applies to
/// the IBS incident of the same number. A tag without a reason accepts nothing: the reason is
/// what reviewers rely on later. A comment may hold several tags; each reason ends at the line's
/// end or at the next tag.
pub fn acceptable_for(comments: &[Comment], submission: impl Into<Submission>) -> Option<String> {
    const TAG: &str = "@review:acceptable_for:";
    let submission = submission.into();
    comments.iter().find_map(|c| {
        c.text.match_indices(TAG).find_map(|(at, _)| {
            let rest = &c.text[at + TAG.len()..];
            let (kind, rest) = match rest.strip_prefix("submission_") {
                Some(rest) => match rest.strip_prefix("git:") {
                    Some(rest) => (Some(Kind::Gitea), rest),
                    None => (None, rest),
                },
                None => (None, rest.strip_prefix("incident_")?),
            };
            let digits = rest.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(rest.len());
            if rest[..digits].parse() != Ok(submission.number) || kind.is_some_and(|k| k != submission.kind) {
                return None;
            }
            let reason = rest[digits..].strip_prefix(':')?;
            let reason = reason.lines().next().unwrap_or("");
            let reason = reason.find("@review:").map_or(reason, |end| &reason[..end]).trim();
            (!reason.is_empty()).then(|| reason.to_string())
        })
    })
}

/// The verdict over a selection, given the comments of the jobs in `needs_comments()`.
pub fn judge(sel: &Selection, comments: &HashMap<u64, Vec<Comment>>, rules: &Rules) -> Verdict {
    let mut counts = Counts::default();
    let mut blocking = Vec::new();
    let mut notes = Vec::new();
    let base = rules.openqa_url.trim_end_matches('/');
    for job in &sel.counted {
        counts.total += 1;
        let mut accepted_by = None;
        let why = if !job.is_final() {
            counts.pending += 1;
            format!("still {}", job.state)
        } else if job.result == "passed" {
            counts.passed += 1;
            "passed".to_string()
        } else if job.result == "softfailed" {
            counts.softfailed += 1;
            "softfailed".to_string()
        } else if let Some((comment, reason)) = comments.get(&job.id).and_then(|c| {
            c.iter().find_map(|one| {
                acceptable_for(std::slice::from_ref(one), sel.submission).map(|r| (one.id, r))
            })
        }) {
            counts.accepted += 1;
            accepted_by = Some(comment);
            format!("{} but acceptable for incident {}: {reason}", job.result, sel.incident)
        } else {
            counts.failed += 1;
            blocking.push(BlockingJob {
                id: job.id,
                name: job.name.clone(),
                result: job.result.clone(),
                group: job.group.clone().unwrap_or_default(),
                url: format!("{base}/tests/{}", job.id),
            });
            format!("{}: blocks", job.result)
        };
        let mut n = note(job, role(job, sel.submission), true, why);
        n.comment = accepted_by;
        notes.push(n);
    }
    for (job, role, why) in &sel.dropped {
        notes.push(note(job, role, false, why.clone()));
    }
    notes.sort_by_key(|n| n.id);
    let result = if counts.total == 0 {
        Outcome::NoJobs
    } else if counts.pending > 0 {
        Outcome::Pending
    } else if counts.failed > 0 {
        Outcome::Failed
    } else {
        Outcome::Passed
    };
    Verdict {
        incident: sel.incident,
        kind: sel.submission.kind,
        sha: sel.sha.clone(),
        repo: sel.repo.clone(),
        request: sel.request,
        rrid: sel.rrid.clone(),
        result,
        jobs: counts,
        blocking,
        job_ids: sel.counted.iter().map(|j| j.id).collect(),
        notes,
        complete: result.is_final(),
        waiting: Vec::new(),
    }
}

/// Holds back what is not finished: with anything in `waiting`, a verdict is not complete; a
/// pass becomes `pending` (nothing is approved before testing finished), a failure stays a
/// failure that may be reported, but as incomplete (never declined on). The jobs still running
/// are added to `waiting` so that one list explains the wait.
pub fn hold(verdict: &mut Verdict, mut waiting: Vec<Wait>, started: &HashMap<u64, String>) {
    for n in verdict.notes.iter().filter(|n| n.counts && !crate::openqa::model::is_final_state(&n.state)) {
        let what = format!("job {} {} ({})", n.id, n.name, n.state);
        waiting.push(Wait::new("running", what, started.get(&n.id).cloned()));
    }
    if waiting.iter().any(|w| w.kind != "running") && verdict.result == Outcome::Passed {
        verdict.result = Outcome::Pending;
    }
    verdict.complete = verdict.result.is_final() && waiting.is_empty();
    verdict.waiting = waiting;
}

/// How long a job openQA marked for an automatic restart holds the verdict back without its clone
/// appearing: upstream openQA restarts in a background task after the job's done event, usually
/// within seconds; if that task never ran, the failure stands after this.
pub const RESTART_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Failed counted jobs that openQA will restart (its `auto_clone_regex` matched the reason, or
/// `RETRY` has tries left: openQA wrote so into the reason or a comment) and whose clone does not
/// exist yet: testing is not finished, so their failure may be commented but not declined.
pub fn expected_restarts(
    sel: &Selection,
    comments: &HashMap<u64, Vec<Comment>>,
    now: std::time::SystemTime,
) -> Vec<Wait> {
    let recent = |job: &Job| {
        let finished = job.t_finished.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        finished.is_none_or(|t| now.duration_since(t).unwrap_or_default() < RESTART_GRACE)
    };
    sel.counted
        .iter()
        .filter(|j| j.is_final() && !j.is_ok() && j.clone_id.is_none() && recent(j))
        .filter_map(|j| {
            let by_reason = j.reason.as_deref().is_some_and(|r| r.contains("[Auto-restarting because"));
            let by_retry = comments
                .get(&j.id)
                .is_some_and(|cs| cs.iter().any(|c| c.text.starts_with("Restarting because RETRY is set")));
            let why = match (by_reason, by_retry) {
                (true, _) => "its reason matches openQA's auto_clone_regex",
                (_, true) => "RETRY is set",
                _ => return None,
            };
            let what = format!("job {} {}: openQA restarts it ({why})", j.id, j.name);
            Some(Wait::new("restart", what, j.t_finished.clone()))
        })
        .collect()
}

fn note(job: &Job, role: &str, counts: bool, why: String) -> JobNote {
    JobNote {
        id: job.id,
        name: job.name.clone(),
        state: job.state.clone(),
        result: job.result.clone(),
        group: job.group.clone().unwrap_or_default(),
        role: role.to_string(),
        counts,
        why,
        comment: None,
    }
}

/// `select` then `judge`, for callers that already hold every comment.
pub fn decide(incident: u64, jobs: &[Job], comments: &HashMap<u64, Vec<Comment>>, rules: &Rules) -> Verdict {
    judge(&select(incident, jobs, rules), comments, rules)
}

impl Verdict {
    pub fn submission(&self) -> Submission {
        Submission { kind: self.kind, number: self.incident }
    }
}
