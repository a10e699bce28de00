//! The gate: what one `ig_gate` handle is. It validates events and queues them without blocking,
//! and runs the engine on a tokio runtime that starts lazily in the process that uses it, and anew
//! in a child after `fork()` (openQA's web UI is prefork; threads do not survive a fork).

use crate::config::Config;
use crate::engine::Core;
use crate::events::{self, Event, EventError, Rejection};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Debug)]
pub enum SubmitError {
    Rejected(EventError),
    QueueFull,
    Unavailable(String),
}

/// Why `Gate::evaluate` has no verdict. Callers answer the two differently: asking again later
/// may help with the first, never with the second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvaluateError {
    /// openQA unreachable or failing (connection, timeout, 5xx), the store busy, no runtime.
    Unavailable(String),
    /// openQA answered what it will answer again: a 4xx, a malformed or incomplete answer.
    Refused(String),
}

impl From<crate::engine::EngineError> for EvaluateError {
    fn from(e: crate::engine::EngineError) -> Self {
        if e.is_transient() {
            EvaluateError::Unavailable(e.to_string())
        } else {
            EvaluateError::Refused(e.to_string())
        }
    }
}

impl std::fmt::Display for EvaluateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvaluateError::Unavailable(m) | EvaluateError::Refused(m) => f.write_str(m),
        }
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    unknown_event: AtomicU64,
    invalid_json: AtomicU64,
    invalid_shape: AtomicU64,
    queue_full: AtomicU64,
    engine_unavailable: AtomicU64,
    starts: AtomicU64,
}

/// The last event the gate did not take, for `status`: the host logs each one, but an operator
/// asking the status should not need the log to see that events are lost.
struct Refusal {
    at: Instant,
    event: String,
    why: &'static str,
    message: String,
}

struct Running {
    pid: u32,
    /// `None` only transiently; see `Drop for Gate`.
    runtime: Option<tokio::runtime::Runtime>,
    tx: mpsc::Sender<Event>,
    core: Arc<Core>,
}

pub struct Gate {
    config: Arc<Config>,
    counters: Counters,
    running: Mutex<Option<Running>>,
    start_failure: Mutex<Option<(Instant, String)>>,
    last_refusal: Mutex<Option<Refusal>>,
}

/// How long a failed engine start is answered from memory before it is tried again.
const START_RETRY: Duration = Duration::from_secs(30);

