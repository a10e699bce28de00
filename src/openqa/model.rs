//! The parts of openQA's job JSON that incident-gate reads (see ../shared/fixtures/openqa).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `done` and `cancelled` are final; every other state still changes.
pub fn is_final_state(state: &str) -> bool {
    matches!(state, "done" | "cancelled")
}

/// A job as `GET /api/v1/jobs/<id>` and `GET /api/v1/jobs?ids=` return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub name: String,
    pub state: String,
    pub result: String,
    #[serde(default)]
    pub clone_id: Option<u64>,
    #[serde(default)]
    pub origin_id: Option<u64>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub group_id: Option<u64>,
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    #[serde(default)]
    pub t_finished: Option<String>,
    /// Why it ended so; openQA appends its auto-restart decision here.
    #[serde(default)]
    pub reason: Option<String>,
    /// Shown as "running since" while testing waits on the job.
    #[serde(default)]
    pub t_started: Option<String>,
}

impl Job {
    pub fn setting(&self, key: &str) -> &str {
        self.settings.get(key).map(String::as_str).unwrap_or("")
    }

    /// Final: `done` or `cancelled` (scheduled, assigned, setup, running, uploading still change).
    pub fn is_final(&self) -> bool {
        is_final_state(&self.state)
    }

    pub fn is_ok(&self) -> bool {
        matches!(self.result.as_str(), "passed" | "softfailed")
    }
}

/// One job comment (`GET /api/v1/jobs/<id>/comments` answers a list of these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    pub id: u64,
    pub text: String,
}

#[derive(Debug, Deserialize)]
pub struct JobEnvelope {
    pub job: Job,
}

#[derive(Debug, Deserialize)]
pub struct JobList {
    pub jobs: Vec<Job>,
}

/// `GET /api/v1/job_settings/jobs` answers `{"jobs":[ids]}`, one entry per matching settings row.
#[derive(Debug, Deserialize)]
pub struct JobIds {
    pub jobs: Vec<u64>,
}

/// A job group as `GET /api/v1/job_groups` lists it (openQA sends more fields; these are the ones
/// incident-gate uses to name and ignore groups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobGroup {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub parent_id: Option<u64>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A scheduled product as `GET /api/v1/isos/<id>?include_job_ids=1` shows it (openQA sends more
/// columns; these say whether it still creates jobs and for which incidents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledProduct {
    pub id: u64,
    /// `added`, `scheduling`, `scheduled`, `cancelling`, `cancelled`.
    pub status: String,
    #[serde(default)]
    pub settings: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub job_ids: Vec<u64>,
    #[serde(default)]
    pub t_created: Option<String>,
}

impl ScheduledProduct {
    /// Still creating jobs: an incident it names is not finished.
    pub fn is_scheduling(&self) -> bool {
        matches!(self.status.as_str(), "added" | "scheduling")
    }

    /// Its settings as strings (openQA stores what was posted; numbers may come back as numbers).
    pub fn string_settings(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in self.settings.iter().flatten() {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => continue,
            };
            out.insert(k.clone(), v);
        }
        out
    }
}
