//! A simulator of openQA's REST API: the routes incident-gate reads plus the writes that drive a
//! scenario, with the fields, JSON types, status codes, orderings and quirks of a real instance
//! (tests/fixtures/openqa, checked by tests/openqa_sim_fixtures.rs so that it cannot drift).
//!
//! Every change of state returns the event openQA would emit for it: the in-process event (what an
//! openQA plugin receives) and the body of the AMQP message openQA's AMQP plugin publishes. The HTTP
//! write routes and the Rust control API share one implementation, so both emit the same events.
//!
//! Not simulated: workers and job modules (jobs go scheduled -> done only through `set_done`),
//! job dependencies, assets, paging `Link` headers, Mojo's `\/` escaping in bodies.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use incident_gate::openqa::auth::{self, PresentedAuth};
use incident_gate::openqa::model::Job;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

const PENDING_STATES: &[&str] = &["scheduled", "assigned", "setup", "running", "uploading"];
const RESULTS: &[&str] = &[
    "none",
    "passed",
    "softfailed",
    "failed",
    "incomplete",
    "skipped",
    "obsoleted",
    "parallel_failed",
    "parallel_restarted",
    "user_cancelled",
    "user_restarted",
    "timeout_exceeded",
];
/// Settings openQA keeps as columns of the jobs table: never rows of job_settings, so
/// `job_settings/jobs` cannot find them.
const COLUMNS: [&str; 7] = ["DISTRI", "VERSION", "FLAVOR", "ARCH", "BUILD", "TEST", "MACHINE"];
/// What `latest=1` and the overview de-duplicate on.
const SCENARIO: [&str; 7] = ["DISTRI", "VERSION", "FLAVOR", "ARCH", "TEST", "MACHINE", "BUILD"];
const DEFAULT_PRIORITY: i64 = 50;
/// The user every write is attributed to (the fixtures were captured as "Demo" with Fake auth).
const USER: &str = "Demo";
/// `misc_limits`: `job_settings_max_recent_jobs`, `generic_default_limit`, `generic_max_limit`.
const MAX_RECENT_JOBS: u64 = 20_000;
const GENERIC_DEFAULT_LIMIT: usize = 1000;
const GENERIC_MAX_LIMIT: usize = 10_000;
/// The address openQA names in its timestamp-mismatch message; the simulator only listens on loopback.
const PEER_IP: &str = "127.0.0.1";

/// Which openQA the simulator answers like, where versions differ (tests/openqa_drift.rs holds
/// each to a real instance of that version).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Flavor {
    /// Current upstream openQA (what tests/fixtures/openqa were captured from).
    #[default]
    Upstream,
    /// openQA as packaged in Debian 12 (4.6.1674490999): `job_settings/jobs` knows only
    /// `list_value` (400 "list_value missing" for `value=`) and no `[]` keys, no bulk comment
    /// routes, no `failedmodules` in AMQP job messages, no CASEDIR priority adjustment, comments
    /// always rendered, a non-numeric `ids` element is a 500, no `follow=` or `job_setting=`,
    /// errors without `error_status`, list pages of 10 000 jobs (at most 100 000).
    Debian12,
}

/// An event as openQA emits it for one change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimEvent {
    /// The in-process event name, e.g. `openqa_job_done`.
    pub name: String,
    /// The in-process event data, exactly as a plugin subscribed to `name` receives it.
    pub data: Value,
    /// The AMQP routing key without its prefix, e.g. `job.done`.
    pub routing_suffix: String,
    /// The AMQP message body openQA's AMQP plugin publishes for this event.
    pub amqp_body: Value,
    /// Whether the AMQP plugin publishes anything for it (not for the bulk comment events).
    pub amqp: bool,
}

impl SimEvent {
    /// The AMQP routing key under `prefix` (openQA's `topic_prefix`, `suse` by default).
    pub fn routing_key(&self, prefix: &str) -> String {
        format!("{prefix}.openqa.{}", self.routing_suffix)
    }

    fn new(name: &str, data: Value, amqp_body: Value) -> SimEvent {
        // The AMQP plugin replaces the first two `_` of the whole name (`s/_/\./` twice):
        // `openqa_job_update_result` becomes `openqa.job.update_result`, its suffix `job.update_result`.
        let mut suffix = name.trim_start_matches("openqa_").to_string();
        if let Some(i) = suffix.find('_') {
            suffix.replace_range(i..=i, ".");
        }
        SimEvent { name: name.to_string(), data, routing_suffix: suffix, amqp_body, amqp: true }
    }

    /// An event openQA's AMQP plugin does not subscribe to.
    fn in_process(name: &str, data: Value) -> SimEvent {
        SimEvent { amqp: false, amqp_body: Value::Null, ..SimEvent::new(name, data, Value::Null) }
    }
}

/// An error answer: openQA renders `{"error": ..., "error_status": ...}`.
#[derive(Debug, Clone, PartialEq)]
struct Refusal {
    status: u16,
    error: String,
    form: Form,
}

/// How an error is rendered: most API errors as `{"error", "error_status"}`; some controllers
/// render `{"error"}` alone; an exception is Mojolicious' HTML error page.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    Full,
    ErrorOnly,
    Html,
}

fn refuse<T>(status: u16, error: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal { status, error: error.into(), form: Form::Full })
}

/// `$c->render(json => {error => ...}, status => ...)`: no `error_status`.
fn refuse_plain<T>(status: u16, error: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal { status, error: error.into(), form: Form::ErrorOnly })
}

/// What an openQA write returns: the HTTP status, the body, and the events in emission order.
type Written = (u16, Value, Vec<SimEvent>);

/// Mojolicious' validation error text: the failed parameters, sorted, `missing` or `invalid`.
fn validation_error(failed: &mut [(&str, &str)]) -> Refusal {
    failed.sort();
    let list: Vec<String> = failed.iter().map(|(name, why)| format!("{name} {why}")).collect();
    Refusal { status: 400, error: format!("Erroneous parameters ({})", list.join(", ")), form: Form::Full }
}

/// Request parameters: query pairs, then form-body pairs, in order.
#[derive(Debug, Default, Clone)]
struct Params(Vec<(String, String)>);

impl Params {
    /// The last value, as Mojolicious' `param` returns it.
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
    /// openQA's list parameters (`ids`, `state`, `result`): one comma-separated value or repeats.
    fn list(&self, name: &str) -> Option<Vec<String>> {
        let last = self.get(name)?;
        if last.contains(',') {
            Some(last.split(',').map(str::to_string).collect())
        } else {
            Some(self.all(name).into_iter().map(str::to_string).collect())
        }
    }
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_')
}

