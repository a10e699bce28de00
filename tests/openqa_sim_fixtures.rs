//! Keeps the openQA simulator honest: the scenario of tests/fixtures/openqa/INDEX.md is rebuilt in
//! the simulator, every captured request is replayed against it in the same scenario state, and the
//! answers must match the real instance's: same status, same fields (recursively), same JSON types
//! and the same values, except times which only need the same format. The events the simulator
//! emits must equal webui-events.jsonl (in-process data) and amqp-messages.jsonl (routing key, body).

use incident_gate::openqa::auth;
use incident_gate_sim::openqa::{start, OpenQaSim, SimEvent};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/openqa");
const KEY: &str = "0A0A0A0A0A0A0A0A";
const SECRET: &str = "0B0B0B0B0B0B0B0B";
/// Fields whose values are clock readings: compared by format only.
const TIME_FIELDS: [&str; 4] = ["t_finished", "t_started", "created", "updated"];

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn fixture(name: &str) -> Value {
    serde_json::from_str(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// One row of the fixture table in INDEX.md.
#[derive(Debug, Clone)]
struct Captured {
    file: String,
    method: String,
    target: String,
    form: Option<String>,
    status: u16,
}

fn backticked(s: &str) -> Vec<String> {
    s.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

fn index() -> Vec<Captured> {
    let mut rows = Vec::new();
    for line in read("INDEX.md").lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let file = backticked(cells[0]).remove(0);
        if !file.ends_with(".json") {
            continue;
        }
        let request = backticked(cells[1]);
        let (method, target) = request[0].split_once(' ').expect("METHOD target");
        let form = cells[1].contains("form body:").then(|| request[1].clone());
        rows.push(Captured {
            file,
            method: method.into(),
            target: target.into(),
            form,
            status: cells[2].trim().parse().expect("status"),
        });
    }
    assert!(rows.len() > 80, "INDEX.md table: only {} rows", rows.len());
    rows
}

fn captured(name: &str) -> Captured {
    index().into_iter().find(|c| c.file == name).unwrap_or_else(|| panic!("{name} is not in INDEX.md"))
}

/// Digits become 0: two times compare equal when they have the same format.
fn time_shape(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_digit() { '0' } else { c }).collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn compare(path: &str, expected: &Value, actual: &Value, errors: &mut Vec<String>) {
    if kind(expected) != kind(actual) {
        errors.push(format!("{path}: {} expected, got {} ({actual})", kind(expected), kind(actual)));
        return;
    }
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let ek: BTreeSet<&String> = e.keys().collect();
            let ak: BTreeSet<&String> = a.keys().collect();
            for missing in ek.difference(&ak) {
                errors.push(format!("{path}/{missing}: missing"));
            }
            for extra in ak.difference(&ek) {
                errors.push(format!("{path}/{extra}: not in the fixture"));
            }
            for k in ek.intersection(&ak) {
                let (ev, av) = (&e[*k], &a[*k]);
                let sub = format!("{path}/{k}");
                match (ev, av) {
                    (Value::String(es), Value::String(as_)) if TIME_FIELDS.contains(&k.as_str()) => {
                        if time_shape(es) != time_shape(as_) {
                            errors.push(format!("{sub}: time {as_:?} is not formatted like {es:?}"));
                        }
                    }
                    _ => compare(&sub, ev, av, errors),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                errors.push(format!("{path}: {} elements expected, got {}: {actual}", e.len(), a.len()));
                return;
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                compare(&format!("{path}[{i}]"), ev, av, errors);
            }
        }
        _ if expected != actual => errors.push(format!("{path}: expected {expected}, got {actual}")),
        _ => {}
    }
}

fn assert_same(what: &str, expected: &Value, actual: &Value) {
    let mut errors = Vec::new();
    compare("", expected, actual, &mut errors);
    assert!(errors.is_empty(), "{what} differs from the real openQA:\n  {}", errors.join("\n  "));
}

struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    fn new(sim: &OpenQaSim) -> Http {
        Http { client: reqwest::Client::new(), base: sim.url() }
    }

    async fn send(
        &self,
        method: &str,
        target: &str,
        form: Option<&str>,
        headers: &[(&str, String)],
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, format!("{}{target}", self.base));
        if let Some(body) = form {
            request =
                request.header("Content-Type", "application/x-www-form-urlencoded").body(body.to_string());
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.expect("simulator answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{target}: not JSON ({e}): {text}"));
        (status, body)
    }

    /// Replays a captured request and compares the answer with the captured one.
    async fn check(&self, name: &str) {
        let c = captured(name);
        let (status, body) = self.send(&c.method, &c.target, c.form.as_deref(), &[]).await;
        assert_eq!(status, c.status, "{name}: {} {} answered {status}: {body}", c.method, c.target);
        assert_same(name, &fixture(name), &body);
    }

    async fn post(&self, target: &str, form: &str) -> Value {
        let (status, body) = self.send("POST", target, Some(form), &[]).await;
        assert_eq!(status, 200, "POST {target} {form}: {body}");
        body
    }
}

