//! The openQA client against the simulator (and a few tiny misbehaving servers): chunking,
//! de-duplication, gone jobs, retries, errors that name the route, the in-flight limit, signing.

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use incident_gate::config::{Config, Secret};
use incident_gate::openqa::client::{ApiError, OpenQaClient, RetryPolicy};
use incident_gate_sim::openqa::{start, OpenQaSim};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "0A0A0A0A0A0A0A0A";
const SECRET: &str = "0B0B0B0B0B0B0B0B";

fn config(url: &str) -> Config {
    Config { openqa_url: url.to_string(), concurrency: 4, http_timeout_s: 5, ..Config::default() }
}

fn quick() -> RetryPolicy {
    RetryPolicy { retries: 3, base_delay: Duration::from_millis(10) }
}

fn client(url: &str) -> OpenQaClient {
    OpenQaClient::new(&config(url)).expect("client").with_retry(quick())
}

fn signing_client(url: &str, secret: &str) -> OpenQaClient {
    let config = Config {
        openqa_api_key: Some(KEY.into()),
        openqa_api_secret: Some(Secret::new(secret)),
        ..config(url)
    };
    OpenQaClient::new(&config).expect("client").with_retry(quick())
}

/// Serves `app` on a free loopback port; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// Three aggregate-style jobs listing 12345 and 12346 (12346 under two keys) and two incident jobs.
fn scenario(sim: &OpenQaSim) {
    let g = sim.create_group("Maintenance: SLE 15 SP6 Updates");
    for test in ["a", "b", "c"] {
        sim.create_job(
            &[
                ("TEST", test),
                ("BUILD", "20261124-1"),
                ("OS_TEST_ISSUES", "12345,12346"),
                ("SDK_TEST_ISSUES", "12346"),
                ("TEST_ISSUES[]", "12345,12346"),
            ],
            g,
        );
    }
    for test in ["d", "e"] {
        sim.create_job(
            &[
                ("TEST", test),
                ("BUILD", ":12345:openssl"),
                ("INCIDENT_ID", "12345"),
                ("RRID", "SUSE:Maintenance:12345:300001"),
            ],
            g,
        );
    }
}

/// A simulator holding jobs 1..=n (tests t0, t1, ...), and a client of it.
async fn sim_with_jobs(n: usize) -> (OpenQaSim, OpenQaClient) {
    let sim = start().await;
    for i in 0..n {
        sim.create_job(&[("TEST", &format!("t{i}")), ("BUILD", "b")], None);
    }
    let c = client(&sim.url());
    (sim, c)
}

#[tokio::test]
async fn jobs_come_in_chunks_of_500_without_duplicates() {
    let (sim, c) = sim_with_jobs(1250).await;
    let mut ids: Vec<u64> = (1..=1250).collect();
    ids.extend((1..=1250).rev());
    let jobs = c.jobs(&ids).await.expect("jobs");
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), (1..=1250).collect::<Vec<_>>());
    assert_eq!(c.requests_made(), 3, "1250 distinct ids = 3 requests");
    assert_eq!(sim.requests(), 3);
    assert_eq!(jobs[0].setting("TEST"), "t0");

    // jobs that are gone are just missing; nothing at all is asked for no ids
    let jobs = c.jobs(&[5, 99_999, 5]).await.expect("jobs");
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![5]);
    assert!(c.jobs(&[]).await.expect("no jobs").is_empty());
    assert_eq!(c.requests_made(), 4);
}

#[tokio::test]
async fn a_job_list_openqa_cuts_short_is_an_error_not_jobs_gone() {
    let (sim, c) = sim_with_jobs(300).await;
    let ids: Vec<u64> = (1..=300).collect();
    assert_eq!(c.jobs(&ids).await.expect("jobs").len(), 300);
    // an admin's `[misc_limits] generic_max_limit` below the chunk: openQA answers the highest
    // 100 ids and names a next page; the 200 others are not gone
    sim.set_generic_max_limit(100);
    let e = match c.jobs(&ids).await {
        Ok(jobs) => panic!("a cut list taken whole: {} of 300 jobs", jobs.len()),
        Err(e) => e,
    };
    assert!(matches!(e, ApiError::Malformed { .. }), "{e:?}");
    let shown = e.to_string();
    assert!(shown.starts_with("GET /api/v1/jobs?ids=1%2C2%2C3"), "{shown}");
    assert!(shown.contains("the list was cut: 100 of 300 jobs"), "{shown}");
    // ids that fit the page are answered whole
    assert_eq!(c.jobs(&ids[..100]).await.expect("jobs").len(), 100);
}

