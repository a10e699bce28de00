//! The verdict rules of DESIGN section 4, one test per rule and trap, on synthetic jobs and on the
//! real openQA responses in tests/fixtures/openqa.

use incident_gate::openqa::model::{Comment, Job, JobList};
use incident_gate::verdict::{decide, expected_restarts, glob_match, select, Outcome, Rules, Verdict};
use std::collections::HashMap;

const URL: &str = "https://openqa.example.com";

fn rules() -> (Vec<String>, &'static str) {
    (vec!["*Devel*".to_string(), "*Test*".to_string()], URL)
}

fn verdict(incident: u64, jobs: &[Job], comments: &[(u64, &str)]) -> Verdict {
    let (groups, url) = rules();
    let mut map: HashMap<u64, Vec<Comment>> = HashMap::new();
    for (i, (job, text)) in comments.iter().enumerate() {
        map.entry(*job).or_default().push(Comment { id: i as u64 + 1, text: text.to_string() });
    }
    decide(incident, jobs, &map, &Rules { ignore_groups: &groups, openqa_url: url })
}

/// An incident job of incident 100, request `rr`.
fn inc(id: u64, test: &str, rr: u64, state: &str, result: &str) -> Job {
    job(
        id,
        test,
        state,
        result,
        "Maintenance: SLE 15 SP6 Incidents",
        &[
            ("INCIDENT_ID", "100"),
            ("RRID", &format!("SUSE:Maintenance:100:{rr}")),
            ("BUILD", ":100:openssl"),
            ("FLAVOR", "Server-DVD-Incidents"),
        ],
    )
}

/// An aggregate job of build `build` listing incidents `issues`.
fn agg(id: u64, test: &str, build: &str, issues: &str, state: &str, result: &str) -> Job {
    job(
        id,
        test,
        state,
        result,
        "Maintenance: SLE 15 SP6 Updates",
        &[("OS_TEST_ISSUES", issues), ("BUILD", build), ("FLAVOR", "Server-DVD-Updates")],
    )
}

