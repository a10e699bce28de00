//! The engine through the C ABI against the openQA simulator: one decision per change, at the
//! last job; failures named; restarts re-decided; no decision on partial data; one decision across
//! processes sharing a state directory.

mod common;

use common::{gate_config, CGate, OpenQa};
use incident_gate::ffi::ig_status;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn shuffled_events_give_one_passed_decision_at_the_last_job() {
    let qa = OpenQa::start().await;
    let mut jobs: Vec<u64> = (0..6).map(|i| qa.incident_job(1001, 300101, &format!("mau-{i}"))).collect();
    jobs.extend((0..4).map(|i| qa.aggregate_job("20261124-1", &[1001, 1002], &format!("regression-{i}"))));
    incident_gate_sim::shuffle(&mut jobs, 7);
    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));

    let (last, rest) = jobs.split_last().unwrap();
    for job in rest {
        let result = if job % 3 == 0 { "softfailed" } else { "passed" };
        qa.sim.set_done(*job, result);
        gate.job_done(*job, result);
    }
    gate.flushed();
    assert!(gate.decisions_for(1001).is_empty(), "decided before the last job: {:?}", gate.decisions());
    assert_eq!(gate.evaluate(1001).unwrap()["result"], "pending");

    qa.sim.set_done(*last, "passed");
    gate.job_done(*last, "passed");
    gate.flushed();
    let decided = gate.decisions_for(1001);
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!(decided[0]["result"], "passed");
    assert_eq!(decided[0]["request"], 300101);
    // the same events again change nothing
    for job in &jobs {
        gate.job_done(*job, "passed");
    }
    gate.flushed();
    assert_eq!(gate.decisions_for(1001).len(), 1);
    let verdict = gate.evaluate(1001).unwrap();
    assert_eq!(verdict["jobs"]["total"], 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_is_named_and_a_passing_restart_is_a_new_decision() {
    let qa = OpenQa::start().await;
    let jobs: Vec<u64> = (0..3).map(|i| qa.incident_job(2001, 300201, &format!("t{i}"))).collect();
    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));
    for (i, job) in jobs.iter().enumerate() {
        let result = if i == 1 { "failed" } else { "passed" };
        qa.sim.set_done(*job, result);
        gate.job_done(*job, result);
    }
    gate.flushed();
    let decided = gate.decisions_for(2001);
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!(decided[0]["result"], "failed");
    let verdict = gate.evaluate(2001).unwrap();
    assert_eq!(verdict["blocking"][0]["id"], jobs[1]);
    assert_eq!(verdict["blocking"][0]["result"], "failed");

    let (clone, event) = qa.sim.restart(jobs[1]).unwrap();
    assert_eq!(gate.submit(&event.name, &event.data), ig_status::IG_OK);
    gate.flushed();
    assert_eq!(gate.evaluate(2001).unwrap()["result"], "pending");
    qa.sim.set_done(clone, "passed");
    gate.job_done(clone, "passed");
    gate.flushed();
    let decided = gate.decisions_for(2001);
    assert_eq!(decided.len(), 2, "{decided:?}");
    assert_eq!(decided[0]["result"], "passed", "newest first");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_decision_while_openqa_is_down_then_one_after_it_recovers() {
    let qa = OpenQa::start().await;
    let jobs: Vec<u64> = (0..4).map(|i| qa.incident_job(3001, 300301, &format!("t{i}"))).collect();
    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));
    let (last, rest) = jobs.split_last().unwrap();
    for job in rest {
        qa.sim.set_done(*job, "passed");
        gate.job_done(*job, "passed");
    }
    gate.flushed();
    qa.sim.set_down(true);
    qa.sim.set_done(*last, "passed");
    gate.job_done(*last, "passed");
    assert_eq!(gate.flush(Duration::from_millis(1500)), ig_status::IG_TIMEOUT, "the engine keeps retrying");
    assert!(gate.decisions_for(3001).is_empty());
    assert_eq!(gate.evaluate(3001), Err(ig_status::IG_UNAVAILABLE), "no verdict on partial data");
    assert!(gate.status()["engine"]["api_errors"].as_u64().unwrap() > 0);
    qa.sim.set_down(false);
    gate.flushed();
    let decided = gate.decisions_for(3001);
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!(decided[0]["result"], "passed");
}

