//! Catch-up from openQA itself: jobs that ended without any event reaching the engine are found
//! by asking openQA, also when they were created long before they ended, at a bounded number of
//! requests per catch-up, and the watermark is in status.

mod common;

use common::{eventually, gate_config, CGate, OpenQa};
use incident_gate::config::Config;
use incident_gate::engine::Core;
use incident_gate::verdict::Outcome;
use std::sync::Arc;
use std::time::Duration;

fn core(qa: &OpenQa, state: &std::path::Path, max_requests: u32) -> Arc<Core> {
    let cfg = Config {
        openqa_url: qa.url(),
        state_dir: state.to_path_buf(),
        publish_amqp: false,
        report_obs: false,
        catchup_max_requests: max_requests,
        ..Config::default()
    };
    Arc::new(Core::new(Arc::new(cfg)).unwrap())
}

async fn decided(core: &Core, incident: u64) -> Option<Outcome> {
    let store = core.store().clone();
    eventually(Duration::from_secs(20), move || {
        store.latest_decision(incident).ok().flatten().map(|d| d.verdict.result)
    })
    .await
}

/// A job of no incident (a product test).
fn plain_job(qa: &OpenQa, test: &str) -> u64 {
    let settings = [
        ("DISTRI", "sle"),
        ("VERSION", "15-SP6"),
        ("FLAVOR", "Online"),
        ("ARCH", "x86_64"),
        ("BUILD", "98.1"),
        ("MACHINE", "64bit"),
        ("TEST", test),
    ];
    qa.sim.create_job(&settings, qa.updates_group)
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_that_ended_while_nobody_listened_are_decided_after_a_restart_exactly_once() {
    let qa = OpenQa::start().await;
    let early: Vec<u64> = (0..3).map(|i| qa.incident_job(7001, 300701, &format!("t{i}"))).collect();
    let state = tempfile::tempdir().unwrap();
    let mut cfg = gate_config(&qa.url(), state.path());
    // the first process catches up once, at its start: it must not be in the middle of one when it stops
    cfg["reconcile_interval_s"] = 3600.into();
    let caught_up = |gate: &CGate, runs: u64| {
        let status = gate.status();
        (status["engine"]["catchup"]["runs_here"].as_u64() >= Some(runs)).then_some(status)
    };
    {
        let gate = CGate::new(&cfg);
        gate.flushed(); // starts the engine, which catches up at once
        let status = eventually(Duration::from_secs(20), || caught_up(&gate, 1)).await.expect("caught up");
        assert_eq!(status["engine"]["catchup"]["waiting_jobs"], 3, "{status}");
    }
    // the web UI is down: its jobs end, another incident is tested whole; no event reaches anyone
    for job in &early {
        qa.sim.set_done(*job, "passed");
    }
    let (_, later) = qa.finished_incident(7002, 4, "failed").await;
    qa.sim.take_events();

    cfg["reconcile_interval_s"] = 1.into();
    let gate = CGate::new(&cfg);
    gate.flushed();
    let both = eventually(Duration::from_secs(30), || {
        (!gate.decisions_for(7001).is_empty() && !gate.decisions_for(7002).is_empty()).then_some(())
    })
    .await;
    assert!(both.is_some(), "not decided: {}", gate.status());
    // more catch-ups find nothing new
    let runs = gate.status()["engine"]["catchup"]["runs_here"].as_u64().unwrap_or(0);
    let status = eventually(Duration::from_secs(20), || caught_up(&gate, runs + 3)).await.expect("caught up");
    gate.flushed();
    assert_eq!(gate.decisions_for(7001).len(), 1, "{:?}", gate.decisions());
    assert_eq!(gate.decisions_for(7002).len(), 1, "{:?}", gate.decisions());
    let outcome =
        |i: u64| gate.decisions().into_iter().find(|d| d["incident"] == i).map(|d| d["result"].clone());
    assert_eq!(outcome(7001), Some("passed".into()));
    assert_eq!(outcome(7002), Some("failed".into()));
    let catchup = &status["engine"]["catchup"];
    assert_eq!(catchup["waiting_jobs"], 0, "{catchup}");
    let newest = *later.iter().max().unwrap();
    assert_eq!(catchup["after_id"], newest, "{catchup}");
    assert_eq!(catchup["watermark"], newest, "{catchup}");
    assert!(catchup["last_requests"].as_u64().is_some_and(|n| (1..=20).contains(&n)), "{catchup}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_created_first_and_ending_last_is_not_skipped() {
    let qa = OpenQa::start().await;
    let first = qa.incident_job(7101, 300711, "slow");
    let state = tempfile::tempdir().unwrap();
    let core = core(&qa, state.path(), 20);
    core.catch_up(Duration::ZERO).await.unwrap().expect("ran");
    let status = core.status()["catchup"].clone();
    assert_eq!(status["waiting_jobs"], 1, "{status}");
    assert_eq!(status["watermark"], first - 1, "{status}");

    // many jobs created after it end before it
    let (_, others) = qa.finished_incident(7102, 20, "passed").await;
    let newest = *others.iter().max().unwrap();
    core.catch_up(Duration::ZERO).await.unwrap().expect("ran");
    assert_eq!(decided(&core, 7102).await, Some(Outcome::Passed));
    core.catch_up(Duration::ZERO).await.unwrap().expect("ran");
    let status = core.status()["catchup"].clone();
    assert_eq!(status["after_id"], newest, "looked at past the running job: {status}");
    assert_eq!(status["watermark"], first - 1, "the running job holds the watermark: {status}");
    assert!(core.store().latest_decision(7101).unwrap().is_none());

    qa.sim.set_done(first, "passed");
    let report = core.catch_up(Duration::ZERO).await.unwrap().expect("ran");
    assert_eq!(report.ended_jobs, 1, "{report:?}");
    assert_eq!(decided(&core, 7101).await, Some(Outcome::Passed));
    let status = core.status()["catchup"].clone();
    assert_eq!((status["watermark"].clone(), status["waiting_jobs"].clone()), (newest.into(), 0.into()));
    // nothing twice: the ended jobs are remembered as taken
    let report = core.catch_up(Duration::ZERO).await.unwrap().expect("ran");
    assert_eq!(report.ended_jobs, 0, "{report:?}");
    assert_eq!(core.store().decision_count().unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_per_catch_up_stay_within_the_cap_while_the_watermark_advances() {
    let qa = OpenQa::start().await;
    for i in 0..10 {
        let job = plain_job(&qa, &format!("before-{i}"));
        qa.sim.set_done(job, "passed");
    }
    let state = tempfile::tempdir().unwrap();
    let core = core(&qa, state.path(), 4);
    core.catch_up(Duration::ZERO).await.unwrap().expect("ran");
    // an outage's worth of ended jobs (none tests an incident: every request counted is the
    // catch-up's own)
    let mut newest = 0;
    for i in 0..3000 {
        newest = plain_job(&qa, &format!("during-{i}"));
        qa.sim.set_done(newest, if i % 7 == 0 { "failed" } else { "passed" });
    }
    let mut after = Vec::new();
    for _ in 0..12 {
        let before = qa.sim.requests();
        let report = core.catch_up(Duration::ZERO).await.unwrap().expect("ran");
        let sent = qa.sim.requests() - before;
        assert!(sent <= 4, "{sent} requests: {report:?}");
        assert_eq!(sent, report.requests, "{report:?}");
        let at = core.status()["catchup"]["after_id"].as_u64().expect("after_id");
        after.push((at, sent));
        if at == newest {
            break;
        }
    }
    eprintln!("after_id and requests per catch-up: {after:?}");
    assert_eq!(after.last().map(|a| a.0), Some(newest), "{after:?}");
    assert!(after.windows(2).all(|w| w[0].0 <= w[1].0), "{after:?}");
    assert!(after.len() <= 6, "3000 jobs at 4 requests of 500: {after:?}");
    assert!(after.len() >= 3, "the cap was not kept: {after:?}");
    let status = core.status()["catchup"].clone();
    assert_eq!(status["watermark"], newest, "{status}");
    assert_eq!(status["last_requests"], after.last().map(|a| a.1).unwrap_or_default(), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shorter_pages_than_asked_and_catch_up_switched_off() {
    let qa = OpenQa::start().await;
    qa.sim.set_generic_max_limit(120);
    let state = tempfile::tempdir().unwrap();
    let core = core(&qa, state.path(), 10);
    core.catch_up(Duration::ZERO).await.unwrap().expect("ran");
    let (_, jobs) = qa.finished_incident(7301, 3, "passed").await;
    for i in 0..900 {
        let job = plain_job(&qa, &format!("p{i}"));
        qa.sim.set_done(job, "passed");
    }
    let (_, more) = qa.finished_incident(7302, 2, "passed").await;
    let newest = *more.iter().max().unwrap();
    let mut runs = 0;
    while core.status()["catchup"]["after_id"].as_u64() != Some(newest) {
        let report = core.catch_up(Duration::ZERO).await.unwrap().expect("ran");
        assert!(report.requests <= 10 && report.error.is_none(), "{report:?}");
        runs += 1;
        assert!(runs < 10, "{:?}", core.status()["catchup"]);
    }
    assert_eq!(decided(&core, 7301).await, Some(Outcome::Passed), "jobs {jobs:?}");
    assert_eq!(decided(&core, 7302).await, Some(Outcome::Passed));

    let off_state = tempfile::tempdir().unwrap();
    let off = self::core(&qa, off_state.path(), 0);
    let before = qa.sim.requests();
    assert!(off.catch_up(Duration::ZERO).await.unwrap().is_none());
    assert_eq!(qa.sim.requests(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_whose_events_were_heard_are_not_evaluated_again() {
    use incident_gate::events::{Event, EventKind};
    let qa = OpenQa::start().await;
    let state = tempfile::tempdir().unwrap();
    let core = core(&qa, state.path(), 20);
    core.catch_up(Duration::ZERO).await.unwrap().expect("ran");
    let (_, jobs) = qa.finished_incident(7401, 5, "passed").await;
    let done =
        Event { kind: EventKind::JobDone, jobs: jobs.clone(), deleted_comments: vec![], products: vec![] };
    core.take_events(vec![done]).await.unwrap();
    assert_eq!(decided(&core, 7401).await, Some(Outcome::Passed));
    let evaluations = core.status()["evaluations"].clone();

    let report = core.catch_up(Duration::ZERO).await.unwrap().expect("ran");
    assert_eq!((report.ended_jobs, report.unheard_jobs), (5, 0), "{report:?}");
    // an evaluation the catch-up scheduled counts as busy from before catch_up returned: once the
    // engine is idle, any such evaluation has run
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !core.is_idle() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(core.is_idle(), "{}", core.status());
    assert_eq!(core.status()["evaluations"], evaluations, "evaluated again");
    assert_eq!(core.store().decision_count().unwrap(), 1);
}
