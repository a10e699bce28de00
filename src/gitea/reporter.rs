//! Delivers a decision about a Gitea pull request according to the review policy (DESIGN 4b,
//! fixtures/gitea/README.md).
//!
//! Approval is the comment `@<bot>: approved` + message + `Tested commit: <sha>`, which SUSE's
//! review bot turns into the QAM review. It is posted only while the QAM review is requested and
//! open (not stale, not dismissed), only for the commit that was tested when that commit is still
//! the head, and never when an approval of that commit exists (our comment, or an active APPROVED
//! review with that `commit_id`). Everything else is said in one results comment, found again by
//! its marker and edited in place. Every step can be repeated: a `Retry` runs the whole delivery
//! again, and it reads the pull request before it writes anything.

use super::client::{Comment, GiteaClient, GiteaError, Review, ReviewEvent};
use super::report::{self, parse_marker};
use crate::config::{Config, ReviewPolicy};
use crate::decision::{Delivery, Recheck, Unchecked};
use crate::incident::Submission;
use crate::verdict::{BlockingJob, Counts, Outcome};
use serde::{Deserialize, Serialize};

/// What the reporter needs to know about one decided pull request; independent of how the engine
/// names submissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrReport {
    /// Repository owner and name (`products`, `SLFO`).
    pub owner: String,
    pub repo: String,
    /// The pull request's index (`SUBMISSION_ID=git:<n>`, `_GITEA_PR`).
    pub number: u64,
    /// The commit openQA tested (`GITEA_SHA`).
    pub tested_sha: String,
    pub result: Outcome,
    /// Testing finished (DESIGN section 4): a failure found before is commented, never answered
    /// with a "request changes" review, as IBS declines only complete failures.
    #[serde(default)]
    pub complete: bool,
    pub jobs: Counts,
    pub blocking: Vec<BlockingJob>,
    /// Base URL of openQA, for job links that openQA did not give.
    pub openqa: String,
    /// The `BUILD`s of the counted jobs: each is linked to openQA's overview of it.
    #[serde(default)]
    pub builds: Vec<String>,
    /// The pull request's page in openQA (the plugin's): the verdict explained, every job.
    pub page_url: String,
    /// Identity of the decision (`Decision::key`), written into the results comment's marker.
    pub key: String,
    /// RFC 3339.
    pub decided_at: String,
}

impl PrReport {
    /// `owner/name` (`gitea_repo`, `GITEA_REPO`) split; `None` when it is not of that form.
    pub fn split_repo(full: &str) -> Option<(String, String)> {
        let (owner, name) = full.trim().split_once('/')?;
        (!owner.is_empty() && !name.is_empty() && !name.contains('/')).then(|| (owner.into(), name.into()))
    }

    fn label(&self) -> String {
        format!("PR {}/{}#{}", self.owner, self.repo, self.number)
    }
}

/// Where the QAM review of a pull request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QamReview {
    /// Requested and waiting for an answer.
    Open,
    /// Never requested from the bot or the team.
    NotRequested,
    /// Requested once, but no longer counting: stale, dismissed, or answered (the state).
    Closed(String),
}

/// Reads the QAM review from the review list (qem-bot's rule: `PENDING` or `REQUEST_REVIEW`, and
/// neither stale nor dismissed).
pub fn qam_review(reviews: &[Review], bot: &str, team: &str) -> QamReview {
    let ours: Vec<&Review> = reviews.iter().filter(|r| r.by_user(bot) || r.by_team(team)).collect();
    if ours.is_empty() {
        return QamReview::NotRequested;
    }
    let open = |r: &&Review| matches!(r.state.as_str(), "PENDING" | "REQUEST_REVIEW");
    if ours.iter().any(|r| open(r) && !r.stale && !r.dismissed) {
        return QamReview::Open;
    }
    // an answer of an older commit is stale after a push too: the request comes again
    let why = if ours.iter().any(|r| open(r) && r.stale) || ours.last().is_some_and(|r| r.stale) {
        "stale".to_string()
    } else if ours.iter().any(|r| r.dismissed) {
        "dismissed".to_string()
    } else {
        ours.last().map(|r| r.state.to_lowercase()).unwrap_or_default()
    };
    QamReview::Closed(why)
}

/// An active APPROVED review of `sha` by the bot or the team.
fn approved_by_review(reviews: &[Review], bot: &str, team: &str, sha: &str) -> bool {
    reviews.iter().any(|r| {
        r.state == "APPROVED" && !r.dismissed && r.commit_id == sha && (r.by_user(bot) || r.by_team(team))
    })
}

