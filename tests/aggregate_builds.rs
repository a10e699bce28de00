//! Aggregate builds are judged whole: openQA's `list_value` lookup only searches its newest jobs,
//! so the newest build of a product is fetched completely, by BUILD and product, page by page.

mod common;

use axum::routing::get;
use axum::Router;
use common::{gate_config, CGate, OpenQa};
use incident_gate::config::Config;
use incident_gate::openqa::client::{ApiError, OpenQaClient};
use incident_gate_sim as sim;

const PRODUCT: [&str; 4] = ["sle", "15-SP6", "Server-DVD-Updates", "x86_64"];

fn client(url: &str) -> OpenQaClient {
    OpenQaClient::new(&Config { openqa_url: url.to_string(), http_timeout_s: 5, ..Config::default() })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_is_read_on_every_page_even_when_openqa_pages_shorter_than_asked() {
    let qa = OpenQa::start().await;
    let mut ours: Vec<u64> =
        (0..23).map(|t| qa.aggregate_job("20261124-2", &[1], &format!("t{t}"))).collect();
    // the same build string of another product, and another build of this one
    let mut other = sim::aggregate_job_settings("20261124-2", &[1], "t0");
    other.iter_mut().filter(|(k, _)| k == "ARCH").for_each(|(_, v)| *v = "aarch64".into());
    qa.sim.create_job(&sim::borrowed(&other), qa.updates_group);
    qa.aggregate_job("20261124-1", &[1], "t0");
    // an admin's generic_max_limit below our page size: the count of a page says nothing
    qa.sim.set_generic_max_limit(5);
    let before = qa.sim.requests();
    let jobs = client(&qa.url()).jobs_of_build("20261124-2", PRODUCT).await.unwrap();
    ours.sort_unstable();
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), ours);
    assert_eq!(qa.sim.requests() - before, 5, "23 jobs in pages of 5");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_ignores_before_is_an_error_not_an_endless_loop() {
    // openQA that names a next page but always answers the same one
    let page = serde_json::json!({"jobs": [{"id": 7, "name": "a", "state": "done", "result": "passed"}]});
    let app = Router::new().route(
        "/api/v1/jobs",
        get(move || {
            let page = page.clone();
            async move { ([("link", "<http://x/api/v1/jobs?offset=1>; rel=\"next\"")], axum::Json(page)) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let err = client(&url).jobs_of_build("20261124-1", PRODUCT).await.unwrap_err();
    assert!(matches!(err, ApiError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("before="), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_partly_outside_the_list_value_window_is_judged_whole() {
    let qa = OpenQa::start().await;
    let own = qa.incident_job(7001, 300701, "mau");
    qa.sim.set_done(own, "passed");
    // the build's first job failed; then openQA ran more other jobs than `list_value` searches
    // (job_settings_max_recent_jobs, 20 000 by default) before the rest of the build
    qa.sim.set_job_settings_max_recent_jobs(50);
    let first = qa.aggregate_job("20261124-1", &[7001], "early");
    qa.sim.set_done(first, "failed");
    for t in 0..50 {
        qa.sim.create_job(&[("TEST", "other"), ("REPOHASH", &t.to_string())], None);
    }
    let late: Vec<u64> =
        (0..3).map(|t| qa.aggregate_job("20261124-1", &[7001], &format!("late{t}"))).collect();
    late.iter().for_each(|j| {
        qa.sim.set_done(*j, "passed");
    });
    let listed = client(&qa.url()).job_ids_by_list_setting("*_TEST_ISSUES", "7001").await.unwrap();
    assert!(!listed.contains(&first), "the scenario needs the first job outside the window");

    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));
    let verdict = gate.evaluate(7001).unwrap();
    assert_eq!(verdict["result"], "failed", "{verdict}");
    assert_eq!(verdict["blocking"][0]["id"], first);
    assert_eq!(verdict["jobs"]["total"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_simulator_pages_like_openqa() {
    // tests/fixtures/openqa/INDEX.md, get-jobs-limit-2-offset-2.json: first, next and prev
    let qa = OpenQa::start().await;
    (0..6).for_each(|t| {
        qa.aggregate_job("20261124-1", &[1], &format!("t{t}"));
    });
    let url = qa.url();
    let answer = reqwest::get(format!("{url}/api/v1/jobs?limit=2&offset=2")).await.unwrap();
    let link = answer.headers()["link"].to_str().unwrap().to_string();
    assert_eq!(
        link,
        format!(
            "<{url}/api/v1/jobs?limit=2&offset=0>; rel=\"first\", <{url}/api/v1/jobs?limit=2&offset=4>; rel=\"next\", \
             <{url}/api/v1/jobs?limit=2&offset=0>; rel=\"prev\""
        )
    );
    let ids: Vec<u64> = answer.json::<serde_json::Value>().await.unwrap()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["id"].as_u64())
        .collect();
    assert_eq!(ids, vec![3, 4]);
    let last = reqwest::get(format!("{url}/api/v1/jobs?build=20261124-1&before=3")).await.unwrap();
    let link = last.headers()["link"].to_str().unwrap();
    assert_eq!(
        link,
        format!("<{url}/api/v1/jobs?build=20261124-1&before=3&limit=1000&offset=0>; rel=\"first\"")
    );
}

/// openQA 4.6 whose `list_value` searches the newest 50 jobs, and a failed job of the incident
/// that 50 newer jobs pushed out of that window: answers its id.
fn failure_outside_the_window(qa: &OpenQa, incident: u64, request: u64) -> u64 {
    qa.sim.set_flavor(incident_gate_sim::openqa::Flavor::Debian12);
    qa.sim.set_job_settings_max_recent_jobs(50);
    let early = qa.incident_job(incident, request, "early");
    qa.sim.set_done(early, "failed");
    for t in 0..50 {
        qa.sim.create_job(&[("TEST", "other"), ("REPOHASH", &t.to_string())], None);
    }
    early
}

/// openQA 4.6 (Debian 12) finds an incident's own jobs only with `list_value`, which searches its
/// newest jobs: a failed job older than that still blocks, found through its build.
#[tokio::test(flavor = "multi_thread")]
async fn an_own_job_outside_the_list_value_window_still_blocks_on_openqa_4_6() {
    let qa = OpenQa::start().await;
    let early = failure_outside_the_window(&qa, 7002, 300702);
    let late = qa.incident_job(7002, 300702, "late");
    qa.sim.set_done(late, "passed");
    let listed = client(&qa.url()).job_ids_by_setting("INCIDENT_ID", "7002").await.unwrap();
    assert_eq!(listed, [late], "the scenario needs the early job outside the window");

    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));
    let verdict = gate.evaluate(7002).unwrap();
    assert_eq!(verdict["result"], "failed", "{verdict}");
    assert_eq!(verdict["blocking"][0]["id"], early, "{verdict}");
    assert_eq!(verdict["jobs"]["total"], 2, "{verdict}");
}

/// openQA 4.6: the old failure is outside the `list_value` window, another failure was restarted
/// and its clone passed, and a Devel job of the incident still runs. The Devel job does not count,
/// so it must not keep the build read from making the list complete (issue 20, point 1).
#[tokio::test(flavor = "multi_thread")]
async fn an_uncounted_running_job_does_not_hide_an_old_failure_on_openqa_4_6() {
    let qa = OpenQa::start().await;
    let early = failure_outside_the_window(&qa, 7003, 300703);
    let restarted = qa.incident_job(7003, 300703, "late");
    qa.sim.set_done(restarted, "failed");
    let (clone, _) = qa.sim.restart(restarted).unwrap();
    qa.sim.set_done(clone, "passed");
    let settings = sim::incident_job_settings(7003, 300703, "pkg", "devel", "x86_64");
    let devel = qa.sim.create_job(&sim::borrowed(&settings), qa.devel_group);
    let listed = client(&qa.url()).job_ids_by_setting("INCIDENT_ID", "7003").await.unwrap();
    assert!(!listed.contains(&early), "the scenario needs the early job outside the window");
    assert!(listed.contains(&devel), "{listed:?}");

    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));
    let verdict = gate.evaluate(7003).unwrap();
    assert_eq!(verdict["result"], "failed", "{verdict}");
    assert_eq!(verdict["blocking"][0]["id"], early, "{verdict}");
}

/// Upstream openQA answers `job_settings/jobs?value=` with at most `generic_max_limit` rows, newest
/// first, and no sign of the cut: an instance whose admin lowered it drops the oldest jobs of a
/// request. The answer is proven complete, or the verdict waits (issue 20, point 2).
#[tokio::test(flavor = "multi_thread")]
async fn a_settings_answer_cut_by_generic_max_limit_decides_nothing() {
    let qa = OpenQa::start().await;
    qa.sim.set_generic_max_limit(3);
    let early = qa.incident_job(7004, 300704, "early");
    qa.sim.set_done(early, "failed");
    for t in 0..3 {
        let j = qa.incident_job(7004, 300704, &format!("late{t}"));
        qa.sim.set_done(j, "passed");
    }
    let err = client(&qa.url()).job_ids_by_setting("INCIDENT_ID", "7004").await.unwrap_err();
    assert!(err.to_string().contains("generic_max_limit"), "{err}");

    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));
    let status = gate.evaluate(7004).unwrap_err();
    assert_eq!(status, incident_gate::ffi::ig_status::IG_OPENQA_REFUSED, "{}", common::last_error());
    assert!(common::last_error().contains("generic_max_limit"), "{}", common::last_error());

    // the same number of rows below the limit is proven complete by a longer list elsewhere
    qa.sim.set_generic_max_limit(10);
    let verdict = gate.evaluate(7004).unwrap();
    assert_eq!(verdict["result"], "failed", "{verdict}");
    assert_eq!(verdict["blocking"][0]["id"], early, "{verdict}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_settings_answer_below_the_limit_costs_one_proof_per_client() {
    let qa = OpenQa::start().await;
    let jobs: Vec<u64> = (0..4).map(|t| qa.incident_job(7005, 300705, &format!("t{t}"))).collect();
    qa.aggregate_job("20261124-1", &[1], "other");
    let c = client(&qa.url());
    let before = qa.sim.requests();
    let mut listed = c.job_ids_by_setting("INCIDENT_ID", "7005").await.unwrap();
    listed.sort_unstable();
    assert_eq!(listed, jobs);
    assert_eq!(qa.sim.requests() - before, 2, "the settings answer and one proof");
    c.job_ids_by_setting("INCIDENT_ID", "7005").await.unwrap();
    assert_eq!(qa.sim.requests() - before, 3, "the proof is remembered");
}
