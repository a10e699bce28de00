//! `incident-gate store copy --to URL`: a state directory's store into PostgreSQL, idempotent,
//! never into another store's data.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::TestStore;
use incident_gate::decision::Decision;
use incident_gate::store::{Recorded, Sink, Store};
use incident_gate::verdict::{Counts, Outcome, Verdict};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_incident-gate");

fn copy(state: &std::path::Path, to: &str) -> Output {
    Command::new(BIN)
        .args(["store", "copy", "--to", to])
        .env_remove("INCIDENT_GATE_CONFIG")
        .env("INCIDENT_GATE_STATE_DIR", state)
        .output()
        .expect("incident-gate runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn decision(incident: u64, result: Outcome) -> Decision {
    let v = Verdict {
        incident,
        kind: Default::default(),
        sha: None,
        repo: None,
        request: Some(300001),
        rrid: None,
        result,
        jobs: Counts::default(),
        blocking: vec![],
        job_ids: vec![incident * 10],
        notes: vec![],
        complete: true,
        waiting: vec![],
    };
    Decision::new(v, "http://openqa")
}

/// A state directory with two decisions (one published, its report waiting for IBS and due
/// again; one still to publish and report), a pending incident and a relied-on comment.
fn state_directory(first: u64) -> (tempfile::TempDir, i64) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let t = s.begin_evaluation().unwrap();
    let sinks = [Sink::Amqp, Sink::Obs];
    assert_eq!(
        s.record_decision(&mut decision(first, Outcome::Passed), &sinks, t, &[(7, 70)]).unwrap(),
        Recorded::New
    );
    for item in s.take_due(Sink::Amqp, 10).unwrap() {
        s.complete(&item, &incident_gate::decision::Delivery::Done("published".into())).unwrap();
    }
    let report = s.take_due(Sink::Obs, 10).unwrap().remove(0);
    let waits = incident_gate::decision::Delivery::Waiting("waiting for a review".into(), 0);
    s.complete(&report, &waits).unwrap();
    let t = s.begin_evaluation().unwrap();
    s.record_decision(&mut decision(first + 1, Outcome::Failed), &sinks, t, &[]).unwrap();
    s.mark_pending(first + 2).unwrap();
    (dir, s.begin_evaluation().unwrap())
}

#[test]
fn a_state_directory_is_copied_once_and_never_into_another_stores_data() {
    let pg = TestStore::postgres();
    let (state, ticket) = state_directory(100);
    let out = copy(state.path(), &pg.url());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2 decisions, 4 outbox items, 1 pending"), "{}", text(&out));

    let check = || {
        let to = Store::open_url(&pg.url(), std::path::Path::new("/nonexistent")).unwrap();
        assert_eq!(to.decision_count().unwrap(), 2);
        assert_eq!(to.latest_decision(101).unwrap().unwrap().verdict.result, Outcome::Failed);
        let backlog = to.backlog().unwrap();
        assert_eq!((backlog.amqp, backlog.obs), (1, 2), "what was delivered stays delivered");
        assert_eq!(to.undelivered().unwrap(), 2, "a report waiting for IBS still waits");
        assert_eq!(to.pending().unwrap(), vec![incident_gate::incident::Submission::ibs(102)]);
        assert_eq!(
            to.incidents_relying_on(&[7]).unwrap(),
            vec![incident_gate::incident::Submission::ibs(100)]
        );
        assert!(to.begin_evaluation().unwrap() > ticket, "new evaluations outrank the copied ones");
        // as from the state directory: 100's report is due, 101's waits for its event
        let obs = to.take_due(Sink::Obs, 10).unwrap();
        assert_eq!(obs.iter().map(|i| i.decision.verdict.incident).collect::<Vec<_>>(), vec![100]);
        assert_eq!(obs[0].last_outcome.as_deref(), Some("waiting for a review"));
        for item in &obs {
            to.release(item).unwrap();
        }
    };
    check();
    // again: nothing doubled
    let out = copy(state.path(), &pg.url());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("0 decisions, 0 outbox items, 0 pending"), "{}", text(&out));
    check();

    // another state directory's decisions are not mixed into this store
    let (other, _) = state_directory(200);
    let out = copy(other.path(), &pg.url());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("holds data of another store"), "{}", text(&out));
    check();
}

#[test]
fn copying_names_what_is_wrong_and_never_the_password() {
    let empty = tempfile::tempdir().unwrap();
    let out = copy(empty.path(), "postgresql://ig:S3CRET@127.0.0.1:1/db");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("holds no store"), "{}", text(&out));
    let (state, _) = state_directory(300);
    let out = copy(state.path(), "postgresql://ig:S3CRET@127.0.0.1:1/db?connect_timeout=5");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!text(&out).contains("S3CRET") && text(&out).contains("ig:***@127.0.0.1:1"), "{}", text(&out));
}
