//! Delivers recorded decisions from the store's outbox to each sink, with retries and backoff.
//! Any process sharing the state directory may deliver an item; leases keep them from colliding.

use crate::amqp::publish::Publisher;
use crate::config::Config;
use crate::decision::Delivery;
use crate::engine::Core;
use crate::gitea::{GiteaClient, PrReport};
use crate::obs::client::ObsClient;
use crate::store::{OutboxItem, Sink, Store};
use std::sync::Arc;
use std::time::Duration;

/// The longest a dispatcher sleeps without looking at the outbox (other processes add items too).
const IDLE_POLL: Duration = Duration::from_secs(5);

pub fn spawn_dispatchers(core: &Arc<Core>) {
    for sink in core.sinks() {
        tokio::spawn(run(core.clone(), *sink));
    }
}

enum Deliverer {
    Amqp(Box<Publisher>),
    Obs(Result<ObsClient, String>, Arc<Config>),
    Gitea(Result<GiteaClient, String>, Arc<Config>),
}

impl Deliverer {
    async fn close(&mut self) {
        match self {
            Deliverer::Amqp(p) => p.close().await,
            Deliverer::Obs(..) | Deliverer::Gitea(..) => {}
        }
    }

    async fn deliver(&mut self, item: &OutboxItem) -> Delivery {
        match self {
            Deliverer::Amqp(p) => p.deliver(&item.decision).await,
            Deliverer::Obs(Ok(client), cfg) => {
                // well inside the item's lease, so no other process takes it over meanwhile
                let limit = Duration::from_secs(crate::store::LEASE_S as u64 / 2);
                let report = crate::obs::reporter::deliver(client, cfg, &item.decision);
                match tokio::time::timeout(limit, report).await {
                    Ok(outcome) => outcome,
                    Err(_) => Delivery::Retry(format!(
                        "IBS did not finish within {}",
                        humantime::format_duration(limit)
                    )),
                }
            }
            Deliverer::Obs(Err(e), _) => Delivery::Retry(format!("IBS client: {e}")),
            Deliverer::Gitea(Ok(client), cfg) => {
                let Some(report) = pr_report(cfg, &item.decision) else {
                    return Delivery::Final("not a Gitea pull request, or no repository known".into());
                };
                let limit = Duration::from_secs(crate::store::LEASE_S as u64 / 2);
                match tokio::time::timeout(limit, crate::gitea::deliver(client, cfg, &report)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Delivery::Retry(format!(
                        "Gitea did not finish within {}",
                        humantime::format_duration(limit)
                    )),
                }
            }
            Deliverer::Gitea(Err(e), _) => Delivery::Retry(format!("Gitea client: {e}")),
        }
    }
}

fn deliverer(core: &Core, sink: Sink) -> Deliverer {
    match sink {
        Sink::Amqp => Deliverer::Amqp(Box::new(Publisher::new(core.config().clone()))),
        // A client that cannot be built (unreadable key …) fails every delivery with a clear
        // message and keeps the items queued until the configuration is fixed.
        Sink::Obs => Deliverer::Obs(
            ObsClient::from_config(core.config()).map_err(|e| e.to_string()),
            core.config().clone(),
        ),
        Sink::Gitea => Deliverer::Gitea(
            GiteaClient::from_config(core.config()).map_err(|e| e.to_string()),
            core.config().clone(),
        ),
    }
}

/// What the Gitea reporter needs from a decision about a pull request: the repository from the
/// jobs' `GITEA_REPO` (else `gitea_repo`), the tested commit from their `GITEA_SHA`.
pub fn pr_report(cfg: &Config, d: &crate::decision::Decision) -> Option<PrReport> {
    let v = &d.verdict;
    if v.kind != crate::incident::Kind::Gitea {
        return None;
    }
    let (owner, repo) = PrReport::split_repo(v.repo.as_deref().unwrap_or(&cfg.gitea_repo))?;
    Some(PrReport {
        owner,
        repo,
        number: v.incident,
        tested_sha: v.sha.clone().unwrap_or_default(),
        result: v.result,
        complete: v.complete,
        jobs: v.jobs.clone(),
        blocking: v.blocking.clone(),
        overview_url: format!("{}/tests/overview?build=:git:{}", d.openqa, v.incident),
        page_url: crate::decision::page_url(&d.openqa, v.submission()),
        openqa: d.openqa.clone(),
        key: d.key.clone(),
        decided_at: d.decided_at.clone(),
    })
}

/// How many items one round delivers before the dispatcher looks at shutdown again.
const ROUND: usize = 16;

