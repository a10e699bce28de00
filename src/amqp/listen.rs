//! Consumes openQA's own `<prefix>.openqa.job.*` / `comment.*` messages (standalone mode: no plugin
//! in openQA needed) and hands them to the engine. A message is acknowledged only after the engine
//! has recorded the incidents it touches as pending in the store (so a `kill -9` right after loses
//! nothing: the next start evaluates them); a batch the store refuses goes back to the queue. A
//! malformed message is rejected without requeue and never stops the consumer.

use crate::config::Config;
use crate::engine::Core;
use crate::events::{self, Event, EventKind};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, Consumer, ExchangeKind};
use std::sync::Arc;
use std::time::Duration;

const BATCH: usize = 256;
const STORE_RETRY: Duration = Duration::from_secs(2);
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const CONNECTION_CHECK: Duration = Duration::from_secs(1);
/// How long a subscription or an acknowledgement may wait for the broker.
const BROKER_CALL: Duration = Duration::from_secs(15);

/// The routing-key patterns bound to our queue.
pub fn binding_keys(cfg: &Config) -> Vec<String> {
    ["job.*", "jobs.*", "comment.*"].iter().map(|s| cfg.routing_key(s)).collect()
}

/// Turns one AMQP message into an event; `Ok(None)` for openQA messages we do not act on.
pub fn parse_message(routing_key: &str, body: &[u8]) -> Result<Option<Event>, String> {
    let Some(kind) = EventKind::from_routing_key(routing_key) else {
        return Ok(None);
    };
    let data: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("{routing_key}: body is not JSON: {e}"))?;
    events::from_value(kind, &data).map(Some).map_err(|e| e.message)
}

/// Runs until `core.shutdown()`, reconnecting with backoff after any connection loss.
pub async fn run(core: Arc<Core>) {
    let mut delay = RECONNECT_MIN;
    while !core.is_shutting_down() {
        match consume(&core, &mut delay).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!("AMQP listener: {e}; reconnecting in {}", humantime::format_duration(delay));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = core.until_shutdown() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn subscribe(cfg: &Config) -> Result<(Connection, Consumer), String> {
    let url = cfg.amqp_url.redacted();
    let conn = Connection::connect(cfg.amqp_url.expose(), ConnectionProperties::default())
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.basic_qos(BATCH as u16, BasicQosOptions::default()).await.map_err(|e| e.to_string())?;
    if cfg.amqp_declare_exchange {
        let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare(
            cfg.amqp_exchange.as_str().into(),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("cannot declare exchange {}: {e}", cfg.amqp_exchange))?;
    }
    let options = QueueDeclareOptions { durable: cfg.amqp_queue_durable, ..Default::default() };
    ch.queue_declare(cfg.amqp_queue.as_str().into(), options, FieldTable::default())
        .await
        .map_err(|e| format!("cannot declare queue {}: {e}", cfg.amqp_queue))?;
    for key in binding_keys(cfg) {
        ch.queue_bind(
            cfg.amqp_queue.as_str().into(),
            cfg.amqp_exchange.as_str().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("cannot bind {} to {} with {key}: {e}", cfg.amqp_queue, cfg.amqp_exchange))?;
    }
    let consumer = ch
        .basic_consume(
            cfg.amqp_queue.as_str().into(),
            "incident-gate".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("cannot consume from {}: {e}", cfg.amqp_queue))?;
    Ok((conn, consumer))
}

/// Consumes until shutdown or an error; a successful subscription resets the reconnect `delay`,
/// so a connection lost after hours of service is retried quickly again.
async fn consume(core: &Arc<Core>, delay: &mut Duration) -> Result<(), String> {
    // bounded as a whole: a connection that dies between its steps may leave one unanswered
    let (conn, mut consumer) =
        tokio::time::timeout(BROKER_CALL, subscribe(core.config())).await.map_err(|_| {
            format!("subscribing: no answer from the broker within {} s", BROKER_CALL.as_secs())
        })??;
    *delay = RECONNECT_MIN;
    tracing::info!(
        "listening on queue {} for {}",
        core.config().amqp_queue,
        crate::log::list(binding_keys(core.config()))
    );
    // lapin does not always end the consumer's stream when its connection dies (seen with a cut
    // socket: the connection errored, the stream stayed silent): look at the connection too
    let mut watchdog = tokio::time::interval(CONNECTION_CHECK);
    loop {
        let first = tokio::select! {
            next = consumer.next() => next,
            _ = watchdog.tick() => {
                if conn.status().connected() {
                    continue;
                }
                return Err("the connection to the broker was lost".into());
            }
            _ = core.until_shutdown() => {
                let _ = conn.close(200, "shutting down".into()).await;
                return Ok(());
            }
        };
        let mut batch = vec![first.ok_or("the broker cancelled the consumer")?.map_err(|e| e.to_string())?];
        while batch.len() < BATCH {
            match consumer.next().now_or_never() {
                Some(Some(Ok(d))) => batch.push(d),
                Some(Some(Err(e))) => return Err(e.to_string()),
                _ => break,
            }
        }
        if !take_batch(core, batch).await? {
            // closing returns the unacknowledged messages to the queue
            let _ = conn.close(200, "shutting down".into()).await;
            return Ok(());
        }
    }
}

/// A broker call with a bounded wait: lapin may leave a call on a connection that died unanswered,
/// and the listener would then consume nothing more without a word. A call not answered counts as
/// a lost connection; what it acknowledged comes back after reconnecting.
async fn answered<T, E: std::fmt::Display>(
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(BROKER_CALL, call).await {
        Ok(answer) => answer.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer from the broker within {} s", BROKER_CALL.as_secs())),
    }
}

/// Rejects the malformed messages, hands the rest to the engine and acknowledges them; returns
/// false, acknowledging nothing, when shutdown came first: the engine gives up on events it cannot
/// look up yet (openQA unreachable) once it shuts down, so only the broker still has them.
async fn take_batch(core: &Arc<Core>, batch: Vec<Delivery>) -> Result<bool, String> {
    let mut events = Vec::with_capacity(batch.len());
    let mut good = Vec::with_capacity(batch.len());
    for delivery in batch {
        match parse_message(delivery.routing_key.as_str(), &delivery.data) {
            Ok(event) => {
                events.extend(event);
                good.push(delivery);
            }
            Err(e) => {
                tracing::warn!("rejecting a malformed message: {e}");
                answered(delivery.reject(BasicRejectOptions { requeue: false })).await?;
            }
        }
    }
    let good_len = good.len();
    let taken = core.take_events(events).await;
    if core.is_shutting_down() {
        return Ok(false);
    }
    if let Err(e) = taken {
        // not durable: back to the queue, and a pause before taking them again
        for delivery in good {
            answered(delivery.nack(BasicNackOptions { requeue: true, ..Default::default() })).await?;
        }
        tracing::warn!("returned {n} messages to the queue: {e}", n = good_len);
        tokio::select! {
            _ = tokio::time::sleep(STORE_RETRY) => {}
            _ = core.until_shutdown() => {}
        }
        return Ok(true);
    }
    for delivery in good {
        answered(delivery.ack(BasicAckOptions::default())).await?;
    }
    Ok(true)
}
