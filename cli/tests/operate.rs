//! What an operator runs into: credentials in URLs, configuration mistakes, exit codes, the
//! command's help and output through a pipe, the log callback of the C ABI.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{amqp_url, CGate, OpenQa};
use futures_util::StreamExt;
use incident_gate_sim::obs::{ObsSimConfig, SimAuth, SimReview};
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_incident-gate");
const SECRET: &str = "S3CRET-in-url";

/// With the command's own default log level: what an operator sees.
fn run(args: &[&str], env: &[(&str, String)]) -> Output {
    testkit::cli::command(BIN, env).env_remove("RUST_LOG").args(args).output().expect("incident-gate runs")
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
    let obs = incident_gate_sim::obs::start(ObsSimConfig::new(auth)).await;
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
}

fn expect_config_error(out: &Output, needle: &str) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(2), "a configuration error, not 'retry later': {all}");
    assert!(all.contains(needle), "the error says {needle:?}: {all}");
    assert!(!all.contains("panicked"), "{all}");
}

#[test]
fn local_problems_are_configuration_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let state = |p: &std::path::Path| vec![("INCIDENT_GATE_STATE_DIR", p.display().to_string())];
    expect_config_error(&run(&["status"], &state(&file)), &file.display().to_string());

    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    let db = corrupt.join("incident-gate.sqlite");
    std::fs::write(&db, vec![b'x'; 4096]).unwrap();
    let out = run(&["check", "1"], &state(&corrupt));
    expect_config_error(&out, &db.display().to_string());
    expect_config_error(&out, "not a database");

    // root may write anywhere, but not into /proc
    let unwritable = std::path::Path::new("/proc/self");
    expect_config_error(&run(&["status"], &state(unwritable)), "/proc/self/incident-gate.sqlite");
}

#[test]
fn configuration_mistakes_are_exit_2_and_the_plugins_key_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("openqa.ini");
    let state = dir.path().join("state");
    let with = |body: &str| {
        std::fs::write(
            &ini,
            format!(
                "[global]\nplugins = IncidentGate\n\n[incident_gate]\nstate_dir = {}\n{body}",
                state.display()
            ),
        )
        .unwrap();
        run(&["status", "--config", ini.to_str().unwrap()], &[])
    };
    let ok = with("library = /usr/lib64/incident-gate/libincident_gate.so\n");
    assert_eq!(ok.status.code(), Some(0), "the plugin's own key is no error for the command: {}", text(&ok));
    expect_config_error(&with("settle_ms = 1\nsettle_ms = 2\n"), "`settle_ms` appears twice");
    expect_config_error(&with("[incident_gate]\nsettle_ms = 2\n"), "more than one [incident_gate]");
    expect_config_error(&with("amqp_url = amqp://u:S3CRET@h:notaport/\n"), "`amqp_url`");
    for url in ["http://1.2.3.999/", "http://exa mple.com", "http://[::1", "http://host:99999/"] {
        expect_config_error(&with(&format!("openqa_url = {url}\n")), "`openqa_url`");
    }
    let out = with("amqp_url = amqp://u:S3CRET@h:notaport/\n");
    assert!(!text(&out).contains("S3CRET"), "{}", text(&out));
}

#[test]
fn output_into_a_closed_pipe_is_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    let write_end = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    let out = Command::new(BIN)
        .args(["status"])
        .env_remove("INCIDENT_GATE_CONFIG")
        .env("INCIDENT_GATE_STATE_DIR", dir.path())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The `Options:` and `Arguments:` entries of a clap help text, each with its description.
fn help_entries(help: &str) -> Vec<(String, String)> {
    let mut entries = Vec::new();
    let mut in_list = false;
    for line in help.lines() {
        if line.ends_with(':') && !line.starts_with(' ') {
            in_list = line == "Options:" || line == "Arguments:";
            continue;
        }
        if in_list && line.starts_with("  ") && !line.starts_with("           ") {
            let line = line.trim();
            let (name, what) = line.split_once("  ").unwrap_or((line, ""));
            entries.push((name.to_string(), what.trim().to_string()));
        }
    }
    entries
}

#[test]
fn help_describes_every_argument_and_offers_only_what_a_command_uses() {
    let subcommands = ["listen", "hook", "check", "status", "sim", "demo", "bench"];
    for sub in subcommands {
        let out = run(&[sub, "--help"], &[]);
        assert_eq!(out.status.code(), Some(0));
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let entries = help_entries(&help);
        assert!(entries.iter().any(|(n, _)| n.contains("--help")), "{sub}: {help}");
        for (name, what) in &entries {
            assert!(!what.is_empty(), "`{sub} --help` does not describe {name}: {help}");
        }
        let offers_config = entries.iter().any(|(n, _)| n.contains("--config"));
        let reads_config = ["listen", "hook", "check", "status"].contains(&sub);
        assert_eq!(offers_config, reads_config, "{sub} --config: {help}");
    }
    let help = String::from_utf8_lossy(&run(&["--help"], &[]).stdout).into_owned();
    assert!(!help.contains("--config"), "the top level reads no configuration: {help}");
}

