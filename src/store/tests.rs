//! Every store test runs against both backends: SQLite in a temporary state directory and
//! PostgreSQL in a database of its own (the machine's server, `IG_TEST_POSTGRES` to name
//! another), dropped afterwards, also when the test fails.

use super::*;
use crate::decision::Delivery;
use crate::verdict::{Counts, Outcome, Verdict};
use rusqlite::Connection;

/// A database of its own for one test, on the machine's PostgreSQL: testkit's, whose crate these
/// unit tests cannot depend on (it links a second copy of this library, whose C symbols collide).
#[path = "../../testkit/src/postgres.rs"]
#[allow(dead_code)] // what only the integration tests use
mod temp_database;
use temp_database::TempDatabase;

/// Each test once per backend; `open` opens another connection to the test's store.
macro_rules! both {
    ($(fn $name:ident($open:ident) $body:block)*) => {
        mod sqlite_backend {
            use super::*;
            $(#[test]
            fn $name() {
                let dir = tempfile::tempdir().unwrap();
                let $open = || Store::open(dir.path()).unwrap();
                $body
            })*
        }
        mod postgres_backend {
            use super::*;
            $(#[test]
            fn $name() {
                let db = TempDatabase::new("ig_store_test");
                let $open = || Store::open_url(&db.url(), std::path::Path::new("/nonexistent")).unwrap();
                $body
            })*
        }
    };
}