on_both_stores!(
    two_gates_sharing_a_store_record_one_decision,
    events_split_across_processes_still_decide_at_the_last_job,
    a_slow_evaluation_of_older_data_does_not_replace_a_newer_decision,
    an_event_during_the_deciding_evaluation_leaves_no_incident_pending,
);

async fn two_gates_sharing_a_store_record_one_decision(store: &common::TestStore) {
    let qa = OpenQa::start().await;
    let jobs: Vec<u64> = (0..5).map(|i| qa.incident_job(4001, 300401, &format!("t{i}"))).collect();
    let state = tempfile::tempdir().unwrap();
    let a = CGate::new(&store.gate_config(&qa.url(), state.path()));
    let b = CGate::new(&store.gate_config(&qa.url(), state.path()));
    for job in &jobs {
        qa.sim.set_done(*job, "passed");
        a.job_done(*job, "passed");
        b.job_done(*job, "passed");
    }
    a.flushed();
    b.flushed();
    assert_eq!(a.decisions_for(4001).len(), 1);
    let recorded: u64 = [&a, &b].iter().map(|g| g.status()["engine"]["decisions"].as_u64().unwrap()).sum();
    // The other gate either finds the same decision recorded, or (when its evaluation started
    // before the recorded one) is refused as older; both mean it records nothing.
    let refused: u64 = [&a, &b]
        .iter()
        .flat_map(|g| {
            let e = &g.status()["engine"];
            [e["duplicate_decisions"].as_u64().unwrap(), e["stale_decisions"].as_u64().unwrap()]
        })
        .sum();
    assert_eq!(recorded, 1, "exactly one gate records the decision");
    assert!(refused >= 1, "the other finds it recorded or is refused as older");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_finished_without_an_event_is_found_by_reconciliation() {
    let qa = OpenQa::start().await;
    let jobs: Vec<u64> = (0..2).map(|i| qa.incident_job(5001, 300501, &format!("t{i}"))).collect();
    let state = tempfile::tempdir().unwrap();
    let mut cfg = gate_config(&qa.url(), state.path());
    cfg["reconcile_interval_s"] = 1.into();
    let gate = CGate::new(&cfg);
    qa.sim.set_done(jobs[0], "passed");
    gate.job_done(jobs[0], "passed");
    gate.flushed();
    // job 1 is cancelled by openQA's stale-job detection: no event reaches us
    qa.sim.cancel(jobs[1]);
    let decided = common::eventually(Duration::from_secs(10), || {
        let d = gate.decisions_for(5001);
        (!d.is_empty()).then_some(d)
    })
    .await
    .expect("reconciliation decides the incident");
    assert_eq!(decided[0]["result"], "failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_settle_window_folds_a_burst_into_one_evaluation() {
    let qa = OpenQa::start().await;
    let jobs: Vec<u64> = (0..6).map(|i| qa.incident_job(6001, 300601, &format!("t{i}"))).collect();
    for job in &jobs {
        qa.sim.set_done(*job, "passed");
    }
    let state = tempfile::tempdir().unwrap();
    let mut cfg = gate_config(&qa.url(), state.path());
    cfg["settle_ms"] = 400.into();
    let gate = CGate::new(&cfg);
    for job in &jobs {
        gate.job_done(*job, "passed");
    }
    gate.flushed();
    let engine = &gate.status()["engine"];
    assert_eq!(engine["evaluations"], 1, "{engine}");
    assert_eq!(gate.decisions_for(6001).len(), 1);
}

async fn events_split_across_processes_still_decide_at_the_last_job(store: &common::TestStore) {
    // openQA's prefork web UI hands each event to one worker: no gate sees them all
    let qa = OpenQa::start().await;
    let jobs: Vec<u64> = (0..6).map(|i| qa.incident_job(6101, 300611, &format!("t{i}"))).collect();
    let state = tempfile::tempdir().unwrap();
    let gates = [
        CGate::new(&store.gate_config(&qa.url(), state.path())),
        CGate::new(&store.gate_config(&qa.url(), state.path())),
    ];
    for (i, job) in jobs.iter().enumerate() {
        qa.sim.set_done(*job, "passed");
        let gate = &gates[(i / 2) % 2]; // a, a, b, b, a, a: each gate waits on jobs the other saw
        gate.job_done(*job, "passed");
        gate.flushed();
    }
    gates.iter().for_each(CGate::flushed);
    let decided = gates[0].decisions_for(6101);
    assert_eq!(decided.len(), 1, "decided at the last job, not at the next reconciliation: {decided:?}");
    assert_eq!(decided[0]["result"], "passed");
}

#[test]
fn an_engine_that_cannot_start_says_why_and_is_not_restarted_on_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, "").unwrap();
    let gate = CGate::new(&gate_config("http://127.0.0.1:9", &file.join("state")));
    let data = serde_json::json!({"id": 1, "result": "passed"});
    assert_eq!(gate.submit("openqa_job_done", &data), ig_status::IG_UNAVAILABLE);
    assert!(common::last_error().contains("state directory"), "{}", common::last_error());
    assert_eq!(gate.submit("openqa_job_done", &data), ig_status::IG_UNAVAILABLE);
    assert!(common::last_error().contains("next try in"), "{}", common::last_error());
    assert_eq!(gate.status()["engine_starts"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn accepting_one_of_two_failures_is_a_new_decision_that_names_the_other() {
    let qa = OpenQa::start().await;
    let jobs: Vec<u64> = (0..3).map(|i| qa.incident_job(6201, 300621, &format!("t{i}"))).collect();
    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));
    for (i, job) in jobs.iter().enumerate() {
        let result = if i == 0 { "passed" } else { "failed" };
        qa.sim.set_done(*job, result);
        gate.job_done(*job, result);
    }
    gate.flushed();
    assert_eq!(gate.decisions_for(6201).len(), 1);
    let event = qa.sim.comment(jobs[1], "@review:acceptable_for:incident_6201:bsc#1 known").unwrap();
    assert_eq!(gate.submit(&event.name, &event.data), ig_status::IG_OK);
    gate.flushed();
    let decided = gate.decisions_for(6201);
    assert_eq!(decided.len(), 2, "the accepted job no longer blocks: a new decision {decided:?}");
    assert_eq!(decided[0]["result"], "failed");
    let verdict = gate.evaluate(6201).unwrap();
    let blocking: Vec<u64> =
        verdict["blocking"].as_array().unwrap().iter().filter_map(|b| b["id"].as_u64()).collect();
    assert_eq!(blocking, vec![jobs[2]]);
}

/// A loopback proxy to openQA that forwards every request at once but holds the answer to the
/// first comments request until released: an evaluation that read its data, then got slow.
struct HoldingProxy {
    url: String,
    held: std::sync::Arc<tokio::sync::Notify>,
    release: std::sync::Arc<tokio::sync::Semaphore>,
}

impl HoldingProxy {
    async fn start(upstream: std::net::SocketAddr) -> HoldingProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let held = std::sync::Arc::new(tokio::sync::Notify::new());
        let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (h, r) = (held.clone(), release.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let hold = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (hold_up, armed, h) = (hold.clone(), armed.clone(), h.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n @ 1..) = cr.read(&mut buf).await {
                        let comments = buf[..n].windows(9).any(|w| w == b"/comments");
                        if comments && armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                            hold_up.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let r = r.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n @ 1..) = sr.read(&mut buf).await {
                        if hold.swap(false, std::sync::atomic::Ordering::SeqCst) {
                            h.notify_one();
                            let _ = r.acquire().await;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        HoldingProxy { url, held, release }
    }
}

async fn a_slow_evaluation_of_older_data_does_not_replace_a_newer_decision(store: &common::TestStore) {
    use incident_gate::config::Config;
    use incident_gate::engine::Core;
    use std::sync::Arc;
    let qa = OpenQa::start().await;
    let jobs: Vec<u64> = (0..2).map(|i| qa.incident_job(6301, 300631, &format!("t{i}"))).collect();
    qa.sim.set_done(jobs[0], "passed");
    qa.sim.set_done(jobs[1], "failed");
    let state = tempfile::tempdir().unwrap();
    let config = |url: &str| {
        let cfg = Config {
            openqa_url: url.to_string(),
            state_dir: state.path().to_path_buf(),
            store_url: incident_gate::config::StoreUrl::new(store.url()),
            publish_amqp: false,
            report_obs: false,
            ..Config::default()
        };
        Arc::new(Core::new(Arc::new(cfg)).unwrap())
    };
    // two processes: `slow` reads openQA before the comment and answers after `fast` decided
    let proxy = HoldingProxy::start(qa.sim.addr()).await;
    let (slow, fast) = (config(&proxy.url), config(&qa.url()));
    let slow_run = tokio::spawn({
        let slow = slow.clone();
        async move { slow.decide(6301).await.map(|v| v.result) }
    });
    tokio::time::timeout(Duration::from_secs(10), proxy.held.notified()).await.expect("comments asked");
    qa.sim.comment(jobs[1], "@review:acceptable_for:incident_6301:bsc#1 known").unwrap();
    assert_eq!(fast.decide(6301).await.unwrap().result, incident_gate::verdict::Outcome::Passed);
    proxy.release.add_permits(1);
    let stale = slow_run.await.unwrap().unwrap();
    assert_eq!(stale, incident_gate::verdict::Outcome::Failed, "it did read the older data");
    let latest = fast.store().latest_decision(6301).unwrap().expect("decided");
    assert_eq!(latest.verdict.result, incident_gate::verdict::Outcome::Passed, "the newer decision stands");
    assert_eq!(fast.store().decision_count().unwrap(), 1);
    assert_eq!(slow.status()["stale_decisions"], 1);
}

async fn an_event_during_the_deciding_evaluation_leaves_no_incident_pending(store: &common::TestStore) {
    use incident_gate::config::Config;
    use incident_gate::engine::Core;
    use incident_gate::events::{Event, EventKind};
    use std::sync::Arc;
    let qa = OpenQa::start().await;
    let jobs: Vec<u64> = (0..2).map(|i| qa.incident_job(6401, 300641, &format!("t{i}"))).collect();
    // a failure, so that the evaluation asks for comments (where the proxy holds it)
    qa.sim.set_done(jobs[0], "passed");
    qa.sim.set_done(jobs[1], "failed");
    let state = tempfile::tempdir().unwrap();
    let proxy = HoldingProxy::start(qa.sim.addr()).await;
    let cfg = Config {
        openqa_url: proxy.url.clone(),
        state_dir: state.path().to_path_buf(),
        store_url: incident_gate::config::StoreUrl::new(store.url()),
        ..Config::default()
    };
    let core =
        Arc::new(Core::new(Arc::new(Config { publish_amqp: false, report_obs: false, ..cfg })).unwrap());
    let done = |job: u64| Event {
        kind: EventKind::JobDone,
        jobs: vec![job],
        deleted_comments: vec![],
        products: vec![],
    };
    core.take_events(vec![done(jobs[0])]).await.unwrap();
    // the evaluation has read both jobs finished; the second job's event is stored meanwhile
    tokio::time::timeout(Duration::from_secs(10), proxy.held.notified()).await.expect("comments asked");
    core.take_events(vec![done(jobs[1])]).await.unwrap();
    proxy.release.add_permits(1);
    for _ in 0..200 {
        if core.is_idle() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(core.is_idle());
    assert_eq!(core.store().decision_count().unwrap(), 1);
    assert_eq!(core.store().pending().unwrap(), vec![], "decided: nothing left for reconciliation");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_request_is_decided_without_waiting_for_the_older_requests_jobs() {
    let qa = OpenQa::start().await;
    let old: Vec<u64> = (0..2).map(|i| qa.incident_job(6401, 300641, &format!("t{i}"))).collect();
    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));
    qa.sim.set_done(old[0], "passed");
    gate.job_done(old[0], "passed");
    gate.flushed();
    assert_eq!(gate.evaluate(6401).unwrap()["result"], "pending", "old[1] still runs");
    // the release request is replaced; the old request's job keeps running (or hangs)
    let new: Vec<u64> = (0..2).map(|i| qa.incident_job(6401, 300642, &format!("t{i}"))).collect();
    for job in &new {
        qa.sim.set_done(*job, "passed");
        gate.job_done(*job, "passed");
    }
    gate.flushed();
    let decided = gate.decisions_for(6401);
    assert_eq!(decided.len(), 1, "decided at the new request's last job: {decided:?}");
    assert_eq!(
        (decided[0]["result"].as_str(), decided[0]["request"].as_u64()),
        (Some("passed"), Some(300642))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_aggregate_build_is_decided_without_waiting_for_the_older_builds_jobs() {
    let qa = OpenQa::start().await;
    let own = qa.incident_job(6501, 300651, "mau");
    let old: Vec<u64> = (0..2).map(|i| qa.aggregate_job("20261123-1", &[6501], &format!("r{i}"))).collect();
    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));
    for job in [own, old[0]] {
        qa.sim.set_done(job, "passed");
        gate.job_done(job, "passed");
    }
    gate.flushed();
    assert_eq!(gate.evaluate(6501).unwrap()["result"], "pending", "old[1] still runs");
    let new: Vec<u64> = (0..2).map(|i| qa.aggregate_job("20261124-1", &[6501], &format!("r{i}"))).collect();
    for job in &new {
        qa.sim.set_done(*job, "passed");
        gate.job_done(*job, "passed");
    }
    gate.flushed();
    let decided = gate.decisions_for(6501);
    assert_eq!(decided.len(), 1, "decided at the new build's last job: {decided:?}");
    assert_eq!(decided[0]["result"], "passed");
}

/// A scheduled product with `settings`, announced to the gate (`openqa_iso_create`) while openQA
/// is still scheduling it.
fn scheduling_product(qa: &OpenQa, gate: &CGate, settings: &[(&str, &str)]) -> u64 {
    let product = qa.sim.add_scheduled_product(settings);
    assert_eq!(
        gate.submit("openqa_iso_create", &serde_json::json!({"scheduled_product_id": product})),
        ig_status::IG_OK
    );
    qa.sim.set_product_status(product, "scheduling", &[]);
    product
}

/// Issue 12: an incident named by a scheduled product still being scheduled is not decided, even
/// when every job that exists has passed; once openQA finished scheduling it, it is decided once.
#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_product_still_scheduling_holds_its_incidents() {
    let qa = OpenQa::start().await;
    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));
    let product = scheduling_product(
        &qa,
        &gate,
        &[
            ("DISTRI", "sle"),
            ("VERSION", "15-SP6"),
            ("FLAVOR", "Server-DVD-Incidents"),
            ("ARCH", "x86_64"),
            ("INCIDENT_ID", "4101"),
            ("BUILD", ":4101:pkg"),
        ],
    );
    let first = qa.incident_job(4101, 304101, "t0");
    assert_eq!(gate.submit("openqa_job_create", &serde_json::json!({"id": first})), ig_status::IG_OK);
    qa.sim.set_done(first, "passed");
    gate.job_done(first, "passed");
    gate.flushed();
    assert!(gate.decisions_for(4101).is_empty(), "no decision while the product is scheduling");
    let v = gate.evaluate(4101).unwrap();
    assert_eq!((v["result"].as_str(), v["complete"].as_bool()), (Some("pending"), Some(false)), "{v}");
    assert_eq!(v["waiting"][0]["kind"], "scheduling", "{v}");
    assert!(
        v["waiting"][0]["what"].as_str().unwrap().contains(&format!("scheduled product {product}")),
        "{v}"
    );
    assert!(v["waiting"][0]["since"].is_string(), "{v}");

    // openQA creates the second job and finishes scheduling: decided once, over both jobs
    let second = qa.incident_job(4101, 304101, "t1");
    qa.sim.set_product_status(product, "scheduled", &[first, second]);
    qa.sim.set_done(second, "passed");
    gate.job_done(second, "passed");
    let decided = common::eventually(Duration::from_secs(10), || {
        let d = gate.decisions_for(4101);
        (!d.is_empty()).then_some(d)
    })
    .await
    .expect("decided once scheduling finished");
    gate.flushed();
    assert_eq!(gate.decisions_for(4101).len(), 1, "{decided:?}");
    assert_eq!(decided[0]["result"], "passed");
}

