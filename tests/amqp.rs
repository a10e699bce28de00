//! AMQP against the real RabbitMQ (127.0.0.1:5672 guest/guest, `AMQP_URL` overrides): the
//! `incident.done` message as a consumer sees it, delivery through a connection the test cuts,
//! delivery by a new process after the old one stopped, a broker refusing a publish, and the
//! standalone listener consuming openQA's own `job.done` messages.
//!
//! Every test declares what it needs under names unique to the test and the process, binds
//! exclusive auto-delete queues, and deletes the exchanges and queues it made; every wait is bounded.

mod common;

use common::{amqp_url, gate_config, CGate, OpenQa};
use futures_util::StreamExt;
use incident_gate::config::Config;
use incident_gate::engine::Core;
use lapin::message::Delivery;
use lapin::Consumer;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testkit::broker::Broker;
use testkit::proxy::Proxy;
use testkit::{unique, Leftovers};

const WAIT: Duration = Duration::from_secs(10);

/// The next message, or None after `timeout`.
async fn next_message(consumer: &mut Consumer, timeout: Duration) -> Option<Delivery> {
    match tokio::time::timeout(timeout, consumer.next()).await {
        Ok(Some(delivery)) => Some(delivery.expect("the test's consumer failed")),
        Ok(None) => panic!("the broker cancelled the test's consumer"),
        Err(_) => None,
    }
}

/// Collects messages until each of `ids` came at least once (and a short while after, to see
/// duplicates); fails after `timeout`. Every message is checked with `incident_done`.
async fn collect(
    consumer: &mut Consumer,
    prefix: &str,
    ids: &HashSet<String>,
    timeout: Duration,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut bodies = Vec::new();
    let mut seen = HashSet::new();
    while !ids.is_subset(&seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(d) = next_message(consumer, left).await else {
            panic!("after {timeout:?} only {seen:?} of {ids:?} arrived");
        };
        let body = incident_done(&d, prefix);
        seen.insert(body["event_id"].as_str().unwrap().to_string());
        bodies.push(body);
    }
    while let Some(d) = next_message(consumer, Duration::from_millis(500)).await {
        bodies.push(incident_done(&d, prefix));
    }
    bodies
}

fn schema() -> &'static jsonschema::Validator {
    static SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/incident-done.schema.json"))
                .unwrap();
        jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
    })
}

/// Checks one `incident.done` message as docs/events.md describes it; returns its body.
fn incident_done(d: &Delivery, prefix: &str) -> Value {
    let text = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.as_str().to_string());
    let p = &d.properties;
    assert_eq!(d.routing_key.as_str(), format!("{prefix}.openqa.incident.done"));
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    assert_eq!(text(p.content_type()).as_deref(), Some("application/json"));
    assert_eq!(text(p.app_id()).as_deref(), Some("incident-gate"));
    assert_eq!(text(p.kind()).as_deref(), Some("incident.done"));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let timestamp = p.timestamp().expect("a timestamp");
    assert!(timestamp.abs_diff(now) < 120, "timestamp {timestamp} is publish time (now {now})");
    let body: Value = serde_json::from_slice(&d.data).expect("the body is JSON");
    let errors: Vec<String> =
        schema().iter_errors(&body).map(|e| format!("{e} at {}", e.instance_path)).collect();
    assert!(errors.is_empty(), "the body does not match docs/incident-done.schema.json: {errors:?}\n{body}");
    assert_eq!(text(p.message_id()).as_deref(), body["event_id"].as_str(), "message_id is the event_id");
    body
}

// ---------------------------------------------------------------------------------------------
// Gates

fn publishing_config(qa: &OpenQa, state: &std::path::Path, url: &str, exchange: &str, prefix: &str) -> Value {
    let mut cfg = gate_config(&qa.url(), state);
    cfg["publish_amqp"] = true.into();
    cfg["amqp_url"] = url.into();
    cfg["amqp_exchange"] = exchange.into();
    cfg["amqp_topic_prefix"] = prefix.into();
    cfg["amqp_declare_exchange"] = true.into();
    cfg
}

/// Finishes the jobs of an incident and tells the gate about the last one; returns the job ids.
fn decide(qa: &OpenQa, gate: &CGate, incident: u64, results: &[&str]) -> Vec<u64> {
    let jobs: Vec<u64> = (0..results.len())
        .map(|i| qa.incident_job(incident, 300000 + incident, &format!("mau-{i}")))
        .collect();
    for (job, result) in jobs.iter().zip(results) {
        qa.sim.set_done(*job, result);
    }
    gate.job_done(*jobs.last().unwrap(), results.last().unwrap());
    jobs
}

