//! `incident-gate demo`: a maintenance day on the simulators and the real local RabbitMQ, shown
//! step by step. It uses the same path as the openQA plugin: events into a gate.

use super::world::{self, World};
use incident_gate::config::Config;
use incident_gate::gate::Gate;
use incident_gate::incident::Submission;
use incident_gate_sim as sim;
use incident_gate_sim::gitea::{GiteaSim, GiteaSimConfig, Reviewer};
use incident_gate_sim::openqa::SimEvent;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

struct Demo {
    world: World,
    gitea: GiteaSim,
    gate: Gate,
    consumer: lapin::Consumer,
    /// The routing key of the demo's own events (its own topic prefix), the only one it binds.
    routing_key: String,
    /// Messages received before their decision was shown, by `message_id`.
    inbox: HashMap<String, serde_json::Value>,
    seen_decisions: HashSet<String>,
    events: Vec<serde_json::Value>,
    started: Instant,
}

const EXCHANGE: &str = "pubsub";
const PACE: Duration = Duration::from_millis(250);
/// The Gitea pull request of the demo: the same number as the IBS incident 12400.
const PR: u64 = 12400;
const SLFO: &str = "products/SLFO";
const PR_SHA1: &str = "2cf58b3a9c32d139470a5f32d5aa64efbd0fa90dda0144b09421709252fcb0ea";
const PR_SHA2: &str = "9d1e0c0ffee0c0dec0ffee0c0dec0ffee0c0dec0ffee0c0dec0ffee0c0debeef";
const GITEA_USER: &str = "qam-openqa";

fn say(started: Instant, text: &str) {
    out!("[{:>5.1}s] {text}", started.elapsed().as_secs_f64());
}

impl Demo {
    fn step(&self, text: &str) {
        out!();
        say(self.started, &format!("── {text}"));
    }

    /// Hands openQA's event to the gate, as the plugin does, and shows what follows.
    async fn event(&mut self, what: &str, event: Option<SimEvent>) -> Result<(), String> {
        let event = event.ok_or_else(|| format!("the simulator refused: {what}"))?;
        // a pace a person can follow; the gate itself answers within milliseconds
        tokio::time::sleep(PACE).await;
        say(self.started, &format!("openQA: {what}  → {} {}", event.name, event.data));
        let submitted = Instant::now();
        self.gate.submit(&event.name, &event.data.to_string()).map_err(|e| format!("{e:?}"))?;
        self.settle(submitted).await
    }