/// A pull request's scheduled product holds the pull request, not the IBS incident of its number.
#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_product_of_a_pull_request_holds_the_pull_request() {
    let qa = OpenQa::start().await;
    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&gate_config(&qa.url(), state.path()));
    scheduling_product(
        &qa,
        &gate,
        &[
            ("DISTRI", "sle"),
            ("VERSION", "16.0"),
            ("FLAVOR", "Online"),
            ("ARCH", "x86_64"),
            ("SUBMISSION_ID", "git:4102"),
            ("BUILD", ":git:4102:pkg"),
        ],
    );
    let job = qa.gitea_job("products/SLFO", 4102, "abc123", "t0");
    let ibs = qa.incident_job(4102, 304102, "t0");
    for j in [job, ibs] {
        qa.sim.set_done(j, "passed");
        gate.job_done(j, "passed");
    }
    gate.flushed();
    let pr = gate.evaluate_submission("git:4102").unwrap();
    assert_eq!((pr["result"].as_str(), pr["complete"].as_bool()), (Some("pending"), Some(false)), "{pr}");
    assert_eq!(pr["waiting"][0]["kind"], "scheduling", "{pr}");
    let incident = gate.evaluate(4102).unwrap();
    assert_eq!(incident["result"], "passed", "the IBS incident is not held: {incident}");
    assert_eq!(incident["complete"], true, "{incident}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_period_holds_an_approval_until_no_job_appears_and_reports_a_failure_at_once() {
    use incident_gate::config::Config;
    use incident_gate::engine::Core;
    use incident_gate::events::{Event, EventKind};
    use incident_gate::verdict::Outcome;
    use std::sync::Arc;
    let qa = OpenQa::start().await;
    let state = tempfile::tempdir().unwrap();
    let cfg = Config {
        openqa_url: qa.url(),
        state_dir: state.path().to_path_buf(),
        quiet_period_s: 2,
        publish_amqp: false,
        report_obs: false,
        ..Config::default()
    };
    let core = Core::start(Arc::new(cfg), tokio::sync::mpsc::channel(16).1).unwrap();
    let event = |kind, job: u64| Event { kind, jobs: vec![job], deleted_comments: vec![], products: vec![] };
    let passing: Vec<u64> = (0..2).map(|i| qa.incident_job(6501, 300651, &format!("t{i}"))).collect();
    let failing = qa.incident_job(6502, 300652, "t0");
    for job in passing.iter().chain([&failing]) {
        core.take_events(vec![event(EventKind::JobCreate, *job)]).await.unwrap();
    }
    for job in &passing {
        qa.sim.set_done(*job, "passed");
        core.take_events(vec![event(EventKind::JobDone, *job)]).await.unwrap();
    }
    qa.sim.set_done(failing, "failed");
    core.take_events(vec![event(EventKind::JobDone, failing)]).await.unwrap();
    let decided = |incident: u64| core.store().latest_decision(incident).unwrap().map(|d| d.verdict);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while decided(6502).is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failed = decided(6502).expect("a failure is reported without waiting for the quiet period");
    assert_eq!((failed.result, failed.complete), (Outcome::Failed, false), "{:?}", failed.waiting);
    assert!(decided(6501).is_none(), "no approval while jobs were created within the quiet period");
    let held = core.evaluate(6501).await.unwrap();
    assert_eq!(held.result, Outcome::Pending);
    assert!(held.waiting.iter().any(|w| w.kind == "quiet"), "{:?}", held.waiting);
    // a job created now starts the period again: the store's clock for the incident moves to its
    // creation, and the approval is recorded no earlier than a full period after it
    let first = core.store().last_job_at(6501).unwrap().expect("the first jobs started the period");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while incident_gate::store::now_ms() <= first && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let later = qa.incident_job(6501, 300651, "t2");
    core.take_events(vec![event(EventKind::JobCreate, later)]).await.unwrap();
    let restarted = core.store().last_job_at(6501).unwrap().unwrap();
    assert!(restarted > first, "the creation restarted the period ({first} -> {restarted})");
    qa.sim.set_done(later, "passed");
    core.take_events(vec![event(EventKind::JobDone, later)]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while decided(6501).is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let approval = core
        .store()
        .latest_decision(6501)
        .unwrap()
        .expect("decided once the period passed without a new job");
    let passed = approval.verdict.clone();
    let quiet_end = std::time::UNIX_EPOCH + Duration::from_millis(restarted as u64 + 2000);
    let recorded = humantime::parse_rfc3339(&approval.decided_at).unwrap();
    // decided_at has whole seconds: compare with the period's end rounded down as well
    let quiet_end_s = quiet_end.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let recorded_s = recorded.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(
        recorded_s >= quiet_end_s,
        "approved at {} before the period restarted by the new job ended ({})",
        approval.decided_at,
        humantime::format_rfc3339_seconds(quiet_end)
    );
    assert_eq!((passed.result, passed.complete, passed.jobs.total), (Outcome::Passed, true, 3));
    // the failure once more with complete: true once its quiet period is over (docs/events.md)
    let failed = decided(6502).unwrap();
    assert_eq!((failed.result, failed.complete), (Outcome::Failed, true));
    assert_eq!(core.store().decision_count().unwrap(), 3, "one approval, two failure messages");
}

/// openQA's DSN rarely names `sslmode`, and `store_url = openqa` is made from it: libpq's default
/// (prefer) must reach a server whose certificate is self-signed, as Debian's is, and encrypt
/// when the server offers TLS. (It failed every connection: "error performing TLS handshake".)
#[test]
fn a_store_url_without_sslmode_reaches_a_server_with_a_self_signed_certificate() {
    let db = testkit::postgres::TempDatabase::new("ig_tls_test");
    let url = db.url().replace("?sslmode=disable", "");
    let state = tempfile::tempdir().unwrap();
    let store = incident_gate::store::Store::open_url(&url, state.path());
    assert!(store.is_ok(), "{url}: {:?}", store.err().map(|e| e.to_string()));
    let name = url.rsplit('/').next().unwrap_or_default().to_string();
    let (offered, encrypted) = db.admin_query(&format!(
        "SELECT current_setting('ssl'), bool_and(s.ssl)::text FROM pg_stat_ssl s
         JOIN pg_stat_activity a USING (pid) WHERE a.datname = '{name}' AND a.application_name = 'incident-gate'"
    ));
    assert_eq!(
        encrypted,
        if offered == "on" { "true" } else { "false" },
        "the store's session (server ssl = {offered})"
    );
}
