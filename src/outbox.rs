//! Delivers recorded decisions from the store's outbox to each sink, with retries and backoff.
//! Any process sharing the state directory may deliver an item; leases keep them from colliding.

use crate::amqp::publish::Publisher;
use crate::decision::Delivery;
use crate::engine::Core;
use crate::store::{OutboxItem, Sink};
use std::sync::Arc;
use std::time::Duration;

/// The longest a dispatcher sleeps without looking at the outbox (other processes add items too).
const IDLE_POLL: Duration = Duration::from_secs(5);

pub fn spawn_dispatchers(core: &Arc<Core>) {
    if core.config().publish_amqp {
        tokio::spawn(run(core.clone(), Sink::Amqp));
    }
}

enum Deliverer {
    Amqp(Publisher),
}

impl Deliverer {
    async fn deliver(&mut self, item: &OutboxItem) -> Delivery {
        match self {
            Deliverer::Amqp(p) => p.deliver(&item.decision).await,
        }
    }
}

async fn run(core: Arc<Core>, sink: Sink) {
    let mut deliverer = match sink {
        Sink::Amqp => Deliverer::Amqp(Publisher::new(core.config().clone())),
        Sink::Obs => return,
    };
    loop {
        let woken = core.outbox_wake.notified();
        if core.is_shutting_down() {
            break;
        }
        let items = match core.store().take_due(sink, 16) {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!("outbox ({}): {e}", sink.as_str());
                Vec::new()
            }
        };
        for item in &items {
            let outcome = deliver_one(&mut deliverer, item, sink).await;
            if let Err(e) = core.store().complete(item, &outcome) {
                tracing::warn!("outbox ({}): cannot record delivery: {e}", sink.as_str());
            }
        }
        if !items.is_empty() {
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
    if let Deliverer::Amqp(p) = &mut deliverer {
        p.close().await;
    }
}

async fn deliver_one(deliverer: &mut Deliverer, item: &OutboxItem, sink: Sink) -> Delivery {
    let incident = item.decision.verdict.incident;
    let outcome = deliverer.deliver(item).await;
    match &outcome {
        Delivery::Done(m) => tracing::info!("incident {incident} → {}: {m}", sink.as_str()),
        Delivery::Final(m) => tracing::info!("incident {incident} → {}: nothing more to do: {m}", sink.as_str()),
        Delivery::Retry(m) => tracing::warn!(
            "incident {incident} → {}: attempt {} failed, will retry: {m}",
            sink.as_str(),
            item.attempts + 1
        ),
    }
    outcome
}