/// Evaluation tickets in the order the tests take them.
fn s_next() -> i64 {
    static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn decision(incident: u64, jobs: Vec<u64>) -> Decision {
    let v = Verdict {
        incident,
        kind: Default::default(),
        sha: None,
        repo: None,
        request: Some(300001),
        rrid: None,
        result: Outcome::Passed,
        jobs: Counts::default(),
        blocking: vec![],
        job_ids: jobs,
        notes: vec![],
        complete: true,
        waiting: vec![],
    };
    Decision::new(v, "http://openqa")
}

both! {
    fn usable_inside_a_tokio_runtime(open) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            // opened, used and closed on a thread that runs tokio
            let s = open();
            s.mark_pending(3).unwrap();
            assert_eq!(s.pending().unwrap(), vec![Submission::ibs(3)]);
            let ticket = s.begin_evaluation().unwrap();
            s.record_decision(&mut decision(3, vec![1]), &[Sink::Amqp], ticket, &[]).unwrap();
            assert!(s.pending().unwrap().is_empty());
        });
    }

    fn processes_starting_at_once_each_get_a_usable_store(open) {
        let stores: Vec<Store> = std::thread::scope(|s| {
            let opening: Vec<_> = (0..6).map(|_| s.spawn(open)).collect();
            opening.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for s in &stores {
            s.check_writable().unwrap();
        }
        let tickets: HashSet<i64> = stores.iter().map(|s| s.begin_evaluation().unwrap()).collect();
        assert_eq!(tickets.len(), 6, "one counter for every connection");
    }

    fn concurrent_takes_lease_each_item_to_one_process(open) {
        let setup = open();
        for i in 0..30 {
            let mut d = decision(1000 + i, vec![i]);
            setup.record_decision(&mut d, &[Sink::Amqp, Sink::Obs], s_next(), &[]).unwrap();
            // a second decision of some incidents: IBS hears one of them at a time
            if i % 3 == 0 {
                let mut newer = decision(1000 + i, vec![i, 100 + i]);
                setup.record_decision(&mut newer, &[Sink::Amqp, Sink::Obs], s_next(), &[]).unwrap();
            }
        }
        let stores: Vec<Store> = (0..4).map(|_| open()).collect();
        for sink in [Sink::Amqp, Sink::Obs] {
            let taken: Vec<OutboxItem> = std::thread::scope(|s| {
                let takes: Vec<_> = stores
                    .iter()
                    .map(|st| {
                        s.spawn(move || {
                            let mut all = Vec::new();
                            for _ in 0..10 {
                                all.extend(st.take_due(sink, 3).unwrap());
                            }
                            all
                        })
                    })
                    .collect();
                takes.into_iter().flat_map(|t| t.join().unwrap()).collect()
            });
            let ids: HashSet<i64> = taken.iter().map(|i| i.id).collect();
            assert_eq!(ids.len(), taken.len(), "{sink:?}: an item leased twice");
            let incidents: HashSet<u64> = taken.iter().map(|i| i.decision.verdict.incident).collect();
            if sink == Sink::Obs {
                assert_eq!(incidents.len(), taken.len(), "IBS heard two decisions of an incident at once");
            } else {
                assert_eq!(taken.len(), 40, "every event is due");
            }
        }
    }

    fn one_catch_up_at_a_time_across_connections(open) {
        let stores: Vec<Store> = (0..6).map(|_| open()).collect();
        let claimed = std::thread::scope(|s| {
            let claims: Vec<_> =
                stores.iter().map(|st| s.spawn(move || st.claim_catchup(0, 60_000).unwrap())).collect();
            claims.into_iter().map(|t| t.join().unwrap()).filter(|t| t.is_some()).count()
        });
        assert_eq!(claimed, 1);
        stores[0].finish_catchup(&CatchupEnd { after_id: Some(10), requests: 2, ..Default::default() }).unwrap();
        let start = stores[1].claim_catchup(0, 60_000).unwrap().expect("the lease was released");
        assert_eq!(start.after_id, Some(10));
        assert!(stores[2].claim_catchup(0, 60_000).unwrap().is_none());
    }

    fn one_decision_per_identity_when_processes_record_at_once(open) {
        let stores: Vec<Store> = (0..6).map(|_| open()).collect();
        for round in 0..5u64 {
            let ticket = stores[0].begin_evaluation().unwrap();
            let recorded: Vec<Recorded> = std::thread::scope(|s| {
                let records: Vec<_> = stores
                    .iter()
                    .map(|st| {
                        s.spawn(move || {
                            let mut d = decision(2000 + round, vec![1, 2]);
                            st.record_decision(&mut d, &[Sink::Amqp, Sink::Obs], ticket, &[(5, 1)]).unwrap()
                        })
                    })
                    .collect();
                records.into_iter().map(|t| t.join().unwrap()).collect()
            });
            assert_eq!(recorded.iter().filter(|r| **r == Recorded::New).count(), 1, "{recorded:?}");
        }
        assert_eq!(stores[0].decision_count().unwrap(), 5);
        assert_eq!(stores[0].backlog().unwrap().amqp, 5);
    }

    fn an_incident_and_a_pull_request_of_the_same_number_have_their_own_decisions(open) {
        let s = open();
        let mut ibs = decision(124, vec![1]);
        let mut pr = decision(124, vec![2]);
        pr.verdict.kind = Kind::Gitea;
        pr.verdict.sha = Some("abc".into());
        pr.key = crate::decision::decision_key(&pr.verdict);
        s.mark_pending(Submission::gitea(124)).unwrap();
        s.mark_pending(124).unwrap();
        assert_eq!(s.pending().unwrap(), vec![Submission::ibs(124), Submission::gitea(124)]);
        let t = s.begin_evaluation().unwrap();
        assert_eq!(s.record_decision(&mut ibs, &[Sink::Amqp, Sink::Obs], t, &[]).unwrap(), Recorded::New);
        assert_eq!(s.pending().unwrap(), vec![Submission::gitea(124)], "only the incident is decided");
        assert_eq!(s.record_decision(&mut pr, &[Sink::Amqp, Sink::Gitea], t, &[]).unwrap(), Recorded::New);
        assert!(s.is_latest(124, &ibs.key).unwrap() && s.is_latest(Submission::gitea(124), &pr.key).unwrap());
        assert_eq!(s.latest_decision(Submission::gitea(124)).unwrap().unwrap().verdict.kind, Kind::Gitea);
        assert_eq!(s.latest_decision(124).unwrap().unwrap().verdict.kind, Kind::Ibs);
        for item in s.take_due(Sink::Amqp, 10).unwrap() {
            s.complete(&item, &Delivery::Done("published".into())).unwrap();
        }
        // both reports are due at once: one per submission, not one per number
        assert_eq!(s.take_due(Sink::Obs, 10).unwrap().len(), 1);
        let gitea = s.take_due(Sink::Gitea, 10).unwrap();
        assert_eq!(gitea.len(), 1);
        assert_eq!(gitea[0].decision.verdict.submission(), Submission::gitea(124));
    }

    fn a_decision_is_recorded_once_across_connections(open) {
        let (a, b) = (open(), open());
        let d = decision(1, vec![1, 2]);
        assert_eq!(
            a.record_decision(&mut d.clone(), &[Sink::Amqp, Sink::Obs], s_next(), &[]).unwrap(),
            Recorded::New
        );
        assert_eq!(
            b.record_decision(&mut d.clone(), &[Sink::Amqp, Sink::Obs], s_next(), &[]).unwrap(),
            Recorded::Repeat
        );
        assert_eq!(
            b.record_decision(&mut decision(1, vec![1, 3]), &[Sink::Amqp], s_next(), &[]).unwrap(),
            Recorded::New
        );
        assert_eq!(a.decision_count().unwrap(), 2);
        assert_eq!(a.backlog().unwrap().amqp, 2);
    }

    fn a_verdict_that_comes_back_is_a_new_decision(open) {
        let s = open();
        let passed = decision(9, vec![1, 2]);
        let mut failed = decision(9, vec![1, 2]);
        failed.verdict.result = crate::verdict::Outcome::Failed;
        failed.key = crate::decision::decision_key(&failed.verdict);
        let mut first = passed.clone();
        assert_eq!(s.record_decision(&mut first, &[Sink::Amqp], s_next(), &[]).unwrap(), Recorded::New);
        assert_eq!(
            s.record_decision(&mut failed.clone(), &[Sink::Amqp], s_next(), &[]).unwrap(),
            Recorded::New
        );
        let mut again = passed.clone();
        assert_eq!(
            s.record_decision(&mut again, &[Sink::Amqp], s_next(), &[]).unwrap(),
            Recorded::New,
            "passed again after failed"
        );
        assert_ne!(again.key, first.key, "a key of its own, so it is published and reported");
        assert!(s.is_latest(9, &again.key).unwrap());
        assert!(!s.is_latest(9, &first.key).unwrap());
        assert_eq!(
            s.record_decision(&mut passed.clone(), &[Sink::Amqp], s_next(), &[]).unwrap(),
            Recorded::Repeat,
            "repeats the latest"
        );
        assert_eq!(s.backlog().unwrap().amqp, 3);
    }

    fn outbox_leases_retries_and_completes(open) {
        let (a, b) = (open(), open());
        a.record_decision(&mut decision(7, vec![1]), &[Sink::Amqp], s_next(), &[]).unwrap();
        let taken = a.take_due(Sink::Amqp, 10).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].decision.verdict.incident, 7);
        assert!(b.take_due(Sink::Amqp, 10).unwrap().is_empty(), "leased to a");
        a.complete(&taken[0], &Delivery::Retry("broker down".into())).unwrap();
        assert!(b.take_due(Sink::Amqp, 10).unwrap().is_empty(), "backing off");
        assert!(b.next_due_in(Sink::Amqp).unwrap().unwrap() > 0);
        a.expedite_queued().unwrap();
        let again = b.take_due(Sink::Amqp, 10).unwrap();
        assert_eq!(again[0].attempts, 1);
        b.complete(&again[0], &Delivery::Done("confirmed".into())).unwrap();
        assert_eq!(a.backlog().unwrap().amqp, 0);
        let rows = a.recent_decisions(5).unwrap();
        assert_eq!(rows[0].deliveries[0].state, "done");
        assert_eq!(rows[0].deliveries[0].attempts, 2);
    }

    fn a_released_lease_is_due_at_once_but_a_stale_release_takes_nothing_away(open) {
        let (a, b) = (open(), open());
        a.record_decision(&mut decision(8, vec![1]), &[Sink::Amqp], s_next(), &[]).unwrap();
        a.record_decision(&mut decision(9, vec![2]), &[Sink::Amqp], s_next(), &[]).unwrap();
        let taken = a.take_due(Sink::Amqp, 1).unwrap();
        assert_eq!(taken.len(), 1, "only what is asked for is leased");
        let other = b.take_due(Sink::Amqp, 10).unwrap();
        assert_eq!(other.len(), 1, "the item a never started is not blocked by a's lease");
        assert_eq!(other[0].decision.verdict.incident, 9);
        a.release(&taken[0]).unwrap();
        // leases are told apart by their expiry (ms); a real stale release comes a lease later
        std::thread::sleep(std::time::Duration::from_millis(2));
        let again = b.take_due(Sink::Amqp, 10).unwrap();
        assert_eq!(again.len(), 1, "released: due at once");
        assert_eq!(again[0].decision.verdict.incident, 8);
        assert_eq!(again[0].attempts, 0, "a release is no attempt");
        a.release(&taken[0]).unwrap();
        assert!(a.take_due(Sink::Amqp, 10).unwrap().is_empty(), "a's old lease cannot free b's");
    }

    fn retention_keeps_each_incidents_latest_decision_and_what_is_undelivered(open) {
        let s = open();
        for (incident, jobs) in [(1, vec![1]), (1, vec![1, 2]), (2, vec![3]), (2, vec![3, 4])] {
            let seen = s.begin_evaluation().unwrap();
            let mut d = decision(incident, jobs);
            d.decided_at = "2020-01-01T00:00:00Z".into();
            assert_eq!(s.record_decision(&mut d, &[Sink::Amqp], seen, &[]).unwrap(), Recorded::New);
        }
        // incident 1's first decision was delivered, incident 2's is still queued
        let items = s.take_due(Sink::Amqp, 10).unwrap();
        let first_of_1 = items.iter().find(|i| i.decision.verdict.incident == 1).unwrap();
        s.complete(first_of_1, &Delivery::Done("sent".into())).unwrap();
        assert_eq!(s.prune("2019-01-01T00:00:00Z").unwrap(), 0, "nothing old enough");
        assert_eq!(s.prune("2021-01-01T00:00:00Z").unwrap(), 1);
        assert_eq!(s.decision_count().unwrap(), 3);
        assert_eq!(s.latest_decision(1).unwrap().unwrap().verdict.job_ids, vec![1, 2]);
    }

    fn pending_incidents_come_back_when_stale(open) {
        let s = open();
        s.mark_pending(5).unwrap();
        s.mark_pending(6).unwrap();
        let other = open();
        assert_eq!(s.claim_stale_pending(0).unwrap(), vec![Submission::ibs(5), Submission::ibs(6)]);
        assert!(other.claim_stale_pending(1_000).unwrap().is_empty(), "claimed by the first process");
        assert!(s.claim_stale_pending(60_000).unwrap().is_empty());
        s.record_decision(&mut decision(5, vec![1]), &[], s_next(), &[]).unwrap();
        assert_eq!(s.pending().unwrap(), vec![Submission::ibs(6)]);
    }

    fn an_evaluation_that_read_older_data_does_not_replace_a_newer_decision(open) {
        let (a, b) = (open(), open());
        // a slow evaluation starts, then a faster one (after an acceptable_for comment) overtakes it
        let (slow, fast) = (a.begin_evaluation().unwrap(), b.begin_evaluation().unwrap());
        assert!(fast > slow, "one counter for every process");
        let passed = decision(3, vec![1, 2]);
        let mut failed = decision(3, vec![1, 2]);
        failed.verdict.result = Outcome::Failed;
        assert_eq!(b.record_decision(&mut passed.clone(), &[Sink::Obs], fast, &[]).unwrap(), Recorded::New);
        assert_eq!(a.record_decision(&mut failed.clone(), &[Sink::Obs], slow, &[]).unwrap(), Recorded::Stale);
        let latest = a.latest_decision(3).unwrap().unwrap();
        assert_eq!(latest.verdict.result, Outcome::Passed);
        assert!(a.is_latest(3, &latest.key).unwrap(), "the passed report is not superseded");
        assert_eq!(a.backlog().unwrap().obs, 1, "the stale failure is never reported");
        // an evaluation started afterwards that finds the failure again is a decision
        let later = a.begin_evaluation().unwrap();
        assert_eq!(a.record_decision(&mut failed.clone(), &[Sink::Obs], later, &[]).unwrap(), Recorded::New);
    }

    fn a_pass_read_before_testing_resumed_is_neither_recorded_nor_reported(open) {
        let (a, b) = (open(), open());
        // a slow evaluation reads every job passed; a job is restarted, and a later evaluation
        // finds its clone scheduled before the slow one records
        let (slow, later) = (a.begin_evaluation().unwrap(), b.begin_evaluation().unwrap());
        b.note_unfinished(7, later, "pending", "a clone").unwrap();
        assert_eq!(
            a.record_decision(&mut decision(7, vec![1, 2]), &[Sink::Obs], slow, &[]).unwrap(),
            Recorded::Stale
        );
        assert_eq!(a.backlog().unwrap().obs, 0);
        // a pass queued for IBS, then testing resumes: the queued report is no longer the latest
        let first = a.begin_evaluation().unwrap();
        let mut passed = decision(7, vec![1, 3]);
        assert_eq!(a.record_decision(&mut passed, &[Sink::Obs], first, &[]).unwrap(), Recorded::New);
        assert!(a.is_latest(7, &passed.key).unwrap());
        b.note_unfinished(7, b.begin_evaluation().unwrap(), "pending", "a clone").unwrap();
        assert!(!a.is_latest(7, &passed.key).unwrap());
        // the same verdict over the same jobs afterwards is a decision of its own, reported
        let again = a.begin_evaluation().unwrap();
        let mut repeat = decision(7, vec![1, 3]);
        assert_eq!(a.record_decision(&mut repeat, &[Sink::Obs], again, &[]).unwrap(), Recorded::New);
        assert_ne!(repeat.key, passed.key);
        assert!(a.is_latest(7, &repeat.key).unwrap());
        let once_more = a.begin_evaluation().unwrap();
        assert_eq!(
            a.record_decision(&mut decision(7, vec![1, 3]), &[Sink::Obs], once_more, &[]).unwrap(),
            Recorded::Repeat
        );
    }

    fn ibs_hears_one_decision_of_an_incident_at_a_time(open) {
        let (a, b) = (open(), open());
        let mut failed = decision(5, vec![1]);
        failed.verdict.result = Outcome::Failed;
        a.record_decision(&mut failed, &[Sink::Obs], s_next(), &[]).unwrap();
        a.record_decision(&mut decision(6, vec![2]), &[Sink::Obs], s_next(), &[]).unwrap();
        a.record_decision(&mut decision(5, vec![1]), &[Sink::Obs], s_next(), &[]).unwrap();
        let first = a.take_due(Sink::Obs, 10).unwrap();
        let taken: Vec<(u64, Outcome)> =
            first.iter().map(|i| (i.decision.verdict.incident, i.decision.verdict.result)).collect();
        assert_eq!(taken, vec![(5, Outcome::Failed), (6, Outcome::Passed)], "one per incident, oldest first");
        assert!(b.take_due(Sink::Obs, 10).unwrap().is_empty(), "5's newer decision waits for the older one");
        let wait = b.next_due_in(Sink::Obs).unwrap().unwrap();
        assert!(wait > (LEASE_S - 5) * 1000, "no busy wait while another process delivers: {wait} ms");
        a.complete(&first[0], &Delivery::Done("commented".into())).unwrap();
        let next = b.take_due(Sink::Obs, 10).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(
            (next[0].decision.verdict.incident, next[0].decision.verdict.result),
            (5, Outcome::Passed)
        );
        // an older decision backing off does not hold the newer one up: it is superseded anyway
        b.complete(&next[0], &Delivery::Retry("IBS down".into())).unwrap();
        a.record_decision(&mut decision(5, vec![1, 2]), &[Sink::Obs], s_next(), &[]).unwrap();
        let newest = a.take_due(Sink::Obs, 10).unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].decision.verdict.job_ids, vec![1, 2]);
    }

    fn relied_comments_lead_to_their_incidents(open) {
        let s = open();
        s.set_relied_comments(12345, &[(7, 70), (8, 80)]).unwrap();
        s.set_relied_comments(12346, &[(8, 80)]).unwrap();
        assert_eq!(
            s.incidents_relying_on(&[8]).unwrap(),
            vec![Submission::ibs(12345), Submission::ibs(12346)]
        );
        assert_eq!(s.incidents_relying_on(&[7, 99]).unwrap(), vec![Submission::ibs(12345)]);
        s.set_relied_comments(12345, &[]).unwrap();
        assert!(s.incidents_relying_on(&[7]).unwrap().is_empty(), "replaced by the newer verdict");
        assert_eq!(s.claim_relied_comments(0, 10).unwrap(), vec![(8, Submission::ibs(12346), 80)]);
        assert!(s.claim_relied_comments(60_000, 10).unwrap().is_empty(), "just checked");
    }

    fn a_stale_evaluation_keeps_the_comments_of_the_newer_decision(open) {
        let s = open();
        let (slow, fast) = (s.begin_evaluation().unwrap(), s.begin_evaluation().unwrap());
        // the newer evaluation passes thanks to an acceptable_for comment
        assert_eq!(
            s.record_decision(&mut decision(12, vec![1, 2]), &[Sink::Obs], fast, &[(7, 70)]).unwrap(),
            Recorded::New
        );
        let mut failed = decision(12, vec![1, 2]);
        failed.verdict.result = Outcome::Failed;
        assert_eq!(s.record_decision(&mut failed, &[Sink::Obs], slow, &[]).unwrap(), Recorded::Stale);
        assert_eq!(
            s.incidents_relying_on(&[7]).unwrap(),
            vec![Submission::ibs(12)],
            "deleting the comment still leads to the passed incident"
        );
        // a repeat of the decision brings the set up to date
        let again = s.begin_evaluation().unwrap();
        assert_eq!(
            s.record_decision(&mut decision(12, vec![1, 2]), &[Sink::Obs], again, &[(8, 70)]).unwrap(),
            Recorded::Repeat
        );
        assert!(s.incidents_relying_on(&[7]).unwrap().is_empty());
        assert_eq!(s.incidents_relying_on(&[8]).unwrap(), vec![Submission::ibs(12)]);
    }

    fn incidents_list_their_state_newest_first_with_filters(open) {
        let s = open();
        let both = [Sink::Amqp, Sink::Obs];
        // 101: delivered everywhere → reported
        s.record_decision(&mut decision(101, vec![1]), &both, s_next(), &[]).unwrap();
        for sink in both {
            let item = s.take_due(sink, 10).unwrap().remove(0);
            s.complete(&item, &Delivery::Done("ok".into())).unwrap();
        }
        // 102: IBS failed once → delivery pending, with the reason
        s.record_decision(&mut decision(102, vec![2]), &both, s_next(), &[]).unwrap();
        let item = s.take_due(Sink::Amqp, 10).unwrap().remove(0);
        s.complete(&item, &Delivery::Done("ok".into())).unwrap();
        let item = s.take_due(Sink::Obs, 10).unwrap().remove(0);
        s.complete(&item, &Delivery::Retry("IBS: 503 Service Unavailable".into())).unwrap();
        // 103: only an event, published → its result
        s.record_decision(&mut decision(103, vec![3]), &[Sink::Amqp], s_next(), &[]).unwrap();
        let item = s.take_due(Sink::Amqp, 10).unwrap().remove(0);
        s.complete(&item, &Delivery::Final("dry-run".into())).unwrap();
        // 204: waiting for jobs
        std::thread::sleep(std::time::Duration::from_millis(5));
        s.mark_pending(204).unwrap();

        let all = s.incidents(&IncidentQuery::default()).unwrap();
        let states: Vec<(u64, &str)> = all.incidents.iter().map(|r| (r.incident, r.state.as_str())).collect();
        assert_eq!(states[0], (204, "pending"), "the newest first: {states:?}");
        assert!(states.contains(&(101, "reported")), "{states:?}");
        assert!(states.contains(&(102, "delivery_pending")), "{states:?}");
        assert!(states.contains(&(103, "passed")), "{states:?}");
        let pending = all.incidents.iter().find(|r| r.incident == 102).unwrap();
        let why = pending.why.as_deref().unwrap_or("");
        assert!(why.contains("obs") && why.contains("503"), "{why}");
        assert_eq!(all.total, 4);
        assert_eq!(all.states.get("pending"), Some(&1));

        let q = |state: Option<&str>, search: Option<&str>| {
            let q = IncidentQuery {
                state: state.map(str::to_string),
                search: search.map(str::to_string),
                ..Default::default()
            };
            s.incidents(&q).unwrap().incidents.iter().map(|r| r.incident).collect::<Vec<_>>()
        };
        assert_eq!(q(Some("reported"), None), vec![101]);
        assert_eq!(q(Some("pending"), None), vec![204]);
        assert_eq!(q(None, Some("02")), vec![102]);
        assert_eq!(q(Some("failed"), None), Vec::<u64>::new());

        let one = s.incidents(&IncidentQuery { incident: Some(102), ..Default::default() }).unwrap();
        let history = one.decisions.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].deliveries.len(), 2);
        assert_eq!(history[0].deliveries[1].outcome.as_deref(), Some("IBS: 503 Service Unavailable"));
    }

    fn incidents_list_pull_requests_by_kind_and_what_a_pending_one_waits_for(open) {
        let s = open();
        // an IBS incident and a pull request of the same number, both waiting
        s.note_unfinished(
            124,
            s.begin_evaluation().unwrap(),
            "coverage",
            "expected, not in openQA: an aggregate job",
        )
        .unwrap();
        s.mark_pending(Submission::gitea(124)).unwrap();
        let all = s.incidents(&IncidentQuery::default()).unwrap();
        let rows: Vec<(&str, &str, &str)> =
            all.incidents.iter().map(|r| (r.submission.as_str(), r.kind, r.state.as_str())).collect();
        assert!(rows.contains(&("124", "ibs", "coverage")), "{rows:?}");
        assert!(rows.contains(&("git:124", "gitea", "pending")), "{rows:?}");
        assert!(all.incidents.iter().all(|r| r.incident == 124), "numbers, never a negated store key");
        let pr = IncidentQuery { submission: Some("git:124".into()), ..Default::default() };
        let one = s.incidents(&pr).unwrap();
        assert_eq!(one.incidents.len(), 1);
        assert_eq!(one.incidents[0].why.as_deref(), Some("waiting for jobs to finish"));
        let coverage = IncidentQuery { state: Some("coverage".into()), ..Default::default() };
        let waits = s.incidents(&coverage).unwrap();
        assert_eq!(waits.incidents.len(), 1);
        assert_eq!(waits.incidents[0].why.as_deref(), Some("expected, not in openQA: an aggregate job"));
        let bad = IncidentQuery { submission: Some("pr:1".into()), ..Default::default() };
        assert!(s.incidents(&bad).unwrap_err().0.contains("not a submission"));
    }

    fn scheduling_products_hold_their_incidents_until_scheduled(open) {
        let s = open();
        let both = [Submission::ibs(100), Submission::ibs(200)];
        s.note_product(7, &both, "added").unwrap();
        s.note_product(7, &both, "scheduling").unwrap();
        assert_eq!(s.scheduling_products(100).unwrap().iter().map(|p| p.0).collect::<Vec<_>>(), [7]);
        // another process of the same state directory sees it too
        let other = open();
        assert_eq!(other.scheduling_products(200).unwrap().len(), 1);
        other.note_product(7, &[], "scheduled").unwrap();
        assert!(s.scheduling_products(100).unwrap().is_empty(), "scheduled: nothing to wait for");
        assert!(s.scheduling_products(200).unwrap().is_empty());
    }

    fn a_newer_job_or_a_creation_restarts_the_quiet_period(open) {
        let s = open();
        assert_eq!(s.last_job_at(1).unwrap(), None);
        s.note_job(1, 50, false).unwrap();
        let first = s.last_job_at(1).unwrap().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        s.note_job(1, 40, false).unwrap();
        assert_eq!(s.last_job_at(1).unwrap(), Some(first), "an older job seen again changes nothing");
        s.note_job(1, 50, false).unwrap();
        assert_eq!(s.last_job_at(1).unwrap(), Some(first), "nor the same job");
        s.note_job(1, 51, false).unwrap();
        assert!(s.last_job_at(1).unwrap().unwrap() > first, "a newer job does");
        let second = s.last_job_at(1).unwrap().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        s.note_job(1, 45, true).unwrap();
        assert!(s.last_job_at(1).unwrap().unwrap() > second, "a creation event always does");
    }

    // A report waiting for the other side stays queued, is due again after the delay it carries
    // (not the retry backoff), shows in status what it waits for, and remembers it for the log.
    fn a_waiting_delivery_stays_queued_and_says_what_it_waits_for(open) {
        let s = open();
        s.record_decision(&mut decision(105, vec![5]), &[Sink::Obs], s_next(), &[]).unwrap();
        let item = s.take_due(Sink::Obs, 10).unwrap().remove(0);
        assert_eq!(item.last_outcome, None);
        let why = "request 9: waiting for a qam-openqa review to be added";
        s.complete(&item, &Delivery::Waiting(why.into(), 300_000)).unwrap();
        assert!(s.take_due(Sink::Obs, 10).unwrap().is_empty(), "not due before its delay");
        let due_in = s.next_due_in(Sink::Obs).unwrap().unwrap();
        assert!(due_in > 250_000 && due_in <= 300_000, "{due_in}");
        assert_eq!(s.backlog().unwrap().obs, 1);
        let row = s.incidents(&IncidentQuery::default()).unwrap().incidents.remove(0);
        assert_eq!(row.state, "delivery_pending");
        assert!(row.why.as_deref().unwrap_or("").contains(why), "{:?}", row.why);
        // a hook run does not hurry it, nor count it as left undone
        s.expedite_queued().unwrap();
        assert!(s.take_due(Sink::Obs, 10).unwrap().is_empty(), "a hook run keeps the wait");
        assert_eq!(s.undelivered().unwrap(), 0);
        s.execute_for_test("UPDATE outbox SET next_at = 0");
        let again = s.take_due(Sink::Obs, 10).unwrap().remove(0);
        assert_eq!(again.last_outcome.as_deref(), Some(why));
        // a retry after a wait is hurried and counted again
        s.complete(&again, &Delivery::Retry("IBS: 503".into())).unwrap();
        assert_eq!(s.undelivered().unwrap(), 1);
        s.expedite_queued().unwrap();
        assert_eq!(s.take_due(Sink::Obs, 10).unwrap().len(), 1);
    }


    fn metrics_read_sums_up_what_the_store_holds(open) {
        let s = open();
        let mut passed = decision(11, vec![1]);
        passed.last_job_end = Some("2026-12-07T10:00:00Z".into());
        s.record_decision(&mut passed, &[Sink::Amqp, Sink::Obs], s.begin_evaluation().unwrap(), &[]).unwrap();
        let mut failed = decision(12, vec![2]);
        failed.verdict.result = Outcome::Failed;
        failed.verdict.kind = Kind::Gitea;
        s.record_decision(&mut failed, &[Sink::Amqp], s.begin_evaluation().unwrap(), &[]).unwrap();
        // IBS hears a decision after its event went out
        let events = s.take_due(Sink::Amqp, 10).unwrap();
        let event = events.iter().find(|i| i.decision.verdict.incident == 11).unwrap();
        s.complete(event, &Delivery::Done("confirmed".into())).unwrap();
        let obs = s.take_due(Sink::Obs, 10).unwrap();
        let refused = format!("IBS {}: 403", crate::decision::CREDENTIALS_REFUSED);
        s.complete(&obs[0], &Delivery::Denied(refused, 60_000)).unwrap();
        s.mark_pending(13).unwrap();
        s.count("openqa_refused", 2).unwrap();
        s.count("openqa_refused", 1).unwrap();
        let end = CatchupEnd { after_id: Some(100), newest_seen: Some(120), waiting: vec![95, 90], ..Default::default() };
        s.finish_catchup(&end).unwrap();

        let m = s.metrics_read(10).unwrap();
        let decisions: Vec<(Kind, &str, u64)> =
            m.decisions.iter().map(|d| (d.kind, d.result.as_str(), d.count)).collect();
        assert_eq!(decisions, vec![(Kind::Ibs, "passed", 1), (Kind::Gitea, "failed", 1)]);
        assert_eq!((m.evaluations, m.openqa_refused), (2, 3));
        assert_eq!(m.waiting, 1);
        assert!(m.oldest_waiting_since_ms.is_some());
        let sinks: Vec<(Sink, u64, u64)> =
            m.sinks.iter().map(|r| (r.sink, r.queued, r.credentials_refused)).collect();
        assert_eq!(sinks, vec![(Sink::Amqp, 1, 0), (Sink::Obs, 1, 1), (Sink::Gitea, 0, 0)]);
        assert_eq!(m.sinks[1].oldest_decided_at.as_deref(), Some(passed.decided_at.as_str()));
        assert_eq!((m.newest_seen, m.watermark), (120, 89), "the lowest job still waited on, less one");
        let newest_first = vec![
            (failed.decided_at.clone(), None),
            (passed.decided_at.clone(), Some("2026-12-07T10:00:00Z".to_string())),
        ];
        assert_eq!(m.recent, newest_first);
        assert_eq!(s.metrics_read(1).unwrap().recent, newest_first[..1]);
    }

}

