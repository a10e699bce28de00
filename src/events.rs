//! openQA's job and comment events (in-process from the web UI, or the same data from AMQP),
//! validated and reduced to what the engine needs: which jobs changed, and whether they finished.

use serde_json::Value;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    JobDone,
    JobCancel,
    JobRestart,
    JobsRestart,
    JobUpdateResult,
    CommentCreate,
    CommentUpdate,
    CommentDelete,
    /// Upstream's `POST /api/v1/comments`: `{created: [{id, job_id, …}], failed}`, in-process only.
    CommentsCreate,
    /// Upstream's `DELETE /api/v1/comments`: `{ids, deleted}`, emitted after the rows are gone,
    /// in-process only.
    CommentsDelete,
    /// A job was created (`{id}`; the AMQP plugin forwards it as `job.create`): testing of its
    /// incidents goes on, and the quiet period starts again.
    JobCreate,
    /// `POST /api/v1/isos` created a scheduled product (`{scheduled_product_id}`, in-process
    /// only): its incidents are not finished while it is being scheduled.
    IsoCreate,
}

impl EventKind {
    pub const ALL: [EventKind; 12] = [
        EventKind::JobDone,
        EventKind::JobCancel,
        EventKind::JobRestart,
        EventKind::JobsRestart,
        EventKind::JobUpdateResult,
        EventKind::CommentCreate,
        EventKind::CommentUpdate,
        EventKind::CommentDelete,
        EventKind::CommentsCreate,
        EventKind::CommentsDelete,
        EventKind::JobCreate,
        EventKind::IsoCreate,
    ];

    /// The in-process event name (`OpenQA::Events`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::JobDone => "openqa_job_done",
            EventKind::JobCancel => "openqa_job_cancel",
            EventKind::JobRestart => "openqa_job_restart",
            EventKind::JobsRestart => "openqa_jobs_restart",
            EventKind::JobUpdateResult => "openqa_job_update_result",
            EventKind::CommentCreate => "openqa_comment_create",
            EventKind::CommentUpdate => "openqa_comment_update",
            EventKind::CommentDelete => "openqa_comment_delete",
            EventKind::CommentsCreate => "openqa_comments_create",
            EventKind::CommentsDelete => "openqa_comments_delete",
            EventKind::JobCreate => "openqa_job_create",
            EventKind::IsoCreate => "openqa_iso_create",
        }
    }

    /// The suffix of openQA's AMQP routing key (`<prefix>.openqa.<suffix>`). The bulk comment
    /// events have the key the AMQP plugin would give them, but it does not forward them.
    pub fn routing_suffix(self) -> &'static str {
        match self {
            EventKind::JobDone => "job.done",
            EventKind::JobCancel => "job.cancel",
            EventKind::JobRestart => "job.restart",
            EventKind::JobsRestart => "jobs.restart",
            EventKind::JobUpdateResult => "job.update_result",
            EventKind::CommentCreate => "comment.create",
            EventKind::CommentUpdate => "comment.update",
            EventKind::CommentDelete => "comment.delete",
            EventKind::CommentsCreate => "comments.create",
            EventKind::CommentsDelete => "comments.delete",
            EventKind::JobCreate => "job.create",
            EventKind::IsoCreate => "iso.create",
        }
    }

    pub fn from_name(name: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn from_routing_key(key: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| key.ends_with(&format!(".openqa.{}", k.routing_suffix())))
    }
}

/// An event the engine acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// Jobs the event is about: the job, or for restarts the old jobs and their clones.
    pub jobs: Vec<u64>,
    /// Comments deleted (or about to be: the in-process single delete comes first). openQA's
    /// in-process delete events name no job: the engine finds the incidents through the comments
    /// their decisions relied on, and no evaluation counts these comments any more.
    pub deleted_comments: Vec<u64>,
    /// Scheduled products created (`openqa_iso_create`).
    pub products: Vec<u64>,
}

impl Event {
    /// The event says these jobs reached a final state.
    pub fn finishes_jobs(&self) -> bool {
        matches!(self.kind, EventKind::JobDone | EventKind::JobCancel | EventKind::JobUpdateResult)
    }

    /// The event says these jobs were just created.
    pub fn creates_jobs(&self) -> bool {
        self.kind == EventKind::JobCreate
    }

