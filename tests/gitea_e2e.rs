//! Gitea pull requests end to end: openQA job events (openQA simulator) into a gate behind the C
//! ABI, decisions through the outbox, and what the Gitea simulator's pull request ends up holding.
//! Also: an IBS incident and a Gitea pull request with the same number are decided independently.

mod common;

use common::{CGate, OpenQa};
use incident_gate_sim::gitea::{GiteaSim, GiteaSimConfig, Reviewer, SimComment};
use incident_gate_sim::obs::{ObsSim, ObsSimConfig, SimAuth, SimReview};
use std::time::Duration;

const REPO: &str = "products/SLFO";
const PR: u64 = 124;
const TOKEN: &str = "S3CRET-gitea-e2e-token";
const ME: &str = "qam-openqa";
const SHA1: &str = "2cf58b3a9c32d139470a5f32d5aa64efbd0fa90dda0144b09421709252fcb0ea";
const SHA2: &str = "9d1e0c0ffee0000000000000000000000000000000000000000000000000beef";
const REQUEST: u64 = 300_124;

struct Setup {
    qa: OpenQa,
    gitea: GiteaSim,
    obs: ObsSim,
    _state: tempfile::TempDir,
    gate: CGate,
}

async fn setup() -> Setup {
    setup_with(|_| {}).await
}

async fn setup_with(configure: impl FnOnce(&mut serde_json::Value)) -> Setup {
    let qa = OpenQa::start().await;
    let gitea = incident_gate_sim::gitea::start(GiteaSimConfig::new(TOKEN, ME)).await;
    gitea.create_pr(REPO, PR, SHA1);
    gitea.request_review(REPO, PR, Reviewer::User("qam-openqa-review".into()));
    let auth = SimAuth::Basic { user: "qam-bot".into(), password: "pw-e2e-1".into() };
    let obs = incident_gate_sim::obs::start(ObsSimConfig::new(auth)).await;
    obs.create_request(REQUEST, "review", vec![SimReview::group("qam-openqa")], "maintenance_release");
    let state = tempfile::tempdir().unwrap();
    let mut cfg = common::gate_config(&qa.url(), state.path());
    cfg["report_gitea"] = true.into();
    cfg["gitea_url"] = gitea.url().into();
    cfg["gitea_token"] = TOKEN.into();
    cfg["report_obs"] = true.into();
    cfg["obs_url"] = obs.url().into();
    cfg["obs_user"] = "qam-bot".into();
    cfg["obs_password"] = "pw-e2e-1".into();
    configure(&mut cfg);
    let gate = CGate::new(&cfg);
    Setup { qa, gitea, obs, _state: state, gate }
}

impl Setup {
    fn pr_jobs(&self, sha: &str, n: usize) -> Vec<u64> {
        (0..n).map(|i| self.qa.gitea_job(REPO, PR, sha, &format!("t{i}"))).collect()
    }

    fn finish(&self, jobs: &[u64], results: &[&str]) {
        for (job, result) in jobs.iter().zip(results) {
            self.qa.sim.set_done(*job, result);
            self.gate.job_done(*job, result);
        }
    }

    /// Waits until the outbox holds nothing for Gitea or IBS.
    async fn delivered(&self) {
        self.gate.flushed();
        let done = common::eventually(Duration::from_secs(20), || {
            let backlog = &self.gate.status()["engine"]["outbox_backlog"];
            (backlog["gitea"] == 0 && backlog["obs"] == 0).then_some(())
        })
        .await;
        assert!(done.is_some(), "delivery did not finish: {}", self.gate.status());
    }

    /// Our comments on the PR.
    fn ours(&self) -> Vec<SimComment> {
        self.gitea.comments(REPO, PR).into_iter().filter(|c| c.user == ME).collect()
    }

    fn approvals(&self, sha: &str) -> usize {
        self.ours()
            .iter()
            .filter(|c| {
                c.body.starts_with("@qam-openqa-review: approved")
                    && c.body.contains(&format!("Tested commit: {sha}"))
            })
            .count()
    }

