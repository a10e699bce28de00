//! A maintenance scenario on the openQA simulator, the real broker, and a gate driven through the
//! C ABI.

use incident_gate::ffi::*;
use incident_gate_sim as sim;
use incident_gate_sim::openqa::OpenQaSim;
use std::ffi::{CStr, CString};
use std::time::Duration;

pub use crate::amqp_url;

/// The openQA simulator with the groups of the recorded scenario.
pub struct OpenQa {
    pub sim: OpenQaSim,
    pub incidents_group: u64,
    pub updates_group: u64,
    pub devel_group: u64,
}

impl OpenQa {
    pub async fn start() -> OpenQa {
        let sim = incident_gate_sim::openqa::start().await;
        let incidents_group = sim.create_group("Maintenance: SLE 15 SP6 Incidents");
        let devel_group = sim.create_group("Maintenance: SLE 15 SP6 Devel");
        let updates_group = sim.create_group("Maintenance: SLE 15 SP6 Updates");
        OpenQa { sim, incidents_group, updates_group, devel_group }
    }

    pub fn url(&self) -> String {
        self.sim.url()
    }

    /// An incident job of `incident`, release request `request`.
    pub fn incident_job(&self, incident: u64, request: u64, test: &str) -> u64 {
        let settings = sim::incident_job_settings(incident, request, "pkg", test, "x86_64");
        self.sim.create_job(&sim::borrowed(&settings), self.incidents_group)
    }

    /// A job of Gitea pull request `pr` of `repo` at commit `sha`.
    pub fn gitea_job(&self, repo: &str, pr: u64, sha: &str, test: &str) -> u64 {
        let settings = sim::gitea_job_settings(repo, pr, sha, "pkg", test);
        self.sim.create_job(&sim::borrowed(&settings), self.incidents_group)
    }

    /// An aggregate job of `build` listing `incidents`.
    pub fn aggregate_job(&self, build: &str, incidents: &[u64], test: &str) -> u64 {
        let settings = sim::aggregate_job_settings(build, incidents, test);
        self.sim.create_job(&sim::borrowed(&settings), self.updates_group)
    }

    /// An incident whose `n` jobs all finished with `result` (no events emitted).
    pub async fn finished_incident(&self, incident: u64, n: usize, result: &str) -> (u64, Vec<u64>) {
        let jobs: Vec<u64> =
            (0..n).map(|i| self.incident_job(incident, 300000 + incident, &format!("t{i}"))).collect();
        for j in &jobs {
            self.sim.set_done(*j, result);
        }
        (incident, jobs)
    }
}

/// A gate behind the C ABI, exactly as the plugin holds one.
pub struct CGate(*mut ig_gate);

unsafe impl Send for CGate {}
unsafe impl Sync for CGate {}

pub fn last_error() -> String {
    unsafe { CStr::from_ptr(ig_last_error()) }.to_string_lossy().into_owned()
}

impl CGate {
    pub fn new(config: &serde_json::Value) -> CGate {
        let c = CString::new(config.to_string()).unwrap();
        let mut gate = std::ptr::null_mut();
        let status = unsafe { ig_gate_new(c.as_ptr(), &mut gate) };
        assert_eq!(status, ig_status::IG_OK, "{}", last_error());
        CGate(gate)
    }

    pub fn raw(&self) -> *const ig_gate {
        self.0
    }

    pub fn submit(&self, name: &str, data: &serde_json::Value) -> ig_status {
        let (n, d) = (CString::new(name).unwrap(), CString::new(data.to_string()).unwrap());
        unsafe { ig_gate_submit(self.0, n.as_ptr(), d.as_ptr()) }
    }

    pub fn job_done(&self, id: u64, result: &str) {
        let data = serde_json::json!({"id": id, "newbuild": null, "reason": null, "result": result});
        assert_eq!(self.submit("openqa_job_done", &data), ig_status::IG_OK, "{}", last_error());
    }

    pub fn flush(&self, timeout: Duration) -> ig_status {
        unsafe { ig_gate_flush(self.0, timeout.as_millis() as u32) }
    }

    pub fn flushed(&self) {
        assert_eq!(self.flush(Duration::from_secs(60)), ig_status::IG_OK, "{}", last_error());
    }

    fn take_string(
        &self,
        f: impl FnOnce(*mut *mut std::ffi::c_char) -> ig_status,
    ) -> Result<serde_json::Value, ig_status> {
        let mut out = std::ptr::null_mut();
        let status = f(&mut out);
        if status != ig_status::IG_OK {
            return Err(status);
        }
        let text = unsafe { CStr::from_ptr(out) }.to_string_lossy().into_owned();
        unsafe { ig_string_free(out) };
        Ok(serde_json::from_str(&text).unwrap())
    }

    pub fn status(&self) -> serde_json::Value {
        self.take_string(|out| unsafe { ig_gate_status(self.0, out) }).unwrap()
    }

    pub fn evaluate(&self, incident: u64) -> Result<serde_json::Value, ig_status> {
        self.take_string(|out| unsafe { ig_gate_evaluate(self.0, incident, out) })
    }

    /// `ig_gate_evaluate_submission`: `"git:124"`, `"124"`.
    pub fn evaluate_submission(&self, submission: &str) -> Result<serde_json::Value, ig_status> {
        let s = CString::new(submission).unwrap();
        self.take_string(|out| unsafe { ig_gate_evaluate_submission(self.0, s.as_ptr(), out) })
    }

    /// Decisions recorded in the state directory, newest first, as the status shows them.
    /// `ig_gate_incidents`: what the incidents page shows.
    pub fn incidents(&self, query: &serde_json::Value) -> serde_json::Value {
        let q = CString::new(query.to_string()).unwrap();
        self.take_string(|out| unsafe { ig_gate_incidents(self.0, q.as_ptr(), out) }).unwrap()
    }

    pub fn decisions(&self) -> Vec<serde_json::Value> {
        self.status()["engine"]["recent_decisions"].as_array().cloned().unwrap_or_default()
    }

    /// The decisions about `incident`, newest first.
    pub fn decisions_for(&self, incident: u64) -> Vec<serde_json::Value> {
        self.decisions().into_iter().filter(|d| d["incident"] == incident).collect()
    }
}

impl Drop for CGate {
    fn drop(&mut self) {
        unsafe { ig_gate_free(self.0) };
    }
}

pub fn gate_config(openqa: &str, state: &std::path::Path) -> serde_json::Value {
    serde_json::json!({
        "openqa_url": openqa,
        "state_dir": state,
        "publish_amqp": false,
        "report_obs": false,
        "http_timeout_s": 5,
    })
}

/// Polls `f` until it returns Some or `timeout` passes.
pub async fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An exclusive, auto-deleted queue bound to `#.incident.done` on `exchange`, consumed with auto-ack.
pub async fn subscribe_done(ch: &lapin::Channel, exchange: &str) -> lapin::Consumer {
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let queue = ch.queue_declare("".into(), options, FieldTable::default()).await.unwrap();
    let name = queue.name().clone();
    ch.queue_bind(
        name.clone(),
        exchange.into(),
        "#.incident.done".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
    ch.basic_consume(name, "".into(), options, FieldTable::default()).await.unwrap()
}

/// Publishes like openQA's AMQP plugin does, waiting for the broker's confirm.
pub async fn publish(ch: &lapin::Channel, exchange: &str, routing_key: &str, body: &[u8]) {
    let props = lapin::BasicProperties::default().with_content_type("application/json".into());
    let confirm = ch
        .basic_publish(exchange.into(), routing_key.into(), Default::default(), body, props)
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "the broker took the test's message");
}
