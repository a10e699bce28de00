//! The C ABI (include/incident_gate.h is generated from this file by cbindgen). This layer only
//! translates: C strings to Rust, results to `ig_status`, and it stops every panic at the boundary.

#![allow(non_camel_case_types)]

use crate::config::Config;
use crate::events::Rejection;
use crate::gate::{EvaluateError, Gate, SubmitError};
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// The status of every call. `IG_OK` is 0; on anything else `ig_last_error()` says why.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ig_status {
    IG_OK = 0,
    /// A required pointer argument was NULL.
    IG_NULL_ARGUMENT = 1,
    /// A string argument was not valid UTF-8.
    IG_INVALID_UTF8 = 2,
    /// A JSON argument did not parse.
    IG_INVALID_JSON = 3,
    /// A non-pointer argument was out of range (e.g. incident 0).
    IG_INVALID_ARGUMENT = 4,
    /// The configuration parsed but a key is unknown or a value invalid.
    IG_INVALID_CONFIG = 5,
    /// The event name is not one the gate handles.
    IG_UNKNOWN_EVENT = 6,
    /// The event data does not have the shape openQA gives that event.
    IG_INVALID_EVENT = 7,
    /// The intake queue is full; the event was counted and not queued.
    IG_QUEUE_FULL = 8,
    /// `ig_gate_flush` ran out of time.
    IG_TIMEOUT = 9,
    /// The engine could not start, or openQA could not be asked: a connection error, a timeout,
    /// a 5xx (try again later).
    IG_UNAVAILABLE = 10,
    /// An internal error; the library caught it and stays usable.
    IG_PANIC = 11,
    /// openQA answered, and will answer the same again: a 4xx (e.g. a job not visible), a
    /// malformed or incomplete answer. No verdict; asking again soon does not help, the message
    /// (`ig_last_error()`) names the route.
    IG_OPENQA_REFUSED = 12,
}

/// The severity of a log line (the numbers of `rustls_log_level`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ig_log_level {
    IG_LOG_ERROR = 1,
    IG_LOG_WARN = 2,
    IG_LOG_INFO = 3,
    IG_LOG_DEBUG = 4,
    IG_LOG_TRACE = 5,
}

/// Receives one line of the library's log; `message` is valid during the call only. See
/// `ig_set_log_callback` for when and on which thread it runs.
pub type ig_log_callback =
    Option<unsafe extern "C" fn(userdata: *mut c_void, level: ig_log_level, message: *const c_char)>;

#[derive(Clone, Copy)]
struct LogCallback {
    f: unsafe extern "C" fn(*mut c_void, ig_log_level, *const c_char),
    userdata: *mut c_void,
}

// The caller registers the pointers for use from its own threads; we only ever call them there.
unsafe impl Send for LogCallback {}

static LOG_CALLBACK: std::sync::Mutex<Option<LogCallback>> = std::sync::Mutex::new(None);

/// An opaque gate handle; create with `ig_gate_new`, release with `ig_gate_free`.
pub struct ig_gate {
    gate: Gate,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

type Failure = (ig_status, String);

/// Hands the log lines kept so far to the caller's callback, on this (the caller's) thread.
fn deliver_logs() {
    thread_local! {
        static DELIVERING: Cell<bool> = const { Cell::new(false) };
    }
    let callback = *LOG_CALLBACK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(callback) = callback else { return };
    // a callback that calls into the library must not receive the same lines again
    if DELIVERING.replace(true) {
        return;
    }
    for record in crate::log::take() {
        let level = match record.level {
            tracing::Level::ERROR => ig_log_level::IG_LOG_ERROR,
            tracing::Level::WARN => ig_log_level::IG_LOG_WARN,
            tracing::Level::INFO => ig_log_level::IG_LOG_INFO,
            tracing::Level::DEBUG => ig_log_level::IG_LOG_DEBUG,
            tracing::Level::TRACE => ig_log_level::IG_LOG_TRACE,
        };
        let message = CString::new(record.message.replace('\0', " ")).unwrap_or_default();
        unsafe { (callback.f)(callback.userdata, level, message.as_ptr()) };
    }
    DELIVERING.set(false);
}

/// Runs `f` behind the panic boundary, delivers the log lines kept for the caller, and records
/// the error message (after the callback ran, so that it is the message of this call).
fn boundary(f: impl FnOnce() -> Result<(), Failure>) -> ig_status {
    let result = catch_unwind(AssertUnwindSafe(f));
    let _ = catch_unwind(deliver_logs);
    match result {
        Ok(Ok(())) => ig_status::IG_OK,
        Ok(Err((status, message))) => {
            set_last_error(&message);
            status
        }
        Err(_) => {
            set_last_error("internal error in incident-gate (a bug; the call had no effect)");
            ig_status::IG_PANIC
        }
    }
}

/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the duration of the call.
unsafe fn str_arg<'a>(p: *const c_char, name: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err((ig_status::IG_NULL_ARGUMENT, format!("{name} is NULL")));
    }
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|e| (ig_status::IG_INVALID_UTF8, format!("{name} is not valid UTF-8: {e}")))
}

