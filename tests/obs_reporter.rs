//! The IBS reporter against the OBS simulator: what each policy does to the request, its reviews
//! and comments, that repeated and changed decisions converge, faults, and authentication.
//! Assertions look at what the simulator holds and what it received.

use incident_gate::config::{Config, ReviewPolicy, Secret};
use incident_gate::decision::{Decision, Delivery};
use incident_gate::obs::report::parse_marker;
use incident_gate::obs::{deliver, Credentials, ObsClient, ObsError};
use incident_gate::verdict::{BlockingJob, Counts, Outcome, Verdict};
use incident_gate_sim::obs::{start, ObsSim, ObsSimConfig, SimAuth, SimReview};
use std::path::Path;
use std::time::Duration;
use testkit::{keygen, review_change_requests};

const RR: u64 = 300001;
const GROUP: &str = "qam-openqa";
const PASSWORD: &str = "S3CRET-obs-pw";

fn decision(result: Outcome, request: Option<u64>, job_ids: &[u64]) -> Decision {
    let blocking: Vec<BlockingJob> = if result == Outcome::Failed {
        job_ids
            .iter()
            .take(2)
            .map(|&id| BlockingJob {
                id,
                name: format!(
                    "sle-15-SP6-Server-DVD-Incidents-x86_64-Build:12345:openssl-mau|extratests{id}@64bit"
                ),
                result: "failed".into(),
                group: "Maintenance: SLE 15 SP6 Incidents".into(),
                url: format!("https://openqa.example.com/tests/{id}"),
            })
            .collect()
    } else {
        vec![]
    };
    let total = if result == Outcome::NoJobs { 0 } else { job_ids.len() as u64 };
    let failed = blocking.len() as u64;
    let verdict = Verdict {
        incident: 12345,
        kind: Default::default(),
        sha: None,
        repo: None,
        request,
        rrid: request.map(|r| format!("SUSE:Maintenance:12345:{r}")),
        result,
        jobs: Counts { total, passed: total - failed, softfailed: 0, failed, accepted: 0, pending: 0 },
        blocking,
        job_ids: job_ids.to_vec(),
        notes: vec![],
        complete: true,
        waiting: vec![],
    };
    Decision::new(verdict, "https://openqa.example.com")
}

fn config(sim: &ObsSim, policy: ReviewPolicy) -> Config {
    Config {
        obs_url: sim.url(),
        review_policy: policy,
        review_group: GROUP.into(),
        http_timeout_s: 5,
        ..Config::default()
    }
}

fn client(sim: &ObsSim, creds: Credentials) -> ObsClient {
    ObsClient::new(&sim.url(), creds, Duration::from_secs(5)).unwrap()
}

fn anonymous(sim: &ObsSim) -> ObsClient {
    client(sim, Credentials::default())
}

/// A request in review with our open review and a second open one, so accepting ours keeps it in
/// review (unless `only_ours`).
fn request(sim: &ObsSim, only_ours: bool) {
    let mut reviews =
        vec![SimReview::user("maintenance-coordinator").with_state("accepted"), SimReview::group(GROUP)];
    if !only_ours {
        reviews.push(SimReview::group("qam-manual"));
    }
    sim.create_request(RR, "review", reviews, "maintenance_release");
}

fn our_review(sim: &ObsSim) -> SimReview {
    sim.reviews(RR).into_iter().find(|r| r.by_group.as_deref() == Some(GROUP)).unwrap()
}

fn writes(sim: &ObsSim) -> usize {
    sim.received().iter().filter(|r| r.method != "GET").count()
}

fn done(d: &Delivery) -> &str {
    match d {
        Delivery::Done(s) => s,
        other => panic!("expected Done, got {other:?}"),
    }
}

/// IBS refused our credentials or permissions: retried every `obs_denied_retry_s`, never final.
fn denied(d: &Delivery) -> &str {
    match d {
        Delivery::Denied(s, wait) => {
            assert_eq!(*wait, 600_000, "obs_denied_retry_s");
            s
        }
        other => panic!("expected Denied, got {other:?}"),
    }
}

fn final_(d: &Delivery) -> &str {
    match d {
        Delivery::Final(s) => s,
        other => panic!("expected Final, got {other:?}"),
    }
}

