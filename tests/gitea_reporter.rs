//! The Gitea reporter against the Gitea simulator: what each decision does to the pull request's
//! comments and reviews, that repeated and changed decisions converge, pushes after testing,
//! stale and dismissed reviews, busy or absent Gitea, and the token. Assertions look at what the
//! simulator holds and received, and at the Delivery returned.

use incident_gate::config::{Config, ReviewPolicy, Secret};
use incident_gate::decision::Delivery;
use incident_gate::gitea::report::parse_marker;
use incident_gate::gitea::{deliver, GiteaClient, PrReport, RetryPolicy};
use incident_gate::verdict::{BlockingJob, Counts, Outcome};
use incident_gate_sim::gitea::{start, GiteaSim, GiteaSimConfig, Reviewer, SimComment, SimReview};
use std::time::Duration;

const REPO: &str = "products/SLFO";
const PR: u64 = 124;
const TOKEN: &str = "S3CRET-gitea-token-0123";
const ME: &str = "qam-openqa";
const BOT: &str = "qam-openqa-review";
const SHA1: &str = "2cf58b3a9c32d139470a5f32d5aa64efbd0fa90dda0144b09421709252fcb0ea";
const SHA2: &str = "9d1e0c0ffee0000000000000000000000000000000000000000000000000beef";

fn report(result: Outcome, sha: &str, failed_jobs: &[u64]) -> PrReport {
    let blocking: Vec<BlockingJob> = failed_jobs
        .iter()
        .map(|&id| BlockingJob {
            id,
            name: format!("sle-16.0-Online-x86_64-Build:git:124:openssl-test{id}@64bit"),
            result: "failed".into(),
            group: "SLFO Pull Requests".into(),
            url: format!("https://openqa.example.com/tests/{id}"),
        })
        .collect();
    let failed = blocking.len() as u64;
    let total = if result == Outcome::NoJobs { 0 } else { 10 };
    PrReport {
        owner: "products".into(),
        repo: "SLFO".into(),
        number: PR,
        tested_sha: sha.into(),
        result,
        complete: true,
        jobs: Counts { total, passed: total - failed, softfailed: 0, failed, accepted: 0, pending: 0 },
        key: format!(
            "key-{}-{}",
            result.as_str(),
            failed_jobs.iter().map(|j| j.to_string()).collect::<Vec<_>>().join("_")
        ),
        blocking,
        openqa: "https://openqa.example.com".into(),
        builds: vec![":git:124:openssl".into()],
        page_url: "https://openqa.example.com/incident_gate/git:124".into(),
        decided_at: "2026-11-24T17:03:12Z".into(),
    }
}

async fn sim_with(cfg: GiteaSimConfig) -> GiteaSim {
    let sim = start(cfg).await;
    sim.create_pr(REPO, PR, SHA1);
    // as in reviews-124.json: the staging bot's request, then ours
    sim.request_review(REPO, PR, Reviewer::User("autogits_obs_staging_bot".into()));
    sim.add_comment(
        REPO,
        PR,
        "autogits_obs_staging_bot",
        "Build is started in https://build.suse.de/project/show/SUSE:SLFO:1.1.99:PullRequest:124 .",
    );
    sim
}

async fn new_sim() -> GiteaSim {
    sim_with(GiteaSimConfig::new(TOKEN, ME)).await
}

fn config(sim: &GiteaSim, policy: ReviewPolicy) -> Config {
    Config {
        gitea_url: sim.url(),
        gitea_token: Some(Secret::new(TOKEN)),
        review_policy: policy,
        http_timeout_s: 5,
        ..Config::default()
    }
}

fn client(sim: &GiteaSim, token: &str) -> GiteaClient {
    GiteaClient::new(&sim.url(), Some(Secret::new(token)), Duration::from_secs(5))
        .unwrap()
        .with_retry(RetryPolicy { retries: 3, base_delay: Duration::from_millis(10) })
}

fn approvals(sim: &GiteaSim, sha: &str) -> Vec<SimComment> {
    testkit::approvals(sim, REPO, PR, BOT, sha)
}

