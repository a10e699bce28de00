//! Holds the openQA simulator to a real openQA: the same REST calls against both, answers
//! compared (status, body shape and values, orders), and the AMQP messages openQA's own AMQP
//! plugin publishes for them compared with the ones the simulator says openQA publishes.
//!
//! The real one is Debian's `openqa` package, started by `scripts/real-openqa` (its own database,
//! Fake auth, the real broker). The simulator answers in the flavor of the version found
//! (`Flavor::Debian12` for an openQA that refuses `job_settings/jobs?value=`).
//! Without /usr/share/openqa the test is skipped, unless `CI` is set: then it fails.

use futures_util::StreamExt;
use incident_gate::openqa::auth;
use incident_gate_sim::openqa::{Flavor, OpenQaSim};
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testkit::amqp_url;

/// Fake auth's admin `Demo`.
const KEY: &str = "1234567890ABCDEF";

/// `scripts/real-openqa`, stopped (and its database dropped) when its stdin closes.
struct RealOpenQa {
    url: String,
    log: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl RealOpenQa {
    fn start(exchange: &str, prefix: &str, events: &std::path::Path) -> RealOpenQa {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/real-openqa");
        let mut child = Command::new(script)
            .args(["--amqp-exchange", exchange, "--amqp-prefix", prefix])
            .args(["--first-plugin", "IGDrift::EventRecorder"])
            .env("PERL5LIB", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/perl"))
            .env("IG_DRIFT_EVENTS", events)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("scripts/real-openqa starts");
        let stdin = child.stdin.take();
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout).read_line(&mut line).expect("real-openqa prints its URL");
        let info: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("real-openqa did not start ({e}): {line:?}"));
        RealOpenQa {
            url: info["url"].as_str().unwrap_or_default().to_string(),
            log: info["log"].as_str().unwrap_or_default().to_string(),
            child,
            stdin,
        }
    }
}

impl Drop for RealOpenQa {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

struct Answer {
    status: u16,
    html: bool,
    body: Value,
    /// The `Link` header (paged lists), with the instance's own URL taken out.
    link: Option<String>,
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    form: &[(&str, &str)],
) -> Answer {
    let query = auth::encode_query(query);
    let mut url = format!("{base}{path}");
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query);
    }
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = http.request(method, &url);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    for (name, value) in auth::auth_headers(KEY, KEY, path, &query, now) {
        request = request.header(name, value);
    }
    if !form.is_empty() {
        request = request
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(auth::encode_query(form));
    }
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    let html = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    let link =
        response.headers().get("link").and_then(|v| v.to_str().ok()).map(|l| l.replace(base, "<base>"));
    let text = response.text().await.unwrap_or_default();
    let body = if html { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    Answer { status, html, body, link }
}