#[tokio::test]
async fn accept_onpass_accepts_a_passed_decision() {
    let sim = start(ObsSimConfig::default()).await;
    request(&sim, false);
    let d = decision(Outcome::Passed, Some(RR), &[1, 2, 3]);
    let cfg = config(&sim, ReviewPolicy::AcceptOnpass);
    let text = done(&deliver(&anonymous(&sim), &cfg, &d).await).to_string();
    assert!(text.contains("accepted the qam-openqa review") && text.contains("comment posted"), "{text}");
    let review = our_review(&sim);
    assert_eq!(review.state, "accepted");
    assert_eq!(review.who.as_deref(), Some("incident-gate"));
    assert!(
        review.comment.starts_with("openQA: all 3 relevant jobs of incident 12345 passed"),
        "{}",
        review.comment
    );
    // another review is still open: the request stays in review
    assert_eq!(sim.request_state(RR).as_deref(), Some("review"));
    let comments = sim.comments(RR);
    assert_eq!(comments.len(), 1);
    assert_eq!(parse_marker(&comments[0].text).unwrap().key, d.key);
    assert_eq!(parse_marker(&comments[0].text).unwrap().state, "passed");
}

#[tokio::test]
async fn last_review_accepted_makes_the_request_new_not_accepted() {
    let sim = start(ObsSimConfig::default()).await;
    request(&sim, true);
    let cfg = config(&sim, ReviewPolicy::AcceptDecline);
    done(&deliver(&anonymous(&sim), &cfg, &decision(Outcome::Passed, Some(RR), &[1])).await);
    assert_eq!(sim.request_state(RR).as_deref(), Some("new"));
    // a repeat finds the review closed and touches nothing
    sim.clear_received();
    let again = deliver(&anonymous(&sim), &cfg, &decision(Outcome::Passed, Some(RR), &[1])).await;
    assert!(final_(&again).contains("already accepted"), "{again:?}");
    assert_eq!(writes(&sim), 0);
}

#[tokio::test]
async fn accept_onpass_only_comments_a_failed_decision() {
    let sim = start(ObsSimConfig::default()).await;
    request(&sim, false);
    let d = decision(Outcome::Failed, Some(RR), &[4711, 4712, 4713]);
    let text =
        done(&deliver(&anonymous(&sim), &config(&sim, ReviewPolicy::AcceptOnpass), &d).await).to_string();
    assert!(!text.contains("review"), "{text}");
    assert_eq!(our_review(&sim).state, "new");
    assert_eq!(sim.request_state(RR).as_deref(), Some("review"));
    assert_eq!(review_change_requests(&sim), 0);
    let comments = sim.comments(RR);
    assert_eq!(comments.len(), 1);
    let body = &comments[0].text;
    assert!(body.contains("| [4711](https://openqa.example.com/tests/4711) |"), "{body}");
    assert!(body.contains("openssl-mau&#124;extratests4711&#64;64bit"), "{body}");
    assert_eq!(parse_marker(body).unwrap().state, "failed");
}

#[tokio::test]
async fn accept_decline_declines_a_failed_decision_with_the_report() {
    let sim = start(ObsSimConfig::default()).await;
    request(&sim, false);
    let d = decision(Outcome::Failed, Some(RR), &[4711, 4712]);
    let text =
        done(&deliver(&anonymous(&sim), &config(&sim, ReviewPolicy::AcceptDecline), &d).await).to_string();
    assert!(text.contains("declined the qam-openqa review"), "{text}");
    let review = our_review(&sim);
    assert_eq!(review.state, "declined");
    assert!(
        review.comment.contains("| [4712](https://openqa.example.com/tests/4712) |"),
        "{}",
        review.comment
    );
    // one declined review declines the whole request
    assert_eq!(sim.request_state(RR).as_deref(), Some("declined"));
    assert_eq!(sim.comments(RR).len(), 1);
}

#[tokio::test]
async fn accept_decline_accepts_a_passed_decision() {
    let sim = start(ObsSimConfig::default()).await;
    request(&sim, false);
    done(
        &deliver(
            &anonymous(&sim),
            &config(&sim, ReviewPolicy::AcceptDecline),
            &decision(Outcome::Passed, Some(RR), &[1]),
        )
        .await,
    );
    assert_eq!(our_review(&sim).state, "accepted");
}

#[tokio::test]
async fn comment_policy_never_changes_a_review() {
    let sim = start(ObsSimConfig::default()).await;
    request(&sim, false);
    let cfg = config(&sim, ReviewPolicy::Comment);
    done(&deliver(&anonymous(&sim), &cfg, &decision(Outcome::Passed, Some(RR), &[1, 2])).await);
    done(&deliver(&anonymous(&sim), &cfg, &decision(Outcome::Failed, Some(RR), &[1, 2])).await);
    assert_eq!(review_change_requests(&sim), 0);
    assert_eq!(our_review(&sim).state, "new");
    let comments = sim.comments(RR);
    assert_eq!(comments.len(), 1, "the failed comment replaced the passed one");
    assert_eq!(parse_marker(&comments[0].text).unwrap().state, "failed");
}