#[test]
fn logs_carry_no_colour_codes_when_stderr_is_no_terminal() {
    let out =
        run(&["check", "1", "--log", "debug"], &[("INCIDENT_GATE_OPENQA_URL", "http://127.0.0.1:9".into())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DEBUG") || stderr.contains("INFO"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

/// The demos of this file one at a time: each checks what it leaves on the broker's `pubsub`.
static DEMO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn demo_names_the_policy_as_configured_and_says_when_an_incident_stays_pending() {
    let _one = DEMO.lock().await;
    let pubsub_before = exchange_exists("pubsub").await;
    let out = tokio::task::spawn_blocking(|| run(&["demo"], &[("AMQP_URL", amqp_url())])).await.unwrap();
    assert_eq!(exchange_exists("pubsub").await, pubsub_before, "the demo leaves the broker as it found it");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout.contains("policy accept-onpass,"), "{stdout}");
    assert!(stdout.contains("incident-gate: no decision yet, pending: incident 12345\n"), "{stdout}");
    assert!(!stdout.contains("AcceptOnpass"));
}

/// On a broker where another openQA publishes `incident.done` on the same exchange meanwhile, the
/// demo shows under each decision that decision's own message, and none of the other's.
#[tokio::test(flavor = "multi_thread")]
async fn demo_on_a_shared_broker_shows_each_decisions_own_message() {
    let _one = DEMO.lock().await;
    let pubsub_before = exchange_exists("pubsub").await;
    let conn = lapin::Connection::connect(&amqp_url(), Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare("pubsub".into(), lapin::ExchangeKind::Topic, durable, Default::default())
        .await
        .unwrap();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let other = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            n += 1;
            let body = serde_json::json!({"schema_version": 2, "kind": "ibs", "incident": 90632, "request": 390632,
                "result": "passed", "blocking": [], "event_id": format!("other-openqa-{n}")});
            let props = lapin::BasicProperties::default().with_message_id(format!("other-openqa-{n}").into());
            let _ = ch
                .basic_publish(
                    "pubsub".into(),
                    "suse.openqa.incident.done".into(),
                    Default::default(),
                    body.to_string().as_bytes(),
                    props,
                )
                .await;
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        n
    });
    let out = tokio::task::spawn_blocking(|| run(&["demo"], &[("AMQP_URL", amqp_url())])).await.unwrap();
    let _ = stop.send(());
    let published = other.await.unwrap();
    if !pubsub_before {
        let _ = conn
            .create_channel()
            .await
            .unwrap()
            .exchange_delete("pubsub".into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "".into()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(published > 10, "the other openQA published during the demo ({published})");
    assert!(!stdout.contains("90632"), "another openQA's event in the demo: {stdout}");
    // each decision line is followed by its own message: same submission, same result
    let mut decision: Option<(String, String)> = None;
    let mut shown = 0;
    for line in stdout.lines() {
        if let Some(rest) = line.split("incident-gate: ").nth(1).filter(|r| r.contains(" → ")) {
            let (who, result) = rest.split_once(" → ").unwrap();
            let number = who.rsplit([' ', ':']).next().unwrap().to_string();
            let result = result.split([',', ' ']).next().unwrap().to_lowercase();
            decision = Some((number, result));
        } else if line.contains("    broker: ") {
            let (number, result) =
                decision.take().unwrap_or_else(|| panic!("a message with no decision: {line}\n{stdout}"));
            assert!(
                line.contains(&format!("incident: {number},")),
                "{line} follows the decision of {number}\n{stdout}"
            );
            assert!(
                line.contains(&format!("result: \"{result}\"")),
                "{line} is not the {result} decision\n{stdout}"
            );
            shown += 1;
        }
    }
    assert!(shown >= 5, "every decision shows its message ({shown}): {stdout}");
    assert_eq!(exchange_exists("pubsub").await, pubsub_before, "the broker as the test found it");
}

/// Whether the broker has `exchange` (a passive declare fails when it does not).
async fn exchange_exists(exchange: &str) -> bool {
    let conn = lapin::Connection::connect(&amqp_url(), Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
    let found = ch
        .exchange_declare(exchange.into(), lapin::ExchangeKind::Topic, passive, Default::default())
        .await
        .is_ok();
    let _ = conn.close(200, "".into()).await;
    found
}
