//! `incident-gate status` shows where catch-up from openQA stands, read from the state directory.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::OpenQa;
use incident_gate::config::Config;
use incident_gate::engine::Core;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_catch_up_watermark() {
    let qa = OpenQa::start().await;
    let running = qa.incident_job(7501, 300751, "slow");
    qa.finished_incident(7502, 2, "passed").await;
    let state = tempfile::tempdir().unwrap();
    let cfg = Config {
        openqa_url: qa.url(),
        state_dir: state.path().to_path_buf(),
        publish_amqp: false,
        report_obs: false,
        ..Config::default()
    };
    let core = Arc::new(Core::new(Arc::new(cfg)).unwrap());
    for _ in 0..2 {
        core.catch_up(Duration::ZERO).await.unwrap().expect("ran");
    }
    let status = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_incident-gate"))
            .arg("status")
            .args(args)
            .env_remove("INCIDENT_GATE_CONFIG")
            .env("INCIDENT_GATE_OPENQA_URL", qa.url())
            .env("INCIDENT_GATE_STATE_DIR", state.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let json: serde_json::Value = serde_json::from_str(&status(&["--json"])).unwrap();
    let catchup = &json["catchup"];
    assert_eq!(catchup["watermark"], running - 1, "the running job holds it: {json}");
    assert_eq!(catchup["waiting_jobs"], 1, "{json}");
    let text = status(&[]);
    assert!(text.contains(&format!("catch-up from openQA: watermark {} ", running - 1)), "{text}");
}
