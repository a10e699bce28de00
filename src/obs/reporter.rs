//! Delivers a decision to IBS according to the review policy (DESIGN section 3).
//!
//! Every step is safe to repeat, because a `Retry` runs the whole delivery again later: the
//! request is read first (a request that left review is never touched), our comment is found by
//! its marker and only replaced when the decision changed, and the review change comes last so a
//! failed comment never leaves an accepted or declined review without its explanation.

use super::client::{CheckState, ObsClient, ObsError, ReviewDecision};
use super::report::{self, parse_marker};
use crate::config::{Config, ReviewPolicy};
use crate::decision::{Decision, Delivery, Recheck, Unchecked};
use crate::verdict::Outcome;

/// The name of our status check on the request.
pub const CHECK_NAME: &str = "openqa";

/// What a policy does with a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub review: Option<ReviewDecision>,
    pub comment: bool,
}

/// `complete`: testing is finished. Before that nothing is approved or declined, whatever the
/// policy: a failure is only commented (more jobs, or a restart, may still come).
pub fn plan(policy: ReviewPolicy, result: Outcome, complete: bool) -> Plan {
    let review = match (policy, result) {
        _ if !complete => None,
        (ReviewPolicy::AcceptOnpass | ReviewPolicy::AcceptDecline, Outcome::Passed) => {
            Some(ReviewDecision::Accepted)
        }
        (ReviewPolicy::AcceptDecline, Outcome::Failed) => Some(ReviewDecision::Declined),
        // no_jobs proves nothing either way: it never approves and never declines
        _ => None,
    };
    Plan { review, comment: policy != ReviewPolicy::DryRun }
}

fn describe(plan: Plan, group: &str, rr: u64) -> String {
    let mut parts = Vec::new();
    if plan.comment {
        parts.push(format!("comment on request {rr}"));
    }
    match plan.review {
        Some(ReviewDecision::Accepted) => parts.push(format!("accept the {group} review")),
        Some(ReviewDecision::Declined) => parts.push(format!("decline the {group} review")),
        Some(ReviewDecision::Reopened) => parts.push(format!("reopen the {group} review")),
        None => {}
    }
    parts.join(" and ")
}

fn retry(what: &str, e: &ObsError) -> Delivery {
    Delivery::Retry(format!("{what}: {e}"))
}

fn failed(what: &str, e: &ObsError) -> Delivery {
    if e.is_denied() {
        // the caller (`deliver`) sets the delay from the configuration
        Delivery::Denied(format!("{what}: IBS {}: {e}", crate::decision::CREDENTIALS_REFUSED), 0)
    } else if e.is_retryable() {
        retry(what, e)
    } else {
        Delivery::Final(format!("{what}: {e}"))
    }
}

/// Reports `decision` on its release request without the check at the point of no return
/// ([`deliver_checked`] with [`Unchecked`]).
pub async fn deliver(client: &ObsClient, cfg: &Config, decision: &Decision) -> Delivery {
    deliver_checked(client, cfg, decision, &Unchecked).await
}

/// Reports `decision` on its release request; `recheck` is asked right before the review is
/// accepted or declined. Never panics, never shows a credential.
pub async fn deliver_checked(
    client: &ObsClient,
    cfg: &Config,
    decision: &Decision,
    recheck: &dyn Recheck,
) -> Delivery {
    match deliver_once(client, cfg, decision, recheck).await {
        Delivery::Denied(m, _) => {
            let wait = cfg.obs_denied_retry_s;
            Delivery::Denied(format!("{m} (retrying every {wait} s)"), (wait as i64).saturating_mul(1000))
        }
        other => other,
    }
}