/// An approval comment for `sha` by us, or by the bot or team accounts (qem-bot posts as those).
fn approved_by_comment(comments: &[Comment], me: Option<&str>, bot: &str, team: &str, sha: &str) -> bool {
    comments.iter().any(|c| {
        c.author().is_some_and(|a| Some(a) == me || a == bot || a == team)
            && report::is_approval_of(&c.body, bot, sha)
    })
}

fn failed(what: &str, e: &GiteaError) -> Delivery {
    if e.is_denied() {
        // the caller (`deliver`) sets the delay from the configuration
        Delivery::Denied(format!("{what}: Gitea refused our token or its permissions: {e}"), 0)
    } else if e.is_retryable() {
        Delivery::Retry(format!("{what}: {e}"))
    } else {
        Delivery::Final(format!("{what}: {e}"))
    }
}

fn would(policy: ReviewPolicy, result: Outcome, request_changes: bool) -> &'static str {
    match (policy, result) {
        (ReviewPolicy::AcceptOnpass | ReviewPolicy::AcceptDecline, Outcome::Passed) => {
            "post the approval comment (if the QAM review is open and the head is still the tested commit)"
        }
        (ReviewPolicy::AcceptDecline, Outcome::Failed) if request_changes => {
            "post the results comment and request changes"
        }
        _ => "post the results comment",
    }
}

/// Reports `r` on its pull request without the check at the point of no return
/// ([`deliver_checked`] with [`Unchecked`]).
pub async fn deliver(client: &GiteaClient, cfg: &Config, r: &PrReport) -> Delivery {
    deliver_checked(client, cfg, r, &Unchecked).await
}

/// Reports `r` on its pull request; `recheck` is asked right before approving or requesting
/// changes. Never panics, never shows the token. A refusal of our token is tried again every
/// `gitea_denied_retry_s`; a review not (yet) asked of us is waited for.
pub async fn deliver_checked(
    client: &GiteaClient,
    cfg: &Config,
    r: &PrReport,
    recheck: &dyn Recheck,
) -> Delivery {
    match deliver_once(client, cfg, r, recheck).await {
        Delivery::Denied(m, _) => {
            let wait = cfg.gitea_denied_retry_s;
            Delivery::Denied(format!("{m} (retrying every {wait} s)"), (wait as i64).saturating_mul(1000))
        }
        other => other,
    }
}

