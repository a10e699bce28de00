//! Publishes decisions as `<prefix>.openqa.incident.done` and waits for the broker's confirm.

use crate::config::Config;
use crate::decision::{Decision, Delivery};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(15);
/// The longest one delivery takes, all steps together.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Publisher {
    cfg: Arc<Config>,
    link: Option<(Connection, Channel)>,
}

/// The AMQP properties of an `incident.done` message.
pub fn properties(d: &Decision) -> BasicProperties {
    let timestamp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|t| t.as_secs()).unwrap_or(0);
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(d.key.as_str()))
        .with_timestamp(timestamp)
        .with_app_id(ShortString::from("incident-gate"))
        .with_type(ShortString::from("incident.done"))
}

impl Publisher {
    pub fn new(cfg: Arc<Config>) -> Publisher {
        Publisher { cfg, link: None }
    }

    async fn channel(&mut self) -> Result<Channel, String> {
        if let Some((conn, ch)) = &self.link {
            if conn.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        self.link = None;
        let connect = Connection::connect(self.cfg.amqp_url.expose(), ConnectionProperties::default());
        let conn = tokio::time::timeout(TIMEOUT, connect)
            .await
            .map_err(|_| format!("connecting to {} timed out", self.cfg.amqp_url.redacted()))?
            .map_err(|e| format!("cannot connect to {}: {e}", self.cfg.amqp_url.redacted()))?;
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        ch.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| e.to_string())?;
        if self.cfg.amqp_declare_exchange {
            let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
            ch.exchange_declare(
                self.cfg.amqp_exchange.as_str().into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot declare exchange {}: {e}", self.cfg.amqp_exchange))?;
        }
        self.link = Some((conn, ch.clone()));
        Ok(ch)
    }

    /// Publishes one decision; `Done` only once the broker confirmed it.
    pub async fn deliver(&mut self, d: &Decision) -> Delivery {
        // Connecting and the confirm have their own timeouts; this also bounds the steps between
        // (channel, confirm mode, exchange) on a link that stalls, so that a delivery always ends
        // well within the outbox lease (60 s) and the item is retried rather than stuck.
        let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, self.publish(d))
            .await
            .unwrap_or_else(|_| Err("the broker did not answer in time".into()));
        match attempt {
            Ok(()) => Delivery::Done(format!("published, confirmed by the broker (message_id {})", d.key)),
            Err(e) => {
                self.link = None;
                Delivery::Retry(format!("AMQP: {e}"))
            }
        }
    }

    async fn publish(&mut self, d: &Decision) -> Result<(), String> {
        let ch = self.channel().await?;
        let body = serde_json::to_vec(&d.event_json()).map_err(|e| e.to_string())?;
        let routing_key = self.cfg.routing_key("incident.done");
        let confirm = async {
            ch.basic_publish(
                self.cfg.amqp_exchange.as_str().into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties(d),
            )
            .await?
            .await
        };
        let confirmation = tokio::time::timeout(TIMEOUT, confirm)
            .await
            .map_err(|_| "no confirm from the broker in time".to_string())?
            .map_err(|e| e.to_string())?;
        if confirmation.is_nack() {
            return Err("the broker refused the message (nack)".into());
        }
        Ok(())
    }

    pub async fn close(&mut self) {
        if let Some((conn, _)) = self.link.take() {
            let _ = conn.close(200, "bye".into()).await;
        }
    }
}
