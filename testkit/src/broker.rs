//! The test's own side of the broker: a direct connection, as any consumer of our events has.

use crate::scenario;
use crate::{amqp_url, broker_addr};
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

pub struct Broker {
    pub conn: Connection,
    pub ch: Channel,
}

impl Broker {
    pub async fn connect() -> Broker {
        let conn =
            tokio::time::timeout(WAIT, Connection::connect(&amqp_url(), ConnectionProperties::default()))
                .await
                .expect("connecting to RabbitMQ timed out")
                .unwrap_or_else(|e| panic!("RabbitMQ at {} is needed: {e}", broker_addr()));
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        Broker { conn, ch }
    }

    /// Declares the topic exchange exactly as the gate does with `amqp_declare_exchange`.
    pub async fn declare_exchange(&self, exchange: &str) {
        let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
        self.ch
            .exchange_declare(exchange.into(), ExchangeKind::Topic, options, FieldTable::default())
            .await
            .unwrap();
    }

    pub async fn subscribe_done(&self, exchange: &str) -> Consumer {
        scenario::subscribe_done(&self.ch, exchange).await
    }

    pub async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8]) {
        scenario::publish(&self.ch, exchange, routing_key, body).await
    }

    /// (ready messages, consumers) of `queue` right now, or `None` while it does not exist.
    pub async fn queue(&self, queue: &str) -> Option<(u32, u32)> {
        // a passive declare of a missing queue closes its channel: one channel per look
        let ch = self.conn.create_channel().await.ok()?;
        let options = QueueDeclareOptions { passive: true, ..Default::default() };
        let q = ch.queue_declare(queue.into(), options, FieldTable::default()).await.ok()?;
        let _ = ch.close(200, "".into()).await;
        Some((q.message_count(), q.consumer_count()))
    }

    /// Consumers of `queue` right now (0 when the queue does not exist).
    pub async fn consumers(&self, queue: &str) -> u32 {
        self.queue(queue).await.map_or(0, |(_, consumers)| consumers)
    }

    pub async fn wait_for_consumers(&self, queue: &str, wanted: impl Fn(u32) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !wanted(self.consumers(queue).await) {
            assert!(tokio::time::Instant::now() < deadline, "consumers of {queue} never became as expected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes `queue`; returns how many messages were still in it.
    pub async fn delete_queue(&self, queue: &str) -> u32 {
        self.ch.queue_delete(queue.into(), QueueDeleteOptions::default()).await.unwrap()
    }
}