#[tokio::test]
async fn dry_run_touches_nothing() {
    let sim = start(ObsSimConfig::default()).await;
    request(&sim, false);
    let cfg = config(&sim, ReviewPolicy::DryRun);
    let d = deliver(&anonymous(&sim), &cfg, &decision(Outcome::Passed, Some(RR), &[1])).await;
    assert!(
        final_(&d).starts_with("dry-run: would comment on request 300001 and accept the qam-openqa review"),
        "{d:?}"
    );
    let d = deliver(&anonymous(&sim), &cfg, &decision(Outcome::Failed, Some(RR), &[1])).await;
    assert!(final_(&d).starts_with("dry-run: would comment on request 300001"), "{d:?}");
    assert!(sim.received().is_empty(), "{:?}", sim.received());
}

#[tokio::test]
async fn no_jobs_never_approves_or_declines() {
    let sim = start(ObsSimConfig::default()).await;
    request(&sim, false);
    for policy in [ReviewPolicy::AcceptOnpass, ReviewPolicy::AcceptDecline] {
        done(
            &deliver(&anonymous(&sim), &config(&sim, policy), &decision(Outcome::NoJobs, Some(RR), &[]))
                .await,
        );
    }
    assert_eq!(review_change_requests(&sim), 0);
    assert_eq!(our_review(&sim).state, "new");
    let comments = sim.comments(RR);
    assert_eq!(comments.len(), 1);
    assert!(comments[0].text.contains("has no openQA jobs"));
}

#[tokio::test]
async fn requests_out_of_review_are_final_and_untouched() {
    let sim = start(ObsSimConfig::default()).await;
    let cfg = config(&sim, ReviewPolicy::AcceptDecline);
    let c = anonymous(&sim);
    for (state, superseded_by) in
        [("accepted", None), ("revoked", None), ("superseded", Some(300002)), ("declined", None)]
    {
        request(&sim, false);
        sim.set_request_state(RR, state, superseded_by);
        let d = deliver(&c, &cfg, &decision(Outcome::Passed, Some(RR), &[1])).await;
        let text = final_(&d);
        assert!(text.contains(&format!("request 300001 is {state}")), "{text}");
        if state == "superseded" {
            assert!(text.contains("by 300002"), "{text}");
        }
    }
    // in review, but our review is closed or missing
    sim.create_request(
        RR,
        "review",
        vec![SimReview::group(GROUP).with_state("declined"), SimReview::group("x")],
        "maintenance_release",
    );
    let d = deliver(&c, &cfg, &decision(Outcome::Passed, Some(RR), &[1])).await;
    assert!(final_(&d).contains("review is already declined"), "{d:?}");
    // unknown request: OBS's 404 not_found, final
    let d = deliver(&c, &cfg, &decision(Outcome::Passed, Some(999), &[1])).await;
    assert!(final_(&d).contains("404 not_found: Couldn't find request with id '999'"), "{d:?}");
    assert_eq!(writes(&sim), 0, "{:?}", sim.received());
    // no request id at all: nothing is even asked
    sim.clear_received();
    let d = deliver(&c, &cfg, &decision(Outcome::Passed, None, &[1])).await;
    assert!(final_(&d).contains("no release request"), "{d:?}");
    assert!(sim.received().is_empty());
}

/// A request in review without our group's review yet is waited for, not the end of the report:
/// once the review is added, the same decision is reported and accepted.
#[tokio::test]
async fn a_request_without_our_review_yet_waits_for_it() {
    let sim = start(ObsSimConfig::default()).await;
    let cfg = config(&sim, ReviewPolicy::AcceptDecline);
    let c = anonymous(&sim);
    sim.create_request(RR, "review", vec![SimReview::group("qam-manual")], "maintenance_release");
    let d = decision(Outcome::Passed, Some(RR), &[1]);
    let first = deliver(&c, &cfg, &d).await;
    assert_eq!(
        first,
        Delivery::Waiting("request 300001: waiting for a qam-openqa review to be added".into(), 0)
    );
    assert_eq!(writes(&sim), 0, "{:?}", sim.received());
    sim.add_review(RR, SimReview::group(GROUP));
    let text = done(&deliver(&c, &cfg, &d).await).to_string();
    assert!(text.contains("accepted the qam-openqa review"), "{text}");
    assert_eq!(our_review(&sim).state, "accepted");
}