#[tokio::test]
async fn single_jobs_comments_and_groups() {
    let sim = start().await;
    scenario(&sim);
    sim.set_done(4, "failed");
    let (clone, _) = sim.restart(4).expect("restart");
    sim.comment(1, "@review:acceptable_for:incident_12345:bsc#1 known");
    let c = client(&sim.url());

    let job = c.job(4).await.expect("job 4").expect("exists");
    assert_eq!((job.state.as_str(), job.result.as_str(), job.clone_id), ("done", "failed", Some(clone)));
    assert_eq!(job.group.as_deref(), Some("Maintenance: SLE 15 SP6 Updates"));
    assert_eq!(job.setting("RRID"), "SUSE:Maintenance:12345:300001");
    let job = c.job(clone).await.expect("clone").expect("exists");
    assert_eq!((job.state.as_str(), job.origin_id), ("scheduled", Some(4)));
    assert_eq!(c.job(999).await.expect("404 is not an error"), None);

    let comments = c.comments(1).await.expect("comments");
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0].text, "@review:acceptable_for:incident_12345:bsc#1 known");
    assert!(c.comments(2).await.expect("none").is_empty());
    assert!(c.comments(999).await.expect("a gone job has no comments").is_empty());

    let groups = c.job_groups().await.expect("groups");
    assert_eq!(groups.len(), 1);
    assert_eq!((groups[0].id, groups[0].name.as_str()), (1, "Maintenance: SLE 15 SP6 Updates"));
}

#[tokio::test]
async fn settings_lookups_list_each_job_once() {
    let sim = start().await;
    scenario(&sim);
    sim.restart(5).expect("restart");
    let c = client(&sim.url());

    // openQA lists a job once per matching settings row ...
    let raw: serde_json::Value =
        reqwest::get(format!("{}/api/v1/job_settings/jobs?key=*_TEST_ISSUES&list_value=12346", sim.url()))
            .await
            .expect("raw")
            .json()
            .await
            .expect("json");
    assert_eq!(raw, serde_json::json!({"jobs": [3, 3, 2, 2, 1, 1]}));
    // ... the client once, newest first
    assert_eq!(c.job_ids_by_list_setting("*_TEST_ISSUES", "12346").await.expect("ids"), vec![3, 2, 1]);
    // `*` also finds INCIDENT_ID=12345 (a one-element list) on the incident jobs and the clone
    assert_eq!(c.job_ids_by_list_setting("*", "12345").await.expect("ids"), vec![6, 5, 4, 3, 2, 1]);
    assert_eq!(c.job_ids_by_list_setting("OS_TEST_ISSUES", "1234").await.expect("ids"), Vec::<u64>::new());
    assert_eq!(c.job_ids_by_setting("INCIDENT_ID", "12345").await.expect("ids"), vec![6, 5, 4]);
    assert_eq!(
        c.job_ids_by_setting("RRID", "SUSE:Maintenance:12345:300001").await.expect("ids"),
        vec![6, 5, 4]
    );
    assert_eq!(c.job_ids_by_setting("TEST_ISSUES[]", "12346").await.expect("ids"), vec![3, 2, 1]);
    assert_eq!(
        c.job_ids_by_setting("BUILD", ":12345:openssl").await.expect("ids"),
        Vec::<u64>::new(),
        "a column"
    );
}

#[tokio::test]
async fn a_short_outage_is_retried() {
    let sim = start().await;
    scenario(&sim);
    let c = client(&sim.url());
    sim.fail_next(2);
    let job = c.job(1).await.expect("recovered").expect("exists");
    assert_eq!(job.id, 1);
    assert_eq!(c.requests_made(), 3);
    sim.fail_next(3);
    assert_eq!(c.jobs(&[1, 2]).await.expect("recovered").len(), 2);
    assert_eq!(c.requests_made(), 7);
}