#[test]
fn a_stored_decision_keeps_what_deliveries_need_not_a_note_per_job() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    // an incident in 10 aggregate builds of 400 jobs
    let mut d = decision(77, (1..=4000).collect());
    d.verdict.notes = (1..=4000)
        .map(|id| crate::verdict::JobNote {
            id,
            name: format!("sle-15-SP6-Server-DVD-Updates-x86_64-Build20261128-1-mau-aggregate-{id}@64bit"),
            state: "done".into(),
            result: "passed".into(),
            group: "Maintenance: SLE 15 SP6 Updates".into(),
            role: "aggregate".into(),
            counts: true,
            why: "newest build 20261128-1 of sle 15-SP6 Server-DVD-Updates x86_64 lists incident 77".into(),
            comment: None,
        })
        .collect();
    s.record_decision(&mut d, &[Sink::Amqp], s_next(), &[]).unwrap();
    assert_eq!(d.verdict.notes.len(), 4000, "the caller keeps its notes");
    let stored = s.latest_decision(77).unwrap().unwrap();
    assert!(stored.verdict.notes.is_empty());
    assert_eq!(stored.verdict.job_ids.len(), 4000);
    let bytes: i64 = Connection::open(dir.path().join("incident-gate.sqlite"))
        .unwrap()
        .query_row("SELECT length(body) FROM decisions", [], |r| r.get(0))
        .unwrap();
    assert!(bytes < 40_000, "{bytes} bytes for one decision");
}