const INCIDENTS: &str = "Maintenance: SLE 15 SP6 Incidents";
const DEVEL: &str = "Maintenance: SLE 15 SP6 Devel";
const UPDATES: &str = "Maintenance: SLE 15 SP6 Updates";

/// The creation parameters of jobs 1-11, in the order and form the capture used.
fn scenario_jobs() -> Vec<Vec<(&'static str, &'static str)>> {
    let incident = |inc: &'static str,
                    test: &'static str,
                    arch: &'static str,
                    machine: &'static str,
                    group: (&'static str, &'static str)| {
        let (build, rrid, hash) = match inc {
            "12345" => (":12345:openssl", "SUSE:Maintenance:12345:300001", "abc123"),
            _ => (":12346:curl", "SUSE:Maintenance:12346:300002", "def456"),
        };
        vec![
            ("DISTRI", "sle"),
            ("VERSION", "15-SP6"),
            ("FLAVOR", "Server-DVD-Incidents"),
            ("BUILD", build),
            ("INCIDENT_ID", inc),
            ("RRID", rrid),
            ("REPOHASH", hash),
            ("ARCH", arch),
            ("MACHINE", machine),
            ("TEST", test),
            group,
        ]
    };
    let aggregate = |test: &'static str| {
        vec![
            ("DISTRI", "sle"),
            ("VERSION", "15-SP6"),
            ("FLAVOR", "Server-DVD-Updates"),
            ("BUILD", "20261124-1"),
            ("ARCH", "x86_64"),
            ("MACHINE", "64bit"),
            ("OS_TEST_ISSUES", "12345,12346,12400"),
            ("SDK_TEST_ISSUES", "12346"),
            ("TEST_ISSUES[]", "12345,12346,12400"),
            ("REPOHASH", "1732460000"),
            ("TEST", test),
            ("_GROUP_ID", "3"),
        ]
    };
    let g1 = ("_GROUP_ID", "1");
    vec![
        incident("12345", "mau-extratests", "x86_64", "64bit", g1),
        incident("12345", "qam-minimal", "x86_64", "64bit", g1),
        incident("12345", "mau-webserver", "x86_64", "64bit", g1),
        incident("12345", "mau-extratests", "aarch64", "aarch64", g1),
        incident("12345", "mau-bind", "x86_64", "64bit", g1),
        incident("12345", "mau-filesystem", "x86_64", "64bit", ("_GROUP", DEVEL)),
        incident("12346", "qam-minimal", "x86_64", "64bit", g1),
        incident("12346", "mau-extratests", "x86_64", "64bit", g1),
        aggregate("mau-qam-regression"),
        aggregate("mau-extratests"),
        aggregate("qam-minimal"),
    ]
}

const ACCEPTABLE: &str = "@review:acceptable_for:incident_12345:bsc#1234567 known issue";
const REASON: &str = "backend died: QEMU exited unexpectedly";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn signed(path: &str, query: &str) -> Vec<(&'static str, String)> {
    auth::auth_headers(KEY, SECRET, path, query, now()).into_iter().collect()
}