fn is_num(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// SQL `LIKE` with openQA's `*` -> `%`: `%` any run, `_` any one character, the rest literal.
/// Callers test the cheap value match first: this allocates, and the settings scan of a busy
/// simulated day runs it for every row.
fn like(pattern: &str, text: &str) -> bool {
    incident_gate::verdict::wildcard_match(&pattern.replace('*', "%"), text, '%', '_')
}

fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// `2026-11-24T17:33:05Z`
fn iso_z(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `2026-11-24T17:33:05`, the form of `t_finished` in job JSON.
fn iso_plain(t: SystemTime) -> String {
    iso_z(t).trim_end_matches('Z').to_string()
}

/// `2026-11-24 17:33:05 +0000`, the form of comment times in the comments API.
fn comment_time(t: SystemTime) -> String {
    format!("{} +0000", iso_plain(t).replace('T', " "))
}

/// Bug references in a comment, like openQA's `find_bugrefs`: a marker, `#`, an optional
/// `PROJECT-` and digits, standing at the start, after whitespace or a comma. So
/// `...incident_12345:bsc#1234567` has none (the `:` before it hides it), as the fixtures show.
fn bugrefs(text: &str) -> Vec<String> {
    const MARKERS: &[&str] = &["bsc", "boo", "bnc", "bgo", "bko", "brc", "poo", "kde", "fdo", "jsc", "lp"];
    let mut refs = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let boundary = i == 0 || chars[i - 1].is_whitespace() || chars[i - 1] == ',';
        if boundary {
            for m in MARKERS {
                let mlen = m.chars().count();
                if chars.len() < i + mlen + 2
                    || chars[i..i + mlen].iter().collect::<String>() != *m
                    || chars[i + mlen] != '#'
                {
                    continue;
                }
                let mut j = i + mlen + 1;
                let id_start = j;
                let mut k = j;
                while k < chars.len() && chars[k].is_ascii_uppercase() {
                    k += 1;
                }
                if k > j && k < chars.len() && chars[k] == '-' {
                    j = k + 1;
                }
                let digits_start = j;
                while j < chars.len() && chars[j].is_ascii_digit() {
                    j += 1;
                }
                let ends_clean =
                    j == chars.len() || !(chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == '"');
                if j > digits_start && ends_clean {
                    refs.push(format!("{m}#{}", chars[id_start..j].iter().collect::<String>()));
                    i = j;
                }
                break;
            }
        }
        i += 1;
    }
    refs
}

fn bugurl(bugref: &str) -> Option<String> {
    let (marker, id) = bugref.split_once('#')?;
    let url = match marker {
        "bsc" | "boo" | "bnc" => format!("https://bugzilla.suse.com/show_bug.cgi?id={id}"),
        "poo" => format!("https://progress.opensuse.org/issues/{id}"),
        "bgo" => format!("https://bugzilla.gnome.org/show_bug.cgi?id={id}"),
        "bko" => format!("https://bugzilla.kernel.org/show_bug.cgi?id={id}"),
        "brc" => format!("https://bugzilla.redhat.com/show_bug.cgi?id={id}"),
        "kde" => format!("https://bugs.kde.org/show_bug.cgi?id={id}"),
        "fdo" => format!("https://bugs.freedesktop.org/show_bug.cgi?id={id}"),
        "jsc" => format!("https://jira.suse.com/browse/{id}"),
        "lp" => format!("https://bugs.launchpad.net/bugs/{id}"),
        _ => return None,
    };
    Some(url)
}

/// openQA's Markdown marks `label:<name>` up as a span.
fn render_labels(escaped: &str) -> String {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = escaped;
    while let Some(at) = rest.find("label:") {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let boundary = !before.chars().next_back().is_some_and(word);
        let run: String =
            from["label:".len()..].chars().take_while(|&c| word(c) || c == ':' || c == '#').collect();
        let label = run.trim_end_matches(|c: char| !word(c));
        if boundary && !label.is_empty() {
            let whole = "label:".len() + label.len();
            out.push_str(&format!("<span class=\"openqa-label\">{}</span>", &from[..whole]));
            rest = &from[whole..];
        } else {
            out.push_str("label:");
            rest = &from["label:".len()..];
        }
    }
    out.push_str(rest);
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[derive(Debug, Clone)]
struct SimJob {
    id: u64,
    /// The non-empty column settings (DISTRI, VERSION, ...).
    columns: BTreeMap<String, String>,
    group_id: Option<u64>,
    priority: i64,
    state: String,
    result: String,
    reason: Option<String>,
    clone_id: Option<u64>,
    origin_id: Option<u64>,
    t_finished: Option<String>,
}

impl SimJob {
    fn column(&self, key: &str) -> Option<&str> {
        self.columns.get(key).map(String::as_str)
    }
    fn is_pending(&self) -> bool {
        PENDING_STATES.contains(&self.state.as_str())
    }
    fn scenario(&self) -> Vec<Option<&str>> {
        SCENARIO.iter().map(|k| self.column(k)).collect()
    }
}

/// One row of openQA's job_settings table.
#[derive(Debug, Clone)]
struct SettingRow {
    id: u64,
    job_id: u64,
    key: String,
    value: String,
}

#[derive(Debug, Clone)]
struct Group {
    id: u64,
    name: String,
}

#[derive(Debug, Clone)]
struct CommentRow {
    id: u64,
    job_id: u64,
    text: String,
    user: String,
    created: SystemTime,
    updated: SystemTime,
}

/// openQA's `find_labels` (`\blabel:([\w:#]+)\b`) then `force_result:(\w+):?(\w*)`: the
/// result a `label:force_result:<result>[:<description>]` comment forces, with its description.
fn force_result(text: &str) -> Option<(String, String)> {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(at) = text[from..].find("label:").map(|i| i + from) {
        from = at + "label:".len();
        if text[..at].chars().next_back().is_some_and(word) {
            continue;
        }
        let run: String = text[from..].chars().take_while(|&c| word(c) || c == ':' || c == '#').collect();
        let label = run.trim_end_matches(|c: char| !word(c));
        let Some(rest) = label.strip_prefix("force_result:") else {
            continue;
        };
        let result: String = rest.chars().take_while(|&c| word(c)).collect();
        if result.is_empty() {
            continue;
        }
        let tail = rest[result.len()..].strip_prefix(':').unwrap_or(&rest[result.len()..]);
        return Some((result, tail.chars().take_while(|&c| word(c)).collect()));
    }
    None
}

/// The simulated database. Ids start at 1 like a freshly reset openQA.
#[derive(Debug, Default)]
struct Db {
    groups: Vec<Group>,
    jobs: BTreeMap<u64, SimJob>,
    /// All rows in insertion order (row ids ascending); rows are never deleted.
    settings: Vec<SettingRow>,
    /// Positions in `settings` per job, so that rendering a job does not scan every row.
    rows_by_job: HashMap<u64, Vec<usize>>,
    comments: Vec<CommentRow>,
    flavor: Flavor,
    /// Fault injection: job ids whose lookups answer this status and error text.
    refused: HashMap<u64, (u16, String)>,
    last_group: u64,
    last_job: u64,
    last_row: u64,
    last_comment: u64,
    /// The simulator's own URL, for the `Link` headers of paginated lists.
    base_url: String,
    /// `misc_limits.generic_max_limit` when a test sets another one.
    max_limit: Option<usize>,
    /// `misc_limits.job_settings_max_recent_jobs` when a test sets another one.
    max_recent_jobs: Option<u64>,
}

impl Db {
    fn group(&self, id: u64) -> Option<&Group> {
        self.groups.iter().find(|g| g.id == id)
    }

    fn job_name(&self, job: &SimJob) -> String {
        let mut parts = Vec::new();
        for c in ["DISTRI", "VERSION", "FLAVOR", "ARCH", "BUILD", "TEST"] {
            if let Some(v) = job.column(c) {
                parts.push(if c == "BUILD" { format!("Build{v}") } else { v.to_string() });
            }
        }
        let mut name = parts.join("-");
        if let Some(m) = job.column("MACHINE") {
            name.push('@');
            name.push_str(m);
        }
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() || "@._+:-".contains(c) { c } else { '_' })
            .collect()
    }

    /// The settings as the job JSON shows them: columns, rows (array settings joined with `,` in
    /// row order) and the computed NAME.
    fn settings_of(&self, job: &SimJob) -> Map<String, Value> {
        let mut joined: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for row in self.rows_of(job.id) {
            joined.entry(row.key.clone()).or_default().push(&row.value);
        }
        let mut map: Map<String, Value> =
            joined.into_iter().map(|(k, v)| (k, Value::String(v.join(",")))).collect();
        for (k, v) in &job.columns {
            map.insert(k.clone(), Value::String(v.clone()));
        }
        map.insert("NAME".into(), Value::String(format!("{:08}-{}", job.id, self.job_name(job))));
        map
    }

    fn job_hash(&self, job: &SimJob) -> Map<String, Value> {
        let deps = json!({"Chained": [], "Directly chained": [], "Parallel": []});
        let mut m = Map::new();
        m.insert("blocked_by_id".into(), Value::Null);
        m.insert("children".into(), deps.clone());
        m.insert("clone_id".into(), json!(job.clone_id));
        if let Some(group) = job.group_id.and_then(|id| self.group(id)) {
            m.insert("group".into(), json!(group.name));
        }
        m.insert("group_id".into(), json!(job.group_id));
        m.insert("has_parents".into(), json!(0));
        m.insert("id".into(), json!(job.id));
        m.insert("name".into(), json!(self.job_name(job)));
        if let Some(origin) = job.origin_id {
            m.insert("origin_id".into(), json!(origin));
        }
        m.insert("parents".into(), deps);
        m.insert("parents_ok".into(), json!(1));
        m.insert("priority".into(), json!(job.priority));
        if let Some(reason) = &job.reason {
            m.insert("reason".into(), json!(reason));
        }
        m.insert("result".into(), json!(job.result));
        m.insert("settings".into(), Value::Object(self.settings_of(job)));
        m.insert("state".into(), json!(job.state));
        m.insert("t_finished".into(), json!(job.t_finished));
        m.insert("t_started".into(), Value::Null);
        m.insert("test".into(), json!(job.column("TEST").unwrap_or("")));
        m
    }

    /// Pending jobs with the same BUILD (any group), what the AMQP plugin reports as `remaining`.
    fn remaining(&self, build: Option<&str>) -> usize {
        self.jobs.values().filter(|j| j.column("BUILD") == build && j.is_pending()).count()
    }

    /// The job's bug reference: the first one of its newest comment that has one.
    fn bugref(&self, job_id: u64) -> Option<String> {
        self.comments
            .iter()
            .rev()
            .filter(|c| c.job_id == job_id)
            .find_map(|c| bugrefs(&c.text).into_iter().next())
    }

    /// The AMQP plugin's additions to a job event: `remaining`, the job's group and scenario
    /// columns (only where the event does not carry them), bug reference and failed modules once the
    /// job is done, ISO/HDD_1 when set.
    fn amqp_job_body(&self, data: &Value, job_id: u64) -> Value {
        let mut body = data.as_object().cloned().unwrap_or_default();
        let Some(job) = self.jobs.get(&job_id) else {
            return Value::Object(body);
        };
        body.insert("remaining".into(), json!(self.remaining(job.column("BUILD"))));
        let mut fill = |key: &str, value: Value| {
            if body.get(key).is_none_or(Value::is_null) {
                body.insert(key.to_string(), value);
            }
        };
        fill("group_id", json!(job.group_id));
        for c in ["BUILD", "TEST", "ARCH", "MACHINE", "FLAVOR"] {
            fill(c, json!(job.column(c)));
        }
        if job.state == "done" {
            let bugref = self.bugref(job_id);
            if let Some(url) = bugref.as_deref().and_then(bugurl) {
                fill("bugurl", json!(url));
            }
            fill("bugref", json!(bugref));
            // No job modules exist in the simulator, so nothing can have failed.
            if self.flavor == Flavor::Upstream {
                fill("failedmodules", json!([]));
            }
        }
        let settings = self.settings_of(job);
        for key in ["ISO", "HDD_1"] {
            if let Some(v) = settings.get(key).filter(|v| v.as_str().is_some_and(|s| !s.is_empty())) {
                fill(key, v.clone());
            }
        }
        Value::Object(body)
    }

    fn job_event(&self, name: &str, data: Value, job_id: u64) -> SimEvent {
        let body = self.amqp_job_body(&data, job_id);
        SimEvent::new(name, data, body)
    }

    fn rows_of(&self, job_id: u64) -> impl Iterator<Item = &SettingRow> {
        self.rows_by_job.get(&job_id).into_iter().flatten().filter_map(|&i| self.settings.get(i))
    }

    fn add_row(&mut self, job_id: u64, key: &str, value: &str) {
        self.last_row += 1;
        self.rows_by_job.entry(job_id).or_default().push(self.settings.len());
        self.settings.push(SettingRow {
            id: self.last_row,
            job_id,
            key: key.to_string(),
            value: value.to_string(),
        });
    }

    // ---- writes -------------------------------------------------------------------------------

    fn create_group(&mut self, params: &Params) -> Result<(Value, u64), Refusal> {
        let name = match params.get("name") {
            None => return Err(validation_error(&mut [("name", "missing")])),
            Some("") => return Err(validation_error(&mut [("name", "invalid")])),
            Some(name) => name,
        };
        if self.groups.iter().any(|g| g.name == name) {
            if self.flavor == Flavor::Debian12 {
                return refuse(500, format!("Unable to create group with existing name {name}"));
            }
            return refuse(400, format!("Job group \"{name}\" already exists"));
        }
        self.last_group += 1;
        self.groups.push(Group { id: self.last_group, name: name.to_string() });
        let id = self.last_group;
        if self.flavor == Flavor::Debian12 {
            return Ok((json!({"id": id}), id));
        }
        Ok((json!({"changed_fields": {}, "errors_by_field": {}, "id": id, "warnings_by_field": {}}), id))
    }

    /// `POST /api/v1/jobs`: parameter names are upper-cased, DISTRI/VERSION/FLAVOR/ARCH/BUILD/TEST/
    /// MACHINE become columns, `_GROUP_ID`/`_GROUP` pick the group and are consumed, `KEY[]` (and
    /// WORKER_CLASS) lists are stored one row per element, and openQA's defaults are added
    /// (WORKER_CLASS=qemu_<ARCH>, the CASEDIR priority adjustment).
    fn create_job(&mut self, params: &Params) -> Result<(Value, SimEvent), Refusal> {
        let mut given: Vec<(String, String)> = Vec::new();
        for (k, v) in &params.0 {
            if k == "is_clone_job" {
                continue;
            }
            let key = k.to_uppercase();
            // A repeated parameter keeps its last value.
            given.retain(|(existing, _)| *existing != key);
            given.push((key, v.clone()));
        }
        let get = |key: &str| given.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        if get("TEST").is_none_or(str::is_empty) {
            return refuse(400, "TEST field mandatory");
        }
        let group_id = match (get("_GROUP_ID"), get("_GROUP")) {
            (Some(id), _) => match id.parse::<u64>().ok().filter(|id| self.group(*id).is_some()) {
                Some(id) => Some(id),
                None => return refuse(400, format!("Job group {id} does not exist")),
            },
            (None, Some(name)) => match self.groups.iter().find(|g| g.name == name) {
                Some(g) => Some(g.id),
                None => return refuse(400, format!("Job group \"{name}\" does not exist")),
            },
            (None, None) => None,
        };

        self.last_job += 1;
        let id = self.last_job;
        let columns: BTreeMap<String, String> = COLUMNS
            .iter()
            .filter_map(|c| get(c).filter(|v| !v.is_empty()).map(|v| (c.to_string(), v.to_string())))
            .collect();
        // the CASEDIR adjustment came after Debian 12's openQA
        let casedir_empty = self.flavor == Flavor::Upstream && get("CASEDIR").is_none_or(str::is_empty);
        let priority = if casedir_empty { DEFAULT_PRIORITY + 15 } else { DEFAULT_PRIORITY };
        let mut rows: Vec<(String, String)> = Vec::new();
        for (k, v) in &given {
            if COLUMNS.contains(&k.as_str()) || k == "_GROUP_ID" || k == "_GROUP" {
                continue;
            }
            if k.ends_with("[]") || k == "WORKER_CLASS" {
                rows.extend(v.split(',').map(|e| (k.clone(), e.to_string())));
            } else {
                rows.push((k.clone(), v.clone()));
            }
        }
        if get("WORKER_CLASS").is_none() {
            rows.push(("WORKER_CLASS".into(), format!("qemu_{}", get("ARCH").unwrap_or(""))));
        }
        if casedir_empty {
            rows.push((
                "_PRIORITY_EXPLANATION".into(),
                format!(
                    "- Adjusting job priority from {DEFAULT_PRIORITY} to {priority} based on resource requirement(s): \
                     CASEDIR [+15: value  =~ ^$]"
                ),
            ));
        }
        let job = SimJob {
            id,
            columns,
            group_id,
            priority,
            state: "scheduled".into(),
            result: "none".into(),
            reason: None,
            clone_id: None,
            origin_id: None,
            t_finished: None,
        };
        self.jobs.insert(id, job);
        for (k, v) in rows {
            self.add_row(id, &k, &v);
        }
        // The event carries the creation parameters as given (incl. `_GROUP_ID`), not the stored settings.
        let mut data: Map<String, Value> = given.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        data.insert("id".into(), json!(id));
        let event = self.job_event("openqa_job_create", Value::Object(data), id);
        Ok((json!({"id": id}), event))
    }

    fn set_done(&mut self, id: u64, params: &Params) -> Result<(Value, SimEvent), Refusal> {
        if !self.jobs.contains_key(&id) {
            return refuse(404, "Job does not exist");
        }
        let newbuild = match params.get("newbuild") {
            None => false,
            Some(v) if is_num(v) && v != "0" => true,
            Some(_) => return Err(validation_error(&mut [("newbuild", "invalid")])),
        };
        let reason = params.get("reason").map(str::to_string);
        let result = match params.get("result") {
            _ if newbuild => "obsoleted".to_string(),
            Some(r) if RESULTS.contains(&r) => r.to_string(),
            // openQA dies with this text (newline included) from Jobs::done
            Some(_) => return refuse(400, "Erroneous parameters (result invalid)\n"),
            // without modules there is nothing to compute a result from
            None => "incomplete".to_string(),
        };
        let Some(job) = self.jobs.get_mut(&id) else {
            return refuse(404, "Job does not exist");
        };
        job.state = "done".into();
        job.result = result.clone();
        if reason.is_some() {
            job.reason = reason.clone();
        }
        job.t_finished = Some(iso_plain(SystemTime::now()));
        let data = json!({"id": id, "newbuild": if newbuild { json!(1) } else { Value::Null }, "reason": reason, "result": result});
        let event = self.job_event("openqa_job_done", data, id);
        Ok((json!({"reason": reason, "result": result}), event))
    }

    /// Clones the job (openQA's restart): the clone gets the same settings and group, a new id and
    /// `origin_id`; the original gets `clone_id` and, if it was still pending, is cancelled as
    /// `user_restarted`. `id_as_sent` is the id as the URL spelled it: the event carries that string.
    fn restart(&mut self, id: u64, id_as_sent: &str) -> Result<(Value, Option<(u64, SimEvent)>), Refusal> {
        let Some(old) = self.jobs.get(&id).cloned() else {
            return refuse(404, "Job does not exist");
        };
        if let Some(clone) = old.clone_id {
            let error = format!("Specified job {id} has already been cloned as {clone}");
            return Ok((json!({"errors": [error], "result": [], "test_url": []}), None));
        }
        self.last_job += 1;
        let new_id = self.last_job;
        let rows: Vec<(String, String)> =
            self.rows_of(id).map(|r| (r.key.clone(), r.value.clone())).collect();
        for (k, v) in rows {
            self.add_row(new_id, &k, &v);
        }
        let clone = SimJob {
            id: new_id,
            state: "scheduled".into(),
            result: "none".into(),
            reason: None,
            clone_id: None,
            origin_id: Some(id),
            t_finished: None,
            ..old
        };
        self.jobs.insert(new_id, clone);
        if let Some(original) = self.jobs.get_mut(&id) {
            original.clone_id = Some(new_id);
            if original.is_pending() {
                original.state = "cancelled".into();
                original.result = "user_restarted".into();
                original.t_finished = Some(iso_plain(SystemTime::now()));
            }
        }
        let map = json!({ id_as_sent: new_id });
        let data = json!({"auto": 0, "id": id_as_sent, "result": map.clone()});
        let event = self.job_event("openqa_job_restart", data, id);
        let response = json!({"result": [map], "test_url": [{ id_as_sent: format!("/tests/{new_id}") }]});
        Ok((response, Some((new_id, event))))
    }

    /// Cancels a pending job (`cancelled`/`user_cancelled`); a finished job stays as it is, but openQA
    /// emits the event either way.
    fn cancel(&mut self, id: u64, reason: Option<&str>) -> Result<SimEvent, Refusal> {
        let Some(job) = self.jobs.get_mut(&id) else {
            return refuse(404, "Job does not exist");
        };
        if job.is_pending() {
            job.state = "cancelled".into();
            job.result = "user_cancelled".into();
            job.t_finished = Some(iso_plain(SystemTime::now()));
            if let Some(r) = reason {
                job.reason = Some(r.to_string());
            }
        }
        Ok(self.job_event("openqa_job_cancel", json!({"id": id, "reason": reason}), id))
    }

    /// The job a comment route names (`_obj_comments`: 404 with `{"error"}` only).
    fn comment_job(&self, job_id: u64) -> Result<(), Refusal> {
        if self.jobs.contains_key(&job_id) {
            Ok(())
        } else {
            refuse_plain(404, format!("Job {job_id} does not exist"))
        }
    }

    fn comment_text(text: Option<&str>) -> Result<&str, Refusal> {
        match text {
            None => Err(validation_error(&mut [("text", "missing")])),
            Some(t) if t.trim().is_empty() => Err(validation_error(&mut [("text", "invalid")])),
            Some(t) => Ok(t),
        }
    }

    /// `handle_special_contents`: a force_result label on a finished job sets its result and
    /// emits `openqa_job_update_result` (before the comment's own event). Errors end in 400.
    fn special_contents(&mut self, job_id: u64, text: &str) -> Result<Option<SimEvent>, Refusal> {
        let Some((result, description)) = force_result(text) else {
            return Ok(None);
        };
        if !RESULTS.contains(&result.as_str()) {
            return refuse_plain(400, format!("Invalid result '{result}' for force_result\n"));
        }
        // Debian 12's openQA matches the description against `force_result_regex` even when that
        // is unset: Perl's empty pattern then reuses the last successful match, which an empty
        // description fails here (upstream skips the check without a regex)
        if self.flavor == Flavor::Debian12 && description.is_empty() {
            return refuse_plain(400, "force_result description '' does not match pattern ''\n");
        }
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return refuse_plain(404, format!("Job {job_id} does not exist"));
        };
        if job.state != "done" {
            return refuse_plain(400, "force_result only allowed on finished jobs\n");
        }
        job.result = result.clone();
        Ok(Some(self.job_event("openqa_job_update_result", json!({"id": job_id, "result": result}), job_id)))
    }

    /// The AMQP plugin's body for a comment event: the comment as it is in the database then.
    fn comment_amqp_body(c: &CommentRow) -> Value {
        json!({
            "created": iso_z(c.created), "group_id": null, "id": c.id, "job_id": c.job_id,
            "parent_group_id": null, "text": c.text, "updated": iso_z(c.updated), "user": c.user,
        })
    }

    /// Inserts a comment, as one transaction with its special contents: the id is taken even
    /// when that fails (a PostgreSQL sequence does not roll back).
    fn insert_comment(&mut self, job_id: u64, text: &str) -> Result<(u64, Option<SimEvent>), Refusal> {
        self.last_comment += 1;
        let id = self.last_comment;
        let special = self.special_contents(job_id, text)?;
        let now = SystemTime::now();
        self.comments.push(CommentRow {
            id,
            job_id,
            text: text.to_string(),
            user: USER.into(),
            created: now,
            updated: now,
        });
        Ok((id, special))
    }

    /// `POST /api/v1/jobs/<id>/comments`.
    fn comment(&mut self, job_id: u64, text: Option<&str>) -> Result<(u64, Vec<SimEvent>), Refusal> {
        self.comment_job(job_id)?;
        let text = Self::comment_text(text)?;
        let (id, special) = self.insert_comment(job_id, text)?;
        let body = self.comments.last().map(Self::comment_amqp_body).unwrap_or_default();
        let created = SimEvent::new("openqa_comment_create", json!({"id": id, "job_id": job_id}), body);
        Ok((id, special.into_iter().chain([created]).collect()))
    }

    /// `PUT /api/v1/jobs/<id>/comments/<comment_id>`.
    fn update_comment(
        &mut self,
        job_id: u64,
        comment_id: u64,
        text: Option<&str>,
    ) -> Result<Written, Refusal> {
        self.comment_job(job_id)?;
        let text = Self::comment_text(text)?;
        let Some(pos) = self.comments.iter().position(|c| c.job_id == job_id && c.id == comment_id) else {
            return refuse_plain(404, format!("Comment {comment_id} does not exist"));
        };
        let special = self.special_contents(job_id, text)?;
        let c = &mut self.comments[pos];
        c.text = text.to_string();
        c.updated = SystemTime::now();
        let body = Self::comment_amqp_body(c);
        let updated =
            SimEvent::new("openqa_comment_update", json!({"id": comment_id, "job_id": job_id}), body);
        Ok((200, json!({"id": comment_id}), special.into_iter().chain([updated]).collect()))
    }

    /// `DELETE /api/v1/jobs/<id>/comments/<comment_id>`: the event names only the comment, with
    /// the id as the URL spelled it, and comes before the row is deleted (so the AMQP plugin can
    /// still look the comment up and send its job).
    fn delete_comment(&mut self, job_id: u64, comment_id: u64, id_as_sent: &str) -> Result<Written, Refusal> {
        self.comment_job(job_id)?;
        let Some(pos) = self.comments.iter().position(|c| c.job_id == job_id && c.id == comment_id) else {
            return refuse_plain(404, format!("Comment {comment_id} does not exist"));
        };
        if force_result(&self.comments[pos].text).is_some() {
            return refuse_plain(
                403,
                format!("Comment {comment_id} has 'force_result' label, deleting not allowed"),
            );
        }
        let body = Self::comment_amqp_body(&self.comments[pos]);
        let event = SimEvent::new("openqa_comment_delete", json!({"id": id_as_sent}), body);
        self.comments.remove(pos);
        Ok((200, json!({"id": comment_id}), vec![event]))
    }

    /// Upstream's `POST /api/v1/comments` (`job_id` repeated): one transaction per job, one
    /// in-process event for all, which the AMQP plugin does not forward.
    fn create_comments(&mut self, params: &Params) -> Result<Written, Refusal> {
        let mut failed = Vec::new();
        let text = params.get("text");
        if text.is_none() {
            failed.push(("text", "missing"));
        } else if text.is_some_and(|t| t.trim().is_empty()) {
            failed.push(("text", "invalid"));
        }
        let job_ids = params.all("job_id");
        if job_ids.is_empty() {
            failed.push(("job_id", "missing"));
        } else if job_ids.iter().any(|j| !is_num(j)) {
            failed.push(("job_id", "invalid"));
        }
        if !failed.is_empty() {
            return Err(validation_error(&mut failed));
        }
        let text = text.unwrap_or_default();
        let (mut created, mut refused) = (Vec::new(), Vec::new());
        let mut events = Vec::new();
        for given in job_ids {
            let job_id = given.parse::<u64>().ok().filter(|j| self.jobs.contains_key(j));
            let outcome = match job_id {
                Some(job_id) => self.insert_comment(job_id, text).ok(),
                None => {
                    // the foreign key fails after the sequence gave out an id
                    self.last_comment += 1;
                    None
                }
            };
            match outcome {
                Some((id, special)) => {
                    events.extend(special);
                    // event_data of the row as created: job_id is the parameter (a string)
                    created.push(json!({"id": id, "job_id": given}));
                }
                None => refused.push(json!({"job_id": given})),
            }
        }
        let data = json!({"created": created, "failed": refused});
        events.push(SimEvent::in_process("openqa_comments_create", data.clone()));
        let mut body = data;
        let status = if refused.is_empty() { 200 } else { 400 };
        if status == 400 {
            body["error"] = json!("Not all comments could be created.");
        }
        Ok((status, body, events))
    }

    /// Upstream's `DELETE /api/v1/comments` (`id` repeated): comments with a force_result label
    /// stay; the in-process event comes after the rows are gone, and only if some were.
    fn delete_comments(&mut self, params: &Params) -> Result<Written, Refusal> {
        let ids = params.all("id");
        if ids.is_empty() {
            return Err(validation_error(&mut [("id", "missing")]));
        }
        if ids.iter().any(|i| !is_num(i)) {
            return Err(validation_error(&mut [("id", "invalid")]));
        }
        let wanted: HashSet<u64> = ids.iter().filter_map(|i| i.parse().ok()).collect();
        let before = self.comments.len();
        self.comments.retain(|c| !wanted.contains(&c.id) || c.text.contains("label:force_result:"));
        let deleted = before - self.comments.len();
        let mut body = json!({"ids": ids, "deleted": deleted});
        let events = if deleted > 0 {
            vec![SimEvent::in_process("openqa_comments_delete", body.clone())]
        } else {
            vec![]
        };
        let ok = deleted > 0 && deleted == ids.len();
        if !ok {
            body["error"] = json!("Not all comments could be deleted.");
        }
        Ok((if ok { 200 } else { 400 }, body, events))
    }

    // ---- reads --------------------------------------------------------------------------------

    fn show_job(&self, id: u64, params: &Params, details: bool) -> Result<Value, Refusal> {
        self.refusal_for([id])?;
        let debian12 = self.flavor == Flavor::Debian12;
        let Some(mut job) = self.jobs.get(&id) else {
            if debian12 {
                return Err(Refusal { status: 404, error: "Not found".into(), form: Form::Html });
            }
            return refuse(404, "Job does not exist");
        };
        // `follow` came after Debian 12's openQA
        let follow = !debian12 && params.get("follow").is_some_and(|v| !v.is_empty() && v != "0");
        if follow {
            // a restarted job is found through its chain of clones; a cycle cannot arise here
            while let Some(next) = job.clone_id.and_then(|c| self.jobs.get(&c)) {
                job = next;
            }
        }
        let mut hash = self.job_hash(job);
        if job.id != id {
            hash.insert("followed_id".into(), json!(id));
        }
        if details {
            for key in ["logs", "testresults", "ulogs"] {
                hash.insert(key.into(), json!([]));
            }
        }
        Ok(json!({ "job": hash }))
    }

    /// `GET /api/v1/jobs`. With `ids`, the build/distri/... filters are ignored (openQA's if/elsif);
    /// `before`/`after` bound the id either way; `limit` (at most `generic_max_limit`) picks the
    /// highest ids; the answer is sorted by id as TEXT. The second value is the `Link` header,
    /// naming the next page when there is one (not with `latest`).
    fn list_jobs(&self, params: &Params) -> Result<(Value, Option<String>), Refusal> {
        let mut failed = Vec::new();
        if params.get("scope").is_some_and(|s| s != "current" && s != "relevant") {
            failed.push(("scope", "invalid"));
        }
        for name in ["limit", "offset", "before", "after"] {
            if params.get(name).is_some_and(|v| !is_num(v)) {
                failed.push((name, "invalid"));
            }
        }
        if params.get("latest").is_some_and(|v| !is_num(v) || v == "0") {
            failed.push(("latest", "invalid"));
        }
        if !failed.is_empty() {
            return Err(validation_error(&mut failed));
        }
        let ids = match params.list("ids") {
            Some(list) => {
                let parsed: Option<HashSet<u64>> =
                    list.iter().map(|s| s.trim().parse::<u64>().ok()).collect();
                match parsed {
                    Some(ids) => {
                        self.refusal_for(ids.iter().copied())?;
                        Some(ids)
                    }
                    // Debian 12's openQA hands the list to the database, which throws
                    None if self.flavor == Flavor::Debian12 => {
                        return Err(Refusal {
                            status: 500,
                            error: "Internal server error".into(),
                            form: Form::Html,
                        })
                    }
                    None => return refuse(400, "ids must be integers"),
                }
            }
            None => None,
        };
        let states = params.list("state");
        let results = params.list("result");
        let groupid = params.get("groupid").map(|g| g.parse::<u64>().ok());
        let bound = |name: &str| params.get(name).and_then(|v| v.parse::<u64>().ok()).filter(|b| *b > 0);
        // the `job_setting` filter came after Debian 12's openQA, which ignores it
        let job_settings: Vec<(&str, &str)> = if self.flavor == Flavor::Debian12 {
            Vec::new()
        } else {
            params.all("job_setting").into_iter().filter_map(|s| s.split_once('=')).collect()
        };

        let mut jobs: Vec<&SimJob> = self
            .jobs
            .values()
            .filter(|j| match &ids {
                Some(ids) => ids.contains(&j.id),
                None => COLUMNS.iter().all(|c| match params.get(&c.to_lowercase()) {
                    Some(v) => j.column(c) == Some(v),
                    None => true,
                }),
            })
            .filter(|j| states.as_ref().is_none_or(|s| s.contains(&j.state)))
            .filter(|j| results.as_ref().is_none_or(|r| r.contains(&j.result)))
            .filter(|j| match params.get("scope") {
                Some("current") => j.clone_id.is_none(),
                Some("relevant") => {
                    let clone_pending =
                        j.clone_id.and_then(|c| self.jobs.get(&c)).is_some_and(SimJob::is_pending);
                    (j.clone_id.is_none() || clone_pending) && j.result != "obsoleted"
                }
                _ => true,
            })
            .filter(|j| groupid.is_none_or(|g| g.is_some() && g == j.group_id))
            .filter(|j| job_settings.iter().all(|(k, v)| self.has_setting(j.id, k, v)))
            .filter(|j| bound("before").is_none_or(|b| j.id < b))
            .filter(|j| bound("after").is_none_or(|a| j.id > a))
            .collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.id));
        let latest = params.get("latest").is_some();
        if latest {
            let mut seen = HashSet::new();
            jobs.retain(|j| seen.insert(j.scenario()));
        }
        let offset: usize = params.get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
        let limit: usize = params
            .get("limit")
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.default_limit())
            .min(self.max_limit.unwrap_or(self.flavor_max_limit()));
        if limit == 0 {
            return refuse(400, "Limit exceeds maximum");
        }
        let has_more = jobs.len() > offset.saturating_add(limit);
        let mut page: Vec<&SimJob> = jobs.into_iter().skip(offset).take(limit).collect();
        // openQA builds a hash keyed by id and walks `sort keys`: string order.
        page.sort_by_key(|j| j.id.to_string());
        let list: Vec<Value> = page
            .into_iter()
            .map(|j| {
                let mut hash = self.job_hash(j);
                hash.insert("modules".into(), json!([]));
                Value::Object(hash)
            })
            .collect();
        // openQA's pagination_links_header: absolute URLs with limit and offset replaced
        let link = (!latest).then(|| {
            let url = |offset: usize| {
                let mut pairs: Vec<(&str, String)> = params
                    .0
                    .iter()
                    .filter(|(k, _)| k != "limit" && k != "offset")
                    .map(|(k, v)| (k.as_str(), v.clone()))
                    .collect();
                pairs.push(("limit", limit.to_string()));
                pairs.push(("offset", offset.to_string()));
                format!("<{}/api/v1/jobs?{}>", self.base_url, auth::encode_query(&pairs))
            };
            let mut links = vec![format!("{}; rel=\"first\"", url(0))];
            if has_more {
                links.push(format!("{}; rel=\"next\"", url(offset + limit)));
            }
            if offset > 0 {
                links.push(format!("{}; rel=\"prev\"", url(offset.saturating_sub(limit))));
            }
            links.join(", ")
        });
        Ok((json!({ "jobs": list }), link))
    }

    /// `job_setting=KEY=VALUE`: a settings row with that value; `:word:...` matches as a prefix.
    fn has_setting(&self, job_id: u64, key: &str, value: &str) -> bool {
        let prefix = value.strip_prefix(':').and_then(|rest| {
            let end = rest.find(':')?;
            is_word(&rest[..end]).then(|| &value[..end + 2])
        });
        self.rows_of(job_id).any(|r| {
            r.key == key
                && match prefix {
                    Some(p) => r.value.starts_with(p),
                    None => r.value == value,
                }
        })
    }

    /// `GET /api/v1/jobs/overview`: the latest job of each scenario, newest first, `[{id, name}]`;
    /// `result`/`state` filter after picking the latest.
    fn overview(&self, params: &Params) -> Value {
        let groupid = params.get("groupid").map(|g| g.parse::<u64>().ok());
        let mut jobs: Vec<&SimJob> = self
            .jobs
            .values()
            .filter(|j| {
                COLUMNS.iter().all(|c| params.get(&c.to_lowercase()).is_none_or(|v| j.column(c) == Some(v)))
            })
            .filter(|j| groupid.is_none_or(|g| g.is_some() && g == j.group_id))
            .collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.id));
        let mut seen = HashSet::new();
        jobs.retain(|j| seen.insert(j.scenario()));
        let wanted = |name: &str| -> Option<HashSet<String>> {
            let values = params.all(name);
            (!values.is_empty())
                .then(|| values.iter().flat_map(|v| v.split(',')).map(str::to_string).collect())
        };
        let (states, results) = (wanted("state"), wanted("result"));
        let list: Vec<Value> = jobs
            .into_iter()
            .filter(|j| states.as_ref().is_none_or(|s| s.contains(&j.state)))
            .filter(|j| results.as_ref().is_none_or(|r| r.contains(&j.result)))
            .map(|j| json!({"id": j.id, "name": self.job_name(j)}))
            .collect();
        Value::Array(list)
    }

    /// `GET /api/v1/job_settings/jobs`. `value=`: rows with exactly this key and value, newest row
    /// first, `limit` rows. `list_value=`: rows whose key is LIKE the glob and whose value has the
    /// list value as a whole comma-separated element, among jobs with id > max(job_id) - limit,
    /// ordered by job id descending. Either way one entry per matching ROW.
    fn job_settings_jobs(&self, params: &Params) -> Result<Value, Refusal> {
        if self.flavor == Flavor::Debian12 {
            return self.job_settings_jobs_debian12(params);
        }
        let mut failed = Vec::new();
        match params.get("key") {
            None | Some("") => failed.push(("key", "missing")),
            Some(k) if !k.chars().all(|c| c.is_alphanumeric() || "_*[]".contains(c)) => {
                failed.push(("key", "invalid"))
            }
            Some(_) => {}
        }
        let list_value = params.get("list_value").filter(|v| !v.is_empty());
        if list_value.is_some_and(|v| !is_word(v)) {
            failed.push(("list_value", "invalid"));
        }
        if params.get("limit").is_some_and(|v| !is_num(v)) {
            failed.push(("limit", "invalid"));
        }
        if !failed.is_empty() {
            return Err(validation_error(&mut failed));
        }
        let key = params.get("key").unwrap_or("");
        let value = params.get("value");
        let limit: Option<usize> = params.get("limit").and_then(|v| v.parse().ok());
        let jobs: Vec<u64> = match (value, list_value) {
            (Some(value), None) => {
                let rows =
                    limit.unwrap_or(GENERIC_DEFAULT_LIMIT).min(self.max_limit.unwrap_or(GENERIC_MAX_LIMIT));
                let mut matching: Vec<&SettingRow> =
                    self.settings.iter().filter(|r| r.key == key && r.value == value).collect();
                matching.sort_by_key(|r| std::cmp::Reverse(r.id));
                matching.into_iter().take(rows).map(|r| r.job_id).collect()
            }
            (None, Some(element)) => {
                let max_recent = self.max_recent_jobs.unwrap_or(MAX_RECENT_JOBS);
                let window = limit.map_or(max_recent, |l| (l as u64).min(max_recent));
                let max_id = self.settings.iter().map(|r| r.job_id).max().unwrap_or(0);
                let min_id = max_id.saturating_sub(window);
                let mut matching: Vec<&SettingRow> = self
                    .settings
                    .iter()
                    .filter(|r| {
                        r.job_id > min_id && r.value.split(',').any(|e| e == element) && like(key, &r.key)
                    })
                    .collect();
                matching.sort_by(|a, b| b.job_id.cmp(&a.job_id).then(b.id.cmp(&a.id)));
                matching.into_iter().map(|r| r.job_id).collect()
            }
            _ => return refuse(400, "either \"value\" or \"list_value\" needs to be specified"),
        };
        Ok(json!({ "jobs": jobs }))
    }

    /// Debian 12's openQA: `key` (no brackets) and `list_value` both required, `value` and
    /// `limit` unknown (ignored), the newest `job_settings_max_recent_jobs` jobs searched.
    fn job_settings_jobs_debian12(&self, params: &Params) -> Result<Value, Refusal> {
        let mut failed = Vec::new();
        match params.get("key") {
            None | Some("") => failed.push(("key", "missing")),
            Some(k) if !k.chars().all(|c| c.is_alphanumeric() || "_*".contains(c)) => {
                failed.push(("key", "invalid"))
            }
            Some(_) => {}
        }
        match params.get("list_value") {
            None | Some("") => failed.push(("list_value", "missing")),
            Some(v) if !is_word(v) => failed.push(("list_value", "invalid")),
            Some(_) => {}
        }
        if !failed.is_empty() {
            return Err(validation_error(&mut failed));
        }
        let (key, element) = (params.get("key").unwrap_or(""), params.get("list_value").unwrap_or(""));
        let max_id = self.settings.iter().map(|r| r.job_id).max().unwrap_or(0);
        let min_id = max_id.saturating_sub(self.max_recent_jobs.unwrap_or(MAX_RECENT_JOBS));
        let mut matching: Vec<&SettingRow> = self
            .settings
            .iter()
            .filter(|r| r.job_id > min_id && r.value.split(',').any(|e| e == element) && like(key, &r.key))
            .collect();
        matching.sort_by(|a, b| b.job_id.cmp(&a.job_id).then(b.id.cmp(&a.id)));
        Ok(json!({ "jobs": matching.into_iter().map(|r| r.job_id).collect::<Vec<_>>() }))
    }

    /// `misc_limits.generic_default_limit`: Debian 12's openQA shipped 10 000, upstream 1 000.
    fn default_limit(&self) -> usize {
        if self.flavor == Flavor::Debian12 {
            10 * GENERIC_DEFAULT_LIMIT
        } else {
            GENERIC_DEFAULT_LIMIT
        }
    }

    /// `misc_limits.generic_max_limit`: Debian 12's openQA shipped 100 000, upstream 10 000.
    fn flavor_max_limit(&self) -> usize {
        if self.flavor == Flavor::Debian12 {
            10 * GENERIC_MAX_LIMIT
        } else {
            GENERIC_MAX_LIMIT
        }
    }

    /// Fault injection: the refusal configured for one of these jobs.
    fn refusal_for(&self, ids: impl IntoIterator<Item = u64>) -> Result<(), Refusal> {
        for id in ids {
            if let Some((status, error)) = self.refused.get(&id) {
                return refuse(*status, error.clone());
            }
        }
        Ok(())
    }

    fn comment_hash(&self, c: &CommentRow, render: bool) -> Value {
        let rendered = if render {
            json!(format!("<p>{}</p>\n", render_labels(&html_escape(&c.text))))
        } else {
            Value::Null
        };
        json!({
            "bugrefs": bugrefs(&c.text), "created": comment_time(c.created), "id": c.id,
            "renderedMarkdown": rendered, "text": c.text, "updated": comment_time(c.updated), "userName": c.user,
        })
    }

    fn comments_of(&self, job_id: u64, params: &Params) -> Result<Value, Refusal> {
        self.comment_job(job_id)?;
        // Debian 12's openQA always renders; upstream only when asked
        let render = self.flavor == Flavor::Debian12
            || params.get("render_markdown").is_some_and(|v| !v.is_empty() && v != "0");
        let list: Vec<Value> = self
            .comments
            .iter()
            .filter(|c| c.job_id == job_id)
            .map(|c| self.comment_hash(c, render))
            .collect();
        Ok(Value::Array(list))
    }

    fn comment_of(&self, job_id: u64, comment_id: u64) -> Result<Value, Refusal> {
        self.comment_job(job_id)?;
        match self.comments.iter().find(|c| c.job_id == job_id && c.id == comment_id) {
            Some(c) => Ok(self.comment_hash(c, true)),
            None => refuse_plain(404, format!("Comment {comment_id} does not exist")),
        }
    }

    fn group_hash(&self, g: &Group) -> Value {
        if self.flavor == Flavor::Debian12 {
            return json!({
                "build_version_sort": 1, "carry_over_bugrefs": 1, "default_priority": DEFAULT_PRIORITY,
                "description": null, "exclusively_kept_asset_size": null, "id": g.id,
                "keep_important_logs_in_days": 120, "keep_important_results_in_days": 0, "keep_logs_in_days": 30,
                "keep_results_in_days": 365, "name": g.name, "parent_id": null, "size_limit_gb": 100,
                "sort_order": null, "template": null,
            });
        }
        json!({
            "always_show_version": 0, "build_version_sort": 1, "carry_over_bugrefs": 1,
            "default_priority": DEFAULT_PRIORITY, "description": null, "exclusively_kept_asset_size": null,
            "id": g.id, "ignore_on_dashboard": 0, "keep_important_jobs_in_days": 0,
            "keep_important_logs_in_days": 120, "keep_important_results_in_days": 0, "keep_jobs_in_days": 730,
            "keep_logs_in_days": 30, "keep_results_in_days": 365, "name": g.name, "parent_id": null,
            "size_limit_gb": 100, "sort_order": null, "template": null,
        })
    }

    fn groups_json(&self, only: Option<u64>) -> Result<Value, Refusal> {
        if let Some(id) = only {
            return match self.group(id) {
                // one group is still answered as an array
                Some(g) => Ok(json!([self.group_hash(g)])),
                None => refuse(404, format!("Group {id} does not exist")),
            };
        }
        Ok(Value::Array(self.groups.iter().map(|g| self.group_hash(g)).collect()))
    }

    fn group_jobs(&self, id: u64) -> Result<Value, Refusal> {
        if self.group(id).is_none() {
            return refuse(404, format!("Group {id} does not exist"));
        }
        let mut ids: Vec<u64> = self.jobs.values().filter(|j| j.group_id == Some(id)).map(|j| j.id).collect();
        ids.sort_by_key(|id| id.to_string());
        Ok(json!({ "ids": ids }))
    }
}