#[test]
fn ibs_waits_until_the_event_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.record_decision(&mut decision(8, vec![1]), &[Sink::Amqp, Sink::Obs], s_next(), &[]).unwrap();
    assert!(s.take_due(Sink::Obs, 10).unwrap().is_empty(), "the event goes first");
    let amqp = s.take_due(Sink::Amqp, 10).unwrap();
    s.complete(&amqp[0], &Delivery::Retry("broker down".into())).unwrap();
    assert!(s.take_due(Sink::Obs, 10).unwrap().is_empty(), "still waiting for the broker");
    assert_eq!(s.next_due_in(Sink::Obs).unwrap(), None, "nothing of its own is due: no busy wait");
    Connection::open(dir.path().join("incident-gate.sqlite"))
        .unwrap()
        .execute("UPDATE outbox SET next_at = 0", [])
        .unwrap();
    let amqp = s.take_due(Sink::Amqp, 10).unwrap();
    s.complete(&amqp[0], &Delivery::Done("confirmed".into())).unwrap();
    assert_eq!(s.take_due(Sink::Obs, 10).unwrap().len(), 1);
}

#[test]
fn an_unreadable_decision_is_given_up_alone_and_the_others_go_out() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let mut broken = decision(8, vec![1]);
    s.record_decision(&mut broken, &[Sink::Amqp, Sink::Obs], s_next(), &[]).unwrap();
    s.record_decision(&mut decision(9, vec![2]), &[Sink::Amqp], s_next(), &[]).unwrap();
    Connection::open(dir.path().join("incident-gate.sqlite"))
        .unwrap()
        .execute("UPDATE decisions SET body = '{\"verdict\": 1' WHERE incident = 8", [])
        .unwrap();
    let taken = s.take_due(Sink::Amqp, 10).unwrap();
    assert_eq!(taken.iter().map(|i| i.decision.verdict.incident).collect::<Vec<_>>(), vec![9]);
    // IBS's turn comes once the event is out of the way, and it cannot read it either
    assert!(s.take_due(Sink::Obs, 10).unwrap().is_empty());
    let given_up: Vec<(String, String, String)> = {
        let conn = Connection::open(dir.path().join("incident-gate.sqlite")).unwrap();
        let mut stmt =
            conn.prepare("SELECT sink, state, outcome FROM outbox WHERE key = ?1 ORDER BY id").unwrap();
        let rows = stmt.query_map([&broken.key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
        rows.map(Result::unwrap).collect()
    };
    assert_eq!(given_up.len(), 2, "{given_up:?}");
    for (sink, state, outcome) in &given_up {
        assert_eq!(state, "final", "{sink}: {outcome}");
        assert!(outcome.starts_with(&format!("decision {} is unreadable", broken.key)), "{outcome}");
        assert!(outcome.contains("invalid type: integer `1`, expected struct Verdict"), "{outcome}");
    }
    // nothing is left to fail again: the next takes find nothing, with no error
    assert!(s.take_due(Sink::Amqp, 10).unwrap().is_empty());
    assert!(s.take_due(Sink::Obs, 10).unwrap().is_empty());
}

#[test]
fn a_state_directory_of_an_older_version_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let old = Connection::open(dir.path().join("incident-gate.sqlite")).unwrap();
    old.execute_batch(
        "CREATE TABLE decisions (key TEXT PRIMARY KEY, base TEXT NOT NULL, incident INTEGER NOT NULL,
                request INTEGER, result TEXT NOT NULL, decided_at TEXT NOT NULL, body TEXT NOT NULL);",
    )
    .unwrap();
    let body = include_str!("../../tests/fixtures/store/decision-body-2026-11-24.json").trim();
    old.execute("INSERT INTO decisions VALUES ('k', 'k', 4, 300001, 'failed', 'then', ?1)", [body]).unwrap();
    drop(old);
    let (a, b) = (Store::open(dir.path()).unwrap(), Store::open(dir.path()).unwrap());
    let before = a.latest_decision(4).unwrap().expect("the older row is read");
    let v = before.verdict;
    assert_eq!((v.result, v.job_ids, v.complete), (Outcome::Failed, vec![1], true), "taken as complete");
    let ticket = b.begin_evaluation().unwrap();
    assert_eq!(
        a.record_decision(&mut decision(4, vec![1]), &[Sink::Obs], ticket, &[]).unwrap(),
        Recorded::New
    );
    assert_eq!(a.latest_decision(4).unwrap().unwrap().verdict.result, Outcome::Passed);
}

