//! Reporting to IBS end to end: job events into a gate, decisions through the outbox, and what the
//! IBS simulator ends up holding (request state, reviews, comments) for each review policy.

mod common;

use common::{CGate, OpenQa};
use incident_gate_sim::obs::{ObsSim, ObsSimConfig, SimAuth, SimReview};
use std::time::Duration;

const REQUEST: u64 = 300_777;

struct Setup {
    qa: OpenQa,
    obs: ObsSim,
    _state: tempfile::TempDir,
    gate: CGate,
}

async fn setup(policy: &str, request_state: &str) -> Setup {
    let qa = OpenQa::start().await;
    let auth = SimAuth::Basic { user: "qam-bot".into(), password: "pw-e2e-1".into() };
    let obs = incident_gate_sim::obs::start(ObsSimConfig::new(auth)).await;
    obs.create_request(REQUEST, request_state, vec![SimReview::group("qam-openqa")], "maintenance_release");
    let state = tempfile::tempdir().unwrap();
    let mut cfg = common::gate_config(&qa.url(), state.path());
    cfg["report_obs"] = true.into();
    cfg["obs_url"] = obs.url().into();
    cfg["obs_user"] = "qam-bot".into();
    cfg["obs_password"] = "pw-e2e-1".into();
    cfg["review_policy"] = policy.into();
    let gate = CGate::new(&cfg);
    Setup { qa, obs, _state: state, gate }
}

impl Setup {
    /// A job ends in openQA, and its event reaches the gate.
    fn done(&self, job: u64, result: &str) {
        self.qa.sim.set_done(job, result);
        self.gate.job_done(job, result);
    }

    /// Runs an incident's three jobs to the end with `results`, each with its event.
    fn run(&self, incident: u64, results: [&str; 3]) -> Vec<u64> {
        let jobs: Vec<u64> =
            (0..3).map(|i| self.qa.incident_job(incident, REQUEST, &format!("t{i}"))).collect();
        for (job, result) in jobs.iter().zip(results) {
            self.done(*job, result);
        }
        jobs
    }

    /// `run`, then waits until IBS was told.
    async fn finish(&self, incident: u64, results: [&str; 3]) -> Vec<u64> {
        let jobs = self.run(incident, results);
        self.delivered().await;
        jobs
    }

    /// Waits until the outbox holds nothing for IBS.
    async fn delivered(&self) {
        self.gate.flushed();
        let done = common::eventually(Duration::from_secs(20), || {
            let status = self.gate.status();
            (status["engine"]["outbox_backlog"]["obs"] == 0).then_some(())
        })
        .await;
        assert!(done.is_some(), "IBS delivery did not finish: {}", self.gate.status());
    }

    fn review(&self) -> String {
        self.obs.reviews(REQUEST)[0].state.clone()
    }

