//! The subcommands of `incident-gate`.

use incident_gate::config::Config;
use incident_gate::engine::Core;
use incident_gate::incident::{submissions_of, Kind, Submission};
use incident_gate::verdict::{Outcome, Verdict};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// `println!` for the command's output. A reader that went away (`incident-gate status | head`)
/// or a full disk is no reason to panic: the rest of the output is lost, and the command still
/// finishes its work and exits with its own code.
macro_rules! out {
    () => { $crate::cli::write_out(format_args!("")) };
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!($($arg)*)) };
}

pub fn write_out(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

mod bench;
mod demo;
mod world;

pub const EXIT_CODES: &str = "Exit codes: 0 passed / done, 1 failed, 2 usage or configuration error, \
3 openQA, IBS or the broker unavailable (retry later), 4 still pending, 5 no jobs for the incident, \
6 openQA refused the question or answered unusably (a 4xx, a malformed answer: asking again soon \
does not help; the message names the route).";

const SECTION: &str = "incident_gate";
const SYSTEM_CONFIG: &str = "/etc/openqa/openqa.ini";

/// The config file (if any), then `INCIDENT_GATE_<KEY>` environment overrides.
pub fn load_config(path: Option<&Path>) -> Result<Config, String> {
    let from_env = std::env::var_os("INCIDENT_GATE_CONFIG").map(std::path::PathBuf::from);
    let path = path.map(Path::to_path_buf).or(from_env).or_else(|| {
        let system = Path::new(SYSTEM_CONFIG);
        let has_section = std::fs::read_to_string(system).is_ok_and(|t| t.contains("[incident_gate]"));
        has_section.then(|| system.to_path_buf())
    });
    let mut map = match &path {
        Some(path) => Config::ini_section(path, SECTION).map_err(|e| e.to_string())?,
        None => serde_json::Map::new(),
    };
    // the plugin's own key (where to find the library) in the section both read
    map.remove("library");
    let defaults = serde_json::to_value(Config::default()).map_err(|e| e.to_string())?;
    for key in defaults.as_object().into_iter().flat_map(|o| o.keys()) {
        if let Ok(value) = std::env::var(format!("INCIDENT_GATE_{}", key.to_uppercase())) {
            map.insert(key.clone(), value.into());
        }
    }
    Config::from_value(serde_json::Value::Object(map)).map_err(|e| e.to_string())
}

fn exit_code(result: Outcome) -> u8 {
    match result {
        Outcome::Passed => 0,
        Outcome::Failed => 1,
        Outcome::Pending => 4,
        Outcome::NoJobs => 5,
    }
}

pub async fn listen(core: Arc<Core>) -> Result<u8, String> {
    // acknowledging a message promises its effect is stored: never start on a store that cannot
    if let Err(e) = core.store().check_writable() {
        eprintln!("incident-gate: {e}");
        return Ok(2);
    }
    core.spawn_background();
    let listener = tokio::spawn(incident_gate::amqp::listen::run(core.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
    }
    core.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), listener).await;
    // what is left stays in the outbox and goes out on the next start
    incident_gate::outbox::drain(&core, Duration::from_secs(5)).await;
    Ok(0)
}

pub const EXIT_PENDING: u8 = 4;
const EXIT_UNAVAILABLE: u8 = 3;
const EXIT_REFUSED: u8 = 6;