    /// The broker's message of decision `key` (its `message_id`), waiting for it at most 5 s.
    /// Messages that arrive meanwhile are kept for their own decisions: on a broker that other
    /// publishers share, each decision shows its own message, never the next one to arrive.
    async fn message(&mut self, key: &str) -> Option<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(event) = self.inbox.remove(key) {
                return Some(event);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (id, event) = world::next_message(&mut self.consumer, left).await?;
            if let Some(id) = id {
                self.inbox.insert(id, event);
            }
        }
    }

    /// Waits for the gate and the outbox to settle, then prints new decisions, IBS actions and events.
    async fn settle(&mut self, since: Instant) -> Result<(), String> {
        let gate = &self.gate;
        tokio::task::block_in_place(|| gate.flush(Duration::from_secs(30)))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.gate.status();
            let engine = &status["engine"];
            let backlog = &engine["outbox_backlog"];
            if backlog["amqp"] == 0 && backlog["obs"] == 0 && backlog["gitea"] == 0 {
                let decisions = engine["recent_decisions"].as_array().cloned().unwrap_or_default();
                let mut decided = false;
                for d in decisions.iter().rev() {
                    let key = d["key"].as_str().unwrap_or("").to_string();
                    if !self.seen_decisions.insert(key) {
                        continue;
                    }
                    decided = true;
                    say(
                        self.started,
                        &format!(
                            "incident-gate: {}{} → {}{}, {} ms after the event",
                            if d["kind"] == "gitea" { "pull request git:" } else { "incident " },
                            d["incident"],
                            d["result"].as_str().unwrap_or("?").to_uppercase(),
                            d["request"].as_u64().map(|r| format!(" (request {r})")).unwrap_or_default(),
                            since.elapsed().as_millis()
                        ),
                    );
                    for delivery in d["deliveries"].as_array().into_iter().flatten() {
                        let sink = match delivery["sink"].as_str() {
                            Some("obs") => "IBS",
                            Some("gitea") => "Gitea",
                            _ => "AMQP",
                        };
                        say(
                            self.started,
                            &format!("    {sink}: {}", delivery["outcome"].as_str().unwrap_or("-")),
                        );
                    }
                    if let Some(event) = self.message(d["key"].as_str().unwrap_or("")).await {
                        say(
                            self.started,
                            &format!(
                                "    broker: {} {{kind: {}, incident: {}, result: {}, blocking: {}}}",
                                self.routing_key,
                                event["kind"],
                                event["incident"],
                                event["result"],
                                event["blocking"].as_array().map_or(0, |b| b.len())
                            ),
                        );
                        self.events.push(event);
                    }
                }
                if !decided {
                    let pending: Vec<String> = engine["pending_incidents"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|i| match i {
                            serde_json::Value::String(s) => Submission::parse(s),
                            other => other.as_u64().map(Submission::ibs),
                        })
                        .map(Submission::named)
                        .collect();
                    let text = if pending.is_empty() {
                        "incident-gate: no new decision".to_string()
                    } else {
                        format!("incident-gate: no decision yet, pending: {}", pending.join(", "))
                    };
                    say(self.started, &text);
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the outbox did not drain: {backlog}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn run() -> Result<u8, String> {
    let started = Instant::now();
    out!("incident-gate demo: one maintenance day on simulated openQA and IBS, real RabbitMQ\n");
    let world = World::start(0, 0).await?;
    let amqp = world::amqp_url();
    // a topic prefix of its own: the exchange may be shared with other openQAs publishing theirs
    let prefix = format!("suse-demo-{}", std::process::id());
    let routing_key = format!("{prefix}.openqa.incident.done");
    let (_conn, consumer) = world::incident_done_consumer_of(&amqp, EXCHANGE, &routing_key).await?;
    let state = std::env::temp_dir().join(format!("incident-gate-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let token = format!("demo-{}", std::process::id());
    let gitea = incident_gate_sim::gitea::try_start(GiteaSimConfig::new(&token, GITEA_USER))
        .await
        .map_err(|e| format!("Gitea simulator: {e}"))?;
    let mut gate_config = world.gate_config(&state, &amqp, EXCHANGE);
    gate_config["gitea_url"] = gitea.url().into();
    gate_config["gitea_token"] = token.into();
    gate_config["amqp_topic_prefix"] = prefix.into();
    let config = Config::from_value(gate_config).map_err(|e| e.to_string())?;
    say(
        started,
        &format!(
            "openQA simulator {}  IBS simulator {}  Gitea simulator {}  broker {}",
            world.openqa.url(),
            world.obs.url(),
            gitea.url(),
            config.amqp_url.redacted()
        ),
    );
    say(
        started,
        &format!(
            "policy {}, review group {}, state {}",
            config.review_policy.as_str(),
            config.review_group,
            state.display()
        ),
    );
    let gate = Gate::new(config);
    let mut demo = Demo {
        world,
        gitea,
        gate,
        consumer,
        routing_key,
        inbox: HashMap::new(),
        seen_decisions: HashSet::new(),
        events: Vec::new(),
        started,
    };
    let result = play(&mut demo).await;
    let _ = std::fs::remove_dir_all(&state);
    world::remove_created_exchanges(&amqp).await;
    result?;
    summary(&demo);
    Ok(0)
}

async fn play(d: &mut Demo) -> Result<(), String> {
    let w = &d.world;
    d.step("Morning: three release requests wait for the qam-openqa review on IBS");
    for (rr, incident, package) in
        [(300001, 12345, "openssl"), (300002, 12346, "curl"), (300003, 12400, "libxml2")]
    {
        w.release_request(rr);
        say(d.started, &format!("IBS: request {rr} (SUSE:Maintenance:{incident}, {package}) in review"));
    }
    let openssl_extratests = w.incident_job(12345, 300001, "openssl", "mau-extratests", "x86_64");
    let openssl_minimal = w.incident_job(12345, 300001, "openssl", "qam-minimal", "x86_64");
    let openssl_aarch64 = w.incident_job(12345, 300001, "openssl", "mau-extratests", "aarch64");
    let devel_settings = sim::incident_job_settings(12345, 300001, "openssl", "mau-filesystem", "x86_64");
    let devel = w.openqa.create_job(&sim::borrowed(&devel_settings), w.devel_group);
    let curl_minimal = w.incident_job(12346, 300002, "curl", "qam-minimal", "x86_64");
    let curl_extratests = w.incident_job(12346, 300002, "curl", "mau-extratests", "x86_64");
    let xml_minimal = w.incident_job(12400, 300003, "libxml2", "qam-minimal", "x86_64");
    let all = [12345, 12346, 12400];
    let agg_regression = w.aggregate_job("20261124-1", &all, "mau-qam-regression");
    let agg_extratests = w.aggregate_job("20261124-1", &all, "mau-extratests");
    say(d.started, "openQA: 7 incident jobs, 1 Devel-group job, aggregate build 20261124-1 (2 jobs) listing all three incidents");

    d.step("Jobs finish, in no particular order");
    let ev = w.openqa.set_done(openssl_extratests, "passed");
    d.event("12345 mau-extratests passed", ev).await?;
    let ev = d.world.openqa.set_done(curl_minimal, "passed");
    d.event("12346 qam-minimal passed", ev).await?;
    let ev = d.world.openqa.set_done(devel, "failed");
    d.event("12345 mau-filesystem failed in the Devel group (ignored by policy)", ev).await?;
    let ev = d.world.openqa.set_done(agg_regression, "passed");
    d.event("aggregate mau-qam-regression passed", ev).await?;
    let ev = d.world.openqa.set_done(openssl_aarch64, "softfailed");
    d.event("12345 mau-extratests@aarch64 softfailed", ev).await?;

    d.step("A failing aggregate job blocks every incident it tests");
    let ev = d.world.openqa.set_done(agg_extratests, "failed");
    d.event("aggregate mau-extratests FAILED", ev).await?;
    let ev = d.world.openqa.set_done(curl_extratests, "passed");
    d.event("12346 mau-extratests passed: the last job of 12346", ev).await?;
    let ev = d.world.openqa.set_done(xml_minimal, "passed");
    d.event("12400 qam-minimal passed: the last job of 12400", ev).await?;

    d.step("A reviewer marks the aggregate failure as known for curl (12346) only");
    let ev = d
        .world
        .openqa
        .comment(agg_extratests, "@review:acceptable_for:incident_12346:bsc#1234567 known issue");
    d.event("comment on the aggregate job", ev).await?;

    d.step("openssl (12345): its last job fails, a restart passes");
    let ev = d.world.openqa.set_done(openssl_minimal, "failed");
    d.event("12345 qam-minimal FAILED: the last job of 12345", ev).await?;
    let (clone, ev) = d.world.openqa.restart(openssl_minimal).ok_or("restart refused")?;
    d.event(&format!("12345 qam-minimal restarted as job {clone}"), Some(ev)).await?;
    let ev = d
        .world
        .openqa
        .comment(agg_extratests, "@review:acceptable_for:incident_12345:bsc#1234567 known issue");
    d.event("the aggregate failure is known for openssl (12345) too", ev).await?;
    let ev = d.world.openqa.set_done(clone, "passed");
    d.event(&format!("12345 qam-minimal (clone {clone}) passed"), ev).await?;
    gitea_pull_request(d).await
}

/// SLE 16: a Gitea pull request with the same number as IBS incident 12400, decided on its own
/// jobs; a push after testing is not approved, the new head is.
async fn gitea_pull_request(d: &mut Demo) -> Result<(), String> {
    d.step(&format!(
        "SLE 16: Gitea pull request {SLFO}#{PR} (the same number as incident 12400) asks qam-openqa"
    ));
    d.gitea.create_pr(SLFO, PR, PR_SHA1);
    d.gitea.request_review(SLFO, PR, Reviewer::User("qam-openqa-review".into()));
    let group = d.world.incidents_group;
    let job = |d: &Demo, sha: &str, test: &str| {
        let settings = sim::gitea_job_settings(SLFO, PR, sha, "kernel-default", test);
        d.world.openqa.create_job(&sim::borrowed(&settings), group)
    };
    let (a, b) = (job(d, PR_SHA1, "qam-minimal"), job(d, PR_SHA1, "mau-extratests"));
    say(d.started, &format!("openQA: 2 jobs with SUBMISSION_ID=git:{PR}, GITEA_SHA={}", &PR_SHA1[..12]));
    let ev = d.world.openqa.set_done(a, "passed");
    d.event(&format!("git:{PR} qam-minimal passed"), ev).await?;
    d.step("The maintainer pushes a new commit before testing ends");
    d.gitea.push(SLFO, PR, PR_SHA2);
    say(d.started, &format!("Gitea: head of #{PR} is now {}", &PR_SHA2[..12]));
    let ev = d.world.openqa.set_done(b, "passed");
    d.event(&format!("git:{PR} mau-extratests passed: results for the old commit"), ev).await?;
    d.step("The workflow bot requests the review again; openQA tests the new head");
    d.gitea.rerequest_review(SLFO, PR, Reviewer::User("qam-openqa-review".into()));
    let (a, b) = (job(d, PR_SHA2, "qam-minimal"), job(d, PR_SHA2, "mau-extratests"));
    let ev = d.world.openqa.set_done(a, "passed");
    d.event(&format!("git:{PR} qam-minimal passed ({})", &PR_SHA2[..12]), ev).await?;
    let ev = d.world.openqa.set_done(b, "passed");
    d.event(&format!("git:{PR} mau-extratests passed ({})", &PR_SHA2[..12]), ev).await?;
    Ok(())
}

fn summary(d: &Demo) {
    out!();
    say(d.started, "── End of the day");
    out!("\nEvents published on the broker ({}):", d.routing_key);
    for e in &d.events {
        let blocking: Vec<String> = e["blocking"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| format!("{} {}", b["id"], b["result"].as_str().unwrap_or("")))
            .collect();
        out!(
            "  {:<6} {}{} {:<7} jobs {} blocking [{}] event_id {}",
            e["kind"].as_str().unwrap_or(""),
            e["incident"],
            e["request"].as_u64().map(|r| format!(" request {r}")).unwrap_or_default(),
            e["result"].as_str().unwrap_or(""),
            e["jobs"],
            blocking.join(", "),
            e["event_id"].as_str().unwrap_or("")
        );
    }
    out!("\nReview states on the simulated IBS:");
    for rr in [300001, 300002, 300003] {
        let reviews: Vec<String> = d
            .world
            .obs
            .reviews(rr)
            .iter()
            .map(|r| format!("{}={}", r.by_group.as_deref().unwrap_or("?"), r.state))
            .collect();
        let comments = d.world.obs.comments(rr);
        out!(
            "  request {rr}: state {}, reviews [{}], {} comment(s) by incident-gate",
            d.world.obs.request_state(rr).unwrap_or_default(),
            reviews.join(", "),
            comments.len()
        );
        if let Some(c) = comments.last() {
            for line in c.text.lines().take(8) {
                out!("      │ {line}");
            }
        }
    }
    out!("\nGitea pull request {SLFO}#{PR} (head {}):", d.gitea.head(SLFO, PR).unwrap_or_default());
    for c in d.gitea.comments(SLFO, PR) {
        out!("  comment by {}:", c.user);
        for line in c.body.lines().filter(|l| !l.trim().is_empty()).take(5) {
            out!("      │ {line}");
        }
    }
    out!("\nDone in {:.1}s.", d.started.elapsed().as_secs_f64());
}
