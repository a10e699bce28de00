//! openQA versions and what they tell: Debian 12's openQA (no `job_settings/jobs?value=`),
//! comment deletions reaching the verdict in every mode (plugin through the C ABI, the AMQP
//! listener, the job-done hook), and answers openQA will repeat however often it is asked.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{gate_config, CGate, OpenQa};
use incident_gate::config::Config;
use incident_gate::engine::Core;
use incident_gate::ffi::ig_status;
use incident_gate_sim::openqa::Flavor;
use serde_json::json;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const ACCEPT: &str = "@review:acceptable_for:incident_{}:bsc#1234567 known issue";

fn acceptance(incident: u64) -> String {
    ACCEPT.replace("{}", &incident.to_string())
}

/// Three incident jobs, done, the second one failed.
fn failed_incident(qa: &OpenQa, incident: u64) -> Vec<u64> {
    let jobs: Vec<u64> =
        (0..3).map(|i| qa.incident_job(incident, 300000 + incident, &format!("t{i}"))).collect();
    for (i, j) in jobs.iter().enumerate() {
        qa.sim.set_done(*j, if i == 1 { "failed" } else { "passed" });
    }
    jobs
}

#[tokio::test(flavor = "multi_thread")]
async fn debian_12_openqa_without_value_queries_still_decides() {
    let qa = OpenQa::start().await;
    qa.sim.set_flavor(Flavor::Debian12);
    let jobs = failed_incident(&qa, 3101);
    let agg = qa.aggregate_job("20261124-1", &[3101, 3102], "regression");
    qa.sim.set_done(agg, "passed");
    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));
    gate.job_done(jobs[2], "passed");
    gate.flushed();
    let decided = gate.decisions_for(3101);
    assert_eq!(decided.len(), 1, "{:?}", gate.status());
    assert_eq!(decided[0]["result"], "failed");
    let verdict = gate.evaluate(3101).unwrap();
    assert_eq!(verdict["jobs"]["total"], 4, "incident jobs and the aggregate job: {verdict}");
    let engine = &gate.status()["engine"];
    assert_eq!(engine["openqa_settings_query"], "list_value");
    assert_eq!(engine["api_errors"], 0);
    assert_eq!(engine["refused"], 0);

    // the 400 is asked once per process: after that an evaluation costs what it costs on an
    // upstream openQA with the same jobs (list_value= in place of value=, one for one), and one
    // request more for the incident's build read whole (list_value only searches the newest jobs)
    let cost = |qa: &OpenQa, gate: &CGate| {
        let before = qa.sim.requests();
        gate.evaluate(3101).unwrap();
        qa.sim.requests() - before
    };
    let upstream = OpenQa::start().await;
    let jobs = failed_incident(&upstream, 3101);
    let agg = upstream.aggregate_job("20261124-1", &[3101, 3102], "regression");
    upstream.sim.set_done(agg, "passed");
    let state = tempfile::tempdir().unwrap();
    let upstream_gate = CGate::new(&gate_config(&upstream.url(), state.path()));
    upstream_gate.job_done(jobs[2], "passed");
    upstream_gate.flushed();
    assert_eq!(cost(&qa, &gate), cost(&upstream, &upstream_gate) + 1, "the 400 was asked again");
}

