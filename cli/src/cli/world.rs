//! A small world for `sim`, `demo` and `bench`: the openQA and IBS simulators on loopback, the real
//! local RabbitMQ, and a consumer of our `incident.done` events.

use futures_util::StreamExt;
use incident_gate_sim as sim;
use incident_gate_sim::obs::{ObsSim, ObsSimConfig, SimAuth, SimReview};
use incident_gate_sim::openqa::{self, OpenQaSim};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, Consumer};
use std::net::SocketAddr;
use std::time::Duration;

pub const OBS_USER: &str = "incident-gate";

pub struct World {
    pub openqa: OpenQaSim,
    pub obs: ObsSim,
    pub obs_password: String,
    pub incidents_group: u64,
    pub devel_group: u64,
    pub updates_group: u64,
}

fn password() -> String {
    let mut bytes = [0u8; 12];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    hex::encode(bytes)
}

impl World {
    pub async fn start(openqa_port: u16, obs_port: u16) -> Result<World, String> {
        let openqa = openqa::start_on(SocketAddr::from(([127, 0, 0, 1], openqa_port)))
            .await
            .map_err(|e| format!("openQA simulator on port {openqa_port}: {e}"))?;
        let obs_password = password();
        let auth = SimAuth::Basic { user: OBS_USER.into(), password: obs_password.clone() };
        let mut cfg = ObsSimConfig::new(auth);
        cfg.port = obs_port;
        let obs = incident_gate_sim::obs::try_start(cfg)
            .await
            .map_err(|e| format!("IBS simulator on port {obs_port}: {e}"))?;
        let incidents_group = openqa.create_group("Maintenance: SLE 15 SP6 Incidents");
        let devel_group = openqa.create_group("Maintenance: SLE 15 SP6 Devel");
        let updates_group = openqa.create_group("Maintenance: SLE 15 SP6 Updates");
        Ok(World { openqa, obs, obs_password, incidents_group, devel_group, updates_group })
    }

    /// The gate configuration for this world (JSON, as the plugin would pass it).
    pub fn gate_config(
        &self,
        state_dir: &std::path::Path,
        amqp_url: &str,
        exchange: &str,
    ) -> serde_json::Value {
        serde_json::json!({
            "openqa_url": self.openqa.url(),
            "amqp_url": amqp_url,
            "amqp_exchange": exchange,
            "amqp_declare_exchange": true,
            "obs_url": self.obs.url(),
            "obs_user": OBS_USER,
            "obs_password": self.obs_password,
            "state_dir": state_dir,
            "http_timeout_s": 10,
        })
    }

    /// A release request in review with an open `qam-openqa` review.
    pub fn release_request(&self, request: u64) {
        self.obs.create_request(
            request,
            "review",
            vec![SimReview::group("qam-openqa")],
            "maintenance_release",
        );
    }

    pub fn incident_job(&self, incident: u64, request: u64, package: &str, test: &str, arch: &str) -> u64 {
        let settings = sim::incident_job_settings(incident, request, package, test, arch);
        self.openqa.create_job(&sim::borrowed(&settings), self.incidents_group)
    }

    pub fn aggregate_job(&self, build: &str, incidents: &[u64], test: &str) -> u64 {
        let settings = sim::aggregate_job_settings(build, incidents, test);
        self.openqa.create_job(&sim::borrowed(&settings), self.updates_group)
    }
}

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Exchanges `incident_done_consumer` created, for `remove_created_exchanges`.
static CREATED_EXCHANGES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Leaves the broker as the demo or bench found it: the exchanges they created go again.
pub async fn remove_created_exchanges(url: &str) {
    let names = std::mem::take(&mut *CREATED_EXCHANGES.lock().unwrap_or_else(|p| p.into_inner()));
    if names.is_empty() {
        return;
    }
    let Ok(Ok(conn)) = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        for name in names {
            let _ = ch.exchange_delete(name.as_str().into(), Default::default()).await;
        }
    }
    let _ = conn.close(200, "".into()).await;
}

/// Whether `exchange` exists (a passive declare closes its channel when it does not).
async fn exchange_exists(conn: &Connection, exchange: &str) -> Result<bool, String> {
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let passive = lapin::options::ExchangeDeclareOptions { passive: true, ..Default::default() };
    let found = ch
        .exchange_declare(exchange.into(), lapin::ExchangeKind::Topic, passive, FieldTable::default())
        .await;
    if found.is_ok() {
        let _ = ch.close(200, "".into()).await;
    }
    Ok(found.is_ok())
}

/// An exclusive queue bound to `#.incident.done` on `exchange` (declared as openQA would find it).
pub async fn incident_done_consumer(url: &str, exchange: &str) -> Result<(Connection, Consumer), String> {
    incident_done_consumer_of(url, exchange, "#.incident.done").await
}

/// A consumer of the messages on `exchange` with routing key `binding` only.
pub async fn incident_done_consumer_of(
    url: &str,
    exchange: &str,
    binding: &str,
) -> Result<(Connection, Consumer), String> {
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| "RabbitMQ did not answer in 10 s".to_string())?
    .map_err(|e| format!("cannot connect to RabbitMQ: {e}"))?;
    if !exchange_exists(&conn, exchange).await? {
        CREATED_EXCHANGES.lock().unwrap_or_else(|p| p.into_inner()).push(exchange.to_string());
    }
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let options = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(exchange.into(), lapin::ExchangeKind::Topic, options, FieldTable::default())
        .await
        .map_err(|e| e.to_string())?;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions { exclusive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    ch.queue_bind(
        q.name().clone(),
        exchange.into(),
        binding.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let consumer = ch
        .basic_consume(
            q.name().clone(),
            "observer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok((conn, consumer))
}

/// The next `incident.done` body, or None after `timeout`.
pub async fn next_event(consumer: &mut Consumer, timeout: Duration) -> Option<serde_json::Value> {
    let delivery = tokio::time::timeout(timeout, consumer.next()).await.ok()??.ok()?;
    let _ = delivery.ack(BasicAckOptions::default()).await;
    serde_json::from_slice(&delivery.data).ok()
}

/// The next message: its `message_id` (None without one) and body, or None after `timeout`.
pub async fn next_message(
    consumer: &mut Consumer,
    timeout: Duration,
) -> Option<(Option<String>, serde_json::Value)> {
    let delivery = tokio::time::timeout(timeout, consumer.next()).await.ok()??.ok()?;
    let _ = delivery.ack(BasicAckOptions::default()).await;
    let id = delivery.properties.message_id().as_ref().map(|i| i.to_string());
    Some((id, serde_json::from_slice(&delivery.data).ok()?))
}