/// # Safety
/// `p` is NULL or a pointer returned by `ig_gate_new` and not yet freed.
unsafe fn gate_arg<'a>(p: *const ig_gate) -> Result<&'a Gate, Failure> {
    match unsafe { p.as_ref() } {
        Some(g) => Ok(&g.gate),
        None => Err((ig_status::IG_NULL_ARGUMENT, "gate is NULL".into())),
    }
}

/// # Safety
/// `out` is NULL or valid for a write.
unsafe fn put_string(out: *mut *mut c_char, value: &serde_json::Value) -> Result<(), Failure> {
    if out.is_null() {
        return Err((ig_status::IG_NULL_ARGUMENT, "output pointer is NULL".into()));
    }
    unsafe { put_text(out, value.to_string()) }
}

/// # Safety
/// `out` is NULL or valid for a write.
unsafe fn put_text(out: *mut *mut c_char, text: String) -> Result<(), Failure> {
    if out.is_null() {
        return Err((ig_status::IG_NULL_ARGUMENT, "output pointer is NULL".into()));
    }
    let s = CString::new(text).map_err(|e| (ig_status::IG_PANIC, e.to_string()))?;
    unsafe { *out = s.into_raw() };
    Ok(())
}

/// Creates a gate from a JSON configuration object (see docs/configuration.md). Starts no thread and
/// touches no file or network: that happens on first use, in the process that uses it.
///
/// # Safety
/// `config_json` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ig_gate_new(config_json: *const c_char, out: *mut *mut ig_gate) -> ig_status {
    boundary(|| {
        if out.is_null() {
            return Err((ig_status::IG_NULL_ARGUMENT, "out is NULL".into()));
        }
        let text = unsafe { str_arg(config_json, "config_json") }?;
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| (ig_status::IG_INVALID_JSON, format!("config is not valid JSON: {e}")))?;
        let config = Config::from_value(value).map_err(|e| (ig_status::IG_INVALID_CONFIG, e.0))?;
        let gate = Box::new(ig_gate { gate: Gate::new(config) });
        unsafe { *out = Box::into_raw(gate) };
        Ok(())
    })
}

/// Hands an openQA event (its name and its data as JSON) to the gate. Validates it and queues it;
/// never waits on the network. `IG_QUEUE_FULL` when the intake is full (the event is counted).
///
/// # Safety
/// `gate` comes from `ig_gate_new`; the strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ig_gate_submit(
    gate: *const ig_gate,
    event_name: *const c_char,
    event_json: *const c_char,
) -> ig_status {
    boundary(|| {
        let gate = unsafe { gate_arg(gate) }?;
        let name = unsafe { str_arg(event_name, "event_name") }?;
        let json = unsafe { str_arg(event_json, "event_json") }?;
        gate.submit(name, json).map_err(|e| match e {
            SubmitError::Rejected(r) => {
                let status = match r.rejection {
                    Rejection::UnknownEvent => ig_status::IG_UNKNOWN_EVENT,
                    Rejection::InvalidJson => ig_status::IG_INVALID_JSON,
                    Rejection::InvalidShape => ig_status::IG_INVALID_EVENT,
                };
                (status, r.message)
            }
            SubmitError::QueueFull => (ig_status::IG_QUEUE_FULL, "intake queue is full".into()),
            SubmitError::Unavailable(m) => (ig_status::IG_UNAVAILABLE, m),
        })
    })
}

fn evaluate_error(e: EvaluateError) -> (ig_status, String) {
    match e {
        EvaluateError::Unavailable(m) => (ig_status::IG_UNAVAILABLE, m),
        EvaluateError::Refused(m) => (ig_status::IG_OPENQA_REFUSED, m),
    }
}

