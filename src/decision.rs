//! A decision: a final verdict taken once per (incident, request, verdict, set of job ids, blocking
//! jobs with their results), and the outcome of delivering it to one sink (the broker, IBS).

use crate::incident::Kind;
use crate::verdict::Verdict;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Stable identity of the decision: the same verdict over the same jobs gives the same key in
    /// every process, so it doubles as the AMQP `message_id` and the event's `event_id`.
    pub key: String,
    pub verdict: Verdict,
    /// RFC 3339, UTC, seconds.
    pub decided_at: String,
    /// Base URL of openQA, for links.
    pub openqa: String,
    /// Whom to contact for each job group with a blocking job: the `Responsible: …` lines of the
    /// group's description in openQA (group name → lines). Not part of what was decided.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub contacts: std::collections::BTreeMap<String, Vec<String>>,
    /// The `BUILD`s of the jobs that count (`:git:124:openssl`), sorted, for links to openQA's
    /// overview of each (openQA matches `build` exactly). Not part of what was decided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builds: Vec<String>,
    /// When the last of the counted jobs ended (RFC 3339, UTC), for the decision latency the
    /// metrics show (`metrics`). Absent in decisions recorded before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job_end: Option<String>,
}

impl Decision {
    pub fn new(verdict: Verdict, openqa: &str) -> Decision {
        Decision {
            key: decision_key(&verdict),
            decided_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            openqa: openqa.trim_end_matches('/').to_string(),
            contacts: Default::default(),
            builds: Vec::new(),
            last_job_end: None,
            verdict,
        }
    }

    /// The log line of a new decision: `incident 12345: passed (request 600101, 3 jobs, decision
    /// …)`, `pull request git:124: failed (2 jobs, decision …)`.
    pub fn log_line(&self) -> String {
        let v = &self.verdict;
        let request = match (v.kind, v.request) {
            (Kind::Ibs, Some(r)) => format!("request {r}, "),
            (Kind::Ibs, None) => "no release request known, ".to_string(),
            (Kind::Gitea, _) => String::new(),
        };
        format!(
            "{}: {} ({request}{} jobs, decision {})",
            v.submission().named(),
            v.result.as_str(),
            v.jobs.total,
            self.key
        )
    }

    /// The `incident.done` event body (DESIGN section 5, docs/events.md).
    pub fn event_json(&self) -> serde_json::Value {
        let v = &self.verdict;
        let mut body = serde_json::json!({
            "schema_version": 2,
            "kind": v.kind,
            "incident": v.incident,
            "request": v.request,
            "rrid": v.rrid,
            "result": v.result,
            "openqa": self.openqa,
            "page": page_url(&self.openqa, v.submission()),
            "jobs": {
                "total": v.jobs.total,
                "passed": v.jobs.passed,
                "softfailed": v.jobs.softfailed,
                "failed": v.jobs.failed,
                "accepted": v.jobs.accepted,
            },
            "blocking": v.blocking,
            "complete": v.complete,
            "waiting": v.waiting,
            "decided_at": self.decided_at,
            "event_id": self.key,
        });
        if v.kind == Kind::Gitea {
            body["gitea"] = serde_json::json!({"repo": v.repo, "pr": v.incident, "sha": v.sha});
        }
        body
    }
}

/// When the last of the verdict's counted jobs ended (openQA's `t_finished`, read as UTC), as
/// RFC 3339; None when none of them says.
pub fn last_job_end(verdict: &Verdict, jobs: &[crate::openqa::model::Job]) -> Option<String> {
    let counted: std::collections::HashSet<u64> = verdict.job_ids.iter().copied().collect();
    jobs.iter()
        .filter(|j| counted.contains(&j.id))
        .filter_map(|j| humantime::parse_rfc3339_weak(j.t_finished.as_deref()?).ok())
        .max()
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

/// The submission's page in openQA's web UI (served by the plugin): the verdict explained.
/// `/incident_gate/12345` for an IBS incident, `/incident_gate/git:124` for a pull request.
pub fn page_url(openqa: &str, submission: impl Into<crate::incident::Submission>) -> String {
    format!("{}/incident_gate/{}", openqa.trim_end_matches('/'), submission.into())
}

/// The `Responsible: …` lines of a job group's description, as maintenance teams write them
/// (`Responsible: @qam-team, jane@example.com`), each without its label.
pub fn responsible_lines(description: &str) -> Vec<String> {
    description
        .lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches(['*', '-', '#', ' ']);
            let (label, rest) = line.split_once(':')?;
            let rest = rest.trim().trim_end_matches("  ");
            (label.trim().eq_ignore_ascii_case("responsible") && !rest.is_empty()).then(|| rest.to_string())
        })
        .collect()
}

pub fn decision_key(v: &Verdict) -> String {
    let mut h = Sha256::new();
    let request = v.request.map(|r| r.to_string()).unwrap_or_default();
    if v.kind == Kind::Gitea {
        // IBS keys stay what they were; a pull request's tested commit is part of its decision
        h.update(format!("git|{}|", v.sha.as_deref().unwrap_or("")));
    }
    h.update(format!("{}|{}|{}|", v.incident, request, v.result.as_str()));
    for id in &v.job_ids {
        h.update(format!("{id},"));
    }
    // What blocks is part of what was decided: accepting one of two failed jobs, or a job failing
    // differently, must reach IBS. Left out when nothing blocks, so keys of passed decisions
    // recorded before this stay the same.
    let mut blocking: Vec<(u64, &str)> = v.blocking.iter().map(|b| (b.id, b.result.as_str())).collect();
    blocking.sort_unstable();
    if !blocking.is_empty() {
        h.update("|blocking|");
        for (id, result) in blocking {
            h.update(format!("{id}={result},"));
        }
    }
    // a failure reported while testing goes on, and the same failure once it is finished, are
    // two decisions (the second may decline); left out when complete, so earlier keys stay
    if !v.complete {
        h.update("|incomplete");
    }
    hex::encode(&h.finalize()[..16])
}