/// Delivers what is due now; returns how many items were taken.
///
/// Items are leased one at a time, right before their delivery: a process that stops or dies
/// holds at most the item it is delivering, never a batch it had not started (which another
/// process, or this one restarted, would otherwise wait a whole lease for).
async fn deliver_due(core: &Core, sink: Sink, deliverer: &mut Deliverer) -> usize {
    let mut taken = 0;
    while taken < ROUND && !core.is_shutting_down() {
        let item = match core.store().take_due(sink, 1) {
            Ok(mut items) => match items.pop() {
                Some(item) => item,
                None => break,
            },
            Err(e) => {
                tracing::warn!("outbox ({}): {e}", sink.as_str());
                break;
            }
        };
        taken += 1;
        let mut lease = Lease { store: core.store(), item: &item, settled: false };
        let outcome = match superseded(core, &item, sink) {
            Some(outcome) => outcome,
            None => deliver_one(deliverer, &item, sink).await,
        };
        match core.store().complete(&item, &outcome) {
            Ok(()) => lease.settled = true,
            Err(e) => tracing::warn!("outbox ({}): cannot record delivery: {e}", sink.as_str()),
        }
    }
    taken
}

/// Hands an item back when its delivery does not finish: the dispatcher's future is dropped
/// (the runtime shuts down with the gate) or its outcome cannot be recorded. Delivery is at least
/// once: whatever the broker may have received carries the same `message_id` when sent again.
struct Lease<'a> {
    store: &'a Store,
    item: &'a OutboxItem,
    settled: bool,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.settled {
            if let Err(e) = self.store.release(self.item) {
                tracing::warn!(
                    "outbox ({}): cannot release item {}: {e}",
                    self.item.sink.as_str(),
                    self.item.id
                );
            }
        }
    }
}

/// Delivers everything due, for short-lived processes (`incident-gate hook`); returns how many
/// items are still queued when `timeout` passes or nothing more is due.
pub async fn drain(core: &Arc<Core>, timeout: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + timeout;
    for sink in core.sinks() {
        let mut deliverer = deliverer(core, *sink);
        while tokio::time::Instant::now() < deadline {
            let work = deliver_due(core, *sink, &mut deliverer);
            match tokio::time::timeout_at(deadline, work).await {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
        deliverer.close().await;
    }
    core.store().backlog().map(|b| b.total()).unwrap_or(0)
}

async fn run(core: Arc<Core>, sink: Sink) {
    let mut deliverer = deliverer(&core, sink);
    loop {
        let woken = core.outbox_wake.notified();
        if core.is_shutting_down() {
            break;
        }
        if deliver_due(&core, sink, &mut deliverer).await > 0 {
            // a later sink of the same decisions may be waiting for these
            core.outbox_wake.notify_waiters();
            continue;
        }
        let wait = match core.store().next_due_in(sink) {
            Ok(Some(ms)) => Duration::from_millis(ms as u64).min(IDLE_POLL),
            _ => IDLE_POLL,
        };
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(wait) => {}
            _ = core.until_shutdown() => break,
        }
    }
    deliverer.close().await;
}

/// A report to IBS that a newer decision of the same incident replaced, or that an evaluation
/// begun after it found testing going on again, is not made: acting on it late (after backing
/// off) could accept a review while a restarted job or a new build still runs. Events are history
/// and are all published.
fn superseded(core: &Core, item: &OutboxItem, sink: Sink) -> Option<Delivery> {
    if !sink.reports() {
        return None;
    }
    match core.store().is_latest(item.decision.verdict.submission(), &item.decision.key) {
        Ok(true) => None,
        Ok(false) => Some(Delivery::Final(
            "superseded by a newer decision of this incident, or testing resumed after it; not reported"
                .into(),
        )),
        Err(e) => Some(Delivery::Retry(e.to_string())),
    }
}

async fn deliver_one(deliverer: &mut Deliverer, item: &OutboxItem, sink: Sink) -> Delivery {
    let incident = item.decision.verdict.submission().named();
    let outcome = deliverer.deliver(item).await;
    match &outcome {
        Delivery::Done(m) => tracing::info!("{incident} → {}: {m}", sink.as_str()),
        Delivery::Final(m) => {
            tracing::info!("{incident} → {}: nothing more to do: {m}", sink.as_str())
        }
        Delivery::Denied(m, _) => tracing::error!(
            "{incident} → {}: attempt {} refused, will retry: {m}",
            sink.as_str(),
            item.attempts + 1
        ),
        Delivery::Retry(m) => tracing::warn!(
            "{incident} → {}: attempt {} failed, will retry: {m}",
            sink.as_str(),
            item.attempts + 1
        ),
    }
    outcome
}