#[tokio::test]
async fn identical_decisions_post_once_and_changed_ones_replace_the_comment() {
    let sim =
        start(ObsSimConfig::new(SimAuth::Basic { user: "bot".into(), password: PASSWORD.into() })).await;
    request(&sim, false);
    let foreign = sim.add_comment(
        RR,
        "someone",
        "<!-- incident-gate state=failed rr=300001 key=quoted -->\nquoting the bot",
    );
    let other = sim.add_comment(RR, "maintainer", "please test quickly");
    let c = client(
        &sim,
        Credentials { user: Some("bot".into()), password: Some(Secret::new(PASSWORD)), ssh_key: None },
    );
    let cfg = config(&sim, ReviewPolicy::AcceptOnpass);

    let first = decision(Outcome::Failed, Some(RR), &[4711, 4712]);
    assert!(done(&deliver(&c, &cfg, &first).await).contains("comment posted"));
    let again = decision(Outcome::Failed, Some(RR), &[4711, 4712]);
    assert_eq!(again.key, first.key);
    sim.clear_received();
    let d = deliver(&c, &cfg, &again).await;
    assert!(done(&d).contains("comment up to date"), "{d:?}");
    assert_eq!(writes(&sim), 0, "{:?}", sim.received());

    // a restarted job changed the set of jobs: a new decision, the comment is replaced
    let changed = decision(Outcome::Failed, Some(RR), &[4711, 4800]);
    sim.clear_received();
    assert!(done(&deliver(&c, &cfg, &changed).await).contains("comment replaced"));
    assert_eq!(sim.count("DELETE", "/comment/"), 1);
    assert_eq!(sim.count("POST", "/comments/request/"), 1);
    let ours: Vec<_> = sim.comments(RR).into_iter().filter(|c| c.who == "bot").collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(parse_marker(&ours[0].text).unwrap().key, changed.key);
    // other people's comments stay, even one quoting our marker
    let ids: Vec<u64> = sim.comments(RR).iter().map(|c| c.id).collect();
    assert!(ids.contains(&foreign) && ids.contains(&other), "{ids:?}");

    // and then it passes: accepted, comment replaced once more
    let passed = decision(Outcome::Passed, Some(RR), &[4711, 4801]);
    let text = done(&deliver(&c, &cfg, &passed).await).to_string();
    assert!(text.contains("comment replaced") && text.contains("accepted"), "{text}");
    let ours: Vec<_> = sim.comments(RR).into_iter().filter(|c| c.who == "bot").collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(parse_marker(&ours[0].text).unwrap().state, "passed");
}

#[tokio::test]
async fn down_means_retry_and_up_means_done_exactly_once() {
    let sim = start(ObsSimConfig::default()).await;
    request(&sim, false);
    let c = anonymous(&sim);
    let cfg = config(&sim, ReviewPolicy::AcceptOnpass);
    let d = decision(Outcome::Passed, Some(RR), &[1, 2]);
    sim.set_down(true);
    let r = deliver(&c, &cfg, &d).await;
    match &r {
        Delivery::Retry(msg) => assert!(msg.contains("503"), "{msg}"),
        other => panic!("expected Retry, got {other:?}"),
    }
    sim.set_down(false);
    done(&deliver(&c, &cfg, &d).await);
    final_(&deliver(&c, &cfg, &d).await);
    assert_eq!(review_change_requests(&sim), 1);
    assert_eq!(sim.count("POST", "/comments/request/"), 1);
    assert_eq!(sim.comments(RR).len(), 1);
}

#[tokio::test]
async fn a_fault_between_comment_and_review_converges_without_duplicates() {
    let sim = start(ObsSimConfig::default()).await;
    request(&sim, false);
    let c = anonymous(&sim);
    let cfg = config(&sim, ReviewPolicy::AcceptOnpass);
    let d = decision(Outcome::Passed, Some(RR), &[1, 2]);
    sim.fail_next("POST", "/request/", 502, 1);
    assert!(matches!(deliver(&c, &cfg, &d).await, Delivery::Retry(_)));
    assert_eq!(sim.comments(RR).len(), 1, "the comment went out before the review failed");
    assert_eq!(our_review(&sim).state, "new");
    let text = done(&deliver(&c, &cfg, &d).await).to_string();
    assert!(text.contains("comment up to date") && text.contains("accepted"), "{text}");
    assert_eq!(sim.comments(RR).len(), 1);
    assert_eq!(sim.count("POST", "/comments/request/"), 1);
}

#[tokio::test]
async fn connection_refused_is_retry() {
    let sim = start(ObsSimConfig::default()).await;
    let url = sim.url();
    drop(sim);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = ObsClient::new(&url, Credentials::default(), Duration::from_secs(2)).unwrap();
    let cfg = Config { obs_url: url.clone(), http_timeout_s: 2, ..Config::default() };
    match deliver(&c, &cfg, &decision(Outcome::Passed, Some(RR), &[1])).await {
        Delivery::Retry(msg) => assert!(msg.contains("cannot reach OBS"), "{msg}"),
        other => panic!("expected Retry, got {other:?}"),
    }
}

