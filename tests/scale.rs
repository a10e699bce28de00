//! Scale: 200 incidents x 30 jobs plus 5 aggregate builds x 300 jobs, all finishing in shuffled
//! order with an event each. Every incident is decided exactly once, and the openQA requests per
//! decision stay within a bound.

mod common;

use common::{gate_config, OpenQa};
use incident_gate::gate::Gate;
use std::collections::HashMap;
use std::time::Duration;

const INCIDENTS: u64 = 200;
const JOBS_PER_INCIDENT: usize = 30;
const AGGREGATES: u64 = 5;
const JOBS_PER_AGGREGATE: usize = 300;
/// openQA requests per decision, everything included (job lookups for events, evaluations,
/// comments, the prefork look-ups of `check_waiting`). Measured 6.7; before per-incident waiting
/// sets and 500-id chunks it was 30.
const MAX_REQUESTS_PER_DECISION: f64 = 15.0;

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_day_decides_every_incident_once_with_few_requests() {
    let qa = OpenQa::start().await;
    let mut jobs = Vec::new();
    for i in 0..INCIDENTS {
        let incident = 10_000 + i;
        for t in 0..JOBS_PER_INCIDENT {
            jobs.push(qa.incident_job(incident, 400_000 + i, &format!("t{t}")));
        }
    }
    let per_build = (INCIDENTS / AGGREGATES) as usize;
    for b in 0..AGGREGATES {
        let listed: Vec<u64> = (0..per_build as u64).map(|k| 10_000 + b * per_build as u64 + k).collect();
        for t in 0..JOBS_PER_AGGREGATE {
            jobs.push(qa.aggregate_job(&format!("20261124-{}", b + 1), &listed, &format!("agg{b}-t{t}")));
        }
    }
    incident_gate_sim::shuffle(&mut jobs, 42);

    let state = tempfile::tempdir().unwrap();
    let cfg = incident_gate::config::Config::from_value(gate_config(&qa.url(), state.path())).unwrap();
    let gate = Gate::new(cfg);
    let before = qa.sim.requests();
    let gate = std::sync::Arc::new(gate);
    let g = gate.clone();
    let sim = std::sync::Arc::new(qa);
    let s = sim.clone();
    tokio::task::spawn_blocking(move || {
        for job in &jobs {
            s.sim.set_done(*job, "passed");
            let data = format!(r#"{{"id":{job},"newbuild":null,"reason":null,"result":"passed"}}"#);
            g.submit("openqa_job_done", &data).expect("queued");
        }
        assert!(g.flush(Duration::from_secs(300)).unwrap(), "drained");
    })
    .await
    .unwrap();

    let status = gate.status();
    let store = incident_gate::store::Store::open(state.path()).unwrap();
    let decisions = store.recent_decisions(10_000).unwrap();
    let mut per_incident: HashMap<u64, usize> = HashMap::new();
    for d in &decisions {
        assert_eq!(d.result, "passed", "{d:?}");
        *per_incident.entry(d.incident).or_default() += 1;
    }
    assert_eq!(per_incident.len() as u64, INCIDENTS, "every incident decided");
    assert!(per_incident.values().all(|&n| n == 1), "each once: {per_incident:?}");
    let requests = (sim.sim.requests() - before) as f64;
    let per_decision = requests / INCIDENTS as f64;
    eprintln!(
        "scale: {} events, {requests} openQA requests, {per_decision:.1} per decision, {} evaluations, {} skipped",
        INCIDENTS as usize * JOBS_PER_INCIDENT + AGGREGATES as usize * JOBS_PER_AGGREGATE,
        status["engine"]["evaluations"],
        status["engine"]["evaluations_skipped"]
    );
    assert!(per_decision <= MAX_REQUESTS_PER_DECISION, "{per_decision:.1} requests per decision");
}