/// State shared by the HTTP server and the control API.
struct Shared {
    db: Mutex<Db>,
    events: Mutex<Vec<SimEvent>>,
    events_tx: broadcast::Sender<SimEvent>,
    down: AtomicBool,
    fail_next: AtomicU32,
    requests: AtomicU64,
    credentials: Mutex<Option<(String, String)>>,
    signatures_ok: AtomicU64,
    signatures_bad: AtomicU64,
    /// Scheduled products (`POST /api/v1/isos`), as `ScheduledProducts::to_hash` renders them.
    products: Mutex<BTreeMap<u64, Value>>,
}

impl Shared {
    fn db(&self) -> MutexGuard<'_, Db> {
        // A panic elsewhere while holding the lock leaves consistent-enough data for a simulator.
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, event: &SimEvent) {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).push(event.clone());
        // Nobody listening is fine.
        let _ = self.events_tx.send(event.clone());
    }
}

/// A running openQA simulator on loopback. Dropping it stops the server.
pub struct OpenQaSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for OpenQaSim {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Starts a simulator on `127.0.0.1` at a free port. Panics only if loopback cannot be bound.
pub async fn start() -> OpenQaSim {
    match start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await {
        Ok(sim) => sim,
        Err(e) => panic!("openQA simulator: cannot listen on 127.0.0.1: {e}"),
    }
}

/// Starts a simulator on `addr` (port 0 = any free port).
pub async fn start_on(addr: SocketAddr) -> std::io::Result<OpenQaSim> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (events_tx, _) = broadcast::channel(1024);
    let shared = Arc::new(Shared {
        db: Mutex::new(Db { base_url: format!("http://{addr}"), ..Db::default() }),
        events: Mutex::new(Vec::new()),
        events_tx,
        down: AtomicBool::new(false),
        fail_next: AtomicU32::new(0),
        requests: AtomicU64::new(0),
        credentials: Mutex::new(None),
        signatures_ok: AtomicU64::new(0),
        signatures_bad: AtomicU64::new(0),
        products: Mutex::new(BTreeMap::new()),
    });
    let app = Router::new().fallback(handle).with_state(shared.clone());
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("openQA simulator stopped: {e}");
        }
    });
    Ok(OpenQaSim { shared, addr, server })
}