async fn deliver_once(client: &GiteaClient, cfg: &Config, r: &PrReport, recheck: &dyn Recheck) -> Delivery {
    let pr = r.label();
    let (bot, team) = (cfg.gitea_review_bot.as_str(), cfg.gitea_review_team.as_str());
    if !r.result.is_final() {
        return Delivery::Final(format!("{pr}: verdict still pending, nothing to report"));
    }
    let sha = r.tested_sha.trim();
    if sha.is_empty() {
        return Delivery::Final(format!("{pr}: the tested commit is not known, nothing to report"));
    }
    if cfg.review_policy == ReviewPolicy::DryRun {
        let what = would(ReviewPolicy::AcceptOnpass, r.result, false);
        tracing::info!(pr = r.number, "dry-run: would {what}");
        return Delivery::Final(format!("dry-run: would {what} on {pr} ({})", r.result.as_str()));
    }

    let pull = match client.pull(&r.owner, &r.repo, r.number).await {
        Ok(p) => p,
        Err(e) => return failed(&format!("{pr}: reading the pull request"), &e),
    };
    if pull.merged || pull.state != "open" {
        let state = if pull.merged { "merged" } else { pull.state.as_str() };
        return Delivery::Final(format!("{pr} is {state}: nothing to do"));
    }
    let reviews = match client.reviews(&r.owner, &r.repo, r.number).await {
        Ok(v) => v,
        Err(e) => return failed(&format!("{pr}: reading reviews"), &e),
    };
    let qam = qam_review(&reviews, bot, team);
    if qam == QamReview::NotRequested {
        // the workflow bot asks for it later (after the staging build): wait, do not drop
        return Delivery::Waiting(
            format!("{pr}: waiting for the QAM review to be requested from {bot} or {team}"),
            0,
        );
    }
    let comments = match client.comments(&r.owner, &r.repo, r.number).await {
        Ok(v) => v,
        Err(e) => return failed(&format!("{pr}: reading comments"), &e),
    };
    let me = match client.me().await {
        Ok(me) => me.or_else(|| marked_author(&comments, r.number)),
        Err(e) => return failed(&format!("{pr}: asking Gitea who we are"), &e),
    };
    let me = me.as_deref();
    let head = pull.head.sha.as_str();

    if head != sha {
        // a push after testing: whatever openQA said is about code that is no longer proposed
        return match sync_results(client, r, &comments, me, Some(head)).await {
            Ok(what) => Delivery::Done(format!(
                "{pr}: results are for commit {sha}, the head is now {head}: not approved; {what}"
            )),
            Err(e) => failed(&format!("{pr}: results comment"), &e),
        };
    }

    let already =
        approved_by_review(&reviews, bot, team, sha) || approved_by_comment(&comments, me, bot, team, sha);
    match r.result {
        Outcome::Passed => {
            if already {
                // an earlier failure comment must not keep saying "failed"
                let refreshed = match refresh_results(client, r, &comments, me).await {
                    Ok(what) => what,
                    Err(e) => return failed(&format!("{pr}: results comment"), &e),
                };
                let text = format!("{pr}: commit {sha} is already approved{}", suffix(&refreshed));
                return if refreshed.is_some() { Delivery::Done(text) } else { Delivery::Final(text) };
            }
            if let QamReview::Closed(why) = &qam {
                if why == "stale" || why == "dismissed" {
                    // after a push Gitea marks the request stale; it is asked for again later
                    return Delivery::Waiting(
                        format!("{pr}: the QAM review is {why}, waiting for it to be requested again"),
                        0,
                    );
                }
                return Delivery::Final(format!("{pr}: the QAM review is {why}, not approving"));
            }
            if cfg.review_policy == ReviewPolicy::Comment {
                return match sync_results(client, r, &comments, me, None).await {
                    Ok(what) => done_or_final(format!("{pr}: {what}")),
                    Err(e) => failed(&format!("{pr}: results comment"), &e),
                };
            }
            let refreshed = match refresh_results(client, r, &comments, me).await {
                Ok(what) => what,
                Err(e) => return failed(&format!("{pr}: results comment"), &e),
            };
            if let Err(withheld) = recheck.recheck(Submission::gitea(r.number), &r.key).await {
                return withheld;
            }
            match client.post_comment(&r.owner, &r.repo, r.number, &report::approval_comment(bot, r)).await {
                Ok(_) => {
                    tracing::info!(pr = r.number, sha, "approved through @{bot}");
                    Delivery::Done(format!(
                        "{pr}: approved commit {sha} (@{bot}: approved){}",
                        suffix(&refreshed)
                    ))
                }
                Err(e) => failed(&format!("{pr}: posting the approval comment"), &e),
            }
        }
        Outcome::Failed | Outcome::NoJobs | Outcome::Pending => {
            let what = match sync_results(client, r, &comments, me, None).await {
                Ok(what) => what,
                Err(e) => return failed(&format!("{pr}: results comment"), &e),
            };
            let wants_changes = cfg.review_policy == ReviewPolicy::AcceptDecline
                && cfg.gitea_request_changes
                && r.result == Outcome::Failed
                && r.complete
                && qam == QamReview::Open;
            let requested = reviews.iter().any(|rv| {
                rv.state == "REQUEST_CHANGES"
                    && !rv.dismissed
                    && rv.commit_id == sha
                    && me.is_some_and(|me| rv.by_user(me))
            });
            if !wants_changes || requested {
                return done_or_final(format!("{pr}: {what}"));
            }
            if let Err(withheld) = recheck.recheck(Submission::gitea(r.number), &r.key).await {
                return withheld;
            }
            let body = report::results_comment(r, None);
            match client
                .submit_review(&r.owner, &r.repo, r.number, ReviewEvent::RequestChanges, &body, sha)
                .await
            {
                Ok(_) => Delivery::Done(format!("{pr}: {what}; requested changes on commit {sha}")),
                Err(e) => failed(&format!("{pr}: requesting changes"), &e),
            }
        }
    }
}

fn suffix(what: &Option<String>) -> String {
    what.as_ref().map(|w| format!("; {w}")).unwrap_or_default()
}

/// "up to date" changed nothing: the delivery is over without having done anything.
fn done_or_final(text: String) -> Delivery {
    if text.ends_with("results comment up to date") {
        Delivery::Final(text)
    } else {
        Delivery::Done(text)
    }
}

