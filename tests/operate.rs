//! What an operator runs into: credentials in URLs, configuration mistakes, exit codes, the
//! command's help and output through a pipe, the log callback of the C ABI.

mod common;

use common::{amqp_url, last_error, CGate, OpenQa};
use futures_util::StreamExt;
use incident_gate::ffi::*;
use incident_gate::sim::obs::{ObsSimConfig, SimAuth, SimReview};
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use std::ffi::CString;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_incident-gate");
const SECRET: &str = "S3CRET-in-url";

fn run(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("INCIDENT_GATE_CONFIG").env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("incident-gate runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `http://user:SECRET@host:port` for a loopback URL.
fn with_credentials(url: &str) -> String {
    url.replacen("http://", &format!("http://bot:{SECRET}@"), 1)
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_urls_reach_no_event_comment_output_store_or_status() {
    let qa = OpenQa::start().await;
    let auth = SimAuth::Basic { user: "qam-bot".into(), password: "pw-operate".into() };
    let obs = incident_gate::sim::obs::start(ObsSimConfig::new(auth)).await;
    obs.create_request(330_001, "review", vec![SimReview::group("qam-openqa")], "maintenance_release");
    let jobs: Vec<u64> = (0..2).map(|i| qa.incident_job(8301, 330_001, &format!("t{i}"))).collect();
    qa.sim.set_done(jobs[0], "passed");
    qa.sim.set_done(jobs[1], "failed");

    let exchange = format!("ig-test-{}-credentials", std::process::id());
    let conn = lapin::Connection::connect(&amqp_url(), Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let auto_delete = ExchangeDeclareOptions { auto_delete: true, ..Default::default() };
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        auto_delete,
        Default::default(),
    )
    .await
    .unwrap();
    let exclusive = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let queue = ch.queue_declare("".into(), exclusive, Default::default()).await.unwrap();
    ch.queue_bind(
        queue.name().clone(),
        exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.name().clone(),
            "t".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            Default::default(),
        )
        .await
        .unwrap();

    let state = tempfile::tempdir().unwrap();
    let openqa = with_credentials(&qa.url());
    let gate = CGate::new(&serde_json::json!({
        "openqa_url": openqa,
        // the IBS password in the URL is used (HTTP Basic) and must show nowhere either
        "obs_url": obs.url().replacen("http://", "http://qam-bot:pw-operate@", 1),
        "amqp_url": amqp_url(),
        "amqp_exchange": exchange,
        "state_dir": state.path(),
        "http_timeout_s": 5,
    }));
    gate.job_done(jobs[1], "failed");
    gate.flushed();

    let message = tokio::time::timeout(Duration::from_secs(15), consumer.next())
        .await
        .expect("incident.done arrives")
        .unwrap()
        .unwrap();
    let event = String::from_utf8_lossy(&message.data).into_owned();
    let link = format!("{}/tests/{}", qa.url(), jobs[1]);
    assert!(event.contains(&format!("\"openqa\":\"{}\"", qa.url())), "{event}");
    assert!(event.contains(&format!("\"url\":\"{link}\"")), "{event}");
    let comments = common::eventually(Duration::from_secs(15), || {
        let c = obs.comments(330_001);
        (!c.is_empty()).then_some(c)
    })
    .await
    .expect("IBS got a comment");
    let comment = &comments[0].text;
    assert!(comment.contains(&link), "the comment links the job as anyone can open it: {comment}");
    let status = gate.status();
    assert_eq!(status["config"]["openqa_url"], openqa.replace(SECRET, "<redacted>"));
    assert_eq!(status["config"]["obs_url"], obs.url().replacen("http://", "http://qam-bot:<redacted>@", 1));
    let check = {
        let env = vec![
            ("INCIDENT_GATE_OPENQA_URL", openqa.clone()),
            ("INCIDENT_GATE_STATE_DIR", state.path().display().to_string()),
        ];
        tokio::task::spawn_blocking(move || run(&["check", "8301"], &env)).await.unwrap()
    };
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(text(&check).contains(&link), "{}", text(&check));
    drop(gate);
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(state.path()).unwrap() {
        stored.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    for (what, shown) in [
        ("event", event),
        ("comment", comment.clone()),
        ("status", status.to_string()),
        ("check", text(&check)),
        ("store", String::from_utf8_lossy(&stored).into_owned()),
    ] {
        for secret in [SECRET, "pw-operate"] {
            assert!(!shown.contains(secret), "a URL's password shows in the {what}: {shown}");
        }
    }
    let _ = ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    let _ = conn.close(200, "".into()).await;
    let _ = last_error;
    let _ = CString::new("");
    let _ = ig_status::IG_OK;
    let _ = Stdio::null();
}