fn results_comments(sim: &GiteaSim) -> Vec<SimComment> {
    sim.comments(REPO, PR).into_iter().filter(|c| parse_marker(&c.body).is_some()).collect()
}

fn qam(sim: &GiteaSim) -> SimReview {
    sim.reviews(REPO, PR)
        .into_iter()
        .find(|r| r.user.as_deref() == Some(BOT) || r.team.as_deref() == Some(ME))
        .expect("QAM review")
}

fn is_done(d: &Delivery) -> bool {
    matches!(d, Delivery::Done(_))
}

fn text(d: &Delivery) -> &str {
    d.text()
}

#[tokio::test]
async fn approves_once_for_the_tested_head_and_the_review_bot_turns_it_into_the_review() {
    let sim = new_sim().await;
    sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
    let (c, cfg) = (client(&sim, TOKEN), config(&sim, ReviewPolicy::AcceptOnpass));
    let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert!(is_done(&d) && text(&d).contains("approved commit"), "{d:?}");
    let posted = approvals(&sim, SHA1);
    assert_eq!(posted.len(), 1, "{:?}", sim.comments(REPO, PR));
    assert_eq!(posted[0].user, ME);
    assert!(posted[0].body.lines().nth(1).unwrap().contains("all 10 relevant jobs"), "{}", posted[0].body);
    // no results comment for a plain pass
    assert!(results_comments(&sim).is_empty());
    let review = qam(&sim);
    assert_eq!((review.state.as_str(), review.commit_id.as_str()), ("APPROVED", SHA1));

    // delivered again (a retry, another worker): nothing more is posted
    let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert_eq!(d, Delivery::Final(format!("PR products/SLFO#124: commit {SHA1} is already approved")));
    assert_eq!(approvals(&sim, SHA1).len(), 1);
    assert_eq!(sim.count("POST", "/repos/products/SLFO/issues/124/comments"), 1);
}

#[tokio::test]
async fn failure_comment_is_edited_in_place_when_results_change() {
    let sim = new_sim().await;
    sim.request_review(REPO, PR, Reviewer::Team(ME.into()));
    let (c, cfg) = (client(&sim, TOKEN), config(&sim, ReviewPolicy::AcceptOnpass));
    let d = deliver(&c, &cfg, &report(Outcome::Failed, SHA1, &[4711])).await;
    assert!(is_done(&d) && text(&d).contains("results comment posted"), "{d:?}");
    let first = results_comments(&sim);
    assert_eq!(first.len(), 1);
    assert!(first[0].body.contains("| [4711](https://openqa.example.com/tests/4711)"), "{}", first[0].body);
    assert_eq!(parse_marker(&first[0].body).unwrap().state, "failed");

    // a second job fails too: the same comment now lists both
    let d = deliver(&c, &cfg, &report(Outcome::Failed, SHA1, &[4711, 4712])).await;
    assert!(text(&d).contains("results comment updated"), "{d:?}");
    let second = results_comments(&sim);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id, first[0].id);
    assert!(second[0].body.contains("[4712]") && second[0].body.contains("[4711]"), "{}", second[0].body);
    assert_eq!(sim.count("PATCH", &format!("/repos/products/SLFO/issues/comments/{}", first[0].id)), 1);

    // the same decision again changes nothing
    let d = deliver(&c, &cfg, &report(Outcome::Failed, SHA1, &[4711, 4712])).await;
    assert!(matches!(d, Delivery::Final(_)) && text(&d).ends_with("results comment up to date"), "{d:?}");
    assert_eq!(sim.count("PATCH", "/repos/products/SLFO/issues/comments/"), 1);

    // the failures are fixed (restarted, passed): approved, and our comment no longer says failed
    let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert!(
        is_done(&d) && text(&d).contains("approved commit") && text(&d).contains("results comment updated"),
        "{d:?}"
    );
    let now = results_comments(&sim);
    assert_eq!(now.len(), 1);
    assert_eq!(parse_marker(&now[0].body).unwrap().state, "passed");
    assert!(!now[0].body.contains("[4711]"));
    assert_eq!(approvals(&sim, SHA1).len(), 1);
    // results comment, approval comment and the staging bot's: nothing piled up
    assert_eq!(sim.comments(REPO, PR).len(), 3);
}