#[tokio::test]
async fn review_permission_refusals_are_retried_comment_refusals_final_and_readable() {
    let mut cfg_sim = ObsSimConfig::default();
    cfg_sim.groups.insert(GROUP.into(), vec!["someone-else".into()]);
    let sim = start(cfg_sim).await;
    request(&sim, false);
    let c = anonymous(&sim);
    let d =
        deliver(&c, &config(&sim, ReviewPolicy::AcceptOnpass), &decision(Outcome::Passed, Some(RR), &[1]))
            .await;
    let text = denied(&d);
    assert!(
        text.contains("403 review_change_state_no_permission: review state change for group qam-openqa is not permitted for incident-gate"),
        "{text}"
    );
    assert_eq!(our_review(&sim).state, "new");

    // a comment lock does not keep a permitted review change from happening
    let sim = start(ObsSimConfig::default()).await;
    request(&sim, false);
    sim.lock_comments(RR, true);
    let d = deliver(
        &anonymous(&sim),
        &config(&sim, ReviewPolicy::AcceptOnpass),
        &decision(Outcome::Passed, Some(RR), &[1]),
    )
    .await;
    let text = done(&d);
    assert!(text.contains("accepted") && text.contains("create_comment_not_authorized"), "{text}");
    // with nothing else to do, the refusal is final
    request(&sim, false);
    sim.lock_comments(RR, true);
    let d = deliver(
        &anonymous(&sim),
        &config(&sim, ReviewPolicy::Comment),
        &decision(Outcome::Failed, Some(RR), &[1]),
    )
    .await;
    assert!(final_(&d).contains("comment not possible"), "{d:?}");
}

#[tokio::test]
async fn status_reports_are_best_effort() {
    let sim = start(ObsSimConfig::default()).await;
    request(&sim, false);
    let mut cfg = config(&sim, ReviewPolicy::AcceptOnpass);
    cfg.obs_status_report = true;
    // maintenance_release requests get OBS's 404: not available, still done
    let text =
        done(&deliver(&anonymous(&sim), &cfg, &decision(Outcome::Passed, Some(RR), &[1])).await).to_string();
    assert!(text.contains("status reports not available here") && text.contains("accepted"), "{text}");

    sim.create_request(300010, "review", vec![SimReview::group(GROUP)], "submit");
    let text = done(&deliver(&anonymous(&sim), &cfg, &decision(Outcome::Failed, Some(300010), &[7])).await)
        .to_string();
    assert!(text.contains("status check openqa set to failure"), "{text}");
    let checks = sim.checks(300010);
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].state, "failure");
    assert_eq!(checks[0].url, "https://openqa.example.com/tests?match=:12345:");
}

// ---------------------------------------------------------------------------------------------
// authentication

fn assert_no_secret(texts: &[String], secrets: &[String]) {
    for t in texts {
        for s in secrets {
            assert!(!t.contains(s.as_str()), "secret leaked into {t:?}");
        }
    }
}

fn key_lines(key: &Path) -> Vec<String> {
    std::fs::read_to_string(key)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn basic_auth_works_and_a_wrong_password_is_final_and_readable() {
    let sim =
        start(ObsSimConfig::new(SimAuth::Basic { user: "bot".into(), password: PASSWORD.into() })).await;
    request(&sim, false);
    let mut cfg = config(&sim, ReviewPolicy::AcceptOnpass);
    cfg.obs_user = Some("bot".into());
    cfg.obs_password = Some(Secret::new(PASSWORD));
    let c = ObsClient::from_config(&cfg).unwrap();
    done(&deliver(&c, &cfg, &decision(Outcome::Passed, Some(RR), &[1])).await);
    assert_eq!(our_review(&sim).who.as_deref(), Some("bot"));
    assert!(sim.received().iter().all(|r| r.auth == "basic"), "{:?}", sim.received());

    let wrong = "wrong-S3CRET";
    let mut bad_cfg = cfg.clone();
    bad_cfg.obs_password = Some(Secret::new(wrong));
    let bad = ObsClient::from_config(&bad_cfg).unwrap();
    let d = deliver(&bad, &bad_cfg, &decision(Outcome::Failed, Some(RR), &[1])).await;
    let text = denied(&d).to_string();
    assert!(text.contains("401 authentication_required: Unknown user 'bot' or invalid password"), "{text}");
    let err = bad.get_request(RR).await.unwrap_err();
    assert!(!err.is_retryable());
    assert_no_secret(
        &[text, err.to_string(), format!("{err:?}"), format!("{bad:?}"), format!("{bad_cfg:?}")],
        &[PASSWORD.into(), wrong.into()],
    );
    // without any credentials OBS says who is missing
    let e = anonymous(&sim).get_request(RR).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "OBS answered 401 anonymous_user: Anonymous user is not allowed here - please login"
    );
}