/// The key of a decision that repeats an earlier, no longer latest, one: `n` is how many decisions
/// the incident had, the same in every process.
pub fn salted_key(base: &str, n: u64) -> String {
    let mut h = Sha256::new();
    h.update(format!("{base}|{n}"));
    hex::encode(&h.finalize()[..16])
}

/// What a `Delivery::Denied` message says, so that the metrics can count the reports held back
/// by refused credentials from the outcome the outbox keeps.
pub const CREDENTIALS_REFUSED: &str = "refused our credentials or permissions";

/// What delivering a decision to a sink came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Done; the text says what was done (for status output and the log).
    Done(String),
    /// Nothing more will be tried (the request left review, dry run, no request known …).
    Final(String),
    /// A passing fault (connection, 5xx, broker refusal): try again later.
    Retry(String),
    /// The service refused our credentials or permissions (IBS 401/403): nothing about the
    /// request is known yet; try again after this many milliseconds, until it accepts them.
    Denied(String, i64),
    /// Waiting for the other side: the review the report answers is not (or no longer) asked of
    /// us yet (IBS: no qam-openqa review; Gitea: no QAM review requested, or stale after a push).
    /// The text says what it waits for; tried again after this many milliseconds (the outbox sets
    /// it, see `outbox::bound_wait`), until it is there, a newer decision replaces this one, or
    /// the wait is given up.
    Waiting(String, i64),
}

impl Delivery {
    pub fn text(&self) -> &str {
        match self {
            Delivery::Done(m) | Delivery::Final(m) | Delivery::Retry(m) => m,
            Delivery::Denied(m, _) | Delivery::Waiting(m, _) => m,
        }
    }
}

/// Asked inside a delivery right before an action that cannot be taken back (accepting or
/// declining an IBS review, approving a pull request, requesting changes): a fresh evaluation
/// against openQA must reach the same decision, and it must still be the submission's latest.
/// `Err` is what the delivery ends with instead (withheld as superseded, or retried when openQA
/// could not be asked). The world changes between a decision and its delivery: a job restarted
/// while IBS was down, a waiver edited, no event reaching a hook.
pub trait Recheck: Sync {
    fn recheck<'a>(
        &'a self,
        submission: crate::incident::Submission,
        key: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<(), Delivery>>;
}

/// No check: for callers that deliver a decision they made themselves a moment ago on purpose
/// (the reporters' own tests).
pub struct Unchecked;

impl Recheck for Unchecked {
    fn recheck<'a>(
        &'a self,
        _: crate::incident::Submission,
        _: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<(), Delivery>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{BlockingJob, Counts, Outcome};

    fn failed(blocking: &[(u64, &str)]) -> Verdict {
        Verdict {
            incident: 1,
            kind: Default::default(),
            sha: None,
            repo: None,
            request: Some(2),
            rrid: None,
            result: Outcome::Failed,
            jobs: Counts::default(),
            blocking: blocking
                .iter()
                .map(|(id, result)| BlockingJob {
                    id: *id,
                    name: format!("t{id}"),
                    result: result.to_string(),
                    group: String::new(),
                    url: String::new(),
                })
                .collect(),
            job_ids: vec![10, 11],
            notes: vec![],
            complete: true,
            waiting: vec![],
        }
    }

    #[test]
    fn responsible_lines_are_read_from_a_group_description() {
        let d = "Maintenance tests of SLE 15 SP6.\n\nResponsible: @qam-sle, jane@example.com\n* responsible:  bob  \nNot responsible for: x\nResponsible:";
        assert_eq!(responsible_lines(d), vec!["@qam-sle, jane@example.com".to_string(), "bob".to_string()]);
        assert!(responsible_lines("no such line").is_empty());
        assert_eq!(page_url("https://o.example/", 12), "https://o.example/incident_gate/12");
        let pr = crate::incident::Submission::gitea(124);
        assert_eq!(page_url("https://o.example", pr), "https://o.example/incident_gate/git:124");
    }

    #[test]
    fn a_decision_is_logged_as_people_read_it() {
        let mut v = failed(&[]);
        v.jobs.total = 3;
        let d = Decision::new(v.clone(), "https://o.example");
        assert_eq!(d.log_line(), format!("incident 1: failed (request 2, 3 jobs, decision {})", d.key));
        v.request = None;
        let d = Decision::new(v.clone(), "https://o.example");
        assert_eq!(
            d.log_line(),
            format!("incident 1: failed (no release request known, 3 jobs, decision {})", d.key)
        );
        v.kind = Kind::Gitea;
        let d = Decision::new(v, "https://o.example");
        assert_eq!(d.log_line(), format!("pull request git:1: failed (3 jobs, decision {})", d.key));
    }

    #[test]
    fn what_blocks_is_part_of_the_decision() {
        let both = decision_key(&failed(&[(10, "failed"), (11, "failed")]));
        assert_ne!(both, decision_key(&failed(&[(11, "failed")])), "one of two failures accepted");
        assert_ne!(both, decision_key(&failed(&[(10, "incomplete"), (11, "failed")])), "fails differently");
        assert_eq!(both, decision_key(&failed(&[(11, "failed"), (10, "failed")])), "order does not matter");
    }
}