/// Lines of a .jsonl fixture.
fn jsonl(name: &str) -> Vec<Value> {
    read(name)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// The simulator's events against the 28 captured ones, line by line.
fn assert_events_match_capture(events: &[SimEvent]) {
    let webui = jsonl("webui-events.jsonl");
    let amqp = jsonl("amqp-messages.jsonl");
    assert_eq!(webui.len(), 28);
    assert_eq!(amqp.len(), 28);
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(events.len(), webui.len(), "events: {names:?}");
    for (i, ((event, w), a)) in events.iter().zip(&webui).zip(&amqp).enumerate() {
        let line = i + 1;
        assert_eq!(event.name, w["event"], "line {line}");
        assert_eq!(event.data, w["args"][0][3], "line {line}: in-process data of {}", event.name);
        assert_eq!(event.routing_key("suse"), a["routing_key"], "line {line}");
        assert_same(&format!("line {line}: AMQP body of {}", event.name), &a["body"], &event.amqp_body);
    }
}

#[tokio::test]
async fn simulator_answers_like_the_captured_openqa() {
    let sim = start().await;
    let http = Http::new(&sim);

    // Groups 1-3 and jobs 1-11, through the HTTP write routes.
    for name in ["incidents", "devel", "updates"] {
        http.check(&format!("post-job_groups-create-{name}.json")).await;
    }
    let jobs = scenario_jobs();
    assert_eq!(Some(auth::encode_query(&jobs[0])), captured("post-jobs-create.json").form);
    assert_eq!(Some(auth::encode_query(&jobs[8])), captured("post-jobs-create-aggregate.json").form);
    for (i, settings) in jobs.iter().enumerate() {
        let body = http.post("/api/v1/jobs", &auth::encode_query(settings)).await;
        match i {
            0 => assert_same("job 1 created", &fixture("post-jobs-create.json"), &body),
            8 => assert_same("job 9 created", &fixture("post-jobs-create-aggregate.json"), &body),
            _ => assert_eq!(body, serde_json::json!({"id": i + 1})),
        }
    }

    // Results, in the captured order (job 3's bogus result is refused and emits nothing).
    http.check("post-jobs-set_done-passed.json").await;
    http.check("post-jobs-set_done-failed.json").await;
    http.check("post-jobs-set_done-softfailed.json").await;
    http.check("post-jobs-set_done-invalid-result.json").await;
    http.check("post-jobs-set_done-failed-with-reason.json").await;
    http.post("/api/v1/jobs/7/set_done", "result=passed").await;
    http.post("/api/v1/jobs/9/set_done", "result=passed").await;
    http.post("/api/v1/jobs/10/set_done", "result=failed").await;
    http.check("post-jobs-set_done-404.json").await;

    // Restart 2 -> clone 12, looked at while 12 is still scheduled.
    http.check("post-jobs-restart.json").await;
    http.check("get-job-clone-scheduled.json").await;
    http.check("get-job-follow-original-while-clone-scheduled.json").await;
    let (status, again) = http.send("POST", "/api/v1/jobs/2/restart", None, &[]).await;
    assert_eq!(
        (status, &again["errors"][0]),
        (200, &serde_json::json!("Specified job 2 has already been cloned as 12"))
    );

    http.post("/api/v1/jobs/12/set_done", "result=passed").await;
    http.check("post-jobs-cancel.json").await;
    http.check("post-jobs-comment.json").await;

    // Every "final state" read.
    let early = ["get-job-clone-scheduled.json", "get-job-follow-original-while-clone-scheduled.json"];
    let reads: Vec<Captured> = index()
        .into_iter()
        .filter(|c| c.file.starts_with("get-") && !early.contains(&c.file.as_str()))
        .collect();
    assert!(reads.len() > 60, "only {} reads", reads.len());
    for c in &reads {
        http.check(&c.file).await;
    }

    // The authentication cases that created comments 2-4 on job 3, signed as a client must sign,
    // and two refused ones in between that must not create anything.
    sim.require_api_key(KEY, SECRET);
    let q = auth::encode_query(&[("text", "auth test query")]);
    let headers = signed("/api/v1/jobs/3/comments", &q);
    let (status, body) = http.send("POST", &format!("/api/v1/jobs/3/comments?{q}"), None, &headers).await;
    assert_eq!((status, body), (200, serde_json::json!({"id": 2})));
    let headers = signed("/api/v1/jobs/3/comments", "");
    let (status, body) =
        http.send("POST", "/api/v1/jobs/3/comments?text=auth+test+query2", None, &headers).await;
    assert_eq!(
        (status, body),
        (403, serde_json::json!({"error": "unknown error (wrong secret?)", "error_status": 403}))
    );
    let (status, body) =
        http.send("POST", "/api/v1/jobs/3/comments", Some("text=auth+test+form"), &headers).await;
    assert_eq!((status, body), (200, serde_json::json!({"id": 3})));
    let (status, body) = http.send("POST", "/api/v1/jobs/3/comments", Some("text=x"), &[]).await;
    assert_eq!((status, body), (403, serde_json::json!({"error": "no api key", "error_status": 403})));
    // sent with a raw `:`, signed in the form the server re-encodes it to
    let headers = signed("/api/v1/jobs/3/comments", &auth::encode_query(&[("text", "auth:colon")]));
    let (status, body) = http.send("POST", "/api/v1/jobs/3/comments?text=auth:colon", None, &headers).await;
    assert_eq!((status, body), (200, serde_json::json!({"id": 4})));

    // Phase 2: the last pending jobs finish.
    let headers = signed("/api/v1/jobs/3/set_done", "");
    let (status, body) = http.send("POST", "/api/v1/jobs/3/set_done", Some("result=passed"), &headers).await;
    assert_eq!(status, 200);
    assert_same("phase2 set_done", &fixture("phase2-post-jobs-set_done-last-of-build.json"), &body);
    for id in [8, 11] {
        let target = format!("/api/v1/jobs/{id}/set_done");
        let (status, _) = http.send("POST", &target, Some("result=passed"), &signed(&target, "")).await;
        assert_eq!(status, 200);
    }
    for c in index().into_iter().filter(|c| c.file.starts_with("phase2-get-")) {
        http.check(&c.file).await;
    }

    assert_events_match_capture(&sim.events());
}

/// The control API goes through the same code as the HTTP routes: the same scenario driven from
/// Rust emits the same 28 events and ends in the same state.
#[tokio::test]
async fn control_api_emits_the_captured_events() {
    let sim = start().await;
    let mut events = Vec::new();
    assert_eq!([sim.create_group(INCIDENTS), sim.create_group(DEVEL), sim.create_group(UPDATES)], [1, 2, 3]);
    for settings in scenario_jobs() {
        let (id, event) = sim.try_create_job(&settings, None).expect("job");
        assert_eq!(event.data["id"], serde_json::json!(id));
        events.push(event);
    }
    let mut push = |e: Option<SimEvent>| events.push(e.expect("event"));
    push(sim.set_done(1, "passed"));
    push(sim.set_done(2, "failed"));
    push(sim.set_done(4, "softfailed"));
    assert_eq!(sim.set_done(3, "bogus"), None);
    push(sim.set_done_with_reason(6, "failed", Some(REASON)));
    push(sim.set_done(7, "passed"));
    push(sim.set_done(9, "passed"));
    push(sim.set_done(10, "failed"));
    let (clone, restart) = sim.restart(2).expect("restart");
    assert_eq!(clone, 12);
    push(Some(restart));
    assert!(sim.restart(2).is_none(), "a cloned job is not restarted twice");
    push(sim.set_done(12, "passed"));
    push(sim.cancel(5));
    push(sim.comment(10, ACCEPTABLE));
    for text in ["auth test query", "auth test form", "auth:colon"] {
        push(sim.comment(3, text));
    }
    for id in [3, 8, 11] {
        push(sim.set_done(id, "passed"));
    }
    assert_events_match_capture(&events);
    assert_eq!(sim.events(), events, "the event log holds what the calls returned");

    let http = Http::new(&sim);
    for c in index().into_iter().filter(|c| c.file.starts_with("phase2-get-")) {
        http.check(&c.file).await;
    }
    let snapshot = sim.jobs_snapshot();
    assert_eq!(snapshot.len(), 12);
    assert_eq!(snapshot[1].clone_id, Some(12));
    assert_eq!(snapshot[11].origin_id, Some(2));
    assert_eq!((snapshot[4].state.as_str(), snapshot[4].result.as_str()), ("cancelled", "user_cancelled"));
}

#[tokio::test]
async fn simulator_switches_and_counts() {
    let sim = start().await;
    let http = Http::new(&sim);
    sim.create_group(INCIDENTS);
    let id = sim.create_job(&[("TEST", "t"), ("BUILD", "b")], 1);
    let before = sim.requests();
    sim.set_down(true);
    let response = reqwest::get(format!("{}/api/v1/jobs/{id}", sim.url())).await.expect("answer");
    assert_eq!(response.status().as_u16(), 503);
    sim.set_down(false);
    sim.fail_next(1);
    let response = reqwest::get(format!("{}/api/v1/job_groups", sim.url())).await.expect("answer");
    assert_eq!(response.status().as_u16(), 503);
    let (status, body) = http.send("GET", &format!("/api/v1/jobs/{id}"), None, &[]).await;
    assert_eq!((status, &body["job"]["group_id"]), (200, &serde_json::json!(1)));
    assert_eq!(sim.requests() - before, 3);

    // a subscriber sees events as they happen
    let mut rx = sim.subscribe();
    sim.set_done(id, "passed");
    let event = rx.recv().await.expect("event");
    assert_eq!(event.routing_suffix, "job.done");
    assert_eq!(event.amqp_body["remaining"], serde_json::json!(0));

    // the writes refuse what openQA refuses
    let (status, body) = http.send("POST", "/api/v1/jobs", Some("DISTRI=sle"), &[]).await;
    assert_eq!((status, body["error_status"].clone()), (400, serde_json::json!(400)));
    let (status, _) = http.send("POST", "/api/v1/jobs/99/cancel", None, &[]).await;
    assert_eq!(status, 404);
    let (status, body) = http.send("POST", &format!("/api/v1/jobs/{id}/comments"), Some("text="), &[]).await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, serde_json::json!("Erroneous parameters (text invalid)"))
    );
    let (status, body) = http.send("GET", "/api/v1/jobs?scope=all", None, &[]).await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, serde_json::json!("Erroneous parameters (scope invalid)"))
    );
}