#[tokio::test]
async fn a_lasting_outage_is_an_error_naming_the_route() {
    let sim = start().await;
    scenario(&sim);
    // the default policy: 3 retries, 100 ms doubling
    let c = OpenQaClient::new(&Config {
        openqa_api_key: Some(KEY.into()),
        openqa_api_secret: Some(Secret::new("S3CRET-QA")),
        ..config(&sim.url())
    })
    .expect("client");
    sim.set_down(true);
    let e = c.job(1).await.expect_err("down");
    let backoff: Vec<_> =
        (1..=3).map(|retry| RetryPolicy::default().delay_before(retry).as_millis()).collect();
    assert_eq!(backoff, [100, 200, 400], "backoff doubling from 100 ms");
    assert_eq!((c.requests_made(), sim.requests()), (4, 4), "the first attempt and 3 retries, all sent");
    assert_eq!(e.status(), Some(503));
    assert!(e.is_transient());
    assert_eq!(e.to_string(), "GET /api/v1/jobs/1: HTTP 503 (after 4 attempts): <html><body><h1>503 Service Unavailable</h1></body></html>");
    let e = c.job_ids_by_list_setting("*_TEST_ISSUES", "12345").await.expect_err("down");
    assert!(
        e.to_string()
            .starts_with("GET /api/v1/job_settings/jobs?key=*_TEST_ISSUES&list_value=12345: HTTP 503"),
        "{e}"
    );
    assert!(!format!("{e} {e:?} {c:?}").contains("S3CRET"), "no secret in errors or Debug");
}

#[tokio::test]
async fn refusals_are_not_retried_and_name_the_route() {
    let sim = start().await;
    let c = client(&sim.url());
    let e = c.job_ids_by_list_setting("RRID", "SUSE:Maintenance:1:2").await.expect_err("400");
    assert_eq!(c.requests_made(), 1);
    assert_eq!(e.status(), Some(400));
    assert!(!e.is_transient());
    assert_eq!(
        e.to_string(),
        "GET /api/v1/job_settings/jobs?key=RRID&list_value=SUSE%3AMaintenance%3A1%3A2: HTTP 400: Erroneous parameters (list_value invalid)"
    );
    // a refusal after a transient failure says how many attempts it took
    sim.fail_next(1);
    let e = c.job_ids_by_list_setting("RRID", "x:y").await.expect_err("400");
    assert!(e.to_string().contains(": HTTP 400 (after 2 attempts): Erroneous parameters"), "{e}");
}