/// Debian 12's openQA refuses `list_value=git:<pr>` (one word only, 400 "list_value invalid"):
/// a pull request is still decided there, on the jobs `_GITEA_PR` and `INCIDENT_ID` find. Found by
/// the real-openQA suite, where every pull request stayed undecided.
#[tokio::test(flavor = "multi_thread")]
async fn debian_12_openqa_decides_a_gitea_pull_request() {
    let qa = OpenQa::start().await;
    qa.sim.set_flavor(Flavor::Debian12);
    let sha = "2cf58b3a9c32d1e0f1a2b3c4d5e6f7a8b9c0d1e2";
    let jobs: Vec<u64> = ["a", "b"].iter().map(|t| qa.gitea_job("products/SLFO", 3301, sha, t)).collect();
    let ibs = qa.incident_job(3301, 303301, "c");
    for j in &jobs {
        qa.sim.set_done(*j, "passed");
    }
    qa.sim.set_done(ibs, "failed");
    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));
    for round in ["first evaluation (learns list_value)", "second evaluation"] {
        let verdict = gate.evaluate_submission("git:3301").unwrap_or_else(|s| panic!("{round}: {s:?}"));
        assert_eq!(verdict["result"], "passed", "{round}: {verdict}");
        assert_eq!(verdict["jobs"]["total"], 2, "{round}: its own jobs, not the IBS job: {verdict}");
    }
    assert_eq!(gate.evaluate(3301).unwrap()["result"], "failed", "the IBS incident of the same number");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_learns_once_which_settings_query_openqa_knows() {
    use incident_gate::openqa::client::{OpenQaClient, SettingsQuery};
    let qa = OpenQa::start().await;
    qa.sim.set_flavor(Flavor::Debian12);
    let a = qa.incident_job(3201, 303201, "a");
    let b = qa.incident_job(3201, 303201, "b");
    qa.incident_job(3202, 303202, "c");
    let config = Config { openqa_url: qa.url(), ..Config::default() };
    let client = OpenQaClient::new(&config).unwrap();
    assert_eq!(client.settings_query(), SettingsQuery::Unknown);
    assert_eq!(client.job_ids_by_setting("INCIDENT_ID", "3201").await.unwrap(), vec![b, a]);
    assert_eq!(client.settings_query(), SettingsQuery::ListValueOnly);
    let n = qa.sim.requests();
    client.job_ids_by_setting("INCIDENT_ID", "3201").await.unwrap();
    assert_eq!(qa.sim.requests() - n, 1, "straight to list_value");
    // a value no list_value can carry is openQA's own 400, not a retry loop
    let e = client.job_ids_by_setting("RRID", "SUSE:Maintenance:3201:303201").await.unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert!(e.to_string().contains("list_value invalid"), "{e}");

    qa.sim.set_flavor(Flavor::Upstream);
    let upstream = OpenQaClient::new(&config).unwrap();
    assert_eq!(upstream.job_ids_by_setting("INCIDENT_ID", "3201").await.unwrap(), vec![b, a]);
    assert_eq!(upstream.settings_query(), SettingsQuery::Value);
}

/// Plugin mode: the events openQA's web UI hands the plugin, through the C ABI.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_every_comment_change_reaches_the_verdict() {
    let qa = OpenQa::start().await;
    let jobs = failed_incident(&qa, 3301);
    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));
    let submit = |e: &incident_gate_sim::openqa::SimEvent| {
        assert_eq!(gate.submit(&e.name, &e.data), ig_status::IG_OK, "{}", common::last_error());
        gate.flushed();
    };
    let results = |gate: &CGate| -> Vec<String> {
        gate.decisions_for(3301)
            .iter()
            .rev()
            .map(|d| d["result"].as_str().unwrap_or("").to_string())
            .collect()
    };
    gate.job_done(jobs[2], "passed");
    gate.flushed();
    assert_eq!(results(&gate), ["failed"]);

    let created = qa.sim.comment(jobs[1], &acceptance(3301)).unwrap();
    submit(&created);
    assert_eq!(results(&gate), ["failed", "passed"]);
    let comment = created.data["id"].as_u64().unwrap();

    // openQA's event for a single deletion: `{"id": "<id>"}`, no job
    let deleted = qa.sim.delete_comment(jobs[1], comment).unwrap();
    assert_eq!(deleted.data, json!({"id": comment.to_string()}));
    submit(&deleted);
    assert_eq!(results(&gate), ["failed", "passed", "failed"]);

    // upstream's bulk routes: one event for all, the deletion after the rows are gone
    let bulk = qa.sim.create_comments(&[jobs[1], jobs[0]], &acceptance(3301)).unwrap();
    assert_eq!(bulk.name, "openqa_comments_create");
    assert!(!bulk.amqp, "openQA's AMQP plugin does not forward the bulk events");
    submit(&bulk);
    assert_eq!(results(&gate), ["failed", "passed", "failed", "passed"]);
    let ids: Vec<u64> =
        bulk.data["created"].as_array().unwrap().iter().map(|c| c["id"].as_u64().unwrap()).collect();
    let bulk_deleted = qa.sim.delete_comments(&ids).unwrap();
    assert_eq!(bulk_deleted.data["deleted"], 2);
    submit(&bulk_deleted);
    assert_eq!(results(&gate), ["failed", "passed", "failed", "passed", "failed"]);

    // an edit that drops the acceptance carries its job
    let again = qa.sim.comment(jobs[1], &acceptance(3301)).unwrap();
    submit(&again);
    let edited = qa.sim.update_comment(jobs[1], again.data["id"].as_u64().unwrap(), "never mind").unwrap();
    submit(&edited);
    assert_eq!(results(&gate), ["failed", "passed", "failed", "passed", "failed", "passed", "failed"]);
    // a force_result label is a job.update_result for the job
    let forced = qa.sim.comment(jobs[1], "label:force_result:softfailed:bsc1234567").unwrap();
    let update = qa.sim.events().into_iter().rev().nth(1).unwrap();
    assert_eq!(
        (update.name.as_str(), update.routing_key("suse").as_str()),
        ("openqa_job_update_result", "suse.openqa.job.update_result")
    );
    submit(&update);
    submit(&forced);
    assert_eq!(results(&gate).last().map(String::as_str), Some("passed"));
}