async fn signature_round(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), kind, "");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let sim = start(ObsSimConfig::new(SimAuth::signature("bot", &public, "Use your SSH key").unwrap())).await;
    request(&sim, false);
    let mut cfg = config(&sim, ReviewPolicy::AcceptDecline);
    cfg.obs_user = Some("bot".into());
    cfg.obs_ssh_key = Some(key.clone());
    let c = ObsClient::from_config(&cfg).unwrap();
    let text = done(&deliver(&c, &cfg, &decision(Outcome::Failed, Some(RR), &[4711])).await).to_string();
    assert!(text.contains("declined"), "{text}");
    assert_eq!(our_review(&sim).who.as_deref(), Some("bot"));
    // challenged once, signed once, then the session cookie carries every later call
    let auths: Vec<String> = sim.received().iter().map(|r| r.auth.clone()).collect();
    assert_eq!(auths[0], "-", "{auths:?}");
    assert_eq!(auths[1], "signature", "{auths:?}");
    assert!(auths[2..].iter().all(|a| a == "cookie") && auths.len() >= 4, "{auths:?}");
    // an expired session is answered with a fresh signature
    sim.expire_sessions();
    sim.clear_received();
    c.get_request(RR).await.unwrap();
    let auths: Vec<String> = sim.received().iter().map(|r| r.auth.clone()).collect();
    assert_eq!(auths, ["-", "signature"]);

    // a key the server does not know: final, readable, and no key material anywhere
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = keygen(&other_dir, kind, "");
    let mut bad_cfg = cfg.clone();
    bad_cfg.obs_ssh_key = Some(other.clone());
    let bad = ObsClient::from_config(&bad_cfg).unwrap();
    let d = deliver(&bad, &bad_cfg, &decision(Outcome::Failed, Some(RR), &[4711, 1])).await;
    let text = denied(&d).to_string();
    assert!(
        text.contains("401 authentication_required: SSH signature rejected: signed by a different key"),
        "{text}"
    );
    let err = bad.get_request(RR).await.unwrap_err();
    let mut secrets = key_lines(&key);
    secrets.extend(key_lines(&other));
    assert_no_secret(
        &[text, err.to_string(), format!("{err:?}"), format!("{bad:?}"), format!("{c:?}")],
        &secrets,
    );

    // a signature challenge without a configured key says what to configure
    let e = anonymous(&sim).get_request(RR).await.unwrap_err();
    assert!(e.to_string().contains("configure obs_user and obs_ssh_key"), "{e}");
}

#[tokio::test]
async fn signature_auth_with_ed25519() {
    signature_round("ed25519").await;
}

#[tokio::test]
async fn signature_auth_with_rsa() {
    signature_round("rsa").await;
}

#[tokio::test]
async fn an_encrypted_key_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_enc");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "pass phrase", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let creds = Credentials { user: Some("bot".into()), password: None, ssh_key: Some(key.clone()) };
    let e = ObsClient::new("http://127.0.0.1:9", creds, Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, ObsError::Auth(_)) && e.to_string().contains("passphrase"), "{e}");
    assert_no_secret(&[e.to_string()], &key_lines(&key));
}

// ---------------------------------------------------------------------------------------------
// the simulator keeps OBS's rules (RULES.md section 1-3) and bodies (fixtures/obs/derived)

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/obs/derived/{name}", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
}

async fn raw(
    sim: &ObsSim,
    method: reqwest::Method,
    path_and_query: &str,
    body: &str,
) -> (u16, Option<String>, String) {
    let resp = reqwest::Client::new()
        .request(method, format!("{}{path_and_query}", sim.url()))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let code = resp.headers().get("x-opensuse-errorcode").map(|v| v.to_str().unwrap().to_string());
    (status, code, resp.text().await.unwrap())
}