    /// The event can change a verdict without a job finishing (a restart, a comment, a result
    /// forced on a finished job): its incidents are evaluated whatever they wait on.
    pub fn forces_evaluation(&self) -> bool {
        !matches!(self.kind, EventKind::JobDone | EventKind::JobCancel)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    UnknownEvent,
    InvalidJson,
    InvalidShape,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::UnknownEvent => "unknown_event",
            Rejection::InvalidJson => "invalid_json",
            Rejection::InvalidShape => "invalid_shape",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventError {
    pub rejection: Rejection,
    pub message: String,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EventError {}

fn err(rejection: Rejection, message: String) -> EventError {
    EventError { rejection, message }
}

/// openQA sends job ids as numbers, except in restart events where the old id is a string.
/// Ids beyond PostgreSQL's bigint are no openQA id; openQA answers them with a 500 that never
/// goes away, so they are refused here.
fn job_id(v: &Value) -> Option<u64> {
    let id = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    id.filter(|&n| n > 0 && n <= i64::MAX as u64)
}

/// `{"2":12}` (restart) or `[{"2":12},{"3":13}]` (several): old ids as keys, clones as values.
fn restart_ids(v: &Value, out: &mut Vec<u64>) {
    match v {
        Value::Object(map) => {
            for (old, new) in map {
                out.extend(job_id(&Value::String(old.clone())));
                out.extend(job_id(new));
            }
        }
        Value::Array(items) => items.iter().for_each(|i| restart_ids(i, out)),
        other => out.extend(job_id(other)),
    }
}

/// Parses an event by its in-process name.
pub fn parse(name: &str, json: &str) -> Result<Event, EventError> {
    let kind = EventKind::from_name(name)
        .ok_or_else(|| err(Rejection::UnknownEvent, format!("unknown event {name:?}")))?;
    let data: Value = serde_json::from_str(json)
        .map_err(|e| err(Rejection::InvalidJson, format!("{name}: event data is not valid JSON: {e}")))?;
    from_value(kind, &data)
}

/// Reduces event data (in-process or an AMQP body, which carries extra keys) to an `Event`.
pub fn from_value(kind: EventKind, data: &Value) -> Result<Event, EventError> {
    let name = kind.name();
    let shape = |what: &str| err(Rejection::InvalidShape, format!("{name}: {what}"));
    let obj = data.as_object().ok_or_else(|| shape("event data must be a JSON object"))?;
    let mut jobs = Vec::new();
    let mut deleted_comments = Vec::new();
    let mut products = Vec::new();
    match kind {
        EventKind::IsoCreate => {
            let id =
                obj.get("scheduled_product_id").ok_or_else(|| shape("missing `scheduled_product_id`"))?;
            products.push(job_id(id).ok_or_else(|| shape("`scheduled_product_id` must be a positive id"))?);
        }
        EventKind::JobDone | EventKind::JobCancel | EventKind::JobUpdateResult | EventKind::JobCreate => {
            let id = obj.get("id").ok_or_else(|| shape("missing job `id`"))?;
            jobs.push(job_id(id).ok_or_else(|| shape("`id` must be a positive job id"))?);
        }
        EventKind::JobRestart | EventKind::JobsRestart => {
            for key in ["id", "ids"] {
                match obj.get(key) {
                    Some(Value::Array(ids)) => {
                        for id in ids {
                            jobs.push(job_id(id).ok_or_else(|| shape("`ids` must hold job ids"))?);
                        }
                    }
                    Some(Value::Null) | None => {}
                    Some(id) => jobs.push(job_id(id).ok_or_else(|| shape("`id` must be a job id"))?),
                }
            }
            for key in ["result", "results"] {
                if let Some(v) = obj.get(key) {
                    restart_ids(v, &mut jobs);
                }
            }
            if jobs.is_empty() {
                return Err(shape("restart names no job (`id`, `ids` or `result`)"));
            }
        }
        EventKind::CommentCreate | EventKind::CommentUpdate | EventKind::CommentDelete => {
            let id = obj.get("id").and_then(job_id).ok_or_else(|| shape("missing comment `id`"))?;
            if kind == EventKind::CommentDelete {
                deleted_comments.push(id);
            }
            // group comments carry job_id null (or none at all): valid, but about no job
            match obj.get("job_id") {
                None | Some(Value::Null) => {}
                Some(v) => jobs.push(job_id(v).ok_or_else(|| shape("`job_id` must be a job id"))?),
            }
        }
        EventKind::CommentsCreate => {
            let created = obj
                .get("created")
                .and_then(Value::as_array)
                .ok_or_else(|| shape("missing `created` list"))?;
            for comment in created {
                match comment.get("job_id") {
                    None | Some(Value::Null) => {}
                    Some(v) => jobs.push(job_id(v).ok_or_else(|| shape("`created` must hold job ids"))?),
                }
            }
        }
        EventKind::CommentsDelete => {
            let ids = obj.get("ids").and_then(Value::as_array).ok_or_else(|| shape("missing `ids` list"))?;
            for id in ids {
                deleted_comments.push(job_id(id).ok_or_else(|| shape("`ids` must hold comment ids"))?);
            }
        }
    }
    deleted_comments.sort_unstable();
    deleted_comments.dedup();
    jobs.sort_unstable();
    jobs.dedup();
    Ok(Event { kind, jobs, deleted_comments, products })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_webui_events_parse() {
        let text = include_str!("../tests/fixtures/openqa/webui-events.jsonl");
        let mut seen = 0;
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let args = &v["args"][0];
            let name = args[2].as_str().unwrap();
            let ev = parse(name, &args[3].to_string()).unwrap();
            assert!(!ev.jobs.is_empty(), "{line}");
            seen += 1;
        }
        assert_eq!(seen, 28, "17 job and comment events, 11 job creations");
        let restart = parse("openqa_job_restart", r#"{"auto":0,"id":"2","result":{"2":12}}"#).unwrap();
        assert_eq!(restart.jobs, vec![2, 12]);
    }

    #[test]
    fn recorded_amqp_messages_parse() {
        let text = include_str!("../tests/fixtures/openqa/amqp-messages.jsonl");
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let key = v["routing_key"].as_str().unwrap();
            match EventKind::from_routing_key(key) {
                Some(kind) => assert!(from_value(kind, &v["body"]).is_ok(), "{line}"),
                None => assert!(key.ends_with("job.create"), "{key}"),
            }
        }
    }

    #[test]
    fn bad_events_are_rejected_by_reason() {
        let r = |n: &str, j: &str| parse(n, j).unwrap_err().rejection;
        assert_eq!(r("openqa_job_frobnicate", "{}"), Rejection::UnknownEvent);
        assert_eq!(r("openqa_job_done", "{"), Rejection::InvalidJson);
        assert_eq!(r("openqa_job_done", "[]"), Rejection::InvalidShape);
        assert_eq!(r("openqa_job_done", r#"{"result":"passed"}"#), Rejection::InvalidShape);
        assert_eq!(r("openqa_job_done", r#"{"id":"abc"}"#), Rejection::InvalidShape);
        assert_eq!(r("openqa_job_done", r#"{"id":-3}"#), Rejection::InvalidShape);
        assert_eq!(r("openqa_job_restart", r#"{"auto":0}"#), Rejection::InvalidShape);
        assert_eq!(r("openqa_comment_create", r#"{"job_id":3}"#), Rejection::InvalidShape);
        let group_comment = parse("openqa_comment_create", r#"{"id":7,"job_id":null}"#).unwrap();
        assert!(group_comment.jobs.is_empty());
        assert_eq!(r("openqa_comments_delete", r#"{"deleted":1}"#), Rejection::InvalidShape);
        assert_eq!(r("openqa_comments_create", r#"{"failed":[]}"#), Rejection::InvalidShape);
        assert_eq!(r("openqa_job_done", r#"{"id":9223372036854775808}"#), Rejection::InvalidShape);
        let single = parse("openqa_comment_delete", r#"{"id":"7"}"#).unwrap();
        assert!(single.jobs.is_empty());
        assert_eq!(single.deleted_comments, vec![7]);
        let bulk = parse("openqa_comments_delete", r#"{"ids":["7","8"],"deleted":2}"#).unwrap();
        assert_eq!(bulk.deleted_comments, vec![7, 8]);
        let created = parse(
            "openqa_comments_create",
            r#"{"created":[{"id":9,"job_id":"3"},{"id":10,"job_id":4}],"failed":[]}"#,
        )
        .unwrap();
        assert_eq!(created.jobs, vec![3, 4]);
        let many = parse("openqa_jobs_restart", r#"{"ids":[3,"4"],"results":[{"3":30},{"4":40}]}"#).unwrap();
        assert_eq!(many.jobs, vec![3, 4, 30, 40]);
    }

    #[test]
    fn scheduling_events_parse() {
        let iso = parse("openqa_iso_create", r#"{"scheduled_product_id":12}"#).unwrap();
        assert_eq!((iso.products, iso.jobs.len()), (vec![12], 0));
        let e = parse("openqa_iso_create", r#"{"scheduled_product_id":"x"}"#).unwrap_err();
        assert_eq!(e.rejection, Rejection::InvalidShape);
        let create = parse("openqa_job_create", r#"{"id":5}"#).unwrap();
        assert!(create.creates_jobs() && !create.finishes_jobs());
        assert_eq!(EventKind::from_routing_key("suse.openqa.job.create"), Some(EventKind::JobCreate));
    }
}