/// Listen mode: openQA's AMQP messages, as the listener turns them into events.
#[tokio::test(flavor = "multi_thread")]
async fn listen_a_deleted_comment_message_reaches_the_verdict() {
    let qa = OpenQa::start().await;
    let jobs = failed_incident(&qa, 3401);
    let state = tempfile::tempdir().unwrap();
    let config = Config {
        openqa_url: qa.url(),
        state_dir: state.path().into(),
        publish_amqp: false,
        report_obs: false,
        ..Config::default()
    };
    let core = Arc::new(Core::new(Arc::new(config)).unwrap());
    core.spawn_background();
    let take = |e: incident_gate_sim::openqa::SimEvent| {
        let core = core.clone();
        async move {
            assert!(e.amqp);
            let body = serde_json::to_vec(&e.amqp_body).unwrap();
            let event =
                incident_gate::amqp::listen::parse_message(&e.routing_key("suse"), &body).unwrap().unwrap();
            let _ = core.take_events(vec![event]).await;
            common::eventually(Duration::from_secs(30), || core.is_idle().then_some(())).await.expect("idle");
        }
    };
    take(qa.sim.events().into_iter().rev().find(|e| e.name == "openqa_job_done").unwrap()).await;
    let created = qa.sim.comment(jobs[1], &acceptance(3401)).unwrap();
    take(created.clone()).await;
    assert_eq!(core.store().latest_decision(3401).unwrap().unwrap().verdict.result.as_str(), "passed");
    let deleted = qa.sim.delete_comment(jobs[1], created.data["id"].as_u64().unwrap()).unwrap();
    assert_eq!(deleted.routing_key("suse"), "suse.openqa.comment.delete");
    assert_eq!(deleted.amqp_body["job_id"], jobs[1], "the AMQP plugin looked the comment up before deletion");
    take(deleted).await;
    assert_eq!(core.store().latest_decision(3401).unwrap().unwrap().verdict.result.as_str(), "failed");
    core.shutdown();
}