/// One run of openQA's job-done hook. Besides the job's incidents it evaluates those left pending
/// (an earlier run's "ask me again") and those of jobs catch-up finds ended unheard, and it tries
/// every queued delivery at once, whatever its backoff: a run is the only chance a hook-only setup
/// has. 3 when deliveries stay queued or openQA cannot be asked, 6 when openQA refuses (not retried).
pub async fn hook(core: Arc<Core>, job_id: u64, budget: Duration) -> Result<u8, String> {
    let job = match core.client().job(job_id).await {
        Ok(job) => job,
        Err(e) if e.is_transient() => return Err(e.to_string()),
        Err(e) => {
            // not 3: with --skip-rc openQA would run the hook again and again for the same answer
            eprintln!("incident-gate: {e}");
            return Ok(EXIT_REFUSED);
        }
    };
    let mut incidents = job.as_ref().map(|j| submissions_of(&j.settings)).unwrap_or_default();
    match &job {
        None => out!("job {job_id} does not exist (any more)"),
        Some(_) if incidents.is_empty() => out!("job {job_id} tests no maintenance incident"),
        Some(_) => {}
    }
    // openQA runs no hook when a comment is deleted: look whether an acceptance recorded earlier
    // lost its comment (bounded, and each comment at most once per reconciliation interval)
    let interval = Duration::from_secs(core.config().reconcile_interval_s);
    match core.store().claim_stale_pending(interval.as_millis() as i64) {
        Ok(pending) => incidents.extend(pending),
        Err(e) => eprintln!("{e}"),
    }
    for incident in core.audit_relied_comments(interval).await {
        out!("{}: a comment its verdict relied on was deleted", incident.named());
        incidents.insert(incident);
    }
    // jobs that ended with no hook run of their own (cancelled while scheduled, found incomplete by
    // openQA's stale-job detection, a hook openQA gave up on): caught up from openQA as the other
    // modes do, by about one run an interval; their incidents are evaluated in the background
    let deadline = tokio::time::Instant::now() + budget;
    // without it an incident waiting on jobs that catch-up then finds ended stays busy for good
    core.spawn_checker();
    match core.catch_up(interval.mul_f64(0.9)).await {
        Ok(Some(r)) if r.unheard_jobs > 0 => {
            out!("catch-up: {} ended jobs no decision had counted, their incidents evaluated", r.unheard_jobs)
        }
        Ok(_) => {}
        Err(e) => eprintln!("catch-up: {e}"),
    }
    if incidents.is_empty() && core.is_idle() {
        out!("nothing to do");
        return Ok(0);
    }
    let mut worst = 0;
    let (mut unavailable, mut refused) = (false, false);
    for incident in incidents {
        match core.decide(incident).await {
            Ok(verdict) => {
                out!("{}: {}", incident.named(), summary(&verdict));
                worst = worst.max(exit_code(verdict.result));
            }
            Err(e) => {
                // the others are still decided and delivered; this one is asked again
                let _ = core.store().mark_pending(incident);
                eprintln!("{}: no verdict now: {e}", incident.named());
                if e.is_transient() {
                    unavailable = true;
                } else {
                    refused = true;
                }
            }
        }
    }
    // the other half of the budget is for delivering: this run's own decisions go out whatever
    // the evaluations catch-up started are doing
    let evaluated_by = deadline - budget / 2;
    while !core.is_idle() && tokio::time::Instant::now() < evaluated_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Err(e) = core.store().expedite_queued() {
        eprintln!("{e}");
    }
    let left =
        incident_gate::outbox::drain(&core, deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await;
    if left > 0 {
        eprintln!("{left} deliveries are still queued in the outbox; the next run delivers them");
        return Ok(EXIT_UNAVAILABLE);
    }
    if unavailable {
        return Ok(EXIT_UNAVAILABLE);
    }
    if refused {
        return Ok(EXIT_REFUSED);
    }
    Ok(worst)
}

fn summary(v: &Verdict) -> String {
    let j = &v.jobs;
    let mut s = format!(
        "{} — {} jobs: {} passed, {} softfailed, {} accepted, {} failed, {} pending",
        v.result.as_str(),
        j.total,
        j.passed,
        j.softfailed,
        j.accepted,
        j.failed,
        j.pending
    );
    if let Some(rrid) = &v.rrid {
        s.push_str(&format!(" ({rrid})"));
    }
    if let Some(sha) = &v.sha {
        s.push_str(&format!(" (tested commit {sha})"));
    }
    s
}

pub async fn check(core: Arc<Core>, incident: Submission, json: bool) -> Result<u8, String> {
    let verdict = match core.evaluate(incident).await {
        Ok(verdict) => verdict,
        Err(e) if e.is_transient() => return Err(e.to_string()),
        Err(e) => {
            eprintln!("incident-gate: {e}");
            return Ok(EXIT_REFUSED);
        }
    };
    if json {
        out!("{}", serde_json::to_string_pretty(&verdict).map_err(|e| e.to_string())?);
        return Ok(exit_code(verdict.result));
    }
    let what = if incident.kind == Kind::Gitea { "pull request" } else { "incident" };
    out!("{what} {incident}: {}", summary(&verdict));
    for b in &verdict.blocking {
        out!("  BLOCKING {} {} ({}) {}", b.id, b.result, b.group, b.url);
    }
    if verdict.complete {
        out!("testing finished");
    } else {
        // why nothing is approved yet: what is still expected or running, and since when
        out!("testing not finished; still expected:");
        for w in &verdict.waiting {
            let since = w.since.as_deref().map(|s| format!(" since {s}")).unwrap_or_default();
            out!("  {:<10} {}{since}", w.kind, w.what);
        }
    }
    out!("jobs:");
    for n in &verdict.notes {
        let mark = if n.counts { "counts " } else { "ignored" };
        out!("  {mark} {:>8} {:<9} {:<14} {:<9} {}  — {}", n.id, n.role, n.result, n.state, n.name, n.why);
    }
    Ok(exit_code(verdict.result))
}

/// `incident-gate store copy --to URL`: the configuration's state directory into PostgreSQL.
pub fn store_copy(config: Option<&Path>, to: &str) -> Result<u8, String> {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("incident-gate: {e}");
            return Ok(2);
        }
    };
    let shown = incident_gate::store::postgres::redact(to);
    // the store's PostgreSQL client blocks on a runtime of its own: not on this one's threads
    let state_dir = config.state_dir.clone();
    let to = to.to_string();
    let copied = std::thread::spawn(move || incident_gate::store::copy::copy(&state_dir, &to))
        .join()
        .map_err(|_| "the copy panicked".to_string())?;
    match copied {
        Ok(c) => {
            out!(
                "copied {} into {shown}: {} decisions, {} outbox items, {} pending incidents, {} other rows \
                 (what was there already is left as it is)",
                config.state_dir.display(),
                c.decisions,
                c.outbox,
                c.pending,
                c.other
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!("incident-gate: {e}");
            Ok(2)
        }
    }
}

