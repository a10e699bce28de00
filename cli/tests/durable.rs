//! Nothing acknowledged is lost (issue 13): `incident-gate listen` killed with SIGKILL at random
//! points of a stream of incidents and started again, its broker cut away at random points and
//! back, its disk full and then not, IBS refusing our credentials and then
//! accepting them, a corrupt store, and the hook as openQA's GRU runs it. Each test prints what it
//! counted and asserts what a user sees: messages on the broker, reviews on the IBS simulator,
//! exit codes, status output. The listener runs with catch-up off: catch-up re-finds in openQA
//! what a listener lost, so with it on these tests would pass either way; one test shows catch-up
//! rescuing what the broker dropped, and is named so.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::OpenQa;
use futures_util::StreamExt;
use incident_gate_sim::obs::{ObsSim, ObsSimConfig, SimAuth, SimReview};
use lapin::Consumer;
use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use testkit::broker::Broker;
use testkit::proxy::Proxy;
use testkit::{review_changes, unique, Leftovers};

const BIN: &str = env!("CARGO_BIN_EXE_incident-gate");
const OBS_USER: &str = "qam-bot";
const OBS_PASSWORD: &str = "pw-durable-13";
/// Catch-up off: openQA's job table would re-find an incident whose message the listener lost,
/// and a test of what the listener acknowledged would pass either way.
const NO_CATCHUP: (&str, &str) = ("INCIDENT_GATE_CATCHUP_MAX_REQUESTS", "0");

/// A small deterministic generator: the kill points differ per run (seeded by the pid) and the
/// seed is printed, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn env_for(qa: &OpenQa, obs: &ObsSim, state: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("INCIDENT_GATE_OPENQA_URL", qa.url()),
        ("INCIDENT_GATE_STATE_DIR", state.display().to_string()),
        ("INCIDENT_GATE_OBS_URL", obs.url()),
        ("INCIDENT_GATE_OBS_USER", OBS_USER.into()),
        ("INCIDENT_GATE_OBS_PASSWORD", OBS_PASSWORD.into()),
        ("INCIDENT_GATE_HTTP_TIMEOUT_S", "5".into()),
        ("INCIDENT_GATE_RECONCILE_INTERVAL_S", "2".into()),
        ("INCIDENT_GATE_OBS_DENIED_RETRY_S", "1".into()),
    ]
}

fn command(env: &[(&str, String)]) -> Command {
    testkit::cli::command(BIN, env)
}

async fn start_obs() -> ObsSim {
    let auth = SimAuth::Basic { user: OBS_USER.into(), password: OBS_PASSWORD.into() };
    incident_gate_sim::obs::start(ObsSimConfig::new(auth)).await
}

/// A listener killed (SIGKILL) when dropped, also when an assertion failed: a test's listener left
/// running would keep declaring its queue on the shared broker.
struct Listener(Child);