#[tokio::test]
async fn duplicates_of_our_results_comment_are_removed() {
    let sim = new_sim().await;
    sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
    let (c, cfg) = (client(&sim, TOKEN), config(&sim, ReviewPolicy::AcceptOnpass));
    // our results comment of an earlier run, as Gitea holds it (failed, job 1)
    let old = include_str!("fixtures/gitea/our-results-comment-124.md");
    let a = sim.add_comment(REPO, PR, ME, old);
    let b = sim.add_comment(REPO, PR, ME, old);
    // a quote of our marker by someone else is not ours to touch
    let quote = sim.add_comment(REPO, PR, "someone", &format!("> {old}"));
    let d = deliver(&c, &cfg, &report(Outcome::Failed, SHA1, &[2])).await;
    assert!(is_done(&d), "{d:?}");
    let ids: Vec<u64> = sim.comments(REPO, PR).iter().map(|c| c.id).collect();
    assert!(!ids.contains(&a) && ids.contains(&b) && ids.contains(&quote), "{ids:?}");
    assert!(sim.comments(REPO, PR).iter().any(|c| c.id == b && c.body.contains("[2]")));
}

#[tokio::test]
async fn no_approval_after_a_push_but_a_comment_about_the_older_commit() {
    let sim = new_sim().await;
    sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
    sim.push(REPO, PR, SHA2);
    assert!(qam(&sim).stale, "a push makes the review request stale");
    let (c, cfg) = (client(&sim, TOKEN), config(&sim, ReviewPolicy::AcceptOnpass));
    let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert!(is_done(&d) && text(&d).contains("not approved") && text(&d).contains(SHA2), "{d:?}");
    assert!(approvals(&sim, SHA1).is_empty() && approvals(&sim, SHA2).is_empty());
    let ours = results_comments(&sim);
    assert_eq!(ours.len(), 1);
    assert!(ours[0].body.contains("results are for an older commit, `2cf58b3a9c32`"), "{}", ours[0].body);
    assert!(ours[0].body.contains("head is now `9d1e0c0ffee0`"), "{}", ours[0].body);

    // the review is requested again for the new head: the old results still approve nothing
    sim.rerequest_review(REPO, PR, Reviewer::User(BOT.into()));
    let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert!(text(&d).contains("not approved"), "{d:?}");
    assert!(approvals(&sim, SHA1).is_empty());
    assert_eq!(results_comments(&sim).len(), 1);
    assert_eq!(sim.reviews(REPO, PR).iter().filter(|r| r.state == "APPROVED").count(), 0);

    // results for the new head approve it
    let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA2, &[])).await;
    assert!(text(&d).contains("approved commit"), "{d:?}");
    assert_eq!(approvals(&sim, SHA2).len(), 1);
}