/// Values that differ by nature (times) become placeholders; everything else is compared as is.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if matches!(k.as_str(), "t_finished" | "t_started" | "created" | "updated") && !v.is_null() {
                    *v = json!("<time>");
                } else {
                    normalize(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// Parameters of a call, in order.
type Pairs = Vec<(&'static str, String)>;
/// One call: method, path, query, form body.
type Step = (&'static str, String, Pairs, Pairs);

/// The calls, in order. Job ids are the same on both (fresh databases count from 1).
fn script() -> Vec<Step> {
    let mut steps = Vec::new();
    let mut step = |m: &'static str, p: &str, q: &[(&'static str, &str)], f: &[(&'static str, &str)]| {
        let own = |x: &[(&'static str, &str)]| x.iter().map(|(k, v)| (*k, v.to_string())).collect::<Vec<_>>();
        steps.push((m, p.to_string(), own(q), own(f)));
    };
    step("POST", "/api/v1/job_groups", &[], &[("name", "Maintenance: SLE 15 SP6 Incidents")]);
    step("POST", "/api/v1/job_groups", &[], &[("name", "Maintenance: SLE 15 SP6 Updates")]);
    step("POST", "/api/v1/job_groups", &[], &[("name", "Maintenance: SLE 15 SP6 Incidents")]);
    // jobs 1..=8: incident 12345 (request 300001, then 300002), 9..=11: aggregates
    for (i, test) in
        ["mau-a", "mau-b", "mau-c", "mau-d", "mau-e", "mau-f", "mau-g", "mau-h"].iter().enumerate()
    {
        let rrid = if i < 6 { "SUSE:Maintenance:12345:300001" } else { "SUSE:Maintenance:12345:300002" };
        step(
            "POST",
            "/api/v1/jobs",
            &[],
            &[
                ("DISTRI", "sle"),
                ("VERSION", "15-SP6"),
                ("FLAVOR", "Server-DVD-Incidents"),
                ("ARCH", "x86_64"),
                ("MACHINE", "64bit"),
                ("BUILD", ":12345:openssl"),
                ("TEST", test),
                ("INCIDENT_ID", "12345"),
                ("RRID", rrid),
                ("_GROUP_ID", "1"),
            ],
        );
    }
    for test in ["agg-a", "agg-b", "agg-c"] {
        step(
            "POST",
            "/api/v1/jobs",
            &[],
            &[
                ("DISTRI", "sle"),
                ("VERSION", "15-SP6"),
                ("FLAVOR", "Server-DVD-Updates"),
                ("ARCH", "x86_64"),
                ("MACHINE", "64bit"),
                ("BUILD", "20261124-1"),
                ("TEST", test),
                ("OS_TEST_ISSUES", "12345,12346,12400"),
                ("SDK_TEST_ISSUES", "12346"),
                ("_GROUP_ID", "2"),
            ],
        );
    }
    step("POST", "/api/v1/jobs", &[], &[("BUILD", "x")]);
    let settings = "/api/v1/job_settings/jobs";
    for q in [
        vec![("key", "INCIDENT_ID"), ("value", "12345")],
        vec![("key", "INCIDENT_ID"), ("list_value", "12345")],
        vec![("key", "INCIDENT_ID"), ("list_value", "1234")],
        vec![("key", "*_TEST_ISSUES"), ("list_value", "12346")],
        vec![("key", "*_TEST_ISSUES"), ("list_value", "12345")],
        vec![("key", "OS_TEST_ISSUES"), ("list_value", "12400")],
        vec![("key", "*"), ("list_value", "12346")],
        vec![("key", "RRID"), ("list_value", "SUSE:Maintenance:12345:300001")],
        vec![("key", "TEST_ISSUES[]"), ("list_value", "12345")],
        vec![("key", "INCIDENT ID"), ("list_value", "12345")],
        vec![("key", "INCIDENT_ID")],
        vec![("list_value", "12345")],
        vec![("key", "BUILD"), ("list_value", "20261124")],
        vec![("key", "INCIDENT_ID"), ("list_value", "99999")],
    ] {
        step("GET", settings, &q, &[]);
    }
    step("GET", "/api/v1/jobs", &[("ids", "3,1,11,2,10")], &[]);
    step("GET", "/api/v1/jobs", &[("ids", "1,abc")], &[]);
    step("GET", "/api/v1/jobs", &[("ids", "9,1"), ("build", "20261124-1")], &[]);
    // finish, fail, restart, cancel
    step("POST", "/api/v1/jobs/1/set_done", &[], &[("result", "passed")]);
    step("POST", "/api/v1/jobs/2/set_done", &[], &[("result", "failed")]);
    step("POST", "/api/v1/jobs/3/set_done", &[], &[("result", "bogus")]);
    step("POST", "/api/v1/jobs/999/set_done", &[], &[("result", "passed")]);
    step("POST", "/api/v1/jobs/9/set_done", &[], &[("result", "softfailed")]);
    step("POST", "/api/v1/jobs/2/restart", &[], &[]);
    step("POST", "/api/v1/jobs/2/restart", &[], &[]);
    step("GET", "/api/v1/jobs/2", &[], &[]);
    step("GET", "/api/v1/jobs/2", &[("follow", "1")], &[]);
    step("GET", "/api/v1/jobs/12", &[], &[]);
    step("POST", "/api/v1/jobs/4/cancel", &[], &[]);
    step("POST", "/api/v1/jobs/1/cancel", &[], &[]);
    step("GET", "/api/v1/jobs/4", &[], &[]);
    step("GET", "/api/v1/jobs", &[("ids", "1,2,4,12"), ("scope", "current")], &[]);
    step("GET", "/api/v1/jobs/999", &[], &[]);
    step("GET", settings, &[("key", "INCIDENT_ID"), ("list_value", "12345")], &[]);
    // comments
    step(
        "POST",
        "/api/v1/jobs/2/comments",
        &[],
        &[("text", "@review:acceptable_for:incident_12345:bsc#1234567 known")],
    );
    step("POST", "/api/v1/jobs/2/comments", &[], &[("text", "")]);
    step("POST", "/api/v1/jobs/999/comments", &[], &[("text", "x")]);
    step("GET", "/api/v1/jobs/2/comments", &[], &[]);
    step("GET", "/api/v1/jobs/2/comments/1", &[], &[]);
    step("GET", "/api/v1/jobs/2/comments/77", &[], &[]);
    step(
        "PUT",
        "/api/v1/jobs/2/comments/1",
        &[],
        &[("text", "@review:acceptable_for:incident_12345:edited")],
    );
    step("PUT", "/api/v1/jobs/2/comments/77", &[], &[("text", "x")]);
    step("GET", "/api/v1/jobs/2/comments", &[], &[]);
    step("DELETE", "/api/v1/jobs/2/comments/1", &[], &[]);
    step("DELETE", "/api/v1/jobs/2/comments/1", &[], &[]);
    step("POST", "/api/v1/jobs/3/comments", &[], &[("text", "label:force_result:passed")]);
    step("POST", "/api/v1/jobs/2/comments", &[], &[("text", "label:force_result:bogus")]);
    step("POST", "/api/v1/jobs/2/comments", &[], &[("text", "label:force_result:softfailed:bsc1234")]);
    step("GET", "/api/v1/jobs/2", &[], &[]);
    step("GET", "/api/v1/jobs/2/comments", &[], &[]);
    step("DELETE", "/api/v1/jobs/2/comments/4", &[], &[]);
    step("POST", "/api/v1/jobs/2/comments", &[], &[("text", "plain")]);
    // upstream's bulk routes (not in Debian 12's openQA)
    step("POST", "/api/v1/comments", &[], &[("text", "bulk"), ("job_id", "1"), ("job_id", "9")]);
    step("DELETE", "/api/v1/comments", &[("id", "5")], &[]);
    // reads over the finished state
    for q in [
        vec![("ids", "1,2,3,4,5,6,7,8,9,10,11,12"), ("scope", "relevant")],
        vec![("ids", "2"), ("ids", "12")],
        vec![("build", ":12345:openssl"), ("latest", "1")],
        vec![("build", ":12345:openssl"), ("scope", "current")],
        vec![("job_setting", "INCIDENT_ID=12345")],
        vec![("state", "scheduled")],
        vec![("build", "20261124-1"), ("result", "softfailed")],
        vec![("groupid", "2")],
        vec![("limit", "2")],
        vec![("limit", "2"), ("offset", "2")],
        // catch-up: the newest page above a bound, and windows of ids (cut by `limit`, or whole)
        vec![("limit", "3"), ("after", "4")],
        vec![("limit", "3"), ("after", "2"), ("before", "9")],
        vec![("limit", "10"), ("after", "2"), ("before", "9")],
        vec![("scope", "bogus")],
    ] {
        step("GET", "/api/v1/jobs", &q, &[]);
    }
    // how the client reads a whole aggregate build: pages below the lowest id seen, until the
    // Link header names no next page
    let build = [
        ("build", "20261124-1"),
        ("distri", "sle"),
        ("version", "15-SP6"),
        ("flavor", "Server-DVD-Updates"),
        ("arch", "x86_64"),
    ];
    for extra in [vec![("limit", "2")], vec![("limit", "2"), ("before", "10")], vec![("limit", "1000")]] {
        let q: Vec<(&'static str, &str)> = build.iter().copied().chain(extra).collect();
        step("GET", "/api/v1/jobs", &q, &[]);
    }
    step(
        "GET",
        "/api/v1/jobs/overview",
        &[("distri", "sle"), ("version", "15-SP6"), ("build", ":12345:openssl")],
        &[],
    );
    step("GET", "/api/v1/jobs/1/details", &[], &[]);
    step("GET", "/api/v1/jobs/2/comments", &[("render_markdown", "1")], &[]);
    step("GET", "/api/v1/job_groups/1/jobs", &[], &[]);
    step("GET", "/api/v1/job_groups", &[], &[]);
    step("GET", "/api/v1/job_groups/1", &[], &[]);
    step("GET", "/api/v1/job_groups/99", &[], &[]);
    steps
}

async fn open_queue(exchange: &str, prefix: &str) -> (Connection, lapin::Channel, lapin::Consumer) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.expect("broker");
    let ch = conn.create_channel().await.expect("channel");
    let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(exchange.into(), ExchangeKind::Topic, options, FieldTable::default())
        .await
        .expect("exchange");
    let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let queue = ch.queue_declare("".into(), options, FieldTable::default()).await.expect("queue");
    let key = format!("{prefix}.#");
    ch.queue_bind(
        queue.name().clone(),
        exchange.into(),
        key.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let consumer = ch
        .basic_consume(queue.name().clone(), "".into(), options, FieldTable::default())
        .await
        .expect("consume");
    (conn, ch, consumer)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_simulator_answers_like_the_real_openqa() {
    if !std::path::Path::new("/usr/share/openqa").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but openQA is not installed (/usr/share/openqa)"
        );
        eprintln!(
            "SKIPPED: no openQA installed at /usr/share/openqa (apt-get install openqa; scripts/setup does)"
        );
        return;
    }
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let exchange = format!("igtest-drift-{}-{stamp}", std::process::id());
    let prefix = format!("drift{stamp}");
    let (conn, ch, mut consumer) = open_queue(&exchange, &prefix).await;
    let events_dir = tempfile::tempdir().expect("tempdir");
    let events_file = events_dir.path().join("events.jsonl");
    let real = tokio::task::spawn_blocking({
        let (e, p, f) = (exchange.clone(), prefix.clone(), events_file.clone());
        move || RealOpenQa::start(&e, &p, &f)
    })
    .await
    .expect("started");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http");

    // which version: Debian 12's refuses value=
    let probe =
        call(&http, &real.url, "GET", "/api/v1/job_settings/jobs", &[("key", "X"), ("value", "1")], &[])
            .await;
    let flavor = if probe.status == 400
        && probe.body["error"].as_str().is_some_and(|e| e.contains("list_value missing"))
    {
        Flavor::Debian12
    } else {
        Flavor::Upstream
    };
    eprintln!("real openQA at {} answers like {flavor:?}", real.url);
    let sim: OpenQaSim = incident_gate_sim::openqa::start().await;
    sim.set_flavor(flavor);

    let mut differences = Vec::new();
    let steps = script();
    let calls = steps.len();
    for (method, path, query, form) in steps {
        let q: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut a = call(&http, &real.url, method, &path, &q, &f).await;
        let mut b = call(&http, &sim.url(), method, &path, &q, &f).await;
        normalize(&mut a.body);
        normalize(&mut b.body);
        let shown = format!("{method} {path}?{} {}", auth::encode_query(&q), auth::encode_query(&f));
        if (a.status, a.html, &a.body, &a.link) != (b.status, b.html, &b.body, &b.link) {
            differences.push(format!(
                "{shown}\n    real:      {} {}{} Link: {:?}\n    simulator: {} {}{} Link: {:?}",
                a.status,
                if a.html { "(html) " } else { "" },
                a.body,
                a.link,
                b.status,
                if b.html { "(html) " } else { "" },
                b.body,
                b.link
            ));
        }
    }

    // the in-process events, one by one in order: what a plugin such as ours receives
    let recorded: Vec<(String, Value)> = std::fs::read_to_string(&events_file)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
            (v["name"].as_str().unwrap_or_default().to_string(), v["data"].clone())
        })
        .collect();
    let emitted: Vec<(String, Value)> = sim.events().into_iter().map(|e| (e.name, e.data)).collect();
    assert!(emitted.len() >= 20, "the calls make openQA emit events: {} expected", emitted.len());
    for i in 0..recorded.len().max(emitted.len()) {
        let (a, b) = (recorded.get(i), emitted.get(i));
        if a != b {
            let show = |e: Option<&(String, Value)>| e.map(|(n, d)| format!("{n} {d}")).unwrap_or("-".into());
            differences.push(format!("event #{i}:\n    real:      {}\n    simulator: {}", show(a), show(b)));
        }
    }

    // the AMQP messages openQA's plugin published, against those the simulator says it publishes
    let expected: Vec<(String, Value)> = sim
        .events()
        .into_iter()
        .filter(|e| e.amqp)
        .map(|e| {
            let mut body = e.amqp_body.clone();
            normalize(&mut body);
            (e.routing_key(&prefix), body)
        })
        .collect();
    assert!(expected.len() >= 20, "the calls make openQA publish: {} messages expected", expected.len());
    let mut published = Vec::new();
    while published.len() < expected.len() + 5 {
        let Ok(Some(Ok(delivery))) = tokio::time::timeout(Duration::from_secs(3), consumer.next()).await
        else {
            break;
        };
        let mut body: Value = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
        normalize(&mut body);
        published.push((delivery.routing_key.to_string(), body));
    }
    // openQA publishes each message over a connection of its own: the order among them is not kept
    let sorted = |v: &[(String, Value)]| {
        let mut v: Vec<String> = v.iter().map(|(k, b)| format!("{k} {b}")).collect();
        v.sort();
        v
    };
    let (real_msgs, sim_msgs) = (sorted(&published), sorted(&expected));
    for m in real_msgs.iter().filter(|m| !sim_msgs.contains(m)) {
        differences.push(format!("AMQP message only the real openQA published: {m}"));
    }
    for m in sim_msgs.iter().filter(|m| !real_msgs.contains(m)) {
        differences.push(format!("AMQP message only the simulator published: {m}"));
    }

    eprintln!(
        "compared {calls} calls, {} in-process events, {} AMQP messages ({flavor:?})",
        emitted.len(),
        expected.len()
    );
    let _ = ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    let _ = conn.close(200, "done".into()).await;
    let log = std::fs::read_to_string(&real.log).unwrap_or_default();
    drop(real);
    assert!(
        differences.is_empty(),
        "the simulator ({flavor:?}) differs from the real openQA in {} places:\n{}\n(openQA log: {} lines)",
        differences.len(),
        differences.join("\n"),
        log.lines().count()
    );
}