impl OpenQaSim {
    /// The base URL, e.g. `http://127.0.0.1:40123` (what goes into `openqa_url`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A scheduled product as `POST /api/v1/isos` creates it (status `added`), announced like
    /// openQA does with the in-process `openqa_iso_create` `{scheduled_product_id}` (the AMQP
    /// plugin does not forward it). Its jobs are created with `create_job`; `set_product_status`
    /// moves it on (`scheduling`, `scheduled`, `cancelled`) as openQA's scheduling task does.
    pub fn add_scheduled_product(&self, settings: &[(&str, &str)]) -> u64 {
        let id = {
            let mut products = self.shared.products.lock().unwrap_or_else(|p| p.into_inner());
            let id = products.keys().next_back().copied().unwrap_or(0) + 1;
            let settings: serde_json::Map<String, Value> =
                settings.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            let now = iso_plain(SystemTime::now());
            products.insert(
                id,
                json!({"id": id, "status": "added", "settings": settings, "results": null,
                       "distri": settings.get("DISTRI"), "version": settings.get("VERSION"),
                       "flavor": settings.get("FLAVOR"), "arch": settings.get("ARCH"),
                       "build": settings.get("BUILD"), "iso": settings.get("ISO"),
                       "user_id": 1, "gru_task_id": null, "minion_job_id": null,
                       "t_created": now, "t_updated": now, "job_ids_": []}),
            );
            id
        };
        self.shared.emit(&SimEvent::in_process("openqa_iso_create", json!({"scheduled_product_id": id})));
        id
    }

