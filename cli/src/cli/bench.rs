//! `incident-gate bench`: the figures in docs/performance.md. Everything runs on loopback: the
//! simulators in this process, the gate behind its C ABI, the real local RabbitMQ.

use super::world::{self, World};
use incident_gate::ffi::{ig_gate, ig_gate_free, ig_gate_new, ig_gate_submit, ig_status};
use incident_gate_sim as sim;
use std::ffi::CString;
use std::time::{Duration, Instant};

struct CGate(*mut ig_gate);

// The C ABI handle is thread-safe by contract (the plugin may call it from any thread).
unsafe impl Send for CGate {}
unsafe impl Sync for CGate {}

impl CGate {
    fn new(config: &serde_json::Value) -> Result<CGate, String> {
        let c = CString::new(config.to_string()).map_err(|e| e.to_string())?;
        let mut gate = std::ptr::null_mut();
        match unsafe { ig_gate_new(c.as_ptr(), &mut gate) } {
            ig_status::IG_OK => Ok(CGate(gate)),
            other => Err(format!("ig_gate_new: {other:?}")),
        }
    }

    fn submit(&self, name: &CString, data: &CString) -> ig_status {
        unsafe { ig_gate_submit(self.0, name.as_ptr(), data.as_ptr()) }
    }
}