fn job(id: u64, test: &str, state: &str, result: &str, group: &str, extra: &[(&str, &str)]) -> Job {
    let mut settings: std::collections::BTreeMap<String, String> = [
        ("DISTRI", "sle"),
        ("VERSION", "15-SP6"),
        ("ARCH", "x86_64"),
        ("MACHINE", "64bit"),
        ("TEST", test),
        ("FLAVOR", "Server-DVD-Incidents"),
        ("BUILD", ":100:openssl"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        settings.insert(k.to_string(), v.to_string());
    }
    Job {
        id,
        name: format!("sle-15-SP6-{}-x86_64-Build{}-{test}@64bit", settings["FLAVOR"], settings["BUILD"]),
        state: state.into(),
        result: result.into(),
        clone_id: None,
        origin_id: None,
        group: Some(group.into()),
        group_id: Some(1),
        settings,
        t_finished: None,
        t_started: None,
        reason: None,
    }
}

fn blocking_ids(v: &Verdict) -> Vec<u64> {
    v.blocking.iter().map(|b| b.id).collect()
}

#[test]
fn all_passed_or_softfailed_passes() {
    let jobs = [inc(1, "a", 1, "done", "passed"), inc(2, "b", 1, "done", "softfailed")];
    let v = verdict(100, &jobs, &[]);
    assert_eq!(v.result, Outcome::Passed);
    assert_eq!((v.jobs.total, v.jobs.passed, v.jobs.softfailed), (2, 1, 1));
    assert_eq!(v.request, Some(1));
    assert_eq!(v.rrid.as_deref(), Some("SUSE:Maintenance:100:1"));
}

#[test]
fn a_failed_job_blocks_with_its_details() {
    let jobs = [inc(1, "a", 1, "done", "passed"), inc(2, "b", 1, "done", "failed")];
    let v = verdict(100, &jobs, &[]);
    assert_eq!(v.result, Outcome::Failed);
    let b = &v.blocking[0];
    assert_eq!((b.id, b.result.as_str()), (2, "failed"));
    assert_eq!(b.group, "Maintenance: SLE 15 SP6 Incidents");
    assert_eq!(b.url, "https://openqa.example.com/tests/2");
    assert!(b.name.contains("-b@64bit"), "{}", b.name);
}

#[test]
fn any_unfinished_job_keeps_it_pending_with_counts() {
    let jobs = [
        inc(1, "a", 1, "done", "failed"),
        inc(2, "b", 1, "running", "none"),
        inc(3, "c", 1, "uploading", "none"),
    ];
    let v = verdict(100, &jobs, &[]);
    assert_eq!(v.result, Outcome::Pending);
    assert_eq!((v.jobs.pending, v.jobs.failed, v.jobs.total), (2, 1, 3));
}

#[test]
fn no_relevant_jobs_is_no_jobs() {
    let jobs = [agg(1, "a", "20261124-1", "555", "done", "passed")];
    assert_eq!(verdict(100, &jobs, &[]).result, Outcome::NoJobs);
    assert_eq!(verdict(100, &[], &[]).result, Outcome::NoJobs);
    // only a Devel job: nothing that counts
    let devel = job(2, "x", "done", "failed", "Maintenance: SLE 15 SP6 Devel", &[("INCIDENT_ID", "100")]);
    assert_eq!(verdict(100, &[devel], &[]).result, Outcome::NoJobs);
}

#[test]
fn trap_a_passed_clone_of_a_failed_job() {
    let mut failed = inc(1, "a", 1, "done", "failed");
    failed.clone_id = Some(5);
    let mut clone = inc(5, "a", 1, "done", "passed");
    clone.origin_id = Some(1);
    let v = verdict(100, &[clone.clone(), failed.clone()], &[]);
    assert_eq!(v.result, Outcome::Passed);
    assert_eq!(v.job_ids, vec![5]);
    let note = v.notes.iter().find(|n| n.id == 1).unwrap();
    assert!(!note.counts && note.why.contains("restarted as 5"), "{note:?}");
    // while the clone runs, the incident is pending, not failed
    clone.state = "running".into();
    clone.result = "none".into();
    assert_eq!(verdict(100, &[failed, clone], &[]).result, Outcome::Pending);
}

#[test]
fn trap_an_older_requests_failure_does_not_count() {
    let jobs = [inc(1, "a", 300001, "done", "failed"), inc(2, "a", 300002, "done", "passed")];
    let v = verdict(100, &jobs, &[]);
    assert_eq!(v.result, Outcome::Passed);
    assert_eq!(v.request, Some(300002));
    // even in another scenario, the old request's job is out
    let jobs = [inc(1, "old-only", 300001, "done", "failed"), inc(2, "a", 300002, "done", "passed")];
    let v = verdict(100, &jobs, &[]);
    assert_eq!((v.result, v.job_ids.clone()), (Outcome::Passed, vec![2]));
}

#[test]
fn acceptable_for_accepts_a_failure_for_that_incident_only() {
    let jobs = [inc(1, "a", 1, "done", "passed"), agg(2, "b", "20261124-1", "100,200", "done", "failed")];
    let ok = verdict(100, &jobs, &[(2, "@review:acceptable_for:incident_100:bsc#1234567 known issue")]);
    assert_eq!(ok.result, Outcome::Passed);
    assert_eq!(ok.jobs.accepted, 1);
    let note = ok.notes.iter().find(|n| n.id == 2).unwrap();
    assert!(note.why.contains("bsc#1234567 known issue"), "{note:?}");
    // trap: the comment names another incident
    let other = verdict(100, &jobs, &[(2, "@review:acceptable_for:incident_200:bsc#1 other")]);
    assert_eq!((other.result, blocking_ids(&other)), (Outcome::Failed, vec![2]));
    // a prefix of the incident number is another incident
    let prefix = verdict(100, &jobs, &[(2, "@review:acceptable_for:incident_1000:x")]);
    assert_eq!(prefix.result, Outcome::Failed);
}

#[test]
fn trap_an_aggregate_build_from_yesterday_does_not_count() {
    let jobs = [
        inc(1, "a", 1, "done", "passed"),
        agg(2, "reg", "20261123-1", "100", "done", "failed"),
        agg(3, "reg", "20261124-1", "100", "done", "passed"),
        // restarting yesterday's job gives it a higher id; its build is still yesterday's
        agg(9, "other", "20261123-1", "100", "done", "failed"),
    ];
    let v = verdict(100, &jobs, &[]);
    assert_eq!(v.result, Outcome::Passed, "{:?}", v.notes);
    assert_eq!(v.job_ids, vec![1, 3]);
    // newest build per product: -10 is newer than -9; another product keeps its own build
    let mut other_product = agg(7, "reg", "20261120-1", "100", "done", "failed");
    other_product.settings.insert("ARCH".into(), "aarch64".into());
    let jobs = [
        agg(4, "reg", "20261124-9", "100", "done", "failed"),
        agg(5, "reg", "20261124-10", "100", "done", "passed"),
        other_product,
    ];
    let v = verdict(100, &jobs, &[]);
    assert_eq!(blocking_ids(&v), vec![7]);
    assert_eq!(v.job_ids, vec![5, 7]);
}

#[test]
fn trap_a_job_in_a_devel_group_is_ignored() {
    let mut devel = inc(2, "b", 1, "done", "failed");
    devel.group = Some("Maintenance: SLE 15 SP6 Devel".into());
    let mut test_group = inc(3, "c", 1, "done", "failed");
    test_group.group = Some("Maintenance: Test".into());
    let jobs = [inc(1, "a", 1, "done", "passed"), devel, test_group];
    let v = verdict(100, &jobs, &[]);
    assert_eq!((v.result, v.job_ids.clone()), (Outcome::Passed, vec![1]));
    assert!(v.notes.iter().any(|n| n.id == 2 && n.why.contains("ignored")));
}

#[test]
fn trap_a_cancelled_scheduled_job_is_final_and_blocks() {
    let jobs = [inc(1, "a", 1, "done", "passed"), inc(2, "b", 1, "cancelled", "user_cancelled")];
    let v = verdict(100, &jobs, &[]);
    assert_eq!(v.result, Outcome::Failed);
    assert_eq!(v.blocking[0].result, "user_cancelled");
}

#[test]
fn newest_job_per_scenario_wins() {
    // two jobs of one scenario without a clone link (a re-trigger): the newer decides
    let jobs = [inc(1, "a", 1, "done", "failed"), inc(4, "a", 1, "done", "passed")];
    assert_eq!(verdict(100, &jobs, &[]).result, Outcome::Passed);
    // job_settings lists a job once per matching row: duplicates count once
    let j = inc(1, "a", 1, "done", "passed");
    let v = verdict(100, &[j.clone(), j], &[]);
    assert_eq!(v.jobs.total, 1);
}

#[test]
fn globs() {
    assert!(glob_match("*Devel*", "Maintenance: SLE 15 SP6 Devel"));
    assert!(glob_match("*Test*", "Test"));
    assert!(!glob_match("*Devel*", "Maintenance: SLE 15 SP6 Incidents"));
    assert!(glob_match("SLE ?5*", "SLE 15 SP6"));
    assert!(glob_match("*", ""));
    assert!(!glob_match("a*b", "acbd"));
}

fn fixture_jobs(name: &str) -> Vec<Job> {
    let text =
        std::fs::read_to_string(format!("{}/tests/fixtures/openqa/{name}", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
    serde_json::from_str::<JobList>(&text).unwrap().jobs
}

fn fixture_comments() -> Vec<(u64, &'static str)> {
    vec![(10, "@review:acceptable_for:incident_12345:bsc#1234567 known issue")]
}

#[test]
fn real_openqa_data_before_and_after_the_last_jobs() {
    let (groups, url) = rules();
    let rules = Rules { ignore_groups: &groups, openqa_url: url };
    let comments: HashMap<u64, Vec<Comment>> =
        fixture_comments().into_iter().map(|(id, t)| (id, vec![Comment { id: 1, text: t.into() }])).collect();

    // jobs 3 and 11 still scheduled
    let v = decide(12345, &fixture_jobs("get-jobs-ids-all.json"), &comments, &rules);
    assert_eq!(v.result, Outcome::Pending);
    assert_eq!(v.job_ids, vec![1, 3, 4, 5, 9, 10, 11, 12]);
    assert_eq!(
        (v.jobs.pending, v.jobs.passed, v.jobs.softfailed, v.jobs.accepted, v.jobs.failed),
        (2, 3, 1, 1, 1)
    );
    assert_eq!(v.request, Some(300001));

    // phase 2: every job finished; job 5 was cancelled, so 12345 fails on it alone
    let phase2 = fixture_jobs("phase2-get-jobs-ids-all-scope-current.json");
    let v = decide(12345, &phase2, &comments, &rules);
    assert_eq!((v.result, blocking_ids(&v)), (Outcome::Failed, vec![5]));
    assert_eq!(v.blocking[0].result, "user_cancelled");
    assert!(v.notes.iter().any(|n| n.id == 6 && !n.counts), "Devel job 6 is ignored");

    // 12346: the acceptable_for comment on job 10 names 12345, so job 10 blocks 12346
    let v = decide(12346, &phase2, &comments, &rules);
    assert_eq!((v.result, blocking_ids(&v)), (Outcome::Failed, vec![10]));
    assert_eq!(v.job_ids, vec![7, 8, 9, 10, 11]);

    // 12400 is listed by the aggregate jobs only: no request is known
    let v = decide(12400, &phase2, &comments, &rules);
    assert_eq!((v.result, v.request), (Outcome::Failed, None));
}

fn devel(mut job: Job) -> Job {
    job.group = Some("Maintenance: SLE 15 SP6 Devel".into());
    job
}

#[test]
fn trap_a_newer_devel_build_does_not_hide_a_failed_update_build() {
    // the Devel group runs the next aggregate build early; it must not replace the Updates build
    let jobs = [
        inc(1, "a", 1, "done", "passed"),
        agg(2, "reg", "20261124-1", "100", "done", "failed"),
        devel(agg(3, "reg", "20261125-1", "100", "done", "passed")),
    ];
    let v = verdict(100, &jobs, &[]);
    assert_eq!((v.result, blocking_ids(&v)), (Outcome::Failed, vec![2]), "{:?}", v.notes);
    assert_eq!(v.job_ids, vec![1, 2]);
    let note = v.notes.iter().find(|n| n.id == 3).unwrap();
    assert!(!note.counts && note.why.contains("ignored"), "{note:?}");
}

#[test]
fn trap_a_devel_job_of_a_newer_request_does_not_drop_the_current_request() {
    let jobs = [inc(1, "a", 300001, "done", "failed"), devel(inc(2, "b", 300002, "done", "passed"))];
    let v = verdict(100, &jobs, &[]);
    assert_eq!((v.result, blocking_ids(&v)), (Outcome::Failed, vec![1]), "{:?}", v.notes);
    assert_eq!(v.request, Some(300001));
}

#[test]
fn acceptable_for_reads_the_forms_openqa_users_write() {
    let jobs = [inc(1, "a", 1, "done", "passed"), inc(2, "b", 1, "done", "failed")];
    // qem-bot accepts `submission_<n>` as well
    let v = verdict(100, &jobs, &[(2, "@review:acceptable_for:submission_100:poo#4711 flaky")]);
    assert_eq!((v.result, v.jobs.accepted), (Outcome::Passed, 1));
    // the reason is required
    for text in [
        "@review:acceptable_for:incident_100:",
        "@review:acceptable_for:incident_100:   \nbsc#1 on the next line",
        "@review:acceptable_for:incident_100",
        "@review:acceptable_for:submission_100:@review:acceptable_for:incident_200:x",
    ] {
        let v = verdict(100, &jobs, &[(2, text)]);
        assert_eq!((v.result, blocking_ids(&v)), (Outcome::Failed, vec![2]), "{text:?}");
    }
    // several tags in one comment, each with its own reason
    let text = "Known issues:\n@review:acceptable_for:incident_200:bsc#1 \
                @review:acceptable_for:incident_100:bsc#2 kernel regression\nthanks";
    let v = verdict(100, &jobs, &[(2, text)]);
    assert_eq!(v.result, Outcome::Passed);
    let why = &v.notes.iter().find(|n| n.id == 2).unwrap().why;
    assert!(why.ends_with("acceptable for incident 100: bsc#2 kernel regression"), "{why}");
    let both = [inc(1, "a", 1, "done", "passed"), agg(2, "b", "20261124-1", "100,200", "done", "failed")];
    let v = verdict(200, &both, &[(2, text)]);
    let why = &v.notes.iter().find(|n| n.id == 2).unwrap().why;
    assert!(why.ends_with("acceptable for incident 200: bsc#1"), "{why}");
}

/// `select`, coverage and `hold` as the engine chains them (without the state directory).
fn finished(incident: u64, jobs: &[Job], policy: &[&str]) -> Verdict {
    use incident_gate::verdict::{hold, judge, missing_coverage, select, CoverageRule, Wait};
    let (groups, url) = rules();
    let rules = Rules { ignore_groups: &groups, openqa_url: url };
    let sel = select(incident, jobs, &rules);
    let policy: Vec<CoverageRule> = policy.iter().map(|r| CoverageRule::parse(r).unwrap()).collect();
    let mut v = judge(&sel, &HashMap::new(), &rules);
    let waiting =
        missing_coverage(&sel, &policy).into_iter().map(|w| Wait::new("coverage", w, None)).collect();
    hold(&mut v, waiting, &HashMap::new());
    v
}

#[test]
fn an_incident_with_no_job_of_its_own_never_passes() {
    let jobs = [agg(1, "a", "20261124-1", "100", "done", "passed")];
    let v = finished(100, &jobs, &[]);
    assert_eq!(v.result, Outcome::Pending, "aggregate coverage alone is no pass");
    assert!(!v.complete);
    assert_eq!(v.waiting[0].what, "a job of incident 100's own (INCIDENT_ID=100)");
    // a failing aggregate is still a failure worth telling, but not the end of testing
    let jobs = [agg(1, "a", "20261124-1", "100", "done", "failed")];
    let v = finished(100, &jobs, &[]);
    assert_eq!((v.result, v.complete), (Outcome::Failed, false));
}

#[test]
fn the_coverage_policy_holds_a_pass_until_what_it_names_exists() {
    let own = inc(1, "a", 1, "done", "passed");
    let policy =
        ["sle/15-SP*/*-Incidents/x86_64: aggregate flavors=Server-DVD-Incidents|Desktop-DVD-Incidents"];
    let v = finished(100, std::slice::from_ref(&own), &policy);
    assert_eq!((v.result, v.complete), (Outcome::Pending, false));
    let what: Vec<&str> = v.waiting.iter().map(|w| w.what.as_str()).collect();
    assert_eq!(
        what,
        [
            "an aggregate job listing incident 100 for sle 15-SP6 x86_64",
            "jobs of flavor Desktop-DVD-Incidents for sle 15-SP6 x86_64"
        ]
    );
    let desktop = job(
        2,
        "b",
        "done",
        "passed",
        "Maintenance: SLE 15 SP6 Incidents",
        &[("INCIDENT_ID", "100"), ("RRID", "SUSE:Maintenance:100:1"), ("FLAVOR", "Desktop-DVD-Incidents")],
    );
    let aggregate = agg(3, "c", "20261124-1", "100", "done", "passed");
    let v = finished(100, &[own.clone(), desktop.clone(), aggregate], &policy);
    assert_eq!((v.result, v.complete), (Outcome::Passed, true), "{:?}", v.waiting);
    // a failing aggregate while a flavor is still missing: reported, incomplete
    let aggregate = agg(3, "c", "20261124-1", "100", "done", "failed");
    let v = finished(100, &[own.clone(), aggregate], &policy);
    assert_eq!((v.result, v.complete), (Outcome::Failed, false));
    // a policy for another product asks nothing of this one
    let v = finished(100, &[own], &["sle/12-SP5/*/*: aggregate"]);
    assert_eq!((v.result, v.complete), (Outcome::Passed, true));
    // running jobs are named as what testing waits for
    let v = finished(100, &[inc(1, "a", 1, "running", "none")], &[]);
    assert_eq!(v.waiting[0].kind, "running");
}

#[test]
fn coverage_rules_parse_or_say_why_not() {
    use incident_gate::verdict::CoverageRule;
    let r = CoverageRule::parse("sle/15-SP6/*/x86_64: aggregate tests=ltp|kernel").unwrap();
    assert!(r.aggregate);
    assert_eq!(r.tests, ["ltp", "kernel"]);
    assert!(CoverageRule::parse("sle/15-SP6: aggregate").unwrap_err().contains("DISTRI/VERSION/FLAVOR/ARCH"));
    assert!(CoverageRule::parse("a/b/c/d: everything").unwrap_err().contains("everything"));
    let e = incident_gate::config::Config::from_json(r#"{"coverage":["nonsense"]}"#).unwrap_err();
    assert!(e.0.contains("coverage"), "{e}");
}

#[test]
fn acceptable_for_names_a_pull_request_by_kind_or_by_number() {
    use incident_gate::incident::Submission;
    use incident_gate::openqa::model::Comment;
    use incident_gate::verdict::acceptable_for;
    let says = |text: &str| vec![Comment { id: 1, text: text.to_string() }];
    let (pr, incident) = (Submission::gitea(124), Submission::ibs(124));
    let by_kind = says("@review:acceptable_for:submission_git:124:poo#1 flaky");
    assert_eq!(acceptable_for(&by_kind, pr).as_deref(), Some("poo#1 flaky"));
    assert_eq!(
        acceptable_for(&by_kind, incident),
        None,
        "a pull request's tag never accepts for the incident"
    );
    assert_eq!(acceptable_for(&says("@review:acceptable_for:submission_git:1245:x"), pr), None);
    // the bare number, as qem-bot users write it, names whatever the job tests
    let bare = says("@review:acceptable_for:submission_124:bsc#2");
    assert_eq!(acceptable_for(&bare, pr).as_deref(), Some("bsc#2"));
    assert_eq!(acceptable_for(&bare, incident).as_deref(), Some("bsc#2"));
    assert_eq!(acceptable_for(&says("@review:acceptable_for:incident_git:124:x"), pr), None);
}

/// Upstream openQA restarts a job in a background task after its done event: the failure is not
/// the end of testing while the clone is about to come, and is once openQA did not make it.
#[test]
fn a_failure_openqa_is_about_to_restart_holds_testing_open() {
    let (groups, url) = rules();
    let rules = Rules { ignore_groups: &groups, openqa_url: url };
    let now = std::time::SystemTime::now();
    let finished = |ago: u64| {
        humantime::format_rfc3339_seconds(now - std::time::Duration::from_secs(ago))
            .to_string()
            .trim_end_matches('Z')
            .to_string()
    };
    let mut auto = inc(1, "a", 1, "done", "incomplete");
    auto.reason = Some("backend died: QEMU exited [Auto-restarting because reason matches the configured \"auto_clone_regex\".]".into());
    auto.t_finished = Some(finished(5));
    let mut retry = inc(2, "b", 1, "done", "failed");
    retry.t_finished = Some(finished(5));
    let mut long_ago = inc(3, "c", 1, "done", "failed");
    long_ago.reason = auto.reason.clone();
    long_ago.t_finished = Some(finished(3600));
    let mut cloned = inc(4, "d", 1, "done", "incomplete");
    cloned.reason = auto.reason.clone();
    cloned.clone_id = Some(5);
    let plain = inc(6, "e", 1, "done", "failed");
    let jobs = [auto, retry, long_ago, cloned, inc(5, "d", 1, "running", "none"), plain];
    let sel = select(100, &jobs, &rules);
    let comments: HashMap<u64, Vec<Comment>> = [
        (
            2,
            vec![Comment {
                id: 1,
                text: "Restarting because RETRY is set to 2 (and only restarted 0 times so far)".into(),
            }],
        ),
        (6, vec![Comment { id: 2, text: "Restarting? no: bsc#1".into() }]),
    ]
    .into();
    let waits = expected_restarts(&sel, &comments, now);
    let held: Vec<(&str, bool)> =
        waits.iter().map(|w| (w.kind.as_str(), w.what.contains("auto_clone_regex"))).collect();
    assert_eq!(held, [("restart", true), ("restart", false)], "{waits:?}");
    assert!(waits[0].what.starts_with("job 1 ") && waits[1].what.starts_with("job 2 "), "{waits:?}");
    assert!(waits[1].what.contains("RETRY"), "{waits:?}");
}