async fn deliver_once(
    client: &ObsClient,
    cfg: &Config,
    decision: &Decision,
    recheck: &dyn Recheck,
) -> Delivery {
    let v = &decision.verdict;
    let group = cfg.review_group.as_str();
    let Some(rr) = v.request else {
        return Delivery::Final(format!(
            "incident {}: no release request known, nothing to report",
            v.incident
        ));
    };
    if !v.result.is_final() {
        return Delivery::Final(format!("incident {}: verdict still pending, nothing to report", v.incident));
    }
    if cfg.review_policy == ReviewPolicy::DryRun {
        // what the default policy would have done, without even reading the request
        let would = describe(plan(ReviewPolicy::AcceptOnpass, v.result, v.complete), group, rr);
        tracing::info!(incident = v.incident, request = rr, "dry-run: would {would}");
        return Delivery::Final(format!("dry-run: would {would} ({})", v.result.as_str()));
    }
    let plan = plan(cfg.review_policy, v.result, v.complete);

    let request = match client.get_request(rr).await {
        Ok(r) => r,
        Err(e) => return failed(&format!("reading request {rr}"), &e),
    };
    if !request.is_in_review() {
        let by = request.superseded_by.map(|s| format!(" by {s}")).unwrap_or_default();
        return Delivery::Final(format!("request {rr} is {}{by}: nothing to do", request.state));
    }
    let mut done = Vec::new();
    if request.open_review_for_group(group).is_none() {
        let review = request.review_for_group(group);
        if !takes_back(review, client.user(), v.result) {
            return match review {
                Some(r) => Delivery::Final(format!(
                    "request {rr}: the {group} review is already {}, nothing to do",
                    r.state
                )),
                // the review may still be added to the request: wait for it, do not drop the verdict
                None => {
                    Delivery::Waiting(format!("request {rr}: waiting for a {group} review to be added"), 0)
                }
            };
        }
        // the failure that is now known (an acceptable_for comment deleted, a result changed) would
        // otherwise be released on our word: reopen before telling why
        let message = report::render_comment(decision);
        if let Err(e) = client.change_review(rr, ReviewDecision::Reopened, group, &message).await {
            return failed(&format!("request {rr}: cannot reopen the {group} review"), &e);
        }
        tracing::info!(incident = v.incident, request = rr, "reopened the {group} review we had accepted");
        done.push(format!("reopened the {group} review we had accepted"));
    }

    let mut problems = Vec::new();
    if plan.comment {
        match sync_comment(client, rr, decision).await {
            Ok(what) => done.push(what),
            // a 401 is about us; a 403 on comments is the request's (comments locked)
            Err(e) if e.is_retryable() || e.is_unauthenticated() => {
                return failed(&format!("comment on request {rr}"), &e)
            }
            // a refused comment must not keep the review from being changed: the review message
            // carries the reasons as well
            Err(e) => problems.push(format!("comment not possible: {e}")),
        }
    }
    if cfg.obs_status_report {
        done.push(status_report(client, rr, decision).await);
    }
    if let Some(newstate) = plan.review {
        let message = match newstate {
            ReviewDecision::Declined | ReviewDecision::Reopened => report::render_comment(decision),
            ReviewDecision::Accepted => report::review_message(decision),
        };
        let (verb, past) = match newstate {
            ReviewDecision::Accepted => ("accept", "accepted"),
            ReviewDecision::Declined => ("decline", "declined"),
            ReviewDecision::Reopened => ("reopen", "reopened"),
        };
        if matches!(newstate, ReviewDecision::Accepted | ReviewDecision::Declined) {
            if let Err(withheld) = recheck.recheck(v.submission(), &decision.key).await {
                return withheld;
            }
        }
        match client.change_review(rr, newstate, group, &message).await {
            Ok(()) => {
                tracing::info!(incident = v.incident, request = rr, "{past} the {group} review");
                done.push(format!("{past} the {group} review"));
            }
            // request_not_modifiable, review_not_found, review_change_state_no_permission and the
            // like will answer the same forever
            Err(e) => return failed(&format!("request {rr}: cannot {verb} the {group} review"), &e),
        }
    }
    let mut text = format!("request {rr}: {}", done.join("; "));
    if !problems.is_empty() {
        text.push_str(&format!("; {}", problems.join("; ")));
    }
    if done.is_empty() {
        Delivery::Final(text)
    } else {
        Delivery::Done(text)
    }
}