#[tokio::test]
async fn an_existing_approval_comment_or_review_for_the_sha_means_done() {
    // the review bot is off so that the comment alone has to be recognised
    let mut cfg_sim = GiteaSimConfig::new(TOKEN, ME);
    cfg_sim.review_bot = None;
    let sim = sim_with(cfg_sim).await;
    sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
    let (c, cfg) = (client(&sim, TOKEN), config(&sim, ReviewPolicy::AcceptOnpass));
    // an approval from an earlier run (ours), with the review still open
    sim.add_comment(REPO, PR, ME, &format!("@{BOT}: approved\nopenQA: all passed\nTested commit: {SHA1}"));
    let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert!(text(&d).contains("already approved"), "{d:?}");
    assert_eq!(sim.count("POST", "/repos/products/SLFO/issues/124/comments"), 0);

    // an approval of another commit, or by a stranger, does not count
    let sim = sim_with(GiteaSimConfig::new(TOKEN, ME)).await;
    sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
    sim.add_comment(REPO, PR, ME, &format!("@{BOT}: approved\nTested commit: {SHA2}"));
    sim.add_comment(REPO, PR, "someone", &format!("@{BOT}: approved\nTested commit: {SHA1}"));
    let (c, cfg) = (client(&sim, TOKEN), config(&sim, ReviewPolicy::AcceptOnpass));
    let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert!(text(&d).contains("approved commit"), "{d:?}");
    assert_eq!(approvals(&sim, SHA1).iter().filter(|c| c.user == ME).count(), 1);

    // an active APPROVED review of that commit (given by the bot earlier), with a new team request
    let sim = new_sim().await;
    sim.add_review(
        REPO,
        PR,
        SimReview {
            id: 0,
            user: Some(BOT.into()),
            team: None,
            state: "APPROVED".into(),
            body: String::new(),
            commit_id: SHA1.into(),
            stale: false,
            dismissed: false,
            official: true,
            submitted_at: "2025-05-06T10:41:02+02:00".into(),
        },
    );
    sim.request_review(REPO, PR, Reviewer::Team(ME.into()));
    let (c, cfg) = (client(&sim, TOKEN), config(&sim, ReviewPolicy::AcceptOnpass));
    let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert!(text(&d).contains("already approved"), "{d:?}");
    assert!(approvals(&sim, SHA1).is_empty());
    // a dismissed approval of the commit is no approval
    let id = sim.reviews(REPO, PR).iter().find(|r| r.state == "APPROVED").unwrap().id;
    sim.set_review(REPO, PR, id, "APPROVED", false, true);
    let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert!(text(&d).contains("approved commit"), "{d:?}");
    assert_eq!(approvals(&sim, SHA1).len(), 1);
}

/// A review not (yet) asked of us is waited for, never the end of the report: after a push Gitea
/// marks the QAM request stale and the workflow bot asks again later; before the staging build
/// nobody asked yet. Once it is asked again, the same report approves (only the tested head).
#[tokio::test]
async fn stale_dismissed_or_missing_review_is_waited_for_then_approved() {
    for (stale, dismissed, why) in [(true, false, "stale"), (false, true, "dismissed")] {
        let sim = new_sim().await;
        let id = sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
        sim.set_review(REPO, PR, id, "REQUEST_REVIEW", stale, dismissed);
        let (c, cfg) = (client(&sim, TOKEN), config(&sim, ReviewPolicy::AcceptOnpass));
        let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
        assert_eq!(
            d,
            Delivery::Waiting(
                format!(
                    "PR products/SLFO#124: the QAM review is {why}, waiting for it to be requested again"
                ),
                0
            )
        );
        assert_eq!(sim.comments(REPO, PR).len(), 1, "only the staging bot's comment");
        // asking again while the stale request stands changes nothing (Gitea's AddReviewRequest)
        assert_eq!(sim.request_review(REPO, PR, Reviewer::User(BOT.into())), id);
        sim.rerequest_review(REPO, PR, Reviewer::User(BOT.into()));
        let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
        assert!(is_done(&d) && text(&d).contains("approved commit"), "{why}: {d:?}");
        assert_eq!(approvals(&sim, SHA1).len(), 1);
    }
    // nobody asked yet: a failure waits as well, and is commented once the review is asked
    let sim = new_sim().await;
    let (c, cfg) = (client(&sim, TOKEN), config(&sim, ReviewPolicy::AcceptOnpass));
    let d = deliver(&c, &cfg, &report(Outcome::Failed, SHA1, &[1])).await;
    assert!(
        matches!(&d, Delivery::Waiting(t, _) if t.contains("waiting for the QAM review to be requested")),
        "{d:?}"
    );
    assert_eq!(sim.count("POST", "/"), 0);
    sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
    let d = deliver(&c, &cfg, &report(Outcome::Failed, SHA1, &[1])).await;
    assert!(is_done(&d) && text(&d).contains("results comment posted"), "{d:?}");
    // an answered QAM review (a person of the team asked for changes on this head) is final
    let sim = new_sim().await;
    let id = sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
    sim.set_review(REPO, PR, id, "REQUEST_CHANGES", false, false);
    let (c, cfg) = (client(&sim, TOKEN), config(&sim, ReviewPolicy::AcceptOnpass));
    let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert_eq!(
        d,
        Delivery::Final("PR products/SLFO#124: the QAM review is request_changes, not approving".into())
    );
    // closed and merged pull requests are left alone
    sim.set_pr_state(REPO, PR, "closed", true);
    let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert_eq!(d, Delivery::Final("PR products/SLFO#124 is merged: nothing to do".into()));
}