/// The current verdict of `incident` with its reasons, as JSON in `*verdict_json` (free it with
/// `ig_string_free`). Asks openQA and blocks until it answers; changes nothing. No verdict:
/// `IG_UNAVAILABLE` when openQA cannot be asked now, `IG_OPENQA_REFUSED` when its answer will
/// not change by asking again.
///
/// # Safety
/// `gate` comes from `ig_gate_new`; `verdict_json` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ig_gate_evaluate(
    gate: *const ig_gate,
    incident: u64,
    verdict_json: *mut *mut c_char,
) -> ig_status {
    boundary(|| {
        let gate = unsafe { gate_arg(gate) }?;
        if verdict_json.is_null() {
            return Err((ig_status::IG_NULL_ARGUMENT, "verdict_json is NULL".into()));
        }
        if incident == 0 {
            return Err((ig_status::IG_INVALID_ARGUMENT, "incident must be a positive number".into()));
        }
        let verdict = gate.evaluate(incident).map_err(evaluate_error)?;
        let value = serde_json::to_value(&verdict).map_err(|e| (ig_status::IG_PANIC, e.to_string()))?;
        unsafe { put_string(verdict_json, &value) }
    })
}

/// The incidents the state directory knows, newest first, with their state, as JSON in
/// `*out_json` (free it with `ig_string_free`): `{"incidents": [{incident, request, state, why,
/// result, decided_at, deliveries}], "total", "states", "decisions"?}`. `query_json` is an object
/// with the optional keys `state`, `search` (digits of the number), `incident` (adds every
/// decision of it) and `limit`. Reads the store only: no network, no engine started.
///
/// # Safety
/// `gate` comes from `ig_gate_new`; `query_json` is a NUL-terminated string; `out_json` is valid
/// for a write.
#[no_mangle]
pub unsafe extern "C" fn ig_gate_incidents(
    gate: *const ig_gate,
    query_json: *const c_char,
    out_json: *mut *mut c_char,
) -> ig_status {
    boundary(|| {
        let gate = unsafe { gate_arg(gate) }?;
        let text = unsafe { str_arg(query_json, "query_json") }?;
        if out_json.is_null() {
            return Err((ig_status::IG_NULL_ARGUMENT, "out_json is NULL".into()));
        }
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| (ig_status::IG_INVALID_JSON, format!("query is not valid JSON: {e}")))?;
        let query: crate::store::IncidentQuery = serde_json::from_value(value)
            .map_err(|e| (ig_status::IG_INVALID_ARGUMENT, format!("invalid query: {e}")))?;
        let list = gate.incidents(&query).map_err(|m| (ig_status::IG_UNAVAILABLE, m))?;
        let value = serde_json::to_value(&list).map_err(|e| (ig_status::IG_PANIC, e.to_string()))?;
        unsafe { put_string(out_json, &value) }
    })
}

/// The current verdict of a submission named by text: `"12345"` or `"ibs:12345"` (an IBS
/// incident, as `ig_gate_evaluate`) or `"git:124"` (a Gitea pull request; its jobs never count for
/// the IBS incident of the same number). Otherwise as `ig_gate_evaluate`.
///
/// # Safety
/// `gate` comes from `ig_gate_new`; `submission` is NULL or a NUL-terminated string;
/// `verdict_json` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ig_gate_evaluate_submission(
    gate: *const ig_gate,
    submission: *const c_char,
    verdict_json: *mut *mut c_char,
) -> ig_status {
    boundary(|| {
        let gate = unsafe { gate_arg(gate) }?;
        let text = unsafe { str_arg(submission, "submission") }?;
        if verdict_json.is_null() {
            return Err((ig_status::IG_NULL_ARGUMENT, "verdict_json is NULL".into()));
        }
        let submission = crate::incident::Submission::parse(text).ok_or_else(|| {
            (
                ig_status::IG_INVALID_ARGUMENT,
                "submission must be <incident>, ibs:<incident> or git:<pr>".into(),
            )
        })?;
        let verdict = gate.evaluate(submission).map_err(evaluate_error)?;
        let value = serde_json::to_value(&verdict).map_err(|e| (ig_status::IG_PANIC, e.to_string()))?;
        unsafe { put_string(verdict_json, &value) }
    })
}