    fn results_comments(&self) -> Vec<SimComment> {
        self.ours().into_iter().filter(|c| !c.body.starts_with("@qam-openqa-review")).collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passing_pull_request_is_approved_once_for_the_tested_head() {
    let s = setup().await;
    let jobs = s.pr_jobs(SHA1, 3);
    s.finish(&jobs[..2], &["passed", "passed"]);
    s.delivered().await;
    assert_eq!(s.approvals(SHA1), 0, "not approved while a job still runs");
    s.finish(&jobs[2..], &["passed"]);
    s.delivered().await;
    assert_eq!(s.approvals(SHA1), 1, "{:?}", s.ours());
    // the same events again (another web UI process, a redelivered AMQP message): nothing new
    s.finish(&jobs, &["passed", "passed", "passed"]);
    s.delivered().await;
    assert_eq!(s.approvals(SHA1), 1, "approved once: {:?}", s.ours());
    let verdict = s.gate.evaluate_submission("git:124").unwrap();
    assert_eq!((verdict["result"].as_str(), verdict["kind"].as_str()), (Some("passed"), Some("gitea")));
    assert_eq!(verdict["sha"], SHA1);
    let decisions = s.gate.decisions();
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["kind"], "gitea");
    let sinks: Vec<&str> =
        decisions[0]["deliveries"].as_array().unwrap().iter().map(|d| d["sink"].as_str().unwrap()).collect();
    assert_eq!(sinks, vec!["gitea"], "a pull request's decision is not reported to IBS");
    assert!(s.obs.comments(REQUEST).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_failure_comment_is_updated_in_place_when_results_change() {
    let s = setup().await;
    let jobs = s.pr_jobs(SHA1, 3);
    s.finish(&jobs, &["passed", "failed", "passed"]);
    s.delivered().await;
    let first = s.results_comments();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0].body.contains("failed") && first[0].body.contains(&format!("/tests/{}", jobs[1])),
        "{}",
        first[0].body
    );
    assert_eq!(s.approvals(SHA1), 0);
    // links that open: the pull request's page, and openQA's overview of the jobs' build (openQA
    // matches `build` exactly; `:git:124` alone matches none)
    assert!(
        first[0].body.contains(&format!("({}/incident%5Fgate/git:124)", s.qa.url())),
        "{}",
        first[0].body
    );
    assert!(
        first[0].body.contains(&format!("[:git:124:pkg]({}/tests/overview?build=:git:124:pkg)", s.qa.url())),
        "{}",
        first[0].body
    );
    assert!(!first[0].body.contains("build=:git:124)"), "{}", first[0].body);

    // the failed job is restarted and fails again: a new decision, the same comment edited
    let (clone, _) = s.qa.sim.restart(jobs[1]).unwrap();
    s.finish(&[clone], &["incomplete"]);
    s.delivered().await;
    let second = s.results_comments();
    assert_eq!(second.len(), 1, "edited, not piled up: {second:?}");
    assert_eq!(second[0].id, first[0].id);
    assert!(
        second[0].body.contains(&format!("/tests/{clone}")) && second[0].body.contains("incomplete"),
        "{}",
        second[0].body
    );
    assert!(!second[0].body.contains(&format!("/tests/{})", jobs[1])), "{}", second[0].body);
    assert_eq!(s.approvals(SHA1), 0);

    // restarted once more and passing: approved, and the results comment no longer says failed
    let (clone2, _) = s.qa.sim.restart(clone).unwrap();
    s.finish(&[clone2], &["passed"]);
    s.delivered().await;
    assert_eq!(s.approvals(SHA1), 1, "{:?}", s.ours());
    let third = s.results_comments();
    assert_eq!(third.len(), 1, "{third:?}");
    assert!(!third[0].body.contains("failed**"), "{}", third[0].body);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_approval_after_a_push() {
    let s = setup().await;
    let jobs = s.pr_jobs(SHA1, 2);
    s.finish(&jobs[..1], &["passed"]);
    s.gitea.push(REPO, PR, SHA2);
    s.finish(&jobs[1..], &["passed"]);
    s.delivered().await;
    assert_eq!(s.approvals(SHA1) + s.approvals(SHA2), 0, "{:?}", s.ours());
    let results = s.results_comments();
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(
        results[0].body.contains("older commit") && results[0].body.contains(&SHA2[..12]),
        "{}",
        results[0].body
    );

    // the push made the review request stale (as Gitea does); the workflow bot requests it anew,
    // and openQA tests the new head: its jobs replace the old ones, and that head is approved
    s.gitea.rerequest_review(REPO, PR, Reviewer::User("qam-openqa-review".into()));
    let new_jobs = s.pr_jobs(SHA2, 2);
    s.finish(&new_jobs, &["passed", "passed"]);
    s.delivered().await;
    assert_eq!(s.approvals(SHA2), 1, "{:?}", s.ours());
    assert_eq!(s.approvals(SHA1), 0);
    let verdict = s.gate.evaluate_submission("git:124").unwrap();
    assert_eq!(verdict["sha"], SHA2);
    assert_eq!(verdict["job_ids"], serde_json::json!(new_jobs));
}

/// The new head's jobs pass before the workflow bot asks for the QAM review again (the push made
/// the request stale): the pass waits in the outbox, shown in status, and the approval of that
/// head follows the request within one reconciliation interval, without another openQA event.
#[tokio::test(flavor = "multi_thread")]
async fn a_pass_before_the_review_is_requested_again_is_approved_once_it_is() {
    let s = setup_with(|cfg| cfg["reconcile_interval_s"] = 1.into()).await;
    s.gitea.push(REPO, PR, SHA2);
    let jobs = s.pr_jobs(SHA2, 2);
    s.finish(&jobs, &["passed", "passed"]);
    s.gate.flushed();
    let waiting = common::eventually(Duration::from_secs(20), || {
        let d = s.gate.decisions();
        let gitea = d.first()?["deliveries"].as_array()?.iter().find(|x| x["sink"] == "gitea")?.clone();
        (gitea["state"] == "queued"
            && gitea["outcome"].as_str()?.contains("waiting for it to be requested again"))
        .then_some(gitea)
    })
    .await;
    assert!(waiting.is_some(), "the pass does not wait for the review: {:?}", s.gate.decisions());
    assert_eq!(s.approvals(SHA2), 0, "not approved while the review is stale");
    let page = s.gate.incidents(&serde_json::json!({"submission": "git:124"}));
    assert_eq!(page["incidents"][0]["state"], "delivery_pending", "{page}");
    assert!(page["incidents"][0]["why"].as_str().unwrap_or("").contains("stale"), "{page}");

    s.gitea.rerequest_review(REPO, PR, Reviewer::User("qam-openqa-review".into()));
    // no openQA event from here on
    let approved =
        common::eventually(Duration::from_secs(20), || (s.approvals(SHA2) == 1).then_some(())).await;
    assert!(
        approved.is_some(),
        "not approved after the review was requested again: {:?}",
        s.gate.decisions()
    );
    s.delivered().await;
    assert_eq!(s.approvals(SHA2), 1, "{:?}", s.ours());
    assert_eq!(s.approvals(SHA1), 0);
}

/// The wait is bounded: after `review_wait_max_s` the report ends, saying what it waited for.
#[tokio::test(flavor = "multi_thread")]
async fn a_wait_for_the_review_ends_after_review_wait_max_s() {
    let s = setup_with(|cfg| cfg["review_wait_max_s"] = 0.into()).await;
    s.gitea.push(REPO, PR, SHA2);
    let jobs = s.pr_jobs(SHA2, 1);
    s.finish(&jobs, &["passed"]);
    s.delivered().await;
    let d = s.gate.decisions();
    let gitea = d[0]["deliveries"].as_array().unwrap().iter().find(|x| x["sink"] == "gitea").unwrap().clone();
    assert_eq!(gitea["state"], "final", "{gitea}");
    assert_eq!(
        gitea["outcome"],
        "gave up after waiting 0 s (review_wait_max_s) since the decision: PR products/SLFO#124: the QAM review is stale, waiting for it to be requested again"
    );
    assert_eq!(s.approvals(SHA2), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn restarting_a_job_of_an_older_commit_keeps_the_new_head() {
    let s = setup().await;
    let old = s.pr_jobs(SHA1, 1);
    s.finish(&old, &["failed"]);
    s.gitea.push(REPO, PR, SHA2);
    s.gitea.rerequest_review(REPO, PR, Reviewer::User("qam-openqa-review".into()));
    let new_jobs = s.pr_jobs(SHA2, 2);
    s.finish(&new_jobs[..1], &["passed"]);
    // someone restarts the old commit's failed job: its clone is the newest job of the PR
    let (clone, event) = s.qa.sim.restart(old[0]).unwrap();
    assert_eq!(s.gate.submit(&event.name, &event.data), incident_gate::ffi::ig_status::IG_OK);
    s.finish(&[clone], &["failed"]);
    s.finish(&new_jobs[1..], &["passed"]);
    s.delivered().await;
    let verdict = s.gate.evaluate_submission("git:124").unwrap();
    assert_eq!(verdict["sha"], SHA2, "{verdict}");
    assert_eq!(verdict["result"], "passed", "{verdict}");
    assert_eq!(s.approvals(SHA2), 1, "{:?}", s.ours());
    assert_eq!(s.approvals(SHA1), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ibs_incident_and_a_pull_request_with_the_same_number_are_decided_independently() {
    let s = setup().await;
    let ibs: Vec<u64> = (0..2).map(|i| s.qa.incident_job(PR, REQUEST, &format!("i{i}"))).collect();
    let git = s.pr_jobs(SHA1, 2);
    s.finish(&git, &["passed", "passed"]);
    s.finish(&ibs, &["passed", "failed"]);
    s.delivered().await;

    assert_eq!(s.approvals(SHA1), 1, "the PR passed on its own jobs: {:?}", s.ours());
    assert!(s.results_comments().iter().all(|c| !c.body.contains("failed**")));
    let obs_comments = s.obs.comments(REQUEST);
    assert_eq!(obs_comments.len(), 1, "{obs_comments:?}");
    assert!(obs_comments[0].text.contains(&format!("/tests/{}", ibs[1])), "{}", obs_comments[0].text);
    assert_ne!(s.obs.reviews(REQUEST)[0].state, "accepted", "the incident failed on its own jobs");

    let pr = s.gate.evaluate_submission("git:124").unwrap();
    let incident = s.gate.evaluate(PR).unwrap();
    assert_eq!(pr["job_ids"], serde_json::json!(git));
    assert_eq!(incident["job_ids"], serde_json::json!(ibs));
    assert_eq!((pr["result"].as_str(), incident["result"].as_str()), (Some("passed"), Some("failed")));
    assert_eq!(s.gate.evaluate_submission("124").unwrap()["job_ids"], incident["job_ids"]);
    let kinds: Vec<(String, String)> = s
        .gate
        .decisions()
        .iter()
        .map(|d| (d["kind"].as_str().unwrap().to_string(), d["result"].as_str().unwrap().to_string()))
        .collect();
    assert!(
        kinds.contains(&("gitea".into(), "passed".into()))
            && kinds.contains(&("ibs".into(), "failed".into())),
        "{kinds:?}"
    );
}

#[test]
fn submissions_are_named_through_the_c_abi() {
    use incident_gate::ffi::{ig_gate_evaluate_submission, ig_status};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let qa = rt.block_on(OpenQa::start());
    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&common::gate_config(&qa.url(), state.path()));
    for bad in ["git:", "git:0", "pr:5", "", "12x"] {
        assert_eq!(gate.evaluate_submission(bad), Err(ig_status::IG_INVALID_ARGUMENT), "{bad}");
    }
    let mut out = std::ptr::null_mut();
    let status = unsafe { ig_gate_evaluate_submission(std::ptr::null(), std::ptr::null(), &mut out) };
    assert_eq!(status, ig_status::IG_NULL_ARGUMENT);
    assert_eq!(gate.evaluate_submission("git:9").unwrap()["result"], "no_jobs");
}

/// Issue 20, point 3: a pass waits for Gitea (down), a job is restarted and no event says so: the
/// check right before the approval comment asks openQA afresh and withholds it.
#[tokio::test(flavor = "multi_thread")]
async fn an_approval_held_up_by_gitea_is_withheld_when_a_job_was_restarted_unheard() {
    let s = setup().await;
    let jobs = s.pr_jobs(SHA1, 2);
    s.gitea.set_down(true);
    s.finish(&jobs, &["passed", "passed"]);
    s.gate.flushed();
    let (clone, _unheard) = s.qa.sim.restart(jobs[0]).unwrap();
    s.gitea.set_down(false);
    s.delivered().await;
    assert_eq!(s.approvals(SHA1), 0, "no approval while the clone runs: {:?}", s.ours());
    let decisions = s.gate.decisions();
    let gitea =
        decisions[0]["deliveries"].as_array().unwrap().iter().find(|d| d["sink"] == "gitea").unwrap().clone();
    assert_eq!(gitea["state"], "final", "{gitea}");
    assert!(gitea["outcome"].as_str().unwrap().contains("withheld"), "{gitea}");
    s.finish(&[clone], &["passed"]);
    s.delivered().await;
    assert_eq!(s.approvals(SHA1), 1, "approved once the clone passed: {:?}", s.ours());
}