/// A schema of version 1 (before outbox items could wait for the other side) is migrated when
/// opened: its queued item takes a wait and keeps it through a hook run.
#[test]
fn a_postgres_schema_of_version_1_is_migrated_in_place() {
    let db = TempDatabase::new("ig_store_test");
    let open = || Store::open_url(&db.url(), std::path::Path::new("/nonexistent")).unwrap();
    let old = open();
    old.record_decision(&mut decision(6, vec![1]), &[Sink::Amqp], s_next(), &[]).unwrap();
    old.execute_for_test("ALTER TABLE outbox DROP COLUMN waiting; UPDATE schema_version SET version = 1");
    drop(old);
    let s = open();
    let item = s.take_due(Sink::Amqp, 1).unwrap().remove(0);
    s.complete(&item, &Delivery::Waiting("waiting for the broker".into(), 300_000)).unwrap();
    s.expedite_queued().unwrap();
    assert!(s.take_due(Sink::Amqp, 1).unwrap().is_empty(), "the wait is kept");
    assert_eq!(s.undelivered().unwrap(), 0);
}

#[test]
fn backoff_grows_and_caps() {
    assert_eq!(backoff_ms(0), 500);
    assert_eq!(backoff_ms(1), 1000);
    assert_eq!(backoff_ms(10), MAX_BACKOFF_MS);
    assert_eq!(backoff_ms(u32::MAX), MAX_BACKOFF_MS);
}