/// Whether a failed verdict takes back an accept we gave: only our own (a person's accept is
/// theirs to take back), and only while the request can still change.
fn takes_back(review: Option<&super::client::Review>, me: Option<&str>, result: Outcome) -> bool {
    result == Outcome::Failed
        && review.is_some_and(|r| r.state == "accepted" && me.is_some() && r.who.as_deref() == me)
}

/// Makes our comment on the request say `decision`: keep it when it already does, else remove
/// our earlier ones and post anew (OBS cannot edit a comment through the API).
async fn sync_comment(client: &ObsClient, rr: u64, decision: &Decision) -> Result<String, ObsError> {
    let comments = client.comments(rr).await?;
    let me = client.user();
    let ours: Vec<_> = comments
        .iter()
        .filter(|c| me.is_none_or(|u| c.who == u))
        .filter_map(|c| parse_marker(&c.text).map(|m| (c, m)))
        .collect();
    let keep = ours.iter().rev().find(|(_, m)| m.key == decision.key).map(|(c, _)| c.id);
    let mut removed = 0;
    for (c, _) in ours.iter().filter(|(c, _)| Some(c.id) != keep) {
        match client.delete_comment(c.id).await {
            Ok(()) => removed += 1,
            // gone already (someone else cleaned up): nothing left to remove
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(e),
        }
    }
    if keep.is_some() {
        return Ok(if removed > 0 {
            format!("comment up to date, {removed} outdated removed")
        } else {
            "comment up to date".to_string()
        });
    }
    client.post_comment(rr, &report::render_comment(decision)).await?;
    tracing::info!(request = rr, "posted the incident-gate comment, replacing {removed}");
    Ok(if removed > 0 { "comment replaced".to_string() } else { "comment posted".to_string() })
}

/// Optional and best effort: OBS only takes reports for submit requests and from maintainers of
/// every target, so a refusal is "not available here", never a failed delivery.
async fn status_report(client: &ObsClient, rr: u64, decision: &Decision) -> String {
    let state = match decision.verdict.result {
        Outcome::Passed => CheckState::Success,
        Outcome::Failed => CheckState::Failure,
        Outcome::NoJobs => CheckState::Error,
        Outcome::Pending => CheckState::Pending,
    };
    let url = report::overview_url(&decision.openqa, decision.verdict.incident);
    let description = report::summary_line(decision);
    match client.post_status_report(rr, CHECK_NAME, state, &description, &url).await {
        Ok(()) => format!("status check {CHECK_NAME} set to {}", state.as_str()),
        Err(e) if matches!(e.status(), Some(403 | 404)) => {
            tracing::info!(request = rr, "status reports not available here: {e}");
            "status reports not available here".to_string()
        }
        Err(e) => {
            tracing::warn!(request = rr, "status report failed: {e}");
            format!("status report failed: {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_per_policy() {
        use ReviewPolicy::*;
        let p = |pol, res| plan(pol, res, true).review;
        assert_eq!(p(AcceptOnpass, Outcome::Passed), Some(ReviewDecision::Accepted));
        assert_eq!(p(AcceptOnpass, Outcome::Failed), None);
        assert_eq!(p(AcceptDecline, Outcome::Failed), Some(ReviewDecision::Declined));
        assert_eq!(p(AcceptDecline, Outcome::NoJobs), None);
        assert_eq!(p(Comment, Outcome::Passed), None);
        assert_eq!(p(DryRun, Outcome::Passed), None);
        assert!(!plan(DryRun, Outcome::Passed, true).comment);
        // testing not finished: a failure is commented, never declined
        assert_eq!(plan(AcceptDecline, Outcome::Failed, false).review, None);
        assert!(plan(AcceptDecline, Outcome::Failed, false).comment);
    }
}