#[tokio::test]
async fn malformed_bodies_name_the_route() {
    let app = Router::new()
        .route("/api/v1/jobs", get(|| async { "<html>this is not JSON</html>" }))
        .route("/api/v1/jobs/{id}", get(|| async { r#"{"job":{"id":"one"}}"# }))
        .route("/api/v1/job_settings/jobs", get(|| async { r#"{"jobs":[1,"2"]}"# }))
        .route(
            "/api/v1/job_groups",
            get(|| async { (StatusCode::FORBIDDEN, r#"{"error":"no","error_status":403}"#) }),
        );
    let url = serve(app).await;
    let c = client(&url);
    let e = c.jobs(&[1, 2]).await.expect_err("garbage");
    assert!(matches!(e, ApiError::Malformed { .. }));
    assert!(e.to_string().starts_with("GET /api/v1/jobs?ids=1%2C2&limit=500: malformed body: "), "{e}");
    assert!(e.to_string().contains("<html>this is not JSON"), "{e}");
    let e = c.job(1).await.expect_err("wrong type");
    assert!(e.to_string().starts_with("GET /api/v1/jobs/1: malformed body: invalid type"), "{e}");
    let e = c.job_ids_by_setting("INCIDENT_ID", "1").await.expect_err("wrong type");
    assert!(
        e.to_string()
            .starts_with("GET /api/v1/job_settings/jobs?key=INCIDENT_ID&value=1&limit=10000: malformed body"),
        "{e}"
    );
    let e = c.job_groups().await.expect_err("403");
    assert_eq!(e.to_string(), "GET /api/v1/job_groups: HTTP 403: no");
    assert_eq!(c.requests_made(), 4, "nothing retried");
}

#[tokio::test]
async fn unreachable_and_slow_servers() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let c = OpenQaClient::new(&config(&format!("http://127.0.0.1:{port}")))
        .expect("client")
        .with_retry(RetryPolicy { retries: 2, base_delay: Duration::from_millis(5) });
    let e = c.job(1).await.expect_err("refused");
    assert!(matches!(e, ApiError::Transport { attempts: 3, .. }), "{e:?}");
    assert!(e.to_string().starts_with("GET /api/v1/jobs/1: no response (after 3 attempts): "), "{e}");
    assert!(!e.to_string().contains(&port.to_string()), "no URL in the message: {e}");
    assert_eq!(c.requests_made(), 3);

    // a server that never answers: only the client's timeout can end the request
    let slow = serve(Router::new().fallback(|| async {
        std::future::pending::<()>().await;
        "{}"
    }))
    .await;
    let config = Config { http_timeout_s: 1, ..config(&slow) };
    let c = OpenQaClient::new(&config)
        .expect("client")
        .with_retry(RetryPolicy { retries: 0, base_delay: Duration::ZERO });
    let e = tokio::time::timeout(Duration::from_secs(30), c.job(1))
        .await
        .expect("the 1 s HTTP timeout ends a request that is never answered")
        .expect_err("timeout");
    assert!(matches!(e, ApiError::Transport { .. }) && e.to_string().contains("timed out"), "{e}");
}

#[tokio::test]
async fn in_flight_requests_stay_within_the_limit() {
    let counters = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let seen = counters.clone();
    let url = serve(Router::new().route(
        "/api/v1/jobs",
        get(move || {
            let c = seen.clone();
            async move {
                let now = c.0.fetch_add(1, Ordering::SeqCst) + 1;
                c.1.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.0.fetch_sub(1, Ordering::SeqCst);
                r#"{"jobs":[]}"#
            }
        }),
    ))
    .await;
    let config = Config { concurrency: 2, ..config(&url) };
    let c = OpenQaClient::new(&config).expect("client");
    let ids: Vec<u64> = (1..=3000).collect();
    // two callers at once share the one limit
    let other = c.clone();
    let (a, b) = tokio::join!(c.jobs(&ids), other.jobs(&ids));
    assert!(a.expect("a").is_empty() && b.expect("b").is_empty());
    assert_eq!(c.requests_made(), 12);
    assert_eq!(
        counters.1.load(Ordering::SeqCst),
        2,
        "at most `concurrency` requests in flight, and that many used"
    );
}

#[tokio::test]
async fn requests_are_signed_as_openqa_checks_them() {
    let sim = start().await;
    scenario(&sim);
    sim.require_api_key(KEY, SECRET);
    let c = signing_client(&sim.url(), SECRET);
    // commas, colons, brackets and globs in queries: signed in the form the server re-encodes them to
    assert_eq!(c.jobs(&[1, 2, 3]).await.expect("jobs").len(), 3);
    c.job_ids_by_setting("RRID", "SUSE:Maintenance:12345:300001").await.expect("rrid");
    c.job_ids_by_setting("TEST_ISSUES[]", "12345").await.expect("brackets");
    c.job_ids_by_list_setting("*_TEST_ISSUES", "12345").await.expect("glob");
    c.job(1).await.expect("job");
    c.comments(1).await.expect("comments");
    c.job_groups().await.expect("groups");
    // and the one proof that a `value=` answer was not cut by generic_max_limit
    assert_eq!(sim.signatures(), (8, 0));

    // a wrong secret goes unnoticed on public reads, as on openQA, but the simulator sees it
    let wrong = signing_client(&sim.url(), "WRONGSECRET");
    assert!(wrong.job(1).await.expect("public read").is_some());
    assert_eq!(sim.signatures(), (8, 1));
    // without credentials nothing is signed
    client(&sim.url()).job(1).await.expect("anonymous read");
    assert_eq!(sim.signatures(), (8, 1));
}