/// Decision key → the AMQP delivery row of that decision, as the gate's status shows them.
fn amqp_deliveries(gate: &CGate) -> HashMap<String, Value> {
    gate.decisions()
        .into_iter()
        .map(|d| {
            let row = d["deliveries"]
                .as_array()
                .and_then(|rows| rows.iter().find(|r| r["sink"] == "amqp").cloned())
                .unwrap_or(Value::Null);
            (d["key"].as_str().unwrap().to_string(), row)
        })
        .collect()
}

fn amqp_backlog(gate: &CGate) -> u64 {
    gate.status()["engine"]["outbox_backlog"]["amqp"].as_u64().unwrap()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    common::eventually(WAIT, || f().then_some(())).await.unwrap_or_else(|| panic!("never happened: {what}"));
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_decision_is_one_persistent_confirmed_message_that_matches_the_schema() {
    let (exchange, prefix) = (unique("done"), unique("done-prefix"));
    let _leftovers = Leftovers::new(&[&exchange], &[]);
    let broker = Broker::connect().await;
    broker.declare_exchange(&exchange).await;
    let mut consumer = broker.subscribe_done(&exchange).await;
    let qa = OpenQa::start().await;
    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&publishing_config(&qa, state.path(), &amqp_url(), &exchange, &prefix));

    let jobs = decide(&qa, &gate, 1101, &["passed", "failed", "softfailed"]);
    gate.flushed();
    let d = next_message(&mut consumer, WAIT).await.expect("the decision is published");
    let body = incident_done(&d, &prefix);
    assert_eq!(body["incident"], 1101);
    assert_eq!(body["request"], 301101);
    assert_eq!(body["rrid"], "SUSE:Maintenance:1101:301101");
    assert_eq!(body["result"], "failed");
    assert_eq!(body["openqa"], qa.url().trim_end_matches('/'));
    assert_eq!(body["jobs"], json!({"total": 3, "passed": 1, "softfailed": 1, "failed": 1, "accepted": 0}));
    assert_eq!(body["blocking"].as_array().unwrap().len(), 1);
    assert_eq!(body["blocking"][0]["id"], jobs[1]);
    assert_eq!(body["blocking"][0]["result"], "failed");
    let decisions = gate.decisions();
    assert_eq!(decisions.len(), 1);
    assert_eq!(body["event_id"], decisions[0]["key"], "the event carries the decision's stable id");

    // confirmed: out of the outbox, and no second message for the same decision
    wait_until("the delivery is recorded as done", || amqp_backlog(&gate) == 0).await;
    let row = &amqp_deliveries(&gate)[decisions[0]["key"].as_str().unwrap()];
    assert_eq!(row["state"], "done", "{row}");
    assert!(
        next_message(&mut consumer, Duration::from_millis(800)).await.is_none(),
        "one message per decision"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn decisions_taken_while_the_connection_is_cut_arrive_after_it_is_restored() {
    let (exchange, prefix) = (unique("cut"), unique("cut-prefix"));
    let _leftovers = Leftovers::new(&[&exchange], &[]);
    let broker = Broker::connect().await;
    broker.declare_exchange(&exchange).await;
    let mut consumer = broker.subscribe_done(&exchange).await;
    let proxy = Proxy::to_broker().await;
    let qa = OpenQa::start().await;
    let state = tempfile::tempdir().unwrap();
    let gate = CGate::new(&publishing_config(&qa, state.path(), &proxy.url(), &exchange, &prefix));

    // a first decision opens the gate's connection through the proxy
    decide(&qa, &gate, 1201, &["passed"]);
    gate.flushed();
    let first = incident_done(&next_message(&mut consumer, WAIT).await.expect("published"), &prefix);
    assert_eq!(first["incident"], 1201);
    // the broker's confirm recorded too: a cut before it would leave this delivery to be retried
    wait_until("the first delivery is recorded as done", || amqp_backlog(&gate) == 0).await;
    let connections = proxy.forwarded();

    proxy.cut();
    for incident in [1202, 1203, 1204] {
        decide(&qa, &gate, incident, &["passed", "passed"]);
    }
    gate.flushed();
    let waiting: HashSet<String> = gate
        .decisions()
        .iter()
        .filter(|d| d["incident"] != 1201)
        .map(|d| d["key"].as_str().unwrap().into())
        .collect();
    assert_eq!(waiting.len(), 3);
    wait_until("every new decision had a failed attempt", || {
        let rows = amqp_deliveries(&gate);
        waiting.iter().all(|k| rows[k]["state"] == "queued" && rows[k]["attempts"].as_u64() >= Some(1))
    })
    .await;
    assert_eq!(amqp_backlog(&gate), 3, "kept in the outbox while the broker is unreachable");
    // retries back off (0.5 s, 1 s, 2 s …): a failed attempt n schedules the next one at least
    // backoff_ms(n - 1) after the time it had been scheduled for, as the outbox records it
    let db = rusqlite::Connection::open_with_flags(
        state.path().join("incident-gate.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut scheduled: HashMap<String, std::collections::BTreeMap<u32, i64>> = HashMap::new();
    wait_until("two failed attempts in a row seen for every new decision", || {
        let mut rows = db.prepare("SELECT key, attempts, next_at FROM outbox WHERE sink = 'amqp'").unwrap();
        let rows = rows.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))).unwrap();
        for (key, attempts, next_at) in rows.map(Result::unwrap) {
            scheduled.entry(key).or_default().entry(attempts).or_insert(next_at);
        }
        waiting
            .iter()
            .all(|k| scheduled.get(k).is_some_and(|s| s.keys().any(|n| *n >= 1 && s.contains_key(&(n + 1)))))
    })
    .await;
    for key in &waiting {
        let s = &scheduled[key];
        for (n, at) in s.iter().filter(|(n, _)| **n >= 1) {
            if let Some(next) = s.get(&(n + 1)) {
                let gap = next - at;
                let least = incident_gate::store::backoff_ms(*n);
                assert!(gap >= least, "attempt {} came {gap} ms after {n}'s time, not {least}: {s:?}", n + 1);
            }
        }
    }
    assert!(next_message(&mut consumer, Duration::from_millis(200)).await.is_none());

    proxy.restore();
    let bodies = collect(&mut consumer, &prefix, &waiting, Duration::from_secs(15)).await;
    let mut by_id: HashMap<&str, &Value> = HashMap::new();
    for body in &bodies {
        let id = body["event_id"].as_str().unwrap();
        assert!(waiting.contains(id), "only the decisions taken during the cut come now: {body}");
        if let Some(earlier) = by_id.insert(id, body) {
            assert_eq!(earlier, body, "a duplicate is the same message");
        }
    }
    let incidents: HashSet<u64> = bodies.iter().map(|b| b["incident"].as_u64().unwrap()).collect();
    assert_eq!(incidents, HashSet::from([1202, 1203, 1204]));
    assert!(proxy.forwarded() > connections, "the gate reconnected");
    wait_until("the outbox is empty", || amqp_backlog(&gate) == 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_process_on_the_same_state_directory_delivers_what_the_stopped_one_could_not() {
    let (exchange, prefix) = (unique("restart"), unique("restart-prefix"));
    let _leftovers = Leftovers::new(&[&exchange], &[]);
    let broker = Broker::connect().await;
    broker.declare_exchange(&exchange).await;
    let mut consumer = broker.subscribe_done(&exchange).await;
    let proxy = Proxy::to_broker().await;
    // A broker that hangs: process A's first delivery is in flight (leased) when it stops.
    proxy.stall();
    let qa = OpenQa::start().await;
    let state = tempfile::tempdir().unwrap();
    let a = CGate::new(&publishing_config(&qa, state.path(), &proxy.url(), &exchange, &prefix));
    for incident in [1301, 1302, 1303] {
        decide(&qa, &a, incident, &["passed", "failed"]);
    }
    a.flushed();
    let keys: HashSet<String> = a.decisions().iter().map(|d| d["key"].as_str().unwrap().into()).collect();
    assert_eq!(keys.len(), 3);
    wait_until("process A is stuck connecting", || proxy.stalled() >= 1).await;
    assert_eq!(amqp_backlog(&a), 3);

    // process A stops (its runtime shuts down as at exit, outside any runtime)
    std::thread::spawn(move || drop(a)).join().unwrap();
    assert!(
        next_message(&mut consumer, Duration::from_millis(200)).await.is_none(),
        "nothing reached the broker"
    );

    // process B: same state directory, a working broker; far quicker than the 60 s lease
    let b = CGate::new(&publishing_config(&qa, state.path(), &amqp_url(), &exchange, &prefix));
    b.flush(Duration::from_millis(10)); // any call starts the engine (and its outbox dispatchers)
    let bodies = collect(&mut consumer, &prefix, &keys, WAIT).await;
    assert_eq!(bodies.len(), 3, "each exactly once: A never reached the broker");
    let incidents: HashSet<u64> = bodies.iter().map(|b| b["incident"].as_u64().unwrap()).collect();
    assert_eq!(incidents, HashSet::from([1301, 1302, 1303]));
    assert!(bodies.iter().all(|b| b["result"] == "failed"));
    wait_until("B's outbox is empty", || amqp_backlog(&b) == 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_the_broker_refuses_stays_queued_until_it_is_accepted() {
    // the exchange does not exist and the gate must not declare it (openQA's own setup)
    let (exchange, prefix) = (unique("refused"), unique("refused-prefix"));
    let _leftovers = Leftovers::new(&[&exchange], &[]);
    let broker = Broker::connect().await;
    let qa = OpenQa::start().await;
    let state = tempfile::tempdir().unwrap();
    let mut cfg = publishing_config(&qa, state.path(), &amqp_url(), &exchange, &prefix);
    cfg["amqp_declare_exchange"] = false.into();
    let gate = CGate::new(&cfg);
    decide(&qa, &gate, 1401, &["passed"]);
    gate.flushed();
    let key = gate.decisions()[0]["key"].as_str().unwrap().to_string();
    wait_until("a refused attempt is recorded", || {
        let row = &amqp_deliveries(&gate)[&key];
        row["state"] == "queued" && row["attempts"].as_u64() >= Some(1)
    })
    .await;
    let outcome = amqp_deliveries(&gate)[&key]["outcome"].as_str().unwrap().to_string();
    assert!(outcome.contains("NOT_FOUND") || outcome.contains("no exchange"), "{outcome}");

    broker.declare_exchange(&exchange).await;
    let mut consumer = broker.subscribe_done(&exchange).await;
    let bodies = collect(&mut consumer, &prefix, &HashSet::from([key]), Duration::from_secs(15)).await;
    assert_eq!(bodies[0]["incident"], 1401);
    wait_until("the outbox is empty", || amqp_backlog(&gate) == 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_amqp_false_never_talks_to_the_broker() {
    let proxy = Proxy::to_broker().await;
    let qa = OpenQa::start().await;
    let state = tempfile::tempdir().unwrap();
    let mut cfg = publishing_config(&qa, state.path(), &proxy.url(), &unique("off"), "off");
    cfg["publish_amqp"] = false.into();
    let gate = CGate::new(&cfg);
    decide(&qa, &gate, 1501, &["passed"]);
    gate.flushed();
    let decisions = gate.decisions();
    assert_eq!(decisions.len(), 1, "decided");
    assert_eq!(decisions[0]["deliveries"], json!([]), "nothing queued for any sink");
    assert_eq!(amqp_backlog(&gate), 0);
    // ig_gate_free returns after the gate's engine and outbox stopped: whatever they were to
    // connect to has been connected to by then
    drop(gate);
    assert_eq!(proxy.accepted(), 0, "no connection to the broker");
}

// ---------------------------------------------------------------------------------------------
// The standalone listener: openQA's own messages in, decisions out.

struct Listener {
    core: Arc<Core>,
    task: tokio::task::JoinHandle<()>,
    queue: String,
}

async fn start_listener(
    qa: &OpenQa,
    state: &std::path::Path,
    url: &str,
    exchange: &str,
    prefix: &str,
) -> Listener {
    let queue = format!("{exchange}-listen");
    let cfg = Config::from_value(json!({
        "openqa_url": qa.url(),
        "state_dir": state,
        "report_obs": false,
        "http_timeout_s": 5,
        "publish_amqp": true,
        "amqp_url": url,
        "amqp_exchange": exchange,
        "amqp_declare_exchange": true,
        "amqp_topic_prefix": prefix,
        "amqp_queue": queue,
        "amqp_queue_durable": false,
    }))
    .unwrap();
    let core = Arc::new(Core::new(Arc::new(cfg)).unwrap());
    core.spawn_background();
    let task = tokio::spawn(incident_gate::amqp::listen::run(core.clone()));
    Listener { core, task, queue }
}

impl Listener {
    /// Stops the listener; returns how many messages were left in its queue (then deleted).
    async fn stop(self, broker: &Broker) -> u32 {
        self.core.shutdown();
        tokio::time::timeout(WAIT, self.task).await.expect("the listener stops on shutdown").unwrap();
        broker.delete_queue(&self.queue).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn openqa_job_messages_drive_a_decision_and_garbage_is_rejected_for_good() {
    let (exchange, prefix) = (unique("listen"), unique("listen-prefix"));
    let _leftovers = Leftovers::new(&[&exchange], &[&format!("{exchange}-listen")]);
    let broker = Broker::connect().await;
    broker.declare_exchange(&exchange).await;
    let mut done = broker.subscribe_done(&exchange).await;
    let qa = OpenQa::start().await;
    let jobs: Vec<u64> = (0..2).map(|i| qa.incident_job(1601, 301601, &format!("t{i}"))).collect();
    let state = tempfile::tempdir().unwrap();
    let listener = start_listener(&qa, state.path(), &amqp_url(), &exchange, &prefix).await;
    broker.wait_for_consumers(&listener.queue, |n| n == 1).await;

    let event = qa.sim.set_done(jobs[0], "passed").unwrap();
    broker.publish(&exchange, &event.routing_key(&prefix), event.amqp_body.to_string().as_bytes()).await;
    let job_done = format!("{prefix}.openqa.job.done");
    broker.publish(&exchange, &job_done, b"this is not JSON").await;
    broker.publish(&exchange, &job_done, br#"{"id":"abc","result":"passed"}"#).await;
    let event = qa.sim.set_done(jobs[1], "failed").unwrap();
    assert_eq!(event.routing_key(&prefix), job_done);
    broker.publish(&exchange, &event.routing_key(&prefix), event.amqp_body.to_string().as_bytes()).await;

    let d =
        next_message(&mut done, WAIT).await.expect("the good messages after the garbage decide the incident");
    let body = incident_done(&d, &prefix);
    assert_eq!(body["incident"], 1601);
    assert_eq!(body["result"], "failed");
    assert_eq!(body["blocking"][0]["id"], jobs[1]);
    let decision = listener.core.store().latest_decision(1601).unwrap().expect("recorded");
    assert_eq!(body["event_id"], decision.key);

    // every message was settled: acked, or rejected without requeue (a requeued one would be back
    // in the queue once the listener's channel is gone)
    assert_eq!(listener.stop(&broker).await, 0, "nothing left in or returned to the queue");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_listener_reconnects_and_takes_what_was_queued_meanwhile() {
    let (exchange, prefix) = (unique("relisten"), unique("relisten-prefix"));
    let _leftovers = Leftovers::new(&[&exchange], &[&format!("{exchange}-listen")]);
    let broker = Broker::connect().await;
    broker.declare_exchange(&exchange).await;
    let mut done = broker.subscribe_done(&exchange).await;
    let proxy = Proxy::to_broker().await;
    let qa = OpenQa::start().await;
    let jobs: Vec<u64> = (0..2).map(|i| qa.incident_job(1701, 301701, &format!("t{i}"))).collect();
    let state = tempfile::tempdir().unwrap();
    let listener = start_listener(&qa, state.path(), &proxy.url(), &exchange, &prefix).await;
    broker.wait_for_consumers(&listener.queue, |n| n == 1).await;

    proxy.cut();
    broker.wait_for_consumers(&listener.queue, |n| n == 0).await;
    let connections = proxy.forwarded();
    for (job, result) in jobs.iter().zip(["passed", "passed"]) {
        let event = qa.sim.set_done(*job, result).unwrap();
        broker.publish(&exchange, &event.routing_key(&prefix), event.amqp_body.to_string().as_bytes()).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await; // a reconnect attempt or two is refused
    proxy.restore();

    let d = next_message(&mut done, Duration::from_secs(15)).await.expect("decided after reconnecting");
    let body = incident_done(&d, &prefix);
    assert_eq!(body["incident"], 1701);
    assert_eq!(body["result"], "passed");
    assert!(proxy.forwarded() > connections, "the listener reconnected");
    assert_eq!(listener.stop(&broker).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_the_engine_could_not_take_before_shutdown_stays_on_the_broker() {
    let (exchange, prefix) = (unique("untaken"), unique("untaken-prefix"));
    let _leftovers = Leftovers::new(&[&exchange], &[&format!("{exchange}-listen")]);
    let broker = Broker::connect().await;
    broker.declare_exchange(&exchange).await;
    let qa = OpenQa::start().await;
    let job = qa.incident_job(1801, 301801, "t0");
    let state = tempfile::tempdir().unwrap();
    let listener = start_listener(&qa, state.path(), &amqp_url(), &exchange, &prefix).await;
    broker.wait_for_consumers(&listener.queue, |n| n == 1).await;

    // openQA is down: the engine cannot find the job's incidents and keeps the event waiting
    let event = qa.sim.set_done(job, "passed").unwrap();
    qa.sim.set_down(true);
    broker.publish(&exchange, &event.routing_key(&prefix), event.amqp_body.to_string().as_bytes()).await;
    let core = listener.core.clone();
    wait_until("the engine tried to look the job up", || core.status()["api_errors"].as_u64() > Some(0))
        .await;

    assert_eq!(listener.stop(&broker).await, 1, "not acknowledged: back in the queue for the next start");
}