impl Listener {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A stream of incidents for `incident-gate listen`: its own exchange and queue (removed at the
/// end), the simulators, a state directory, the listener's environment and log.
struct Stream {
    exchange: String,
    queue: String,
    prefix: String,
    _leftovers: Leftovers,
    broker: Broker,
    done: Consumer,
    qa: OpenQa,
    obs: ObsSim,
    state: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
    log: std::path::PathBuf,
    incidents: BTreeMap<u64, u64>,
}

impl Stream {
    /// `amqp_url`: how the listener reaches the broker (the test itself always goes direct).
    async fn new(name: &str, amqp_url: Option<String>, extra: &[(&'static str, &str)]) -> Stream {
        let (exchange, prefix) = (unique(name), unique(&format!("{name}-prefix")));
        let queue = format!("{exchange}-listen");
        let _leftovers = Leftovers::new(&[&exchange], &[&queue]);
        let broker = Broker::connect().await;
        // declared as openQA would find it
        broker.declare_exchange(&exchange).await;
        let done = broker.subscribe_done(&exchange).await;
        let qa = OpenQa::start().await;
        let obs = start_obs().await;
        let state = tempfile::tempdir().unwrap();
        let mut env = env_for(&qa, &obs, state.path());
        env.extend([
            ("INCIDENT_GATE_AMQP_URL", amqp_url.unwrap_or_else(common::amqp_url)),
            ("INCIDENT_GATE_AMQP_EXCHANGE", exchange.clone()),
            ("INCIDENT_GATE_AMQP_DECLARE_EXCHANGE", "true".into()),
            ("INCIDENT_GATE_AMQP_TOPIC_PREFIX", prefix.clone()),
            ("INCIDENT_GATE_AMQP_QUEUE", queue.clone()),
            ("INCIDENT_GATE_AMQP_QUEUE_DURABLE", "false".into()),
        ]);
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let log = state.path().join("listen.log");
        let incidents = BTreeMap::new();
        Stream { exchange, queue, prefix, _leftovers, broker, done, qa, obs, state, env, log, incidents }
    }

    /// Waits until the listener's queue, as the broker reports it (ready messages, consumers),
    /// satisfies `ready`; panics naming `what` after 30 s.
    async fn wait_for_queue(&self, what: &str, ready: impl Fn(u32, u32) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let seen = self.broker.queue(&self.queue).await;
            if seen.is_some_and(|(messages, consumers)| ready(messages, consumers)) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: queue {seen:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a listener consumes from the queue: it declared and bound it before.
    async fn wait_until_consuming(&self) {
        self.wait_for_queue("a listener consumes", |_, consumers| consumers > 0).await;
    }

    /// `incident-gate listen` (through `wrap`: a shell command line, or none), logging to the log.
    fn listen(&self, wrap: Option<&str>) -> Listener {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = match wrap {
            None => command(&self.env),
            Some(script) => {
                let mut cmd = Command::new("bash");
                cmd.env_remove("INCIDENT_GATE_CONFIG").env("RUST_LOG", "warn");
                cmd.envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
                cmd.arg("-c").arg(script).arg(BIN);
                cmd
            }
        };
        Listener(cmd.arg("listen").stdout(Stdio::null()).stderr(log).spawn().expect("listen starts"))
    }

    /// Incident `incident` in review on IBS, its two jobs passed and their events published.
    async fn incident(&mut self, incident: u64) {
        self.incident_of(incident, 2).await;
    }

    /// Incident `incident` in review on IBS, its `jobs` jobs passed and their events published.
    /// With one job, every message lost is an incident lost: an evaluation made for a sibling
    /// job's event cannot make up for it.
    async fn incident_of(&mut self, incident: u64, jobs: usize) {
        let rr = 300_000 + incident;
        self.obs.create_request(rr, "review", vec![SimReview::group("qam-openqa")], "maintenance_release");
        let jobs: Vec<u64> =
            (0..jobs).map(|i| self.qa.incident_job(incident, rr, &format!("t{i}"))).collect();
        self.incidents.insert(incident, rr);
        for job in jobs {
            let event = self.qa.sim.set_done(job, "passed").unwrap();
            let key = event.routing_key(&self.prefix);
            self.broker.publish(&self.exchange, &key, event.amqp_body.to_string().as_bytes()).await;
        }
    }

    /// 30 incidents from `first`; after one in four (at random, the seed is the pid), within
    /// `lead_ms`, `proxy` is cut for `outage_ms.0` plus up to `outage_ms.1` ms. Answers the seed
    /// and how many cuts there were.
    async fn incidents_through_cuts(
        &mut self,
        proxy: &Proxy,
        first: u64,
        lead_ms: u64,
        outage_ms: (u64, u64),
    ) -> (u64, usize) {
        let seed = std::process::id() as u64;
        let mut rng = Rng(seed);
        let mut cuts = 0;
        for n in 0..30 {
            self.incident(first + n).await;
            if rng.below(4) == 0 {
                tokio::time::sleep(Duration::from_millis(rng.below(lead_ms))).await;
                proxy.cut();
                cuts += 1;
                tokio::time::sleep(Duration::from_millis(outage_ms.0 + rng.below(outage_ms.1))).await;
                proxy.restore();
            }
        }
        (seed, cuts)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn count_and_check(&mut self, faults: &str, reviews_within: Duration) {
        let logs = self.logs();
        count_and_check(&mut self.done, &self.obs, &self.incidents, faults, &logs, reviews_within).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_killed_at_random_points_loses_no_incident_and_acts_once() {
    let mut stream = Stream::new("kill9", None, &[NO_CATCHUP]).await;
    let seed = std::process::id() as u64;
    let mut rng = Rng(seed);
    let mut child = stream.listen(None);
    // the queue exists (declared by the listener) before the first message is published
    stream.wait_until_consuming().await;
    let mut kills = 0;
    for n in 0..40 {
        stream.incident_of(13_000 + n, 1).await;
        if rng.below(4) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
            child.kill(); // SIGKILL
            kills += 1;
            child = stream.listen(None);
        }
    }
    let faults = format!("kill -9 stream (seed {seed}): {kills} kills");
    stream.count_and_check(&faults, Duration::from_secs(30)).await;
    child.kill();
}

/// Collects `incident.done` until every incident was decided (and a little longer, to see
/// duplicates) and the reviews until all were accepted; prints the counts and asserts: every
/// incident decided, once (one `message_id`), each review changed once.
async fn count_and_check(
    done: &mut Consumer,
    obs: &ObsSim,
    incidents: &BTreeMap<u64, u64>,
    faults: &str,
    logs: &str,
    reviews_within: Duration,
) {
    let total = incidents.len();
    let mut messages: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut quiet_until = None;
    loop {
        let now = tokio::time::Instant::now();
        if now > deadline || quiet_until.is_some_and(|q| now > q) {
            break;
        }
        let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(500), done.next()).await else {
            continue;
        };
        let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        let id = d.properties.message_id().as_ref().map(|s| s.to_string()).unwrap_or_default();
        messages.entry(body["incident"].as_u64().unwrap()).or_default().push(id);
        if messages.len() == total && quiet_until.is_none() {
            quiet_until = Some(tokio::time::Instant::now() + Duration::from_secs(2));
        }
    }
    // the reviews too (IBS is reported after the event)
    let deadline = tokio::time::Instant::now() + reviews_within;
    while incidents.values().any(|rr| obs.reviews(*rr)[0].state != "accepted")
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let decided = messages.len();
    let published: usize = messages.values().map(Vec::len).sum();
    let distinct: usize = messages.values().map(|ids| ids.iter().collect::<HashSet<_>>().len()).sum();
    let accepted = incidents.values().filter(|rr| obs.reviews(**rr)[0].state == "accepted").count();
    let changes: Vec<usize> = incidents.values().map(|rr| review_changes(obs, *rr)).collect();
    println!(
        "{faults}: {total} incidents; decided {decided}; incident.done messages {published} \
         ({distinct} distinct message_ids); reviews accepted {accepted}; review changes {} (max per request {})",
        changes.iter().sum::<usize>(),
        changes.iter().max().unwrap_or(&0)
    );
    assert_eq!(decided, total, "every incident decided; listener log:\n{logs}");
    assert_eq!(distinct, total, "one decision (message_id) per incident: {messages:?}");
    let missing: Vec<(u64, Vec<String>)> = incidents
        .values()
        .filter(|rr| obs.reviews(**rr)[0].state != "accepted")
        .map(|rr| {
            let path = format!("/request/{rr}");
            let asked = obs
                .received()
                .iter()
                .filter(|r| r.path.starts_with(&path))
                .map(|r| format!("{} {} {} {}", r.method, r.path, r.query, r.status))
                .collect();
            (*rr, asked)
        })
        .collect();
    assert_eq!(accepted, total, "every review accepted; not: {missing:?}\n{logs}");
    assert!(changes.iter().all(|c| *c == 1), "each review changed once: {changes:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_whose_broker_goes_away_at_random_points_loses_no_incident_and_acts_once() {
    // the listener reaches the broker only through the proxy; the test publishes directly
    // cut: every connection through it dropped and new ones refused, as a network partition or a
    // broker restart looks to the listener
    let proxy = Proxy::to_broker().await;
    let mut stream = Stream::new("cut", Some(proxy.url()), &[NO_CATCHUP]).await;
    let mut child = stream.listen(None);
    stream.wait_until_consuming().await;
    // the broker away for up to 1.5 s, while decisions are being published
    let (seed, cuts) = stream.incidents_through_cuts(&proxy, 13_600, 30, (200, 1300)).await;
    let faults = format!("broker cut stream (seed {seed}): {cuts} cuts");
    stream.count_and_check(&faults, Duration::from_secs(30)).await;
    child.kill();
    let logs = stream.logs();
    let lost = logs.matches("reconnecting").count();
    println!("the listener lost the broker {lost} times");
    assert!(cuts == 0 || lost > 0, "the cuts reached the listener:\n{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ibs_refusing_our_credentials_is_retried_until_it_accepts_them() {
    let qa = OpenQa::start().await;
    let obs = start_obs().await;
    let state = tempfile::tempdir().unwrap();
    obs.create_request(313_500, "review", vec![SimReview::group("qam-openqa")], "maintenance_release");
    let jobs: Vec<u64> = (0..2).map(|i| qa.incident_job(13_500, 313_500, &format!("t{i}"))).collect();
    for j in &jobs {
        qa.sim.set_done(*j, "passed");
    }
    // the password is wrong (401) for the first three reads, then someone fixes it
    obs.fail_next("GET", "/request/313500", 401, 3);
    let mut env = env_for(&qa, &obs, state.path());
    env.push(("INCIDENT_GATE_PUBLISH_AMQP", "false".into()));
    let job = jobs[1].to_string();
    let run = |args: Vec<String>, env: Vec<(&'static str, String)>| async move {
        tokio::task::spawn_blocking(move || command(&env).args(&args).output().unwrap()).await.unwrap()
    };
    let hook = run(vec!["hook".into(), job.clone(), "--skip-rc".into(), "142".into()], env.clone()).await;
    let status = run(vec!["status".into()], env.clone()).await;
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    println!("hook with IBS answering 401: exit {:?}; status: {status}", hook.status.code());
    assert_eq!(hook.status.code(), Some(142), "openQA is to run the hook again");
    assert!(status.contains("obs queued") && status.contains("401"), "shown in status: {status}");
    assert!(!status.contains(OBS_PASSWORD));
    assert_eq!(obs.reviews(313_500)[0].state, "new", "not answered yet");

    let mut runs = 1;
    let mut code = hook.status.code();
    while code != Some(0) && runs < 6 {
        tokio::time::sleep(Duration::from_millis(1100)).await; // obs_denied_retry_s = 1
        code = run(vec!["hook".into(), job.clone(), "--skip-rc".into(), "142".into()], env.clone())
            .await
            .status
            .code();
        runs += 1;
    }
    let status = run(vec!["status".into()], env.clone()).await;
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    println!("IBS accepting again after {runs} hook runs: exit {code:?}; status: {status}");
    assert_eq!(code, Some(0));
    assert_eq!(obs.reviews(313_500)[0].state, "accepted", "the 401 was not final");
    assert_eq!(review_changes(&obs, 313_500), 1);
    assert!(status.contains("obs done"), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hook_asks_openqa_to_run_it_again_while_pending() {
    let qa = OpenQa::start().await;
    let obs = start_obs().await;
    let state = tempfile::tempdir().unwrap();
    obs.create_request(313_600, "review", vec![SimReview::group("qam-openqa")], "maintenance_release");
    let jobs: Vec<u64> = (0..2).map(|i| qa.incident_job(13_600, 313_600, &format!("t{i}"))).collect();
    qa.sim.set_done(jobs[0], "passed");
    let mut env = env_for(&qa, &obs, state.path());
    env.push(("INCIDENT_GATE_PUBLISH_AMQP", "false".into()));
    let hook = |skip: bool, env: Vec<(&'static str, String)>, job: u64| async move {
        tokio::task::spawn_blocking(move || {
            let mut cmd = command(&env);
            cmd.args(["hook", &job.to_string()]);
            if skip {
                cmd.args(["--skip-rc", "142"]);
            }
            cmd.output().unwrap().status.code()
        })
        .await
        .unwrap()
    };
    let plain = hook(false, env.clone(), jobs[0]).await;
    let skip = hook(true, env.clone(), jobs[0]).await;
    // IBS down while the incident is decided: the report stays queued, openQA asks again
    qa.sim.set_done(jobs[1], "passed");
    obs.set_down(true);
    let down = hook(true, env.clone(), jobs[1]).await;
    let down_plain = hook(false, env.clone(), jobs[1]).await;
    obs.set_down(false);
    // right after recovery the next run delivers, whatever backoff the failures left
    let recovered = hook(true, env.clone(), jobs[1]).await;
    println!(
        "hook exit codes: pending {plain:?}, pending with --skip-rc 142 {skip:?}, IBS down {down:?} \
         (without --skip-rc {down_plain:?}), after recovery {recovered:?}"
    );
    assert_eq!(plain, Some(4));
    assert_eq!(skip, Some(142));
    assert_eq!(down, Some(142));
    assert_eq!(down_plain, Some(3), "README: 3 when IBS is unavailable");
    assert_eq!(recovered, Some(0));
    assert_eq!(obs.reviews(313_600)[0].state, "accepted");
    assert_eq!(review_changes(&obs, 313_600), 1);
}

#[test]
fn the_listener_refuses_a_corrupt_store_naming_the_file() {
    let state = tempfile::tempdir().unwrap();
    let env = vec![
        ("INCIDENT_GATE_OPENQA_URL", "http://127.0.0.1:9".to_string()),
        ("INCIDENT_GATE_STATE_DIR", state.path().display().to_string()),
        ("INCIDENT_GATE_AMQP_URL", "amqp://guest:guest@127.0.0.1:9/%2f".into()),
    ];
    // a valid store with one decision's worth of rows, then damaged in the middle
    let status = command(&env).arg("status").output().unwrap();
    assert_eq!(status.status.code(), Some(0));
    let db = state.path().join("incident-gate.sqlite");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=DELETE;").unwrap();
        conn.execute_batch(
            "CREATE TABLE filler (x TEXT); INSERT INTO filler VALUES (hex(randomblob(20000)));",
        )
        .unwrap();
    }
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 3 * 4096);
    // every b-tree page after the first: page headers no longer say what the page is
    let mut page = 4096;
    while page + 64 < bytes.len() {
        bytes[page..page + 64].fill(0xA5);
        page += 4096;
    }
    std::fs::write(&db, &bytes).unwrap();
    let mut child = command(&env).arg("listen").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut waited = 0;
    while child.try_wait().unwrap().is_none() && waited < 100 {
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("listen on a corrupt store: exit {:?}: {stderr}", out.status.code());
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_whose_disk_fills_up_acknowledges_nothing_it_could_not_store() {
    // only what the broker still holds may decide these incidents: no catch-up from openQA
    let mut stream = Stream::new("full", None, &[NO_CATCHUP]).await;
    let status = command(&stream.env).arg("status").output().unwrap();
    assert_eq!(status.status.code(), Some(0), "{status:?}");
    // a full disk as the process sees it: files may not grow past 160 KiB (SIGXFSZ ignored, so a
    // write past it fails with EFBIG, as one fails with ENOSPC)
    let mut child = stream.listen(Some("trap '' XFSZ; ulimit -f 160; exec \"$0\" \"$@\""));
    stream.wait_until_consuming().await;
    for n in 0..30 {
        stream.incident(13_800 + n).await;
    }
    let full =
        |logs: &str| logs.contains("too large") || logs.contains("disk is full") || logs.contains("disk I/O");
    // the listener met the full disk and gave back what it could not store
    let returned = |logs: &str| logs.contains("messages to the queue");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(full(&stream.logs()) && returned(&stream.logs())) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    child.kill();
    let logs = stream.logs();
    assert!(full(&logs), "the file limit was reached in {}:\n{logs}", stream.state.path().display());
    assert!(returned(&logs), "messages it could not store went back to the queue:\n{logs}");
    // space again: the same state directory, no limit
    child = stream.listen(None);
    let refused = logs.lines().filter(|l| full(l)).count();
    let faults =
        format!("full disk (files limited to 160 KiB, {refused} store errors logged), then space again");
    // a delivery made but not recorded before the disk filled stays leased by the killed process
    // for LEASE_S (60 s); then it is made again, with the same message_id
    stream.count_and_check(&faults, Duration::from_secs(90)).await;
    child.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_listeners_sharing_one_postgres_store_killed_at_random_decide_each_incident_once() {
    // two hosts: each listener its own working directory, one store_url, one queue
    let store = common::TestStore::postgres();
    let url = store.url();
    let mut stream = Stream::new("pg-pair", None, &[("INCIDENT_GATE_STORE_URL", &url)]).await;
    let other = tempfile::tempdir().unwrap();
    // info: "listening on queue" says when a listener consumes
    let here = "RUST_LOG=info exec \"$0\" \"$@\"".to_string();
    let elsewhere =
        format!("RUST_LOG=info INCIDENT_GATE_STATE_DIR={} exec \"$0\" \"$@\"", other.path().display());
    let start = |stream: &Stream, which: usize| match which {
        0 => stream.listen(Some(&here)),
        _ => stream.listen(Some(&elsewhere)),
    };
    let mut listeners = [start(&stream, 0), start(&stream, 1)];
    // the queue exists (declared by the listeners) before the first message is published
    let consuming = common::eventually(Duration::from_secs(60), || {
        (stream.logs().matches("listening on queue").count() >= 2).then_some(())
    });
    assert!(consuming.await.is_some(), "the listeners did not start:\n{}", stream.logs());
    let seed = std::process::id() as u64;
    let mut rng = Rng(seed);
    let mut kills = 0;
    for n in 0..40 {
        stream.incident(13_700 + n).await;
        if rng.below(3) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(60))).await;
            let which = rng.below(2) as usize;
            listeners[which].kill(); // SIGKILL
            kills += 1;
            listeners[which] = start(&stream, which);
        }
    }
    let faults =
        format!("two listeners on one PostgreSQL store, kill -9 either (seed {seed}): {kills} kills");
    stream.count_and_check(&faults, Duration::from_secs(30)).await;
    assert!(
        other
            .path()
            .read_dir()
            .unwrap()
            .all(|e| { !e.unwrap().file_name().to_string_lossy().ends_with(".sqlite") }),
        "the store is PostgreSQL, not a state directory"
    );
}

/// Issue 23's failover measure (scripts/bench runs it; it asserts no time): two listeners on one
/// store consume one queue; one is killed (SIGKILL) right after the last of a burst of incidents
/// was published, and the survivor must deliver everything, also what the dead one had
/// acknowledged. Printed: the time from the kill until the last review was accepted, beside the
/// same burst with no kill (from the last publish). Then the usual counts are asserted.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: scripts/bench runs it"]
async fn failover_time_of_two_listeners_sharing_one_store() {
    const BURST: u64 = 20;
    let postgres = common::TestStore::postgres();
    println!("| store | round | no kill: last review after the last publish | kill -9: last review after the kill |");
    println!("| --- | --- | --- | --- |");
    for (store, url) in [("SQLite (one state directory)", None), ("PostgreSQL", Some(postgres.url()))] {
        for round in 1..=3u64 {
            let mut seen = Vec::new();
            for kill in [false, true] {
                let extra: Vec<(&'static str, &str)> = match &url {
                    Some(u) => vec![NO_CATCHUP, ("INCIDENT_GATE_STORE_URL", u.as_str())],
                    None => vec![NO_CATCHUP],
                };
                let mut stream = Stream::new("failover", None, &extra).await;
                // PostgreSQL: a state directory per listener, as on two hosts; SQLite: one shared
                let other = tempfile::tempdir().unwrap();
                let elsewhere = format!(
                    "RUST_LOG=info INCIDENT_GATE_STATE_DIR={} exec \"$0\" \"$@\"",
                    if url.is_some() { other.path() } else { stream.state.path() }.display()
                );
                let mut listeners = [stream.listen(Some(&elsewhere)), stream.listen(Some(&elsewhere))];
                stream.wait_for_queue("both listeners consume", |_, consumers| consumers >= 2).await;
                let base = 13_900 + 100 * round + if kill { 50 } else { 0 };
                for n in 0..BURST {
                    stream.incident(base + n).await;
                }
                let from = tokio::time::Instant::now();
                if kill {
                    listeners[0].kill();
                }
                let deadline = from + Duration::from_secs(180);
                let requests: Vec<u64> = stream.incidents.values().copied().collect();
                while requests.iter().any(|rr| stream.obs.reviews(*rr)[0].state != "accepted")
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                seen.push(from.elapsed());
                let faults = format!("failover ({store}, round {round}, kill {kill})");
                stream.count_and_check(&faults, Duration::from_secs(1)).await;
                drop(listeners);
            }
            println!(
                "| {store} | {round} | {:.2} s | {:.2} s |",
                seen[0].as_secs_f64(),
                seen[1].as_secs_f64()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_whose_postgres_store_goes_away_at_random_points_loses_no_incident_and_acts_once() {
    // the listener reaches PostgreSQL only through the proxy
    let store = common::TestStore::postgres();
    let server =
        std::env::var("IG_TEST_POSTGRES").unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432".into());
    let authority = server.rsplit('@').next().unwrap_or("127.0.0.1:5432").to_string();
    let proxy = Proxy::start(&authority).await;
    let through = store.url().replacen(&authority, &format!("127.0.0.1:{}", proxy.port()), 1);
    let mut stream = Stream::new("pg-cut", None, &[("INCIDENT_GATE_STORE_URL", &through)]).await;
    let mut child = stream.listen(Some("RUST_LOG=info exec \"$0\" \"$@\""));
    let consuming = common::eventually(Duration::from_secs(60), || {
        stream.logs().contains("listening on queue").then_some(())
    });
    assert!(consuming.await.is_some(), "the listener did not start:\n{}", stream.logs());
    // PostgreSQL away (or restarting) for up to 2 s, while incidents are decided
    let (seed, cuts) = stream.incidents_through_cuts(&proxy, 13_800, 50, (300, 1700)).await;
    let faults = format!("PostgreSQL cut (seed {seed}): {cuts} cuts");
    stream.count_and_check(&faults, Duration::from_secs(60)).await;
    child.kill();
    let logs = stream.logs();
    let (down, up) = (logs.matches("cannot be reached").count(), logs.matches("is reachable again").count());
    let refused = logs.matches("messages to the queue").count();
    println!(
        "the store was unreachable {down} times, back {up} times; batches returned to the queue {refused}"
    );
    assert!(cuts == 0 || down > 0, "the cuts reached the listener:\n{logs}");
    assert!(down <= cuts && up == down, "each outage said once, and its end once:\n{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn catch_up_is_the_rescuer_of_incidents_whose_messages_never_reached_the_listener() {
    // published before the listener's queue existed: the broker drops them, only openQA's job
    // table still knows the jobs ended
    let mut stream = Stream::new("rescue", None, &[]).await;
    for n in 0..5 {
        stream.incident(13_900 + n).await;
    }
    assert!(stream.broker.queue(&stream.queue).await.is_none(), "no queue held the messages");
    let mut child = stream.listen(None);
    stream.count_and_check("messages dropped by the broker, catch-up on", Duration::from_secs(30)).await;
    child.kill();
}