/// A forked child (openQA's prefork workers) connects anew: the parent's session is its own.
#[test]
fn a_forked_child_leaves_the_parents_connection_alone() {
    let db = TempDatabase::new("ig_store_test");
    let s = Store::open_url(&db.url(), std::path::Path::new("/nonexistent")).unwrap();
    s.mark_pending(1).unwrap();
    // SAFETY: the child only uses the store and leaves with _exit
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = s.mark_pending(2).is_ok() && s.pending().is_ok_and(|p| p.len() == 2);
        // dropping the store ends the child's connections, never the parent's
        drop(s);
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child could not use the store");
    assert_eq!(
        s.pending().unwrap(),
        vec![Submission::ibs(1), Submission::ibs(2)],
        "the parent's session lives on"
    );
}

/// openQA's database user may not create schemas: one an administrator created for it is used.
#[test]
fn a_schema_created_by_an_administrator_is_used_by_a_user_who_cannot_create_one() {
    let db = TempDatabase::new("ig_store_test");
    let role = format!("ig_store_user_{}", std::process::id());
    let url = db.url();
    let admin = |sql: String| {
        let url = url.clone();
        std::thread::spawn(move || {
            ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap().batch_execute(&sql).unwrap()
        })
        .join()
        .unwrap()
    };
    admin(format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; CREATE SCHEMA incident_gate AUTHORIZATION {role}"));
    struct DropRole<F: Fn(String)>(F, String);
    impl<F: Fn(String)> Drop for DropRole<F> {
        fn drop(&mut self) {
            (self.0)(format!("DROP SCHEMA IF EXISTS incident_gate CASCADE; DROP ROLE IF EXISTS {}", self.1));
        }
    }
    let _cleanup = DropRole(admin, role.clone());
    let as_user = url.replacen("postgres@", &format!("{role}@"), 1);
    let s = Store::open_url(&as_user, std::path::Path::new("/nonexistent")).unwrap();
    s.mark_pending(4).unwrap();
    assert_eq!(s.pending().unwrap(), vec![Submission::ibs(4)]);
}