    pub fn set_product_status(&self, id: u64, status: &str, job_ids: &[u64]) {
        let mut products = self.shared.products.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = products.get_mut(&id) {
            p["status"] = json!(status);
            p["job_ids_"] = json!(job_ids);
        }
    }

    /// Creates a job group; returns its id. Panics if the name is empty or taken.
    pub fn create_group(&self, name: &str) -> u64 {
        let params = Params(vec![("name".into(), name.into())]);
        match self.shared.db().create_group(&params) {
            Ok((_, id)) => id,
            Err(r) => panic!("create_group({name:?}): {}", r.error),
        }
    }

    /// Creates a job from settings as `POST /api/v1/jobs` would (TEST is required); `group_id` adds
    /// `_GROUP_ID` unless the settings name a group themselves. Panics on what openQA would refuse.
    pub fn create_job(&self, settings: &[(&str, &str)], group_id: impl Into<Option<u64>>) -> u64 {
        match self.try_create_job(settings, group_id) {
            Ok((id, _)) => id,
            Err(e) => panic!("create_job: {e}"),
        }
    }

    /// [`create_job`](Self::create_job) that also returns the `job.create` event and reports
    /// refusals as openQA's error text.
    pub fn try_create_job(
        &self,
        settings: &[(&str, &str)],
        group_id: impl Into<Option<u64>>,
    ) -> Result<(u64, SimEvent), String> {
        let mut params: Vec<(String, String)> =
            settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let names_group = settings
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("_GROUP_ID") || k.eq_ignore_ascii_case("_GROUP"));
        if let (Some(g), false) = (group_id.into(), names_group) {
            params.push(("_GROUP_ID".into(), g.to_string()));
        }
        let outcome = self.shared.db().create_job(&Params(params));
        let (response, event) = outcome.map_err(|r| r.error)?;
        self.shared.emit(&event);
        let id = response["id"].as_u64().unwrap_or_default();
        Ok((id, event))
    }

    /// Marks a job done with `result` (what a worker's `set_done` does). `None` if the job does not
    /// exist or openQA would refuse the result.
    pub fn set_done(&self, id: u64, result: &str) -> Option<SimEvent> {
        self.set_done_with_reason(id, result, None)
    }

    pub fn set_done_with_reason(&self, id: u64, result: &str, reason: Option<&str>) -> Option<SimEvent> {
        let mut params = vec![("result".to_string(), result.to_string())];
        if let Some(r) = reason {
            params.push(("reason".into(), r.into()));
        }
        let outcome = self.shared.db().set_done(id, &Params(params));
        let (_, event) = outcome.ok()?;
        self.shared.emit(&event);
        Some(event)
    }

    /// Restarts (clones) a job; returns the clone's id and the `job.restart` event. `None` if the job
    /// does not exist or was already cloned.
    pub fn restart(&self, id: u64) -> Option<(u64, SimEvent)> {
        let outcome = self.shared.db().restart(id, &id.to_string());
        let (clone, event) = outcome.ok()?.1?;
        self.shared.emit(&event);
        Some((clone, event))
    }

    /// Cancels a job; `None` if it does not exist.
    pub fn cancel(&self, id: u64) -> Option<SimEvent> {
        let event = self.shared.db().cancel(id, None).ok()?;
        self.shared.emit(&event);
        Some(event)
    }

    /// Adds a comment to a job; returns its `comment.create` event (a force_result label emits
    /// `job.update_result` before it). `None` if openQA would refuse the comment.
    pub fn comment(&self, job_id: u64, text: &str) -> Option<SimEvent> {
        let (_, events) = self.shared.db().comment(job_id, Some(text)).ok()?;
        self.emit_all(&events)
    }

    /// Changes a comment's text; returns its `comment.update` event.
    pub fn update_comment(&self, job_id: u64, comment_id: u64, text: &str) -> Option<SimEvent> {
        let (_, _, events) = self.shared.db().update_comment(job_id, comment_id, Some(text)).ok()?;
        self.emit_all(&events)
    }

    /// Deletes a comment of a job (`DELETE /api/v1/jobs/<job>/comments/<id>`); returns its
    /// `comment.delete` event, whose in-process data is only `{"id": "<id>"}`.
    pub fn delete_comment(&self, job_id: u64, comment_id: u64) -> Option<SimEvent> {
        let outcome = self.shared.db().delete_comment(job_id, comment_id, &comment_id.to_string());
        let (_, _, events) = outcome.ok()?;
        self.emit_all(&events)
    }

    /// Upstream's bulk `DELETE /api/v1/comments?id=…`: the `openqa_comments_delete` event, if
    /// anything was deleted.
    pub fn delete_comments(&self, ids: &[u64]) -> Option<SimEvent> {
        let params = Params(ids.iter().map(|i| ("id".to_string(), i.to_string())).collect());
        let (_, _, events) = self.shared.db().delete_comments(&params).ok()?;
        self.emit_all(&events)
    }

    /// Upstream's bulk `POST /api/v1/comments` (one text, several jobs): the
    /// `openqa_comments_create` event.
    pub fn create_comments(&self, job_ids: &[u64], text: &str) -> Option<SimEvent> {
        let mut params: Vec<(String, String)> = vec![("text".into(), text.into())];
        params.extend(job_ids.iter().map(|j| ("job_id".to_string(), j.to_string())));
        let (_, _, events) = self.shared.db().create_comments(&Params(params)).ok()?;
        self.emit_all(&events)
    }

    fn emit_all(&self, events: &[SimEvent]) -> Option<SimEvent> {
        events.iter().for_each(|e| self.shared.emit(e));
        events.last().cloned()
    }

    /// Answers like this openQA version from now on (see [`Flavor`]).
    pub fn set_flavor(&self, flavor: Flavor) {
        self.shared.db().flavor = flavor;
    }

    /// Fault injection: every lookup naming job `id` (`GET /api/v1/jobs/<id>`, `jobs?ids=`)
    /// answers `status` with openQA's error body carrying `error`.
    pub fn refuse_job(&self, id: u64, status: u16, error: &str) {
        self.shared.db().refused.insert(id, (status, error.to_string()));
    }

    /// While down, every route answers 503 (like a web UI behind a proxy during a restart).
    /// Sets `[misc_limits] generic_max_limit`: longer lists come in shorter pages than asked for.
    pub fn set_generic_max_limit(&self, limit: usize) {
        self.shared.db.lock().unwrap_or_else(|e| e.into_inner()).max_limit = Some(limit);
    }

    /// Sets `[misc_limits] job_settings_max_recent_jobs`, the window of `list_value` lookups.
    pub fn set_job_settings_max_recent_jobs(&self, jobs: u64) {
        self.shared.db.lock().unwrap_or_else(|e| e.into_inner()).max_recent_jobs = Some(jobs);
    }

    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// The next `n` requests answer 503, then the service recovers.
    pub fn fail_next(&self, n: u32) {
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }

    /// API requests received so far, including the ones answered 503.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// From now on write routes require openQA's HMAC authentication with this key and secret
    /// (403 like openQA otherwise); reads stay public but their signatures are still checked and
    /// counted, see [`signatures`](Self::signatures).
    pub fn require_api_key(&self, key: &str, secret: &str) {
        *self.shared.credentials.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((key.into(), secret.into()));
    }

    /// (valid, invalid) signatures seen on requests that carried an `X-API-Key`, once a key is
    /// required.
    pub fn signatures(&self) -> (u64, u64) {
        (self.shared.signatures_ok.load(Ordering::SeqCst), self.shared.signatures_bad.load(Ordering::SeqCst))
    }

    /// Every event emitted so far, oldest first.
    pub fn events(&self) -> Vec<SimEvent> {
        self.shared.events.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Returns and forgets the events emitted so far.
    pub fn take_events(&self) -> Vec<SimEvent> {
        std::mem::take(&mut *self.shared.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Events as they happen (for a demo feeding them to the gate or to AMQP).
    pub fn subscribe(&self) -> broadcast::Receiver<SimEvent> {
        self.shared.events_tx.subscribe()
    }

    /// The job as `GET /api/v1/jobs/<id>` shows it (the inner object).
    pub fn job_json(&self, id: u64) -> Option<Value> {
        let db = self.shared.db();
        db.jobs.get(&id).map(|j| Value::Object(db.job_hash(j)))
    }

    /// Every job, by id.
    pub fn jobs_snapshot(&self) -> Vec<Job> {
        let db = self.shared.db();
        db.jobs.values().filter_map(|j| serde_json::from_value(Value::Object(db.job_hash(j))).ok()).collect()
    }
}

// ---- HTTP ------------------------------------------------------------------------------------

fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json;charset=UTF-8"));
    response
}

fn error_response(r: &Refusal) -> Response {
    match r.form {
        Form::Full => json_response(r.status, &json!({"error": r.error, "error_status": r.status})),
        Form::ErrorOnly => json_response(r.status, &json!({"error": r.error})),
        Form::Html => {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let page = format!("<!DOCTYPE html>\n<html lang=\"en\"><head><title>openQA: Error</title></head><body><h1>{}</h1></body></html>\n", r.error);
            let mut response = (status, page).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html;charset=UTF-8"));
            response
        }
    }
}

fn reply(outcome: Result<Value, Refusal>) -> Response {
    match outcome {
        Ok(body) => json_response(200, &body),
        Err(r) => error_response(&r),
    }
}

/// Mojolicious' own not-found page: routes openQA does not have.
fn not_found() -> Response {
    error_response(&Refusal { status: 404, error: "Not found".into(), form: Form::Html })
}

/// openQA routes only match numeric ids (`[0-9]+`).
fn numeric(s: &str) -> Option<u64> {
    if is_num(s) {
        s.parse().ok()
    } else {
        None
    }
}

/// Debian 12's openQA renders its errors without `error_status` (upstream added it).
async fn handle(
    state: State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let debian12 = state.0.db().flavor == Flavor::Debian12;
    let response = route(state, method, uri, headers, body).await;
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !debian12 || response.status().as_u16() < 400 || !json {
        return response;
    }
    let status = response.status().as_u16();
    let Ok(bytes) = axum::body::to_bytes(response.into_body(), usize::MAX).await else {
        return json_response(500, &json!({"error": "simulator: unreadable error body"}));
    };
    let mut v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if let Some(map) = v.as_object_mut() {
        map.remove("error_status");
    }
    json_response(status, &v)
}

async fn route(
    State(sim): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.requests.fetch_add(1, Ordering::SeqCst);
    let failing =
        sim.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if failing || sim.down.load(Ordering::SeqCst) {
        let mut response =
            (StatusCode::SERVICE_UNAVAILABLE, "<html><body><h1>503 Service Unavailable</h1></body></html>\n")
                .into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        return response;
    }
    let path = uri.path();
    let raw_query = uri.query().unwrap_or("");
    let mut params = Params(auth::parse_query(raw_query));
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if (method == Method::POST || method == Method::PUT) && is_form {
        params.0.extend(auth::parse_query(&String::from_utf8_lossy(&body)));
    }

    let header_str = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let presented = PresentedAuth {
        key: header_str(auth::HEADER_KEY),
        microtime: header_str(auth::HEADER_MICROTIME),
        hash: header_str(auth::HEADER_HASH),
    };
    let credentials = sim.credentials.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some((known_key, secret)) = credentials {
        let check = || {
            auth::verify(|k| (k == known_key).then(|| secret.clone()), path, raw_query, presented, now_unix())
        };
        if method != Method::GET {
            if let Err(failure) = check() {
                sim.signatures_bad.fetch_add(1, Ordering::SeqCst);
                return error_response(&Refusal {
                    status: 403,
                    error: failure.message(PEER_IP),
                    form: Form::Full,
                });
            }
            sim.signatures_ok.fetch_add(1, Ordering::SeqCst);
        } else if presented.key.is_some() {
            // Read routes ignore bad credentials, as openQA does; the counters let tests see them.
            let counter = if check().is_ok() { &sim.signatures_ok } else { &sim.signatures_bad };
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }

    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return not_found();
    };
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let get = method == Method::GET;
    let post = method == Method::POST;
    let upstream = sim.db().flavor == Flavor::Upstream;
    match segments.as_slice() {
        ["jobs"] if get => match sim.db().list_jobs(&params) {
            Ok((body, link)) => {
                let mut response = json_response(200, &body);
                if let Some(value) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
                    response.headers_mut().insert(header::LINK, value);
                }
                response
            }
            Err(r) => error_response(&r),
        },
        ["jobs"] if post => write(&sim, |db| db.create_job(&params).map(|(r, e)| (200, r, vec![e]))),
        ["jobs", "overview"] if get => json_response(200, &sim.db().overview(&params)),
        ["jobs", id] if get => match numeric(id) {
            Some(id) => reply(sim.db().show_job(id, &params, false)),
            None => not_found(),
        },
        ["jobs", id, "details"] if get => match numeric(id) {
            Some(id) => reply(sim.db().show_job(id, &params, true)),
            None => not_found(),
        },
        ["jobs", id, "set_done"] if post => match numeric(id) {
            Some(id) => write(&sim, |db| db.set_done(id, &params).map(|(r, e)| (200, r, vec![e]))),
            None => not_found(),
        },
        ["jobs", id_as_sent, "restart"] if post => match numeric(id_as_sent) {
            Some(id) => write(&sim, |db| {
                db.restart(id, id_as_sent).map(|(r, c)| (200, r, c.map(|(_, e)| e).into_iter().collect()))
            }),
            None => not_found(),
        },
        ["jobs", id, "cancel"] if post => match numeric(id) {
            Some(id) => write(&sim, |db| {
                db.cancel(id, params.get("reason")).map(|e| (200, json!({"result": null}), vec![e]))
            }),
            None => not_found(),
        },
        ["jobs", id, "comments"] if get => match numeric(id) {
            Some(id) => reply(sim.db().comments_of(id, &params)),
            None => not_found(),
        },
        ["jobs", id, "comments"] if post => match numeric(id) {
            Some(id) => write(&sim, |db| {
                db.comment(id, params.get("text")).map(|(cid, e)| (200, json!({"id": cid}), e))
            }),
            None => not_found(),
        },
        ["jobs", id, "comments", cid] if get => match (numeric(id), numeric(cid)) {
            (Some(id), Some(cid)) => reply(sim.db().comment_of(id, cid)),
            _ => not_found(),
        },
        ["jobs", id, "comments", cid] if method == Method::PUT => match (numeric(id), numeric(cid)) {
            (Some(id), Some(c)) => write(&sim, |db| db.update_comment(id, c, params.get("text"))),
            _ => not_found(),
        },
        ["jobs", id, "comments", cid_as_sent] if method == Method::DELETE => {
            match (numeric(id), numeric(cid_as_sent)) {
                (Some(id), Some(c)) => write(&sim, |db| db.delete_comment(id, c, cid_as_sent)),
                _ => not_found(),
            }
        }
        ["comments"] if post && upstream => write(&sim, |db| db.create_comments(&params)),
        ["comments"] if method == Method::DELETE && upstream => write(&sim, |db| db.delete_comments(&params)),
        ["job_settings", "jobs"] if get => reply(sim.db().job_settings_jobs(&params)),
        ["isos", id] if get => {
            let products = sim.products.lock().unwrap_or_else(|p| p.into_inner());
            match numeric(id).and_then(|id| products.get(&id)) {
                Some(p) => {
                    let mut body = p.clone();
                    let ids = body.as_object_mut().and_then(|o| o.remove("job_ids_"));
                    // `include_job_ids` as Perl reads it: any true value
                    if params.get("include_job_ids").is_some_and(|v| !v.is_empty() && v != "0") {
                        body["job_ids"] = ids.unwrap_or(json!([]));
                    }
                    json_response(200, &body)
                }
                None => json_response(404, &json!({"error": "Scheduled product does not exist."})),
            }
        }
        ["job_groups"] if get => reply(sim.db().groups_json(None)),
        ["job_groups"] if post => write(&sim, |db| db.create_group(&params).map(|(r, _)| (200, r, vec![]))),
        ["job_groups", id] if get => match numeric(id) {
            Some(id) => reply(sim.db().groups_json(Some(id))),
            None => not_found(),
        },
        ["job_groups", id, "jobs"] if get => match numeric(id) {
            Some(id) => reply(sim.db().group_jobs(id)),
            None => not_found(),
        },
        _ => not_found(),
    }
}