/// Hook mode: openQA runs no hook for comments; the next hook run finds the acceptance gone.
#[tokio::test(flavor = "multi_thread")]
async fn hook_finds_a_deleted_acceptance_on_its_next_run() {
    let qa = OpenQa::start().await;
    let jobs = failed_incident(&qa, 3501);
    let other = qa.incident_job(3502, 303502, "other");
    qa.sim.set_done(other, "passed");
    let created = qa.sim.comment(jobs[1], &acceptance(3501)).unwrap();
    let state = tempfile::tempdir().unwrap();
    let url = qa.url();
    let dir = state.path().to_path_buf();
    let hook = move |job: u64| {
        let out = Command::new(env!("CARGO_BIN_EXE_incident-gate"))
            .args(["hook", &job.to_string()])
            .env_remove("INCIDENT_GATE_CONFIG")
            .env("INCIDENT_GATE_OPENQA_URL", &url)
            .env("INCIDENT_GATE_STATE_DIR", &dir)
            .env("INCIDENT_GATE_PUBLISH_AMQP", "false")
            .env("INCIDENT_GATE_REPORT_OBS", "false")
            .env("INCIDENT_GATE_RECONCILE_INTERVAL_S", "1")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let h = hook.clone();
    let (code, out) = tokio::task::spawn_blocking(move || h(jobs[2])).await.unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("incident 3501: passed"), "{out}");

    qa.sim.delete_comments(&[created.data["id"].as_u64().unwrap()]).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // the hook of a job of another incident
    let (code, out) = tokio::task::spawn_blocking(move || hook(other)).await.unwrap();
    assert!(out.contains("incident 3501: a comment its verdict relied on was deleted"), "{out}");
    assert!(out.contains("incident 3501: failed"), "{out}");
    assert_eq!(code, Some(1), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_id_is_given_up_alone_shown_and_logged_once() {
    let qa = OpenQa::start().await;
    let jobs: Vec<u64> = (0..3).map(|i| qa.incident_job(3601, 303601, &format!("t{i}"))).collect();
    let bad = qa.incident_job(3602, 303602, "bad");
    for j in &jobs {
        qa.sim.set_done(*j, "passed");
    }
    qa.sim.set_done(bad, "passed");
    qa.sim.refuse_job(bad, 400, "Job is not visible to you");
    let state = tempfile::tempdir().unwrap();
    let mut cfg = gate_config(&qa.url(), state.path());
    // about the events' path: a catch-up at engine start would read the jobs from openQA's job
    // list (which the refusal does not cover) before the events look them up
    cfg["catchup_max_requests"] = 0.into();
    let gate = CGate::new(&cfg);
    // one batch: the refused id among good ones, and an id beyond openQA's bigint
    gate.job_done(bad, "passed");
    for j in &jobs {
        gate.job_done(*j, "passed");
    }
    let huge = json!({"id": u64::MAX, "result": "passed"});
    assert_eq!(gate.submit("openqa_job_done", &huge), ig_status::IG_INVALID_EVENT);
    assert_eq!(gate.flush(Duration::from_secs(20)), ig_status::IG_OK, "the batch is not held up");
    let decided = gate.decisions_for(3601);
    assert_eq!(decided.len(), 1, "{:?}", gate.status());
    assert_eq!(decided[0]["result"], "passed");

    let status = gate.status();
    let engine = &status["engine"];
    assert_eq!(engine["events_refused"], 1, "{status}");
    let refusal = &engine["refusals"][0];
    assert_eq!(refusal["status"], 400);
    assert_eq!(refusal["message"], "Job is not visible to you");
    assert_eq!(refusal["route"], format!("GET /api/v1/jobs?ids={bad}&limit=500"));
    assert_eq!(refusal["affected"], format!("events of job {bad}"));
    assert_eq!(engine["api_errors"], 0, "no retries of a refusal");

    // the same refusal again: counted, still one entry
    gate.job_done(bad, "passed");
    gate.flushed();
    let engine = gate.status()["engine"].clone();
    assert_eq!(engine["refusals"].as_array().unwrap().len(), 1);
    assert_eq!(engine["refusals"][0]["count"], 2);

    // an evaluation openQA refuses is not looped on: it waits for reconciliation
    let requests = qa.sim.requests();
    let comments_of = jobs[0];
    qa.sim.set_done(comments_of, "failed");
    qa.sim.refuse_job(comments_of, 403, "forbidden by the proxy");
    gate.job_done(comments_of, "failed");
    assert_eq!(gate.flush(Duration::from_secs(20)), ig_status::IG_OK);
    // the refusal is recorded, the incident left pending, and no evaluation runs or waits to run
    // again (a retry loop keeps its evaluation busy while it backs off)
    let settled = common::eventually(Duration::from_secs(20), || {
        let engine = gate.status()["engine"].clone();
        let pending = engine["pending_incidents"].as_array()?.contains(&json!(3601));
        (engine["refused"].as_u64()? >= 3 && pending && engine["busy"] == 0).then_some(engine)
    })
    .await;
    let engine = settled.unwrap_or_else(|| panic!("the refusal settled: {}", gate.status()["engine"]));
    let spent = qa.sim.requests() - requests;
    assert!(spent <= 8, "{spent} requests: the refusal was retried");
    assert_eq!(engine["refused"], 3, "{engine}");
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_errors_keep_their_backoff() {
    let qa = OpenQa::start().await;
    let jobs: Vec<u64> = (0..2).map(|i| qa.incident_job(3701, 303701, &format!("t{i}"))).collect();
    for j in &jobs {
        qa.sim.set_done(*j, "passed");
    }
    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));
    incident_gate::log::capture(true);
    qa.sim.set_down(true);
    gate.job_done(jobs[1], "passed");
    // each failed lookup of the event's job says how long it waits: the wait doubles
    let mut delays = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while delays.len() < 3 && std::time::Instant::now() < deadline {
        for line in incident_gate::log::take() {
            if let Some((_, rest)) = line.message.split_once("jobs of events, retrying in ") {
                delays.push(rest.split(':').next().unwrap_or_default().to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    incident_gate::log::capture(false);
    assert_eq!(delays.get(..3), Some(&["100ms", "200ms", "400ms"].map(String::from)[..]), "{delays:?}");
    qa.sim.set_down(false);
    gate.flushed();
    assert_eq!(gate.decisions_for(3701)[0]["result"], "passed");
    let engine = gate.status()["engine"].clone();
    assert!(engine["api_errors"].as_u64().unwrap() >= 3, "{engine}");
    assert_eq!(engine["refused"], 0, "an outage is no refusal");
}

/// openQA emits the single deletion before the row is gone: an evaluation that reads the comments
/// right then must not count the comment any more.
#[tokio::test(flavor = "multi_thread")]
async fn a_deletion_announced_before_the_row_is_gone_is_not_counted() {
    let qa = OpenQa::start().await;
    let jobs = failed_incident(&qa, 3801);
    let created = qa.sim.comment(jobs[1], &acceptance(3801)).unwrap();
    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));
    gate.job_done(jobs[2], "passed");
    gate.flushed();
    assert_eq!(gate.decisions_for(3801)[0]["result"], "passed");
    let id = created.data["id"].as_u64().unwrap();
    // the comment still exists in openQA when the event arrives
    assert_eq!(gate.submit("openqa_comment_delete", &json!({"id": id.to_string()})), ig_status::IG_OK);
    gate.flushed();
    let decided = gate.decisions_for(3801);
    assert_eq!(decided[0]["result"], "failed", "{decided:?}");
}