#[tokio::test]
async fn simulator_follows_the_review_rules() {
    use reqwest::Method;
    let sim = start(ObsSimConfig::default()).await;
    sim.create_request(
        RR,
        "review",
        vec![SimReview::group(GROUP), SimReview::group("qam-manual")],
        "maintenance_release",
    );
    let accept = format!("/request/{RR}?cmd=changereviewstate&newstate=accepted&by_group={GROUP}");

    let (status, _, body) = raw(&sim, Method::POST, &accept, "ok").await;
    assert_eq!((status, body.as_str()), (200, "<status code=\"ok\">\n  <summary>Ok</summary>\n</status>\n"));
    // the same change again while in review: harmless
    assert_eq!(raw(&sim, Method::POST, &accept, "ok").await.0, 200);
    assert_eq!(sim.request_state(RR).as_deref(), Some("review"));

    let (status, code, body) = raw(
        &sim,
        Method::POST,
        &format!("/request/{RR}?cmd=changereviewstate&newstate=accepted&by_group=qam-other"),
        "",
    )
    .await;
    assert_eq!((status, code.as_deref()), (404, Some("not_found")));
    assert!(body.contains("Couldn't find Group 'qam-other'"));
    let (status, code, body) = raw(
        &sim,
        Method::POST,
        &format!("/request/{RR}?cmd=changereviewstate&newstate=accepted&by_user=incident-gate"),
        "",
    )
    .await;
    assert_eq!((status, code.as_deref()), (404, Some("review_not_found")));
    assert_eq!(body, fixture("status-404-review_not_found.xml"));
    let (status, _, body) = raw(
        &sim,
        Method::POST,
        &format!("/request/{RR}?cmd=changereviewstate&newstate=INVALID&by_group={GROUP}"),
        "",
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body, fixture("status-404-request_not_modifiable-bad-newstate.xml"));

    // the last open review accepted: the request is `new`, and accepting again is not modifiable
    let manual = format!("/request/{RR}?cmd=changereviewstate&newstate=accepted&by_group=qam-manual");
    let mut cfg_members = ObsSimConfig::default();
    cfg_members.groups.insert("qam-manual".into(), vec!["incident-gate".into()]);
    let sim2 = start(cfg_members).await;
    sim2.create_request(
        RR,
        "review",
        vec![SimReview::group(GROUP).with_state("accepted"), SimReview::group("qam-manual")],
        "maintenance_release",
    );
    assert_eq!(raw(&sim2, Method::POST, &manual, "").await.0, 200);
    assert_eq!(sim2.request_state(RR).as_deref(), Some("new"));
    let (status, code, body) = raw(&sim2, Method::POST, &accept, "again").await;
    assert_eq!((status, code.as_deref()), (404, Some("request_not_modifiable")));
    assert_eq!(body, fixture("status-404-request_not_modifiable-state.xml"));

    // not a member of the group
    let (status, _, body) = raw(&sim, Method::POST, &manual, "").await;
    assert_eq!(status, 403);
    assert!(
        body.contains("review state change for group qam-manual is not permitted for incident-gate"),
        "{body}"
    );

    // declined requests: 403 for everyone but admins
    sim.set_request_state(RR, "declined", None);
    let (status, code, body) = raw(&sim, Method::POST, &accept, "").await;
    assert_eq!((status, code.as_deref()), (403, Some("review_change_state_no_permission")));
    assert_eq!(body, fixture("status-403-review_change_state_no_permission-state.xml"));

    let (status, _, body) = raw(&sim, Method::GET, "/request/120", "").await;
    assert_eq!(status, 404);
    assert_eq!(body, fixture("status-404-not_found-request.xml"));
}

#[tokio::test]
async fn simulator_follows_the_comment_and_status_report_rules() {
    use reqwest::Method;
    let sim = start(ObsSimConfig::default()).await;
    sim.create_request(RR, "review", vec![SimReview::group(GROUP)], "maintenance_release");
    let (status, _, body) = raw(&sim, Method::POST, &format!("/comments/request/{RR}"), "  ").await;
    assert_eq!(status, 400);
    assert_eq!(body, fixture("status-400-invalid_record-empty-comment.xml"));
    let (status, _, body) =
        raw(&sim, Method::POST, &format!("/comments/request/{RR}"), &"x".repeat(65_536)).await;
    assert_eq!(status, 400);
    assert!(body.contains("Body is too long (maximum is 65535 characters)"));
    let foreign = sim.add_comment(RR, "someone", "hello");
    let (status, _, body) = raw(&sim, Method::DELETE, &format!("/comment/{foreign}"), "").await;
    assert_eq!(status, 403);
    assert_eq!(body, fixture("status-403-delete_comment_not_authorized.xml"));
    assert_eq!(raw(&sim, Method::DELETE, "/comment/999", "").await.0, 404);
    let comments = anonymous(&sim).comments(RR).await.unwrap();
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0].who, "someone");
    assert!(comments[0].when.ends_with(" UTC"));

    let check = "<check name=\"openqa\"><state>success</state><short_description>All openQA jobs passed</short_description><url>https://openqa.example.com/tests/overview?build=12345</url></check>";
    let (status, _, body) =
        raw(&sim, Method::POST, &format!("/status_reports/requests/{RR}/reports"), check).await;
    assert_eq!(status, 404);
    assert_eq!(body, fixture("status-404-status_report-not-a-submit-request.xml"));
    sim.create_request(RR, "review", vec![SimReview::group(GROUP)], "submit");
    let (status, _, body) =
        raw(&sim, Method::POST, &format!("/status_reports/requests/{RR}/reports"), check).await;
    assert_eq!(status, 200);
    assert_eq!(body, fixture("check-response-after-post.xml"));
    let (status, _, body) =
        raw(&sim, Method::POST, &format!("/status_reports/requests/{RR}/reports"), "").await;
    assert_eq!(status, 404);
    assert_eq!(body, fixture("status-404-empty_body-check.xml"));
    let bad = "<check name=\"openqa\"><state>done</state></check>";
    let (status, _, body) =
        raw(&sim, Method::POST, &format!("/status_reports/requests/{RR}/reports"), bad).await;
    assert_eq!(status, 422);
    assert_eq!(body, fixture("status-422-invalid_check.xml"));
}