impl Gate {
    /// Creates a gate; no thread, connection or file is touched until it is used.
    pub fn new(config: Config) -> Gate {
        Gate {
            config: Arc::new(config),
            counters: Counters::default(),
            running: Mutex::new(None),
            start_failure: Mutex::new(None),
            last_refusal: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Validates and queues an event. Never waits on the network or the engine.
    pub fn submit(&self, name: &str, json: &str) -> Result<(), SubmitError> {
        let result = events::parse(name, json)
            .map_err(|e| {
                let counter = match e.rejection {
                    Rejection::UnknownEvent => &self.counters.unknown_event,
                    Rejection::InvalidJson => &self.counters.invalid_json,
                    Rejection::InvalidShape => &self.counters.invalid_shape,
                };
                counter.fetch_add(1, Relaxed);
                SubmitError::Rejected(e)
            })
            .and_then(|event| self.submit_event(event));
        if let Err(e) = &result {
            let (why, message) = match e {
                SubmitError::Rejected(r) => (
                    match r.rejection {
                        Rejection::UnknownEvent => "unknown_event",
                        Rejection::InvalidJson => "invalid_json",
                        Rejection::InvalidShape => "invalid_shape",
                    },
                    r.message.clone(),
                ),
                SubmitError::QueueFull => ("queue_full", "intake queue is full".to_string()),
                SubmitError::Unavailable(m) => ("engine_unavailable", m.clone()),
            };
            let refusal =
                Refusal { at: Instant::now(), event: name.chars().take(64).collect(), why, message };
            *self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(refusal);
        }
        result
    }

    pub fn submit_event(&self, event: Event) -> Result<(), SubmitError> {
        let (tx, core) = self.with_running(|r| (r.tx.clone(), r.core.clone())).map_err(|m| {
            self.counters.engine_unavailable.fetch_add(1, Relaxed);
            SubmitError::Unavailable(m)
        })?;
        core.count_queued(1);
        match tx.try_send(event) {
            Ok(()) => {
                self.counters.accepted.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(_) => {
                core.count_queued(-1);
                self.counters.queue_full.fetch_add(1, Relaxed);
                Err(SubmitError::QueueFull)
            }
        }
    }

    /// The current verdict of an incident, straight from openQA (no side effects). Blocks.
    /// Uses the running engine of this process, or else a throwaway runtime, so that evaluating
    /// alone (the plugin does it in a short-lived child) never starts deliveries.
    pub fn evaluate(
        &self,
        incident: impl Into<crate::incident::Submission>,
    ) -> Result<crate::verdict::Verdict, EvaluateError> {
        let incident = incident.into();
        let running = {
            let guard = self.running.lock().unwrap_or_else(|p| p.into_inner());
            guard
                .as_ref()
                .filter(|r| r.pid == std::process::id())
                .map(|r| (r.runtime_handle(), r.core.clone()))
        };
        let config = self.config.clone();
        let evaluate = move || match running {
            Some((handle, core)) => Ok(handle.block_on(async move { core.evaluate(incident).await })?),
            None => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| EvaluateError::Unavailable(format!("cannot start a runtime: {e}")))?;
                rt.block_on(async move {
                    let client = crate::openqa::client::OpenQaClient::new(&config)
                        .map_err(crate::engine::EngineError::Api)?;
                    let (verdict, _) = crate::engine::evaluate(&client, &config, incident).await?;
                    Ok(verdict)
                })
            }
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return evaluate();
        }
        // Called from inside some runtime (a Rust caller): block_on there would panic.
        std::thread::scope(|s| s.spawn(evaluate).join())
            .map_err(|_| EvaluateError::Unavailable("evaluation panicked".into()))?
    }

    /// The incidents the state directory knows, for the incidents page (no engine needed: reads
    /// the store directly, so any process of the web UI can answer).
    pub fn incidents(
        &self,
        query: &crate::store::IncidentQuery,
    ) -> Result<crate::store::IncidentList, String> {
        self.store()?.incidents(query).map_err(|e| e.to_string())
    }

    /// The metrics in InfluxDB line protocol (`crate::metrics`): one read of the state directory,
    /// no network, no engine started.
    pub fn metrics(&self) -> Result<String, String> {
        let store = self.store()?;
        let read = store.metrics_read(crate::metrics::LATENCY_WINDOW).map_err(|e| e.to_string())?;
        let url = crate::config::link_base(&self.config.openqa_url);
        Ok(crate::metrics::render(&url, &read, std::time::SystemTime::now()))
    }

    /// The running engine's store when there is one (a page view opens no file), else the state
    /// directory (or the PostgreSQL store of `store_url`) opened for this call.
    fn store(&self) -> Result<Arc<crate::store::Store>, String> {
        let running = {
            let guard = self.running.lock().unwrap_or_else(|p| p.into_inner());
            guard.as_ref().filter(|r| r.pid == std::process::id()).map(|r| r.core.store().clone())
        };
        match running {
            Some(store) => Ok(store),
            None => Ok(Arc::new(
                crate::store::Store::open_url(self.config.store_url.expose(), &self.config.state_dir)
                    .map_err(|e| e.to_string())?,
            )),
        }
    }

    /// Waits until every queued event is processed and no evaluation is running or due.
    pub fn flush(&self, timeout: Duration) -> Result<bool, String> {
        let core = self.with_running(|r| r.core.clone())?;
        let deadline = Instant::now() + timeout;
        loop {
            if core.is_idle() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn status(&self) -> serde_json::Value {
        let c = &self.counters;
        let guard = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let running = guard.as_ref().filter(|r| r.pid == std::process::id());
        let depth = running.map(|r| (r.tx.max_capacity() - r.tx.capacity()) as u64).unwrap_or(0);
        let start_failure = self
            .start_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(at, why)| serde_json::json!({"error": why, "seconds_ago": at.elapsed().as_secs()}));
        let last_refused = self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|r| {
            serde_json::json!({"event": r.event, "why": r.why, "error": r.message, "seconds_ago": r.at.elapsed().as_secs()})
        });
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "running": running.is_some(),
            "intake": {
                "accepted": c.accepted.load(Relaxed),
                "rejected": {
                    "unknown_event": c.unknown_event.load(Relaxed),
                    "invalid_json": c.invalid_json.load(Relaxed),
                    "invalid_shape": c.invalid_shape.load(Relaxed),
                    "queue_full": c.queue_full.load(Relaxed),
                    "engine_unavailable": c.engine_unavailable.load(Relaxed),
                },
                "last_refused": last_refused,
                "queue_depth": depth,
                "queue_capacity": self.config.queue_capacity,
            },
            "engine_starts": c.starts.load(Relaxed),
            "engine_start_failure": start_failure,
            "engine": running.map(|r| r.core.status()),
            "config": self.config.redacted_json(),
        })
    }

    /// Runs `f` on the engine of this process, starting it first when this process has none.
    fn with_running<T>(&self, f: impl FnOnce(&Running) -> T) -> Result<T, String> {
        let mut guard = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let pid = std::process::id();
        if let Some(stale) = guard.take_if(|r| r.pid != pid) {
            // Inherited through fork(): its threads do not exist here, and dropping the runtime
            // would wait for them forever.
            std::mem::forget(stale);
        }
        if guard.is_none() {
            // A start that failed (state directory not writable …) is not retried on every event:
            // each would build and tear down a runtime inside openQA's request.
            let mut failed = self.start_failure.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, why)) = failed.as_ref().filter(|(at, _)| at.elapsed() < START_RETRY) {
                let wait = START_RETRY.saturating_sub(at.elapsed()).as_secs();
                return Err(format!("{why} (next try in {wait} s)"));
            }
            match self.start(pid) {
                Ok(running) => {
                    *failed = None;
                    *guard = Some(running);
                    self.counters.starts.fetch_add(1, Relaxed);
                }
                Err(why) => {
                    tracing::error!(
                        "the engine cannot start: {why}; next try in {} s",
                        START_RETRY.as_secs()
                    );
                    *failed = Some((Instant::now(), why.clone()));
                    return Err(why);
                }
            }
        }
        Ok(f(guard.as_ref().expect("started above")))
    }

    fn start(&self, pid: u32) -> Result<Running, String> {
        crate::log::init();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("incident-gate")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        let (tx, rx) = mpsc::channel(self.config.queue_capacity);
        let core = {
            let _entered = runtime.enter();
            Core::start(self.config.clone(), rx).map_err(|e| e.to_string())?
        };
        Ok(Running { pid, runtime: Some(runtime), tx, core })
    }
}

impl Running {
    fn runtime_handle(&self) -> tokio::runtime::Handle {
        match &self.runtime {
            Some(rt) => rt.handle().clone(),
            None => unreachable!("a running engine always holds its runtime"),
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let mut guard = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut running) = guard.take() {
            if running.pid != std::process::id() {
                std::mem::forget(running);
                return;
            }
            running.core.shutdown();
            if let Some(rt) = running.runtime.take() {
                if tokio::runtime::Handle::try_current().is_ok() {
                    // dropped by a Rust caller inside its own runtime, where blocking is forbidden
                    rt.shutdown_background();
                } else {
                    rt.shutdown_timeout(Duration::from_secs(2));
                }
            }
        }
    }
}