/// Our results comments on the pull request, oldest first: by us, carrying our marker. When we
/// do not know who we are, those that begin with the marker (as only ours do; a quote of one
/// begins with `>`).
fn ours<'a>(comments: &'a [Comment], me: Option<&str>, number: u64) -> Vec<&'a Comment> {
    comments
        .iter()
        .filter(|c| match me {
            Some(me) => c.author() == Some(me),
            None => report::begins_with_marker(&c.body),
        })
        .filter(|c| parse_marker(&c.body).is_some_and(|m| m.pr == number))
        .collect()
}

/// Who wrote our results comment, when we were not told who we are.
fn marked_author(comments: &[Comment], number: u64) -> Option<String> {
    ours(comments, None, number).first().and_then(|c| c.author()).map(str::to_string)
}

/// Updates our results comment when one exists (after a failure, then a pass); never creates one.
async fn refresh_results(
    client: &GiteaClient,
    r: &PrReport,
    comments: &[Comment],
    me: Option<&str>,
) -> Result<Option<String>, GiteaError> {
    if ours(comments, me, r.number).is_empty() {
        return Ok(None);
    }
    let what = sync_results(client, r, comments, me, None).await?;
    Ok((!what.ends_with("up to date")).then_some(what))
}

/// Makes our results comment say `r`: edited in place (the newest of ours), posted when there is
/// none, duplicates from an interrupted earlier run removed.
async fn sync_results(
    client: &GiteaClient,
    r: &PrReport,
    comments: &[Comment],
    me: Option<&str>,
    head: Option<&str>,
) -> Result<String, GiteaError> {
    let body = report::results_comment(r, head);
    let mine = ours(comments, me, r.number);
    let Some((newest, older)) = mine.split_last() else {
        client.post_comment(&r.owner, &r.repo, r.number, &body).await?;
        return Ok("results comment posted".into());
    };
    for c in older {
        match client.delete_comment(&r.owner, &r.repo, c.id).await {
            Ok(()) => {}
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(e),
        }
    }
    if newest.body == body {
        return Ok("results comment up to date".into());
    }
    client.edit_comment(&r.owner, &r.repo, newest.id, &body).await?;
    Ok("results comment updated".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitea::client::{Team, User};

    fn review(login: Option<&str>, team: Option<&str>, state: &str, stale: bool, dismissed: bool) -> Review {
        Review {
            id: 1,
            user: login.map(|l| User { id: 1, login: l.into() }),
            team: team.map(|t| Team { id: 1, name: t.into() }),
            state: state.into(),
            body: String::new(),
            commit_id: String::new(),
            stale,
            dismissed,
        }
    }

    #[test]
    fn qam_review_states() {
        let (bot, team) = ("qam-openqa-review", "qam-openqa");
        let staging = review(Some("autogits_obs_staging_bot"), None, "REQUEST_REVIEW", false, false);
        assert_eq!(qam_review(std::slice::from_ref(&staging), bot, team), QamReview::NotRequested);
        let open = review(Some(bot), None, "REQUEST_REVIEW", false, false);
        assert_eq!(qam_review(&[staging.clone(), open], bot, team), QamReview::Open);
        let by_team = review(None, Some(team), "PENDING", false, false);
        assert_eq!(qam_review(&[by_team], bot, team), QamReview::Open);
        let stale = review(Some(bot), None, "REQUEST_REVIEW", true, false);
        assert_eq!(qam_review(&[stale], bot, team), QamReview::Closed("stale".into()));
        let dismissed = review(Some(bot), None, "REQUEST_REVIEW", false, true);
        assert_eq!(qam_review(&[dismissed], bot, team), QamReview::Closed("dismissed".into()));
        let approved = review(Some(bot), None, "APPROVED", false, false);
        assert_eq!(
            qam_review(std::slice::from_ref(&approved), bot, team),
            QamReview::Closed("approved".into())
        );
        // the approval of an older commit, stale after a push: the review is asked for again
        let older = review(Some(bot), None, "APPROVED", true, false);
        assert_eq!(qam_review(&[approved, older], bot, team), QamReview::Closed("stale".into()));
        assert_eq!(PrReport::split_repo("products/SLFO"), Some(("products".into(), "SLFO".into())));
        assert_eq!(PrReport::split_repo("SLFO"), None);
    }
}