/// Counters, queue depth, recent decisions and the configuration (secrets redacted) as JSON in
/// `*status_json` (free it with `ig_string_free`).
///
/// # Safety
/// `gate` comes from `ig_gate_new`; `status_json` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ig_gate_status(gate: *const ig_gate, status_json: *mut *mut c_char) -> ig_status {
    boundary(|| {
        let gate = unsafe { gate_arg(gate) }?;
        unsafe { put_string(status_json, &gate.status()) }
    })
}

/// Waits until every queued event is processed and no evaluation is running, or `timeout_ms`
/// passes (`IG_TIMEOUT`).
///
/// # Safety
/// `gate` comes from `ig_gate_new`.
#[no_mangle]
pub unsafe extern "C" fn ig_gate_flush(gate: *const ig_gate, timeout_ms: u32) -> ig_status {
    boundary(|| {
        let gate = unsafe { gate_arg(gate) }?;
        match gate.flush(Duration::from_millis(timeout_ms.into())) {
            Ok(true) => Ok(()),
            Ok(false) => Err((ig_status::IG_TIMEOUT, format!("not drained after {timeout_ms} ms"))),
            Err(m) => Err((ig_status::IG_UNAVAILABLE, m)),
        }
    })
}

/// Stops the gate's engine (after at most two seconds) and frees it. NULL is ignored.
///
/// # Safety
/// `gate` is NULL or comes from `ig_gate_new` and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn ig_gate_free(gate: *mut ig_gate) {
    let _ = boundary(|| {
        if !gate.is_null() {
            drop(unsafe { Box::from_raw(gate) });
        }
        Ok(())
    });
}

/// Frees a string returned by this library. NULL is ignored.
///
/// # Safety
/// `s` is NULL or a string returned by this library and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn ig_string_free(s: *mut c_char) {
    let _ = boundary(|| {
        if !s.is_null() {
            drop(unsafe { CString::from_raw(s) });
        }
        Ok(())
    });
}

/// The message of the last failed call on this thread ("" if none). Valid until the next failed
/// call on this thread; do not free.
#[no_mangle]
pub extern "C" fn ig_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Sends the library's log to `callback` instead of stderr (NULL: back to stderr), for the whole
/// process, with `userdata` passed along. Like `rustls_log_callback`, but the library's engine logs
/// from its own threads and many callers (Perl, Python) cannot be entered from a foreign thread:
/// the callback therefore only runs on a caller's thread, inside any `ig_*` call (before it
/// returns) and in `ig_log_poll`. Lines wait for that in a queue of at most 1000 (older ones are
/// dropped, with a warning saying how many). `INCIDENT_GATE_LOG` (a `RUST_LOG`-style filter,
/// default `info`) chooses which lines are made at all. The callback should not call into the library.
///
/// # Safety
/// `callback` is NULL or a function that can be called with `userdata` until it is replaced.
#[no_mangle]
pub unsafe extern "C" fn ig_set_log_callback(callback: ig_log_callback, userdata: *mut c_void) -> ig_status {
    boundary(|| {
        *LOG_CALLBACK.lock().unwrap_or_else(|p| p.into_inner()) =
            callback.map(|f| LogCallback { f, userdata });
        crate::log::capture(callback.is_some());
        Ok(())
    })
}

/// Delivers the log lines waiting for the log callback, on this thread. Call it now and then (a
/// timer of the caller's event loop) when the library is not called otherwise.
#[no_mangle]
pub extern "C" fn ig_log_poll() -> ig_status {
    boundary(|| Ok(()))
}

/// The library version, e.g. "0.1.0". Static; do not free.
#[no_mangle]
pub extern "C" fn ig_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The metrics in InfluxDB line protocol (measurement `incident_gate`, docs/monitoring.md) as
/// text in `*lines` (free it with `ig_string_free`). Reads the state directory only: no network,
/// no engine started.
///
/// # Safety
/// `gate` comes from `ig_gate_new`; `lines` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ig_gate_metrics(gate: *const ig_gate, lines: *mut *mut c_char) -> ig_status {
    boundary(|| {
        let gate = unsafe { gate_arg(gate) }?;
        if lines.is_null() {
            return Err((ig_status::IG_NULL_ARGUMENT, "lines is NULL".into()));
        }
        let text = gate.metrics().map_err(|m| (ig_status::IG_UNAVAILABLE, m))?;
        unsafe { put_text(lines, text) }
    })
}