pub fn status(core: Arc<Core>, json: bool, influx: bool) -> Result<u8, String> {
    let store = core.store();
    if influx {
        let read = store.metrics_read(incident_gate::metrics::LATENCY_WINDOW).map_err(|e| e.to_string())?;
        let url = incident_gate::config::link_base(&core.config().openqa_url);
        let lines = incident_gate::metrics::render(&url, &read, std::time::SystemTime::now());
        out!("{}", lines.trim_end());
        return Ok(0);
    }
    let summary = store.summary(incident_gate::engine::RECENT_DECISIONS).map_err(|e| e.to_string())?;
    if json {
        let mut v = serde_json::to_value(&summary).map_err(|e| e.to_string())?;
        v["state"] = store.path().display().to_string().into();
        out!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
        return Ok(0);
    }
    let (backlog, pending) = (&summary.outbox_backlog, &summary.pending_incidents);
    out!("state: {}", store.path().display());
    out!("outbox backlog: {} AMQP, {} IBS, {} Gitea", backlog.amqp, backlog.obs, backlog.gitea);
    let pending = if pending.is_empty() {
        "none".into()
    } else {
        incident_gate::log::list(pending.iter().map(|p| p.named()))
    };
    out!("pending: {pending}");
    let c = &summary.catchup;
    let shown = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    out!(
        "catch-up from openQA: watermark {} (every incident job up to it ended), looked at up to job {}, \
         {} jobs waited on, last run {} ({} requests)",
        shown(c.watermark),
        shown(c.after_id),
        c.waiting_jobs,
        c.last_run_at.as_deref().unwrap_or("never"),
        shown(c.last_requests)
    );
    out!("recent decisions:");
    for d in summary.recent_decisions {
        let deliveries: Vec<String> = d
            .deliveries
            .iter()
            .map(|x| format!("{} {} ({})", x.sink, x.state, x.outcome.as_deref().unwrap_or("-")))
            .collect();
        let request = match (d.kind, d.request) {
            (Kind::Gitea, _) => String::new(),
            (Kind::Ibs, r) => format!(" request {}", r.map_or_else(|| "?".to_string(), |r| r.to_string())),
        };
        out!(
            "  {} {}{request} {} — {}",
            d.decided_at,
            Submission { kind: d.kind, number: d.incident }.named(),
            d.result,
            deliveries.join("; ")
        );
    }
    Ok(0)
}

/// Runs the simulators until SIGINT/SIGTERM, or until stdin closes when it is a pipe (so a test
/// harness that dies takes them along).
/// With `gitea`, also the Gitea simulator and its control listener (`incident_gate_sim::gitea_control`).
pub async fn sim(openqa_port: u16, obs_port: u16, flavor: &str, gitea: bool) -> Result<u8, String> {
    let flavor = match flavor {
        "upstream" => incident_gate_sim::openqa::Flavor::Upstream,
        "debian12" => incident_gate_sim::openqa::Flavor::Debian12,
        other => return Err(format!("--openqa-flavor {other:?}: expected upstream or debian12")),
    };
    let world = world::World::start(openqa_port, obs_port).await?;
    world.openqa.set_flavor(flavor);
    let gitea = if gitea { Some(incident_gate_sim::gitea_control::start().await?) } else { None };
    let mut line = serde_json::json!({
        "openqa": world.openqa.url(),
        "obs": world.obs.url(),
        "obs_user": world::OBS_USER,
        "obs_password": world.obs_password,
        "groups": {"incidents": world.incidents_group, "devel": world.devel_group, "updates": world.updates_group},
    });
    if let Some((sim, control)) = &gitea {
        line["gitea"] = sim.url().into();
        line["gitea_token"] = incident_gate_sim::gitea_control::TOKEN.into();
        line["gitea_user"] = incident_gate_sim::gitea_control::LOGIN.into();
        line["gitea_control"] = control.clone().into();
    }
    out!("{line}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = stdin_closed() => {}
    }
    Ok(0)
}

async fn stdin_closed() {
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    let is_pipe = unsafe { libc::fstat(0, &mut stat) } == 0 && (stat.st_mode & libc::S_IFMT) == libc::S_IFIFO;
    if !is_pipe {
        return std::future::pending().await;
    }
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await.is_ok_and(|n| n > 0) {}
}

pub async fn demo() -> Result<u8, String> {
    demo::run().await
}

pub async fn bench(scale: f64, store_url: Option<&str>) -> Result<u8, String> {
    bench::run(scale, store_url).await
}
