//! The `incident-gate` command as an operator runs it: exit codes, output, configuration from an
//! INI file and the environment, and the standalone listener stopping cleanly.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::OpenQa;
use incident_gate_sim::obs::{ObsSim, ObsSimConfig, SimAuth, SimReview};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_incident-gate");

fn run(args: &[&str], env: &[(&str, String)]) -> Output {
    testkit::cli::run(BIN, args, env)
}

/// The simulators and the environment of a hook that reports to the IBS simulator as `qam-bot`.
async fn hook_world(password: &str) -> (OpenQa, ObsSim, tempfile::TempDir, Vec<(&'static str, String)>) {
    let qa = OpenQa::start().await;
    let auth = SimAuth::Basic { user: "qam-bot".into(), password: password.into() };
    let obs = incident_gate_sim::obs::start(ObsSimConfig::new(auth)).await;
    let state = tempfile::tempdir().unwrap();
    let env = vec![
        ("INCIDENT_GATE_OPENQA_URL", qa.url()),
        ("INCIDENT_GATE_STATE_DIR", state.path().display().to_string()),
        ("INCIDENT_GATE_PUBLISH_AMQP", "false".into()),
        ("INCIDENT_GATE_OBS_URL", obs.url()),
        ("INCIDENT_GATE_OBS_USER", "qam-bot".into()),
        ("INCIDENT_GATE_OBS_PASSWORD", password.into()),
    ];
    (qa, obs, state, env)
}

fn in_review(obs: &ObsSim, request: u64) {
    obs.create_request(request, "review", vec![SimReview::group("qam-openqa")], "maintenance_release");
}

fn env_for(openqa: &str, state: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("INCIDENT_GATE_OPENQA_URL", openqa.to_string()),
        ("INCIDENT_GATE_STATE_DIR", state.display().to_string()),
        ("INCIDENT_GATE_PUBLISH_AMQP", "false".into()),
        ("INCIDENT_GATE_REPORT_OBS", "false".into()),
        ("INCIDENT_GATE_HTTP_TIMEOUT_S", "3".into()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn check_explains_the_verdict_and_exits_with_it() {
    let qa = OpenQa::start().await;
    let state = tempfile::tempdir().unwrap();
    let env = env_for(&qa.url(), state.path());
    let ok: Vec<u64> = (0..2).map(|i| qa.incident_job(8001, 1, &format!("t{i}"))).collect();
    let bad = qa.incident_job(8002, 2, "broken");
    let running = qa.incident_job(8003, 3, "slow");
    for j in &ok {
        qa.sim.set_done(*j, "passed");
    }
    qa.sim.set_done(bad, "failed");
    let _ = running;

    let out = tokio::task::spawn_blocking({
        let env = env.clone();
        move || {
            (
                run(&["check", "8001", "--json"], &env),
                run(&["check", "8002"], &env),
                run(&["check", "8003"], &env),
                run(&["check", "8999"], &env),
            )
        }
    })
    .await
    .unwrap();
    let (passed, failed, pending, none) = out;
    assert_eq!(passed.status.code(), Some(0), "{}", String::from_utf8_lossy(&passed.stderr));
    let verdict: serde_json::Value = serde_json::from_slice(&passed.stdout).unwrap();
    assert_eq!(verdict["result"], "passed");
    assert_eq!(verdict["jobs"]["total"], 2);
    assert_eq!(failed.status.code(), Some(1));
    let text = String::from_utf8_lossy(&failed.stdout);
    assert!(text.contains(&format!("BLOCKING {bad} failed")), "{text}");
    assert!(text.contains("broken"), "every job is listed with why: {text}");
    assert_eq!(pending.status.code(), Some(4));
    assert_eq!(none.status.code(), Some(5));
    // check has no side effects: nothing was recorded
    let status = run(&["status", "--json"], &env);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["recent_decisions"], serde_json::json!([]));

    qa.sim.set_down(true);
    let down = tokio::task::spawn_blocking(move || run(&["check", "8001"], &env)).await.unwrap();
    assert_eq!(down.status.code(), Some(3), "openQA unavailable");
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("openQA"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hook_decides_reports_and_status_shows_it() {
    let qa = OpenQa::start().await;
    let auth = SimAuth::Basic { user: "qam-bot".into(), password: "pw-cli-3".into() };
    let obs = incident_gate_sim::obs::start(ObsSimConfig::new(auth)).await;
    in_review(&obs, 310_001);
    let jobs: Vec<u64> = (0..3).map(|i| qa.incident_job(8101, 310_001, &format!("t{i}"))).collect();
    for j in &jobs {
        qa.sim.set_done(*j, "passed");
    }
    let state = tempfile::tempdir().unwrap();
    // configuration from an INI file (as in openqa.ini) with the secret from the environment
    let ini = state.path().join("openqa.ini");
    std::fs::write(
        &ini,
        format!(
            "[global]\nplugins = IncidentGate\n\n[incident_gate]\nopenqa_url = {}\nobs_url = {}\nobs_user = qam-bot\n\
             state_dir = {}\npublish_amqp = false\n",
            qa.url(),
            obs.url(),
            state.path().join("state").display()
        ),
    )
    .unwrap();
    let env = vec![("INCIDENT_GATE_OBS_PASSWORD", "pw-cli-3".to_string())];
    let ini_arg = ini.display().to_string();
    let job = jobs[2].to_string();
    let (before, hook, status, influx) = tokio::task::spawn_blocking(move || {
        let before = run(&["status", "--influx", "--config", &ini_arg], &env);
        let hook = run(&["hook", &job, "--config", &ini_arg], &env);
        let status = run(&["status", "--config", &ini_arg], &env);
        (before, hook, status, run(&["status", "--influx", "--config", &ini_arg], &env))
    })
    .await
    .unwrap();
    // the metrics for telegraf's exec input: the plugin's lines, moved by the hook's decision
    let passed = format!("incident_gate,url={},kind=ibs,result=passed decisions=", qa.url());
    let before = String::from_utf8_lossy(&before.stdout);
    assert!(before.contains(&format!("{passed}0i\n")), "{before}");
    let influx = String::from_utf8_lossy(&influx.stdout);
    assert!(influx.contains(&format!("{passed}1i\n")), "{influx}");
    assert!(influx.contains(",sink=ibs backlog=0i,"), "delivered before the hook exited: {influx}");
    let stdout = String::from_utf8_lossy(&hook.stdout);
    assert_eq!(hook.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&hook.stderr));
    assert!(stdout.contains("incident 8101: passed"), "{stdout}");
    assert_eq!(obs.reviews(310_001)[0].state, "accepted", "the hook reported to IBS before exiting");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("incident 8101 request 310001 passed"), "{status}");
    assert!(status.contains("pending: none"), "{status}");
    assert!(status.contains("obs done"), "{status}");
    assert!(!status.contains("pw-cli-3"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_run_catches_up_on_incidents_whose_jobs_ran_no_hook() {
    let (qa, obs, _state, env) = hook_world("pw-cli-4").await;
    // incident 8201's jobs ended and no hook ran for them (openQA gave up on it, or they were
    // cancelled); then a job of incident 8202 ends and its hook runs
    for rr in [310_201, 310_202] {
        in_review(&obs, rr);
    }
    let silent: Vec<u64> = (0..2).map(|i| qa.incident_job(8201, 310_201, &format!("t{i}"))).collect();
    let job = qa.incident_job(8202, 310_202, "t0");
    for j in silent.iter().chain([&job]) {
        qa.sim.set_done(*j, "passed");
    }
    let job = job.to_string();
    let hook = tokio::task::spawn_blocking(move || run(&["hook", &job], &env)).await.unwrap();
    let stdout = String::from_utf8_lossy(&hook.stdout);
    assert_eq!(hook.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&hook.stderr));
    assert!(stdout.contains("incident 8202: passed"), "{stdout}");
    assert!(stdout.contains("ended jobs no decision had counted, their incidents evaluated"), "{stdout}");
    assert_eq!(obs.reviews(310_202)[0].state, "accepted");
    assert_eq!(obs.reviews(310_201)[0].state, "accepted", "the incident without a hook run is decided too");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_run_whose_catch_up_finds_incidents_still_running_delivers_within_its_budget() {
    let (qa, obs, _state, env) = hook_world("pw-cli-5").await;
    // incidents with jobs that ended (no hook ran for them) and a job still running: catch-up hands
    // the ended ones over one by one, so some land while their incident already waits on the last
    for n in 0..8u64 {
        in_review(&obs, 310_300 + n);
        for t in 0..4 {
            let j = qa.incident_job(8300 + n, 310_300 + n, &format!("t{t}"));
            if t < 3 {
                qa.sim.set_done(j, "passed");
            }
        }
    }
    in_review(&obs, 310_399);
    let job = qa.incident_job(8399, 310_399, "t0");
    qa.sim.set_done(job, "passed");
    let job = job.to_string();
    let hook =
        tokio::task::spawn_blocking(move || run(&["hook", "--budget", "5", &job], &env)).await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&hook.stdout), String::from_utf8_lossy(&hook.stderr));
    // 3 would mean its own decision was left undelivered: the budget went waiting on the others
    assert_eq!(hook.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(obs.reviews(310_399)[0].state, "accepted", "{stdout}{stderr}");
    for n in 0..8u64 {
        assert_eq!(obs.reviews(310_300 + n)[0].state, "new", "incident {} still runs a job", 8300 + n);
    }
}

#[test]
fn a_bad_configuration_is_exit_2_naming_the_key() {
    let out = run(&["check", "1"], &[("INCIDENT_GATE_CONCURRENCY", "lots".into())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("concurrency"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("x.ini");
    std::fs::write(&ini, "[other]\na = b\n").unwrap();
    let out = run(&["status", "--config", ini.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[incident_gate]"));
    let help = run(&["--help"], &[]);
    let help = String::from_utf8_lossy(&help.stdout);
    for word in ["listen", "hook", "check", "status", "sim", "demo", "bench", "Exit codes"] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn openqa_refusing_is_exit_6_which_skip_rc_does_not_turn_into_ask_again() {
    let qa = OpenQa::start().await;
    let state = tempfile::tempdir().unwrap();
    let env = env_for(&qa.url(), state.path());
    // incident 8101: the hook's own job is refused; 8102: another job its evaluation looks up
    let own = qa.incident_job(8101, 1, "t");
    let (hooked, other) = (qa.incident_job(8102, 2, "t0"), qa.incident_job(8102, 2, "t1"));
    for j in [own, hooked, other] {
        qa.sim.set_done(j, "passed");
    }
    qa.sim.refuse_job(own, 403, "Job is not visible to you");
    qa.sim.refuse_job(other, 403, "Job is not visible to you");
    let (own, hooked) = (own.to_string(), hooked.to_string());
    let (own_refused, own_refused_skip, other_refused, check) = tokio::task::spawn_blocking(move || {
        (
            run(&["hook", &own], &env),
            run(&["hook", "--skip-rc", "142", &own], &env),
            run(&["hook", "--skip-rc", "142", &hooked], &env),
            run(&["check", "8102"], &env),
        )
    })
    .await
    .unwrap();
    for (what, out) in [
        ("hook, its job refused", own_refused),
        ("hook --skip-rc 142, its job refused", own_refused_skip),
        ("hook --skip-rc 142, another job of the incident refused", other_refused),
        ("check", check),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{what}: {stderr}");
        assert!(stderr.contains("HTTP 403: Job is not visible to you"), "{what}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_budget_beyond_a_day_is_a_usage_error_not_a_crash() {
    // a reachable openQA, so that without the bound the run gets as far as its deadline
    let qa = OpenQa::start().await;
    let state = tempfile::tempdir().unwrap();
    let env = env_for(&qa.url(), state.path());
    for budget in ["9223372036854775807", "18446744073709551615", "86401"] {
        let env = env.clone();
        let args = ["hook", "--budget", budget, "1"];
        let out = tokio::task::spawn_blocking(move || run(&args, &env)).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--budget {budget}: {stderr}");
        assert!(stderr.contains("--budget") && stderr.contains("0..=86400"), "--budget {budget}: {stderr}");
        assert!(!stderr.contains("panicked"), "--budget {budget}: {stderr}");
    }
}

#[test]
fn sim_prints_its_urls_and_serves_until_stdin_closes() {
    let mut child =
        Command::new(BIN).arg("sim").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let urls: serde_json::Value = serde_json::from_str(&line).unwrap();
    let openqa = urls["openqa"].as_str().unwrap().to_string();
    assert!(openqa.starts_with("http://127.0.0.1:"));
    assert!(urls["obs"].as_str().unwrap().starts_with("http://127.0.0.1:"));
    let addr = openqa.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /api/v1/job_groups HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut stream, &mut reply).unwrap();
    assert!(reply.contains("Maintenance: SLE 15 SP6 Incidents"), "{reply}");
    drop(child.stdin.take());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "sim did not stop when stdin closed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_decides_from_openqa_messages_and_stops_cleanly_on_sigterm() {
    use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
    let qa = OpenQa::start().await;
    let jobs: Vec<u64> = (0..2).map(|i| qa.incident_job(8201, 320_001, &format!("t{i}"))).collect();
    let state = tempfile::tempdir().unwrap();
    let exchange = format!("ig-cli-listen-{}", std::process::id());
    let mut env = env_for(&qa.url(), state.path());
    env.extend([
        ("INCIDENT_GATE_AMQP_URL", common::amqp_url()),
        ("INCIDENT_GATE_AMQP_EXCHANGE", exchange.clone()),
        ("INCIDENT_GATE_AMQP_DECLARE_EXCHANGE", "true".into()),
        ("INCIDENT_GATE_AMQP_QUEUE", format!("{exchange}-q")),
        ("INCIDENT_GATE_AMQP_QUEUE_DURABLE", "false".into()),
    ]);
    let mut cmd = Command::new(BIN);
    cmd.arg("listen").env_remove("INCIDENT_GATE_CONFIG").stdout(Stdio::null());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();

    let conn = lapin::Connection::connect(&common::amqp_url(), Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(exchange.as_str().into(), lapin::ExchangeKind::Topic, durable, Default::default())
        .await
        .unwrap();
    // the listener declares and binds its queue once it is up; messages before that go nowhere
    let bound = async {
        for _ in 0..200 {
            if queue_bound(&exchange).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(bound.await, "the listener bound its queue");
    for job in &jobs {
        let event = qa.sim.set_done(*job, "passed").unwrap();
        let body = serde_json::to_vec(&event.amqp_body).unwrap();
        let key = event.routing_key("suse");
        let options = BasicPublishOptions::default();
        let confirm = ch
            .basic_publish(exchange.as_str().into(), key.as_str().into(), options, &body, Default::default())
            .await;
        confirm.unwrap().await.unwrap();
    }
    let status_env = env.clone();
    let decided = common::eventually(Duration::from_secs(20), || {
        let out = run(&["status", "--json"], &status_env);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let decided = status["recent_decisions"].as_array()?.iter().find(|d| d["incident"] == 8201)?.clone();
        Some(decided)
    })
    .await
    .expect("the listener decided incident 8201");
    assert_eq!(decided["result"], "passed");
    let pid = child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "clean exit on SIGTERM: {status:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "listen did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    } // the listener's queue and the exchange outlive it by design: leave the shared broker as found
    let options = lapin::options::QueueDeleteOptions::default();
    ch.queue_delete(format!("{exchange}-q").as_str().into(), options).await.unwrap();
    ch.exchange_delete(exchange.as_str().into(), Default::default()).await.unwrap();
    let _ = conn.close(200, "".into()).await;
}

/// Whether the listener's queue exists (a passive declare fails while it does not).
async fn queue_bound(exchange: &str) -> bool {
    let Ok(conn) = lapin::Connection::connect(&common::amqp_url(), Default::default()).await else {
        return false;
    };
    let Ok(ch) = conn.create_channel().await else { return false };
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let ok =
        ch.queue_declare(format!("{exchange}-q").as_str().into(), passive, Default::default()).await.is_ok();
    let _ = conn.close(200, "".into()).await;
    ok
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_a_pull_request_by_kind_and_number() {
    let qa = OpenQa::start().await;
    let state = tempfile::tempdir().unwrap();
    let env = env_for(&qa.url(), state.path());
    let sha = "2cf58b3a9c32d139470a5f32d5aa64efbd0fa90dda0144b09421709252fcb0ea";
    let pr = qa.gitea_job("products/SLFO", 8101, sha, "t0");
    let ibs = qa.incident_job(8101, 1, "t0");
    qa.sim.set_done(pr, "passed");
    qa.sim.set_done(ibs, "failed");
    let (git, incident, bad) = tokio::task::spawn_blocking(move || {
        (run(&["check", "git:8101"], &env), run(&["check", "8101"], &env), run(&["check", "pr:8101"], &env))
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&git.stdout);
    assert_eq!(git.status.code(), Some(0), "{text}");
    assert!(text.contains("pull request git:8101: passed") && text.contains(&sha[..12]), "{text}");
    assert!(!text.contains(&format!("counts  {ibs:>8}")), "the incident's job does not count: {text}");
    assert_eq!(incident.status.code(), Some(1), "{}", String::from_utf8_lossy(&incident.stdout));
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// Issue 12: `check` says why a verdict is not final yet: the coverage policy's missing pieces and
/// the quiet period since the incident's newest job, each with what and since when.
#[tokio::test(flavor = "multi_thread")]
async fn check_explains_what_testing_still_waits_for() {
    let qa = OpenQa::start().await;
    let state = tempfile::tempdir().unwrap();
    let mut env = env_for(&qa.url(), state.path());
    let job = qa.incident_job(8201, 1, "t0");
    qa.sim.set_done(job, "passed");
    env.push(("INCIDENT_GATE_COVERAGE", "*/*/*/*: tests=t0|t1".into()));
    let out = tokio::task::spawn_blocking({
        let env = env.clone();
        move || run(&["check", "8201"], &env)
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "a pass missing a required test is pending: {text}");
    assert!(text.contains("testing not finished; still expected:"), "{text}");
    assert!(text.contains("coverage   test t1 for "), "{text}");

    // without the policy but with a quiet period: the job just seen holds the pass back
    env.pop();
    env.push(("INCIDENT_GATE_QUIET_PERIOD_S", "600".into()));
    let out = tokio::task::spawn_blocking(move || run(&["check", "8201", "--json"], &env)).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert_eq!((v["result"].as_str(), v["complete"].as_bool()), (Some("pending"), Some(false)));
    assert_eq!(v["waiting"][0]["kind"], "quiet");
    assert!(v["waiting"][0]["what"].as_str().unwrap().starts_with("no new job for 600 s (until "), "{v}");
    assert!(v["waiting"][0]["since"].is_string(), "{v}");
}