/// The head is pushed while openQA tests the old one; the new head's jobs pass before the
/// workflow bot asks for the QAM review again: the pass waits, and is approved once asked, for
/// the tested head only. SHA-256 (64 hex) and SHA-1 (40 hex) repositories alike.
#[tokio::test]
async fn a_review_requested_again_after_a_push_gets_the_approval_of_the_tested_head() {
    const SHA1_40: &str = "1f0c2d3e4b5a69788796a5b4c3d2e1f00112233a";
    const SHA2_40: &str = "8e7d6c5b4a39281706f5e4d3c2b1a09988776655";
    for (old, new) in [(SHA1, SHA2), (SHA1_40, SHA2_40)] {
        let sim = start(GiteaSimConfig::new(TOKEN, ME)).await;
        sim.create_pr(REPO, PR, old);
        sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
        sim.push(REPO, PR, new);
        let (c, cfg) = (client(&sim, TOKEN), config(&sim, ReviewPolicy::AcceptOnpass));
        let d = deliver(&c, &cfg, &report(Outcome::Passed, new, &[])).await;
        assert!(matches!(&d, Delivery::Waiting(t, _) if t.contains("stale")), "{d:?}");
        // minutes later (simulator control, not a clock): the workflow bot asks again
        sim.rerequest_review(REPO, PR, Reviewer::User(BOT.into()));
        let d = deliver(&c, &cfg, &report(Outcome::Passed, new, &[])).await;
        assert!(is_done(&d) && text(&d).contains(&format!("approved commit {new}")), "{d:?}");
        assert_eq!(approvals(&sim, new).len(), 1);
        assert_eq!(qam(&sim).state, "APPROVED");
        // a pass of the older head is never approved, asked or not
        let d = deliver(&c, &cfg, &report(Outcome::Passed, old, &[])).await;
        assert!(text(&d).contains("not approved"), "{d:?}");
        assert!(approvals(&sim, old).is_empty());
        let marker = parse_marker(&results_comments(&sim)[0].body).unwrap();
        assert_eq!(marker.sha, old, "the full commit id in the marker");
    }
}

#[tokio::test]
async fn policies_comment_dry_run_and_request_changes() {
    let sim = new_sim().await;
    sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
    let c = client(&sim, TOKEN);
    let d = deliver(&c, &config(&sim, ReviewPolicy::DryRun), &report(Outcome::Passed, SHA1, &[])).await;
    assert!(
        matches!(d, Delivery::Final(_)) && text(&d).starts_with("dry-run: would post the approval comment"),
        "{d:?}"
    );
    assert!(sim.received().is_empty(), "dry-run asks nothing");

    let d = deliver(&c, &config(&sim, ReviewPolicy::Comment), &report(Outcome::Passed, SHA1, &[])).await;
    assert!(is_done(&d), "{d:?}");
    assert!(approvals(&sim, SHA1).is_empty());
    assert_eq!(parse_marker(&results_comments(&sim)[0].body).unwrap().state, "passed");

    // no native "request changes" unless configured
    let failed = report(Outcome::Failed, SHA1, &[4711]);
    let mut cfg = config(&sim, ReviewPolicy::AcceptDecline);
    deliver(&c, &cfg, &failed).await;
    assert_eq!(sim.count("POST", "/repos/products/SLFO/pulls/124/reviews"), 0);
    cfg.gitea_request_changes = true;
    // nor while testing goes on: a failure found early is only commented
    let early = PrReport { complete: false, ..failed.clone() };
    let d = deliver(&c, &cfg, &early).await;
    assert!(!text(&d).contains("requested changes"), "{d:?}");
    assert_eq!(sim.count("POST", "/repos/products/SLFO/pulls/124/reviews"), 0, "{d:?}");
    let d = deliver(&c, &cfg, &failed).await;
    assert!(text(&d).contains("requested changes"), "{d:?}");
    let mine: Vec<SimReview> =
        sim.reviews(REPO, PR).into_iter().filter(|r| r.user.as_deref() == Some(ME)).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!((mine[0].state.as_str(), mine[0].commit_id.as_str()), ("REQUEST_CHANGES", SHA1));
    assert!(mine[0].body.contains("[4711]"));
    deliver(&c, &cfg, &failed).await;
    assert_eq!(sim.count("POST", "/repos/products/SLFO/pulls/124/reviews"), 1, "never twice");
    // no_jobs never approves
    let d = deliver(&c, &config(&sim, ReviewPolicy::AcceptOnpass), &report(Outcome::NoJobs, SHA1, &[])).await;
    assert!(approvals(&sim, SHA1).is_empty(), "{d:?}");
    assert!(results_comments(&sim)[0].body.contains("has no openQA jobs"));
}