    fn obs_outcome(&self) -> String {
        let decisions = self.gate.decisions();
        let obs = decisions[0]["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["sink"] == "obs")
            .unwrap()
            .clone();
        format!("{} {}", obs["state"].as_str().unwrap(), obs["outcome"].as_str().unwrap_or(""))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn accept_onpass_accepts_a_pass_and_only_comments_a_failure() {
    let s = setup("accept-onpass", "review").await;
    let jobs = s.finish(7001, ["passed", "failed", "passed"]).await;
    assert_eq!(s.review(), "new", "a failure is not declined under accept-onpass");
    assert_eq!(s.obs.request_state(REQUEST).as_deref(), Some("review"));
    let comments = s.obs.comments(REQUEST);
    assert_eq!(comments.len(), 1);
    assert!(comments[0].text.contains("failed"), "{}", comments[0].text);
    assert!(
        comments[0].text.contains(&format!("/tests/{}", jobs[1])),
        "links the blocking job: {}",
        comments[0].text
    );

    // the failed job is restarted and passes: a new decision accepts, the comment is replaced
    let (clone, event) = s.qa.sim.restart(jobs[1]).unwrap();
    assert_eq!(s.gate.submit(&event.name, &event.data), incident_gate::ffi::ig_status::IG_OK);
    s.done(clone, "passed");
    s.delivered().await;
    assert_eq!(s.review(), "accepted");
    assert_eq!(
        s.obs.request_state(REQUEST).as_deref(),
        Some("new"),
        "all reviews accepted: the request is new"
    );
    let comments = s.obs.comments(REQUEST);
    assert_eq!(comments.len(), 1, "replaced, not piled up");
    assert!(comments[0].text.contains("passed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn accept_decline_declines_a_failure_with_the_blocking_jobs() {
    let s = setup("accept-decline", "review").await;
    let jobs = s.finish(7002, ["passed", "passed", "failed"]).await;
    assert_eq!(s.review(), "declined");
    assert_eq!(
        s.obs.request_state(REQUEST).as_deref(),
        Some("declined"),
        "one declined review declines the request"
    );
    let review = &s.obs.reviews(REQUEST)[0];
    assert!(
        review.comment.contains(&format!("/tests/{}", jobs[2])),
        "the reason names the job: {}",
        review.comment
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn comment_policy_never_changes_the_review() {
    let s = setup("comment", "review").await;
    s.finish(7003, ["passed", "passed", "passed"]).await;
    assert_eq!(s.review(), "new");
    assert_eq!(s.obs.comments(REQUEST).len(), 1);
    assert!(s.obs.comments(REQUEST)[0].text.contains("passed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_touches_nothing_and_records_what_it_would_do() {
    let s = setup("dry-run", "review").await;
    s.finish(7004, ["passed", "passed", "passed"]).await;
    assert_eq!(s.review(), "new");
    assert!(s.obs.comments(REQUEST).is_empty());
    assert_eq!(s.obs.count("POST", "/"), 0, "no write reached IBS");
    let outcome = s.obs_outcome();
    assert!(outcome.starts_with("final") && outcome.contains("dry-run"), "{outcome}");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_out_of_review_are_left_alone_with_a_reason() {
    for state in ["accepted", "revoked", "superseded"] {
        let s = setup("accept-decline", state).await;
        s.finish(7005, ["passed", "passed", "passed"]).await;
        assert_eq!(s.obs.request_state(REQUEST).as_deref(), Some(state));
        assert!(s.obs.comments(REQUEST).is_empty());
        assert_eq!(s.obs.count("POST", "/"), 0, "{state}: nothing written");
        let outcome = s.obs_outcome();
        assert!(outcome.starts_with("final") && outcome.contains(state), "{state}: {outcome}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_identical_decision_posts_nothing_new() {
    let s = setup("accept-onpass", "review").await;
    let jobs = s.finish(7006, ["passed", "failed", "passed"]).await;
    let writes = s.obs.count("POST", "/");
    // a second process with its own state directory decides the same and reports again
    let state = tempfile::tempdir().unwrap();
    let mut cfg = common::gate_config(&s.qa.url(), state.path());
    for key in ["obs_url", "obs_user", "obs_password", "review_policy", "report_obs"] {
        cfg[key] = s.gate.status()["config"][key].clone();
    }
    cfg["obs_password"] = "pw-e2e-1".into();
    let other = CGate::new(&cfg);
    for job in &jobs {
        other.job_done(*job, "passed");
    }
    other.flushed();
    common::eventually(Duration::from_secs(20), || {
        (other.status()["engine"]["outbox_backlog"]["obs"] == 0).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(other.decisions().len(), 1);
    assert_eq!(s.obs.count("POST", "/"), writes, "the identical comment is found, nothing posted");
    assert_eq!(s.obs.comments(REQUEST).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn ibs_down_then_up_reports_exactly_once() {
    let s = setup("accept-onpass", "review").await;
    s.obs.set_down(true);
    s.run(7007, ["passed"; 3]);
    s.gate.flushed();
    let retried = common::eventually(Duration::from_secs(10), || {
        let d = s.gate.decisions();
        let obs = d.first()?["deliveries"].as_array()?.iter().find(|x| x["sink"] == "obs")?.clone();
        (obs["attempts"].as_u64()? >= 1 && obs["state"] == "queued").then_some(obs)
    })
    .await;
    assert!(retried.is_some(), "a failed attempt stays queued: {}", s.gate.status());
    assert_eq!(s.review(), "new");
    s.obs.set_down(false);
    s.delivered().await;
    assert_eq!(s.review(), "accepted");
    assert_eq!(s.obs.count("POST", "/request/"), 1, "the review was changed once");
    assert_eq!(s.obs.comments(REQUEST).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_decision_replaced_while_ibs_was_down_is_not_reported() {
    let s = setup("accept-decline", "review").await;
    s.obs.set_down(true);
    let jobs = s.run(7008, ["passed", "failed", "passed"]);
    s.gate.flushed();
    // the failure is fixed before IBS comes back: restart, pass, a new decision
    let (clone, event) = s.qa.sim.restart(jobs[1]).unwrap();
    assert_eq!(s.gate.submit(&event.name, &event.data), incident_gate::ffi::ig_status::IG_OK);
    s.done(clone, "passed");
    s.gate.flushed();
    assert_eq!(s.gate.decisions().len(), 2);
    s.obs.set_down(false);
    s.delivered().await;
    assert_eq!(s.review(), "accepted", "the stale failure must not decline the request");
    let decisions = s.gate.decisions();
    let stale =
        decisions[1]["deliveries"].as_array().unwrap().iter().find(|d| d["sink"] == "obs").unwrap().clone();
    assert_eq!(stale["state"], "final");
    assert!(stale["outcome"].as_str().unwrap().contains("superseded"), "{stale}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approval_held_up_by_ibs_is_not_delivered_once_testing_resumed() {
    let s = setup("accept-onpass", "review").await;
    s.obs.set_down(true);
    let jobs = s.run(7009, ["passed"; 3]);
    s.gate.flushed();
    assert_eq!(s.gate.decisions().len(), 1);
    // a reviewer restarts a passed job while the approval waits for IBS: testing is not finished
    let (clone, event) = s.qa.sim.restart(jobs[1]).unwrap();
    assert_eq!(s.gate.submit(&event.name, &event.data), incident_gate::ffi::ig_status::IG_OK);
    s.gate.flushed();
    s.obs.set_down(false);
    s.delivered().await;
    assert_eq!(s.review(), "new", "the approval of the earlier run must not reach IBS");
    assert_eq!(s.obs_outcome().split(' ').next(), Some("final"), "{}", s.obs_outcome());
    assert!(s.obs_outcome().contains("testing resumed"), "{}", s.obs_outcome());
    // the clone passes with the same result as before: that is a new decision, and it is reported
    s.done(clone, "passed");
    s.delivered().await;
    assert_eq!(s.gate.decisions().len(), 2);
    assert_eq!(s.review(), "accepted");
    assert_eq!(s.obs.count("POST", "/request/"), 1, "the review was changed once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_openqa_restarts_by_itself_is_not_declined() {
    let s = setup("accept-decline", "review").await;
    let jobs: Vec<u64> = (0..3).map(|i| s.qa.incident_job(7010, REQUEST, &format!("t{i}"))).collect();
    for job in &jobs[..2] {
        s.done(*job, "passed");
    }
    // upstream openQA marks the reason, emits the done event, and clones the job afterwards in a
    // background task whose restart event the web UI never hears
    let reason = "backend died: QEMU exited unexpectedly [Auto-restarting because reason matches the configured \"auto_clone_regex\".]";
    s.qa.sim.set_done_with_reason(jobs[2], "incomplete", Some(reason));
    s.gate.job_done(jobs[2], "incomplete");
    s.delivered().await;
    let v = s.gate.evaluate(7010).unwrap();
    assert_eq!((v["result"].as_str(), v["complete"].as_bool()), (Some("failed"), Some(false)), "{v}");
    assert_eq!(v["waiting"][0]["kind"], "restart", "{v}");
    assert_eq!(s.review(), "new", "not declined while openQA restarts the job");
    let (clone, _restart_event_elsewhere) = s.qa.sim.restart(jobs[2]).unwrap();
    s.done(clone, "passed");
    s.delivered().await;
    assert_eq!(s.review(), "accepted");
}

/// Issue 20, point 3: no event tells the gate that a job was restarted (a hook hears none): the
/// check right before the accept asks openQA afresh and withholds the approval.
#[tokio::test(flavor = "multi_thread")]
async fn an_approval_held_up_by_ibs_is_withheld_when_a_job_was_restarted_unheard() {
    let s = setup("accept-onpass", "review").await;
    s.obs.set_down(true);
    let jobs = s.run(7011, ["passed"; 3]);
    s.gate.flushed();
    assert_eq!(s.gate.decisions().len(), 1);
    let (clone, _unheard) = s.qa.sim.restart(jobs[1]).unwrap();
    s.obs.set_down(false);
    s.delivered().await;
    assert_eq!(s.review(), "new", "no approval while the clone runs");
    let outcome = s.obs_outcome();
    assert!(outcome.starts_with("final withheld"), "{outcome}");
    assert!(outcome.contains("pending again"), "{outcome}");
    assert_eq!(s.obs.count("POST", "/request/"), 0, "the review was not touched");
    // the clone passes: a new decision, approved after its own check
    s.done(clone, "passed");
    s.delivered().await;
    assert_eq!(s.review(), "accepted");
    assert_eq!(s.obs.count("POST", "/request/"), 1, "the review was changed once");
}

/// Issue 20, point 3: a waiver edited so that it no longer accepts the failure (no comment event
/// reaches hooks, and the audit only checks that the comment still exists).
#[tokio::test(flavor = "multi_thread")]
async fn an_approval_held_up_by_ibs_is_withheld_when_its_waiver_was_edited() {
    let s = setup("accept-onpass", "review").await;
    let jobs: Vec<u64> = (0..3).map(|i| s.qa.incident_job(7012, REQUEST, &format!("t{i}"))).collect();
    let created = s.qa.sim.comment(jobs[1], "@review:acceptable_for:incident_7012:bsc#1 known").unwrap();
    let comment = created.data["id"].as_u64().unwrap();
    s.obs.set_down(true);
    for (job, result) in jobs.iter().zip(["passed", "failed", "passed"]) {
        s.done(*job, result);
    }
    s.gate.flushed();
    assert_eq!(s.gate.decisions()[0]["result"], "passed", "{}", s.gate.status());
    s.qa.sim.update_comment(jobs[1], comment, "still looking into it").unwrap();
    s.obs.set_down(false);
    s.delivered().await;
    assert_eq!(s.review(), "new", "the failure is no longer accepted: no approval");
    let decisions = s.gate.decisions();
    assert_eq!(decisions[0]["result"], "failed", "the fresh evaluation's decision took over");
    let held =
        decisions[1]["deliveries"].as_array().unwrap().iter().find(|d| d["sink"] == "obs").unwrap().clone();
    assert!(held["outcome"].as_str().unwrap().contains("withheld"), "{held}");
    assert!(s.obs.comments(REQUEST)[0].text.contains("failed"), "the failure is explained on the request");
}

/// Issue 20, point 3: openQA cannot be asked again right before the accept: no approval, the
/// delivery is retried, and once openQA answers the restart it withholds it.
#[tokio::test(flavor = "multi_thread")]
async fn an_approval_waits_while_openqa_cannot_be_asked_again() {
    let s = setup("accept-onpass", "review").await;
    s.obs.set_down(true);
    let jobs = s.run(7013, ["passed"; 3]);
    s.gate.flushed();
    let (_clone, _unheard) = s.qa.sim.restart(jobs[0]).unwrap();
    s.qa.sim.set_down(true);
    s.obs.set_down(false);
    let retried = common::eventually(Duration::from_secs(20), || {
        let d = s.gate.decisions();
        let obs = d.first()?["deliveries"].as_array()?.iter().find(|x| x["sink"] == "obs")?.clone();
        let outcome = obs["outcome"].as_str()?.to_string();
        (obs["state"] == "queued" && outcome.contains("again before reporting")).then_some(obs)
    })
    .await;
    assert!(retried.is_some(), "the delivery waits for openQA: {}", s.gate.status());
    assert_eq!(s.review(), "new");
    s.qa.sim.set_down(false);
    s.delivered().await;
    assert_eq!(s.review(), "new", "no approval while the clone runs");
    assert!(s.obs_outcome().starts_with("final withheld"), "{}", s.obs_outcome());
}

/// The request has no qam-openqa review when the incident passes (it is added later): the pass
/// waits in the outbox, shown in status, and is accepted once the review is there, within one
/// reconciliation interval and without another openQA event.
#[tokio::test(flavor = "multi_thread")]
async fn a_pass_before_our_review_is_added_is_accepted_once_it_is() {
    let qa = OpenQa::start().await;
    let auth = SimAuth::Basic { user: "qam-bot".into(), password: "pw-e2e-1".into() };
    let obs = incident_gate_sim::obs::start(ObsSimConfig::new(auth)).await;
    obs.create_request(REQUEST, "review", vec![SimReview::group("qam-manual")], "maintenance_release");
    let state = tempfile::tempdir().unwrap();
    let mut cfg = common::gate_config(&qa.url(), state.path());
    cfg["report_obs"] = true.into();
    cfg["obs_url"] = obs.url().into();
    cfg["obs_user"] = "qam-bot".into();
    cfg["obs_password"] = "pw-e2e-1".into();
    cfg["reconcile_interval_s"] = 1.into();
    let s = Setup { qa, obs, _state: state, gate: CGate::new(&cfg) };
    s.run(7009, ["passed", "passed", "passed"]);
    s.gate.flushed();
    let waiting = common::eventually(Duration::from_secs(20), || {
        let d = s.gate.decisions();
        let obs = d.first()?["deliveries"].as_array()?.iter().find(|x| x["sink"] == "obs")?.clone();
        let o = format!("{} {}", obs["state"].as_str()?, obs["outcome"].as_str()?);
        o.contains("waiting for a qam-openqa review").then_some(o)
    })
    .await
    .unwrap_or_else(|| panic!("not waiting for the review: {:?}", s.gate.decisions()));
    assert!(waiting.starts_with("queued "), "{waiting}");
    assert!(s.obs.comments(REQUEST).is_empty());

    s.obs.add_review(REQUEST, SimReview::group("qam-openqa"));
    s.delivered().await;
    let ours = s.obs.reviews(REQUEST).into_iter().find(|r| r.by_group.as_deref() == Some("qam-openqa"));
    assert_eq!(ours.map(|r| r.state).as_deref(), Some("accepted"), "{}", s.obs_outcome());
    assert!(s.obs_outcome().starts_with("done "), "{}", s.obs_outcome());
}