impl Drop for CGate {
    fn drop(&mut self) {
        unsafe { ig_gate_free(self.0) };
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A memory field of `/proc/<process>/status` (`VmRSS:`, `VmHWM:`), MiB; 0 when unreadable.
fn status_mib(process: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn state_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("incident-gate-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn micros(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

pub async fn run(scale: f64, store_url: Option<&str>) -> Result<u8, String> {
    if !(0.01..=10.0).contains(&scale) {
        return Err("--scale must be between 0.01 and 10".into());
    }
    if let Some(url) = store_url {
        let db: postgres::Config = url.parse().map_err(|e| format!("--store-url: {e}"))?;
        if !db.get_dbname().is_some_and(|n| n.starts_with("incident_gate_bench")) {
            return Err(
                "--store-url: the database's name must start with incident_gate_bench (it is emptied)".into(),
            );
        }
    }
    out!(
        "incident-gate bench (scale {scale}), {} cores\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    submit_cost().await?;
    let result = async {
        latency(((50.0 * scale).ceil() as usize).max(5), "").await?;
        day(scale, "").await?;
        day_memory(scale).await?;
        if let Some(url) = store_url {
            out!("# The same with the store in PostgreSQL\n");
            latency(((50.0 * scale).ceil() as usize).max(5), url).await?;
            day(scale, url).await?;
        }
        Ok::<(), String>(())
    }
    .await;
    world::remove_created_exchanges(&world::amqp_url()).await;
    result.map(|_| 0)
}

/// Call cost: what one `ig_gate_submit` costs the caller (openQA's request thread).
async fn submit_cost() -> Result<(), String> {
    let world = World::start(0, 0).await?;
    let dir = state_dir("submit");
    let mut cfg = world.gate_config(&dir, &world::amqp_url(), "incident-gate-bench");
    cfg["publish_amqp"] = false.into();
    cfg["report_obs"] = false.into();
    cfg["queue_capacity"] = 1_000_000.into();
    let name = CString::new("openqa_job_done").map_err(|e| e.to_string())?;
    // a web UI worker's first event starts its engine; the state directory usually exists
    let warm = CString::new(r#"{"id":1,"result":"passed"}"#).map_err(|e| e.to_string())?;
    let fresh = {
        let gate = CGate::new(&cfg)?;
        let start = Instant::now();
        tokio::task::block_in_place(|| gate.submit(&name, &warm));
        start.elapsed()
    };
    let gate = CGate::new(&cfg)?;
    const N: usize = 200_000;
    let payloads: Vec<CString> = (0..N)
        .map(|i| {
            CString::new(format!(
                r#"{{"id":{},"newbuild":null,"reason":null,"result":"passed"}}"#,
                1_000_000 + i
            ))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let timings = tokio::task::block_in_place(|| {
        // the first call starts the engine: measured apart, it is a one-time cost per process
        let first = Instant::now();
        gate.submit(&name, &payloads[0]);
        let first = first.elapsed();
        let mut t = Vec::with_capacity(N);
        for p in &payloads[1..] {
            let start = Instant::now();
            let status = gate.submit(&name, p);
            t.push(start.elapsed());
            if status != ig_status::IG_OK {
                return Err(format!("submit: {status:?}"));
            }
        }
        t.sort_unstable();
        Ok((first, t))
    })?;
    let (first, t) = timings;
    out!("## ig_gate_submit through the C ABI ({} calls, openqa_job_done)\n", t.len());
    out!("| first call, new state dir | first call, existing state dir | median | p99 | p99.9 | max |");
    out!("| --- | --- | --- | --- | --- | --- |");
    out!(
        "| {} | {} | {} | {} | {} | {} |\n",
        micros(fresh),
        micros(first),
        micros(percentile(&t, 0.5)),
        micros(percentile(&t, 0.99)),
        micros(percentile(&t, 0.999)),
        micros(*t.last().unwrap_or(&Duration::ZERO))
    );
    drop(gate);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Latency: from the last job's `set_done` event to the `incident.done` message consumed from the broker,
/// and to the review accepted on the IBS simulator.
async fn latency(incidents: usize, store_url: &str) -> Result<(), String> {
    let world = World::start(0, 0).await?;
    let dir = state_dir("latency");
    let exchange = format!("incident-gate-bench-{}", std::process::id());
    let (_conn, mut consumer) = world::incident_done_consumer(&world::amqp_url(), &exchange).await?;
    let mut cfg = world.gate_config(&dir, &world::amqp_url(), &exchange);
    use_store(&mut cfg, store_url)?;
    let gate = CGate::new(&cfg)?;
    let name = CString::new("openqa_job_done").map_err(|e| e.to_string())?;
    let (mut to_event, mut to_review) = (Vec::new(), Vec::new());
    for n in 0..incidents as u64 {
        let (incident, request) = (50_000 + n, 600_000 + n);
        world.release_request(request);
        let jobs: Vec<u64> = (0..10)
            .map(|t| world.incident_job(incident, request, "pkg", &format!("t{t}"), "x86_64"))
            .collect();
        for job in &jobs {
            let event = world.openqa.set_done(*job, "passed").ok_or("set_done refused")?;
            if job == jobs.last().unwrap_or(&0) {
                let data = CString::new(event.data.to_string()).map_err(|e| e.to_string())?;
                let start = Instant::now();
                gate.submit(&name, &data);
                let body = world::next_event(&mut consumer, Duration::from_secs(30))
                    .await
                    .ok_or("no incident.done")?;
                to_event.push(start.elapsed());
                if body["incident"] != incident {
                    return Err(format!("unexpected event {body}"));
                }
                while world.obs.reviews(request).first().map(|r| r.state.as_str()) != Some("accepted") {
                    if start.elapsed() > Duration::from_secs(30) {
                        return Err(format!("request {request} not accepted"));
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                to_review.push(start.elapsed());
            } else {
                let data = CString::new(event.data.to_string()).map_err(|e| e.to_string())?;
                gate.submit(&name, &data);
            }
        }
    }
    to_event.sort_unstable();
    to_review.sort_unstable();
    out!(
        "## Last job's event → decision delivered ({incidents} incidents x 10 jobs){}\n",
        store_name(store_url)
    );
    out!("| path | median | p99 | max |");
    out!("| --- | --- | --- | --- |");
    for (what, t) in [
        ("`incident.done` consumed from RabbitMQ", &to_event),
        ("review accepted on the IBS simulator", &to_review),
    ] {
        out!(
            "| {what} | {} | {} | {} |",
            millis(percentile(t, 0.5)),
            millis(percentile(t, 0.99)),
            millis(*t.last().unwrap_or(&Duration::ZERO))
        );
    }
    out!();
    drop(gate);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Throughput: a synthetic openQA day: every job finishes in shuffled order with an event.
/// `store_url` empty: SQLite in the state directory; else that PostgreSQL database, its schema
/// incident_gate emptied first.
fn use_store(cfg: &mut serde_json::Value, store_url: &str) -> Result<(), String> {
    if !store_url.is_empty() {
        let url = store_url.to_string();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())?;
            c.batch_execute("DROP SCHEMA IF EXISTS incident_gate CASCADE").map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| "emptying the store panicked".to_string())??;
        cfg["store_url"] = store_url.into();
    }
    Ok(())
}

fn store_name(store_url: &str) -> &'static str {
    if store_url.is_empty() {
        " — store: SQLite"
    } else {
        " — store: PostgreSQL"
    }
}

/// Bytes the store in PostgreSQL takes: every table of the schema with its indexes and TOAST.
fn postgres_bytes(store_url: &str) -> Result<u64, String> {
    let url = store_url.to_string();
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())?;
        let row = c
            .query_one(
                "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'incident_gate' AND c.relkind = 'r'",
                &[],
            )
            .map_err(|e| e.to_string())?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    })
    .join()
    .map_err(|_| "measuring the store panicked".to_string())?
}

async fn day(scale: f64, store_url: &str) -> Result<(), String> {
    let world = World::start(0, 0).await?;
    let Day { incidents, per_incident, builds, per_build, jobs } = Day::populate(&world, scale);
    let dir = state_dir("day");
    let exchange = format!("incident-gate-bench-day-{}", std::process::id());
    let (_conn, mut consumer) = world::incident_done_consumer(&world::amqp_url(), &exchange).await?;
    let mut cfg = world.gate_config(&dir, &world::amqp_url(), &exchange);
    cfg["queue_capacity"] = 1_000_000.into();
    use_store(&mut cfg, store_url)?;
    let events: Vec<CString> = jobs
        .iter()
        .map(|j| {
            world.openqa.set_done(*j, "passed");
            CString::new(format!(r#"{{"id":{j},"newbuild":null,"reason":null,"result":"passed"}}"#))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let gate = CGate::new(&cfg)?;
    let name = CString::new("openqa_job_done").map_err(|e| e.to_string())?;
    let requests_before = world.openqa.requests();
    let start = Instant::now();
    for e in &events {
        if gate.submit(&name, e) != ig_status::IG_OK {
            return Err("submit refused".into());
        }
    }
    let submitted = start.elapsed();
    let mut received = 0;
    while received < incidents {
        world::next_event(&mut consumer, Duration::from_secs(120))
            .await
            .ok_or("missing incident.done events")?;
        received += 1;
    }
    let all_published = start.elapsed();
    let mut accepted = 0;
    while accepted < incidents {
        accepted = (0..incidents)
            .filter(|n| world.obs.reviews(700_000 + n).first().map(|r| r.state.as_str()) == Some("accepted"))
            .count() as u64;
        if start.elapsed() > Duration::from_secs(300) {
            return Err(format!("only {accepted} of {incidents} reviews accepted"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_reported = start.elapsed();
    let requests = world.openqa.requests() - requests_before;
    out!(
        "## A synthetic openQA day: {incidents} incidents x {per_incident} jobs + {builds} aggregate builds x {per_build} jobs{}\n",
        store_name(store_url)
    );
    out!("| measure | value |");
    out!("| --- | --- |");
    out!("| job events | {} |", events.len());
    out!(
        "| submitting all events (C ABI) | {} ({:.0} events/s) |",
        millis(submitted),
        events.len() as f64 / submitted.as_secs_f64()
    );
    out!(
        "| all {incidents} `incident.done` consumed | {} ({:.0} job events/s sustained end to end) |",
        millis(all_published),
        events.len() as f64 / all_published.as_secs_f64()
    );
    out!("| all {incidents} reviews accepted on IBS | {} |", millis(all_reported));
    out!(
        "| decisions per second (until the last `incident.done`) | {:.1} |",
        incidents as f64 / all_published.as_secs_f64()
    );
    out!("| openQA requests | {requests} ({:.1} per decision) |", requests as f64 / incidents as f64);
    out!(
        "| peak RSS of the bench process (gate + both simulators + {} jobs) | {:.0} MiB |",
        events.len(),
        status_mib("self", "VmHWM:")
    );
    drop(gate);
    // the database with its write-ahead log, as the day left them
    let stored: u64 = if store_url.is_empty() {
        std::fs::read_dir(&dir)
            .map(|files| files.filter_map(|f| f.ok()?.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    } else {
        postgres_bytes(store_url)?
    };
    out!(
        "| store after the day (SQLite: database and write-ahead log; PostgreSQL: tables, indexes, TOAST) | {:.1} MiB ({:.1} KiB per decision) |\n",
        stored as f64 / 1048576.0,
        stored as f64 / 1024.0 / incidents as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The synthetic day's jobs in the openQA simulator: incidents in review on IBS, their jobs and the
/// aggregate builds listing them, not yet finished, in the shuffled order they will finish in.
struct Day {
    incidents: u64,
    per_incident: u64,
    builds: u64,
    per_build: u64,
    jobs: Vec<u64>,
}

impl Day {
    fn populate(world: &World, scale: f64) -> Day {
        let incidents = ((300.0 * scale).round() as u64).max(10);
        let (per_incident, per_build) = (40, 400);
        let builds = ((10.0 * scale).round() as u64).max(1);
        let mut jobs = Vec::new();
        for n in 0..incidents {
            world.release_request(700_000 + n);
            for t in 0..per_incident {
                jobs.push(world.incident_job(80_000 + n, 700_000 + n, "pkg", &format!("t{t}"), "x86_64"));
            }
        }
        let listed = (incidents / builds).max(1);
        for b in 0..builds {
            let covered: Vec<u64> = (0..listed).map(|k| 80_000 + b * listed + k).collect();
            for t in 0..per_build {
                jobs.push(world.aggregate_job(
                    &format!("20261124-{}", b + 1),
                    &covered,
                    &format!("b{b}-t{t}"),
                ));
            }
        }
        sim::shuffle(&mut jobs, 7);
        Day { incidents, per_incident, builds, per_build, jobs }
    }
}

/// `incident-gate listen`, killed however the bench ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Memory: the same day decided by the engine in a process of its own, as a web-UI worker holds it:
/// `incident-gate listen` fed with openQA's AMQP `job.done` message of every job.
async fn day_memory(scale: f64) -> Result<(), String> {
    use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
    let world = World::start(0, 0).await?;
    let day = Day::populate(&world, scale);
    let dir = state_dir("day-listen");
    let url = world::amqp_url();
    let exchange = format!("incident-gate-bench-listen-{}", std::process::id());
    let (queue, prefix) = (format!("{exchange}-queue"), "bench");
    let (conn, mut consumer) = world::incident_done_consumer(&url, &exchange).await?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("the bench's own executable: {e}"))?;
    let env = [
        ("OPENQA_URL", world.openqa.url()),
        ("STATE_DIR", dir.display().to_string()),
        ("OBS_URL", world.obs.url()),
        ("OBS_USER", world::OBS_USER.to_string()),
        ("OBS_PASSWORD", world.obs_password.clone()),
        ("AMQP_URL", url.clone()),
        ("AMQP_EXCHANGE", exchange.clone()),
        ("AMQP_TOPIC_PREFIX", prefix.to_string()),
        ("AMQP_QUEUE", queue.clone()),
        ("AMQP_QUEUE_DURABLE", "false".to_string()),
        ("HTTP_TIMEOUT_S", "10".to_string()),
    ];
    let mut cmd = std::process::Command::new(exe);
    cmd.env_remove("INCIDENT_GATE_CONFIG").env("RUST_LOG", "warn").arg("listen");
    for (k, v) in &env {
        cmd.env(format!("INCIDENT_GATE_{k}"), v);
    }
    // the queue as the listener declares it, bound before anything is published, so that the
    // count of its consumers tells when the listener is there
    let declare = || async {
        let options = QueueDeclareOptions { durable: false, ..Default::default() };
        ch.queue_declare(queue.as_str().into(), options, Default::default()).await.map_err(|e| e.to_string())
    };
    let result = async {
        declare().await?;
        ch.queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            format!("{prefix}.openqa.job.*").as_str().into(),
            Default::default(),
            Default::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let child = Child(cmd.stdout(std::process::Stdio::null()).spawn().map_err(|e| format!("listen: {e}"))?);
        let pid = child.0.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        while declare().await?.consumer_count() == 0 {
            if Instant::now() > deadline {
                return Err("incident-gate listen did not consume within 30 s".to_string());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let idle = status_mib(&pid.to_string(), "VmRSS:");
        let start = Instant::now();
        for j in &day.jobs {
            let event = world.openqa.set_done(*j, "passed").ok_or(format!("job {j} cannot be set done"))?;
            ch.basic_publish(
                exchange.as_str().into(),
                event.routing_key(prefix).as_str().into(),
                BasicPublishOptions::default(),
                event.amqp_body.to_string().as_bytes(),
                Default::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        for _ in 0..day.incidents {
            world::next_event(&mut consumer, Duration::from_secs(120))
                .await
                .ok_or("missing incident.done events from incident-gate listen")?;
        }
        let all_published = start.elapsed();
        let (rss, hwm) = (status_mib(&pid.to_string(), "VmRSS:"), status_mib(&pid.to_string(), "VmHWM:"));
        out!("### The same day in a process of its own (`incident-gate listen`, openQA's AMQP `job.done` messages)\n");
        out!("| measure | value |");
        out!("| --- | --- |");
        out!("| all {} `incident.done` consumed | {} |", day.incidents, millis(all_published));
        out!("| resident memory of the process, started and idle | {idle:.0} MiB |");
        out!("| resident memory after the day | {rss:.0} MiB |");
        out!("| peak resident memory during the day | {hwm:.0} MiB |\n");
        Ok(())
    }
    .await;
    let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = conn.close(200, "".into()).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