#[tokio::test]
async fn busy_gitea_is_retried_and_errors_name_the_route() {
    let sim = new_sim().await;
    sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
    let (c, cfg) = (client(&sim, TOKEN), config(&sim, ReviewPolicy::AcceptOnpass));
    sim.fail_next("GET", "/repos/products/SLFO/pulls/124", 429, 2);
    sim.fail_next("POST", "/repos/products/SLFO/issues/124/comments", 503, 1);
    sim.fail_next("GET", "/repos/products/SLFO/issues/124/comments", 413, 1);
    let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert!(is_done(&d), "{d:?}");
    assert_eq!(approvals(&sim, SHA1).len(), 1);
    assert_eq!(sim.count("GET", "/repos/products/SLFO/pulls/124"), 4, "2 refused + pull + reviews");
    assert_eq!(sim.count("POST", "/repos/products/SLFO/issues/124/comments"), 2);

    // down for longer than the retries: Retry, naming the route
    sim.set_down(true);
    let d = deliver(&c, &cfg, &report(Outcome::Failed, SHA1, &[1])).await;
    assert_eq!(
        d,
        Delivery::Retry("PR products/SLFO#124: reading the pull request: Gitea answered 503 to GET /repos/products/SLFO/pulls/124: Service Unavailable (after 4 attempts)".into())
    );
    sim.set_down(false);
    // a 404 is final and carries Gitea's message
    let mut other = report(Outcome::Passed, SHA1, &[]);
    other.number = 99;
    let d = deliver(&c, &cfg, &other).await;
    assert_eq!(
        d,
        Delivery::Final("PR products/SLFO#99: reading the pull request: Gitea answered 404 to GET /repos/products/SLFO/pulls/99: The target couldn't be found.".into())
    );
    // nobody listening: a connection error, retried, then Retry
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gone = GiteaClient::new(
        &format!("http://127.0.0.1:{port}"),
        Some(Secret::new(TOKEN)),
        Duration::from_secs(2),
    )
    .unwrap()
    .with_retry(RetryPolicy { retries: 1, base_delay: Duration::from_millis(10) });
    let d = deliver(&gone, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert!(
        matches!(&d, Delivery::Retry(t) if t.contains("cannot reach Gitea for GET /repos/products/SLFO/pulls/124") && t.contains("after 2 attempts")),
        "{d:?}"
    );
}

#[tokio::test]
async fn pages_are_followed_by_link_and_by_total_count() {
    let mut cfg_sim = GiteaSimConfig::new(TOKEN, ME);
    cfg_sim.max_response_items = 2;
    let sim = sim_with(cfg_sim).await;
    for i in 0..4 {
        sim.request_review(REPO, PR, Reviewer::User(format!("reviewer{i}")));
    }
    // the QAM request is on the third page of reviews (2 per page, no Link header there)
    sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
    let (c, cfg) = (client(&sim, TOKEN), config(&sim, ReviewPolicy::AcceptOnpass));
    let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert!(text(&d).contains("approved commit"), "{d:?}");
    assert_eq!(sim.count("GET", "/repos/products/SLFO/pulls/124/reviews"), 3);

    for n in 1..=5 {
        sim.create_pr(REPO, 200 + n, SHA2);
    }
    let prs = c.open_pulls("products", "SLFO").await.unwrap();
    let mut numbers: Vec<u64> = prs.iter().map(|p| p.number).collect();
    numbers.sort();
    assert_eq!(numbers, vec![124, 201, 202, 203, 204, 205]);
    let lists: Vec<_> =
        sim.received().into_iter().filter(|r| r.path == "/repos/products/SLFO/pulls").collect();
    assert_eq!(lists.len(), 3);
    assert!(lists[2].query.contains("page=3"), "{lists:?}");
}

#[tokio::test]
async fn the_token_is_sent_but_never_shown() {
    let sim = new_sim().await;
    sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
    let good = client(&sim, TOKEN);
    deliver(&good, &config(&sim, ReviewPolicy::AcceptOnpass), &report(Outcome::Passed, SHA1, &[])).await;
    let log = sim.received();
    assert!(!log.is_empty() && log.iter().all(|r| r.auth == "token"), "{log:?}");
    assert!(!format!("{good:?}").contains(TOKEN));

    let wrong = "S3CRET-wrong-token-987";
    let bad = client(&sim, wrong);
    let mut cfg = config(&sim, ReviewPolicy::AcceptOnpass);
    cfg.gitea_token = Some(Secret::new(wrong));
    let d = deliver(&bad, &cfg, &report(Outcome::Failed, SHA1, &[1])).await;
    assert_eq!(
        d,
        Delivery::Denied("PR products/SLFO#124: reading the pull request: Gitea refused our token or its permissions: Gitea answered 401 to GET /repos/products/SLFO/pulls/124: user does not exist [uid: 0, name: , keyid: 0] (retrying every 600 s)".into(), 600_000)
    );
    let shown = format!("{d:?} {bad:?} {cfg:?} {}", cfg.redacted_json());
    assert!(!shown.contains(wrong) && !shown.contains(TOKEN), "{shown}");

    // without a token, reading works but writing is refused with Gitea's message
    let anonymous = GiteaClient::new(&sim.url(), None, Duration::from_secs(5)).unwrap();
    assert_eq!(anonymous.pull("products", "SLFO", PR).await.unwrap().head.sha, SHA1);
    let e = anonymous.post_comment("products", "SLFO", PR, "hello").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "Gitea answered 401 to POST /repos/products/SLFO/issues/124/comments: token is required"
    );
}