/// Runs a write under the lock, emits its events (in order) after releasing it, renders the answer.
fn write(sim: &Shared, op: impl FnOnce(&mut Db) -> Result<Written, Refusal>) -> Response {
    let outcome = op(&mut sim.db());
    match outcome {
        Ok((status, body, events)) => {
            for e in &events {
                sim.emit(e);
            }
            json_response(status, &body)
        }
        Err(r) => error_response(&r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_globs() {
        assert!(like("*_TEST_ISSUES", "OS_TEST_ISSUES"));
        assert!(like("*_TEST_ISSUES", "SDK_TEST_ISSUES"));
        assert!(!like("*_TEST_ISSUES", "TEST_ISSUES[]"));
        assert!(like("*", "TEST_ISSUES[]"));
        assert!(like("TEST_ISSUES[]", "TEST_ISSUES[]"));
        assert!(like("INCIDENT_ID", "INCIDENTXID"), "`_` is a LIKE wildcard");
        assert!(!like("INCIDENT_ID", "INCIDENT_IDS"));
    }

    #[test]
    fn bugref_detection() {
        assert_eq!(
            bugrefs("@review:acceptable_for:incident_12345:bsc#1234567 known issue"),
            Vec::<String>::new()
        );
        assert_eq!(bugrefs("bsc#1234567 known, poo#42"), vec!["bsc#1234567", "poo#42"]);
        assert_eq!(bugrefs("see jsc#SLE-1234"), vec!["jsc#SLE-1234"]);
        assert_eq!(bugrefs("bsc#12x"), Vec::<String>::new());
        assert_eq!(bugurl("bsc#1").as_deref(), Some("https://bugzilla.suse.com/show_bug.cgi?id=1"));
    }

    #[test]
    fn routing_suffixes() {
        assert_eq!(SimEvent::new("openqa_job_done", Value::Null, Value::Null).routing_suffix, "job.done");
        assert_eq!(
            SimEvent::new("openqa_comment_create", Value::Null, Value::Null).routing_key("suse"),
            "suse.openqa.comment.create"
        );
        assert_eq!(
            SimEvent::new("openqa_job_update_result", Value::Null, Value::Null).routing_suffix,
            "job.update_result",
            "OpenQA::WebAPI::Plugin::AMQP::log_event: s/_/\\./ twice on openqa_job_update_result"
        );
    }

    #[test]
    fn job_names_are_sanitised() {
        let mut db = Db::default();
        let params = Params(vec![
            ("TEST".into(), "a b".into()),
            ("DISTRI".into(), "sle".into()),
            ("BUILD".into(), ":1:x".into()),
        ]);
        let (_, event) = db.create_job(&params).expect("job");
        assert_eq!(db.job_name(&db.jobs[&1]), "sle-Build:1:x-a_b");
        assert_eq!(event.amqp_body["remaining"], json!(1));
        assert_eq!(db.settings_of(&db.jobs[&1])["WORKER_CLASS"], json!("qemu_"));
    }
}