#[tokio::test]
async fn simulator_http_control_routes() {
    use reqwest::Method;
    let sim = start(ObsSimConfig::default()).await;
    let http = reqwest::Client::new();
    let url = sim.url();
    let spec = r#"{"state":"review","reviews":[{"state":"new","by_group":"qam-openqa"}],"action_type":"maintenance_release"}"#;
    let resp = http.put(format!("{url}/_sim/requests/{RR}")).body(spec).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(our_review(&sim).state, "new");
    done(
        &deliver(
            &anonymous(&sim),
            &config(&sim, ReviewPolicy::AcceptOnpass),
            &decision(Outcome::Passed, Some(RR), &[1]),
        )
        .await,
    );
    let state: serde_json::Value =
        http.get(format!("{url}/_sim/requests/{RR}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(state["state"], "new");
    assert_eq!(state["reviews"][0]["state"], "accepted");
    assert_eq!(state["comments"].as_array().unwrap().len(), 1);
    let log: serde_json::Value =
        http.get(format!("{url}/_sim/log")).send().await.unwrap().json().await.unwrap();
    assert!(log.as_array().unwrap().len() >= 3, "{log}");
    http.post(format!("{url}/_sim/down?on=1")).send().await.unwrap();
    assert_eq!(raw(&sim, Method::GET, &format!("/request/{RR}"), "").await.0, 503);
    http.post(format!("{url}/_sim/down?on=0")).send().await.unwrap();
    assert_eq!(raw(&sim, Method::GET, &format!("/request/{RR}"), "").await.0, 200);
}

/// A failure that turns up after we accepted (an acceptable_for comment deleted, a result forced
/// back) must not be released on our word: our accept is reopened with the reasons; a person's
/// accept is left to them.
#[tokio::test]
async fn a_failure_after_our_accept_reopens_our_review_but_not_a_persons() {
    let sim =
        start(ObsSimConfig::new(SimAuth::Basic { user: "bot".into(), password: PASSWORD.into() })).await;
    request(&sim, false);
    let mut cfg = config(&sim, ReviewPolicy::AcceptOnpass);
    cfg.obs_user = Some("bot".into());
    cfg.obs_password = Some(Secret::new(PASSWORD));
    let c = ObsClient::from_config(&cfg).unwrap();
    done(&deliver(&c, &cfg, &decision(Outcome::Passed, Some(RR), &[1, 2])).await);
    assert_eq!(our_review(&sim).state, "accepted");

    let text = done(&deliver(&c, &cfg, &decision(Outcome::Failed, Some(RR), &[1, 2])).await).to_string();
    assert!(text.contains("reopened the qam-openqa review"), "{text}");
    let review = our_review(&sim);
    assert_eq!(review.state, "new", "our accept is taken back");
    assert!(review.comment.contains("tests/1"), "with the blocking job: {}", review.comment);
    let comments = sim.comments(RR);
    assert_eq!(comments.len(), 1, "one comment of ours, replaced");
    assert_eq!(parse_marker(&comments[0].text).unwrap().state, "failed");

    // a person accepted it: their call, we only comment
    let reviews = vec![SimReview::group(GROUP).with_state("accepted"), SimReview::group("qam-manual")];
    sim.create_request(RR + 1, "review", reviews, "maintenance_release");
    let d = decision(Outcome::Failed, Some(RR + 1), &[3]);
    let text = final_(&deliver(&c, &cfg, &d).await).to_string();
    assert!(text.contains("already accepted"), "{text}");
    let theirs = sim.reviews(RR + 1).into_iter().find(|r| r.by_group.as_deref() == Some(GROUP)).unwrap();
    assert_eq!(theirs.state, "accepted");
}