fn scoped(scopes: &[&str]) -> GiteaSimConfig {
    let mut cfg = GiteaSimConfig::new(TOKEN, ME);
    cfg.scopes.insert(TOKEN.into(), scopes.iter().map(|s| s.to_string()).collect());
    cfg
}

/// A scoped token with the repository and issue scopes but not `read:user` (Gitea answers
/// `GET /user` 403): the reporter still comments and approves, asks `/user` once per client,
/// and knows its results comment by the marker line it begins with, so it is edited in place.
#[tokio::test]
async fn a_token_that_may_not_read_its_user_still_reports_and_edits_its_comment() {
    let sim = sim_with(scoped(&["write:issue", "read:repository"])).await;
    sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
    // a person quoting our marker is not us
    let quoted = format!(
        "> {}\nwhy?",
        incident_gate::gitea::report::marker_line(&report(Outcome::Failed, SHA1, &[1]))
    );
    sim.add_comment(REPO, PR, "someone", &quoted);
    let (c, cfg) = (client(&sim, TOKEN), config(&sim, ReviewPolicy::AcceptOnpass));
    let e = c.me().await;
    assert_eq!(e, Ok(None), "403 on /user is no error");
    let d = deliver(&c, &cfg, &report(Outcome::Failed, SHA1, &[1, 2])).await;
    assert!(is_done(&d) && text(&d).contains("results comment posted"), "{d:?}");
    // another process (a new client) does not know who it is either: the marker tells
    let other = client(&sim, TOKEN);
    let d = deliver(&other, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert!(
        is_done(&d) && text(&d).contains("approved commit") && text(&d).contains("results comment updated"),
        "{d:?}"
    );
    let ours = results_comments(&sim).into_iter().filter(|c| c.user == ME).collect::<Vec<_>>();
    assert_eq!(ours.len(), 1, "edited in place, not posted again: {:?}", sim.comments(REPO, PR));
    assert!(ours[0].body.contains("passed**"), "{}", ours[0].body);
    assert_eq!(approvals(&sim, SHA1).len(), 1);
    assert!(sim.comments(REPO, PR).iter().any(|c| c.body == quoted), "the quote is left alone");
    assert_eq!(sim.count("PATCH", "/"), 1);
    assert_eq!(sim.count("DELETE", "/"), 0);
    assert_eq!(sim.count("GET", "/user"), 2, "once per client");

    // with gitea_user configured, /user is never asked
    sim.clear_received();
    let named = client(&sim, TOKEN).with_user(ME);
    let d = deliver(&named, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert!(text(&d).contains("already approved"), "{d:?}");
    assert_eq!(sim.count("GET", "/user"), 0);
}

/// Gitea refusing what our token may do (a scope it lacks: 403) is no answer about the pull
/// request: retried every `gitea_denied_retry_s`, and it says what was refused.
#[tokio::test]
async fn a_refused_scope_is_denied_and_retried_not_dropped() {
    let sim = sim_with(scoped(&["read:repository", "read:issue", "read:user"])).await;
    sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
    let (c, mut cfg) = (client(&sim, TOKEN), config(&sim, ReviewPolicy::AcceptOnpass));
    cfg.gitea_denied_retry_s = 60;
    let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert_eq!(
        d,
        Delivery::Denied(
            "PR products/SLFO#124: posting the approval comment: Gitea refused our token or its permissions: Gitea answered 403 to POST /repos/products/SLFO/issues/124/comments: token does not have at least one of required scope(s): [write:issue] (retrying every 60 s)".into(),
            60_000
        )
    );
    assert!(approvals(&sim, SHA1).is_empty());
}

/// Gitea API calls per delivered decision: a pass is 4 (pull, reviews, comments, the approval);
/// a pass after a failure comment is 5 (the comment edited too); `GET /user` at most once per
/// process, none with `gitea_user`. A wait costs 2 per `reconcile_interval_s`.
#[tokio::test]
async fn gitea_calls_per_delivered_decision() {
    let sim = new_sim().await;
    sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
    let (c, cfg) = (client(&sim, TOKEN).with_user(ME), config(&sim, ReviewPolicy::AcceptOnpass));
    sim.clear_received();
    assert!(is_done(&deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await));
    assert_eq!(sim.received().len(), 4, "{:?}", sim.received());

    let sim = new_sim().await;
    sim.request_review(REPO, PR, Reviewer::User(BOT.into()));
    let c = client(&sim, TOKEN).with_user(ME);
    assert!(is_done(&deliver(&c, &cfg, &report(Outcome::Failed, SHA1, &[1])).await));
    sim.clear_received();
    let d = deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await;
    assert!(text(&d).contains("results comment updated"), "{d:?}");
    assert_eq!(sim.received().len(), 5, "{:?}", sim.received());

    let sim = new_sim().await;
    let c = client(&sim, TOKEN).with_user(ME);
    sim.clear_received();
    assert!(matches!(deliver(&c, &cfg, &report(Outcome::Passed, SHA1, &[])).await, Delivery::Waiting(..)));
    assert_eq!(
        sim.received().len(),
        2,
        "a wait reads the pull request and its reviews: {:?}",
        sim.received()
    );
}
