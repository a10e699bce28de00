//! Delivers recorded decisions from the store's outbox to each sink, with retries and backoff.
//! Any process sharing the state directory may deliver an item; leases keep them from colliding.

use crate::amqp::publish::Publisher;
use crate::config::Config;
use crate::decision::{Delivery, Recheck};
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

    /// `recheck` is asked right before an action that cannot be taken back (see [`Recheck`]).
    async fn deliver(&mut self, item: &OutboxItem, recheck: &dyn Recheck) -> Delivery {
        match self {
            Deliverer::Amqp(p) => p.deliver(&item.decision).await,
            Deliverer::Obs(Ok(client), cfg) => {
                // well inside the item's lease, so no other process takes it over meanwhile
                let limit = Duration::from_secs(crate::store::LEASE_S as u64 / 2);
                let report = crate::obs::deliver_checked(client, cfg, &item.decision, recheck);
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
                let report = crate::gitea::deliver_checked(client, cfg, &report, recheck);
                match tokio::time::timeout(limit, report).await {
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
        builds: d.builds.clone(),
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
            None => deliver_one(core.config(), deliverer, &item, sink, core).await,
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
/// items are still queued when `timeout` passes or nothing more is due, not counting reports that
/// wait for the other side (a later run tries them once due).
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
    core.store().undelivered().unwrap_or(0)
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

async fn deliver_one(
    cfg: &Config,
    deliverer: &mut Deliverer,
    item: &OutboxItem,
    sink: Sink,
    recheck: &dyn Recheck,
) -> Delivery {
    let incident = item.decision.verdict.submission().named();
    let outcome = deliverer.deliver(item, recheck).await;
    let waited = matches!(outcome, Delivery::Waiting(..));
    let outcome = bound_wait(cfg, &item.decision.decided_at, crate::store::now_ms(), outcome);
    let again = repeats(item.last_outcome.as_deref(), &outcome);
    match &outcome {
        Delivery::Done(m) => tracing::info!("{incident} → {}: {m}", sink.as_str()),
        // not reported after all: someone may have to look why the review never came
        Delivery::Final(m) if waited => tracing::warn!("{incident} → {}: {m}", sink.as_str()),
        Delivery::Final(m) => {
            tracing::info!("{incident} → {}: nothing more to do: {m}", sink.as_str())
        }
        Delivery::Denied(m, _) if again => {
            tracing::debug!("{incident} → {}: still refused: {m}", sink.as_str())
        }
        Delivery::Denied(m, _) => tracing::error!(
            "{incident} → {}: attempt {} refused, will retry: {m}",
            sink.as_str(),
            item.attempts + 1
        ),
        Delivery::Waiting(m, _) if again => tracing::debug!("{incident} → {}: {m}", sink.as_str()),
        Delivery::Waiting(m, _) => tracing::info!("{incident} → {}: {m}", sink.as_str()),
        Delivery::Retry(m) => tracing::warn!(
            "{incident} → {}: attempt {} failed, will retry: {m}",
            sink.as_str(),
            item.attempts + 1
        ),
    }
    outcome
}

/// A refusal or a wait that says what the previous attempt said: logged once (at error, info),
/// not again every `*_denied_retry_s` / `reconcile_interval_s` for days.
fn repeats(last: Option<&str>, outcome: &Delivery) -> bool {
    matches!(outcome, Delivery::Denied(..) | Delivery::Waiting(..)) && last == Some(outcome.text())
}

/// A report waiting for the other side is tried again every `reconcile_interval_s` (so it goes out
/// within one interval of the review being asked for) until `review_wait_max_s` after its
/// decision; then it is given up, saying what it waited for. `now_ms`: the clock, for tests.
pub fn bound_wait(cfg: &Config, decided_at: &str, now_ms: i64, outcome: Delivery) -> Delivery {
    let Delivery::Waiting(what, _) = outcome else {
        return outcome;
    };
    let decided_ms = humantime::parse_rfc3339(decided_at)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(now_ms, |d| d.as_millis() as i64);
    let max_ms = (cfg.review_wait_max_s as i64).saturating_mul(1000);
    if now_ms.saturating_sub(decided_ms) >= max_ms {
        return Delivery::Final(format!(
            "gave up after waiting {} s (review_wait_max_s) since the decision: {what}",
            cfg.review_wait_max_s
        ));
    }
    Delivery::Waiting(what, (cfg.reconcile_interval_s as i64).saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECIDED: &str = "2026-11-24T17:00:00Z";
    const DECIDED_MS: i64 = 1_795_539_600_000;

    #[test]
    fn a_wait_is_retried_every_reconcile_interval_until_review_wait_max_s() {
        assert_eq!(
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(DECIDED_MS as u64)
            )
            .to_string(),
            DECIDED
        );
        let cfg = Config { reconcile_interval_s: 120, review_wait_max_s: 3600, ..Config::default() };
        let waiting = || Delivery::Waiting("PR o/r#1: the QAM review is stale".into(), 0);
        assert_eq!(
            bound_wait(&cfg, DECIDED, DECIDED_MS + 3_599_000, waiting()),
            Delivery::Waiting("PR o/r#1: the QAM review is stale".into(), 120_000)
        );
        assert_eq!(
            bound_wait(&cfg, DECIDED, DECIDED_MS + 3_600_000, waiting()),
            Delivery::Final(
                "gave up after waiting 3600 s (review_wait_max_s) since the decision: PR o/r#1: the QAM review is stale"
                    .into()
            )
        );
        // logged once: the same refusal or wait again is not logged again
        let denied = Delivery::Denied("PR o/r#1: Gitea answered 403".into(), 600_000);
        assert!(!repeats(None, &denied) && !repeats(Some("Gitea answered 503"), &denied));
        assert!(repeats(Some("PR o/r#1: Gitea answered 403"), &denied));
        assert!(repeats(Some("PR o/r#1: the QAM review is stale"), &waiting()));
        assert!(!repeats(Some("x"), &Delivery::Retry("x".into())), "a passing fault is logged each time");
        // everything else passes unchanged
        let denied = Delivery::Denied("401".into(), 600_000);
        assert_eq!(bound_wait(&cfg, DECIDED, DECIDED_MS + 9_999_999, denied.clone()), denied);
    }
}
