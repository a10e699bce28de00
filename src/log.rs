//! The library's own log when no Rust host set one up (the C ABI's callers). By default lines go
//! to stderr. A caller that registered a log callback gets them instead, so that they follow its
//! own log (openQA: file, format, level). The engine logs from its own threads, where a caller's
//! callback may not run (Perl cannot be entered from a foreign thread): records wait in a bounded
//! queue until the caller's thread collects them (`take`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, Once};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// Records kept for the caller at most; older ones are dropped (and counted) first.
pub const CAPACITY: usize = 1000;

pub struct Record {
    pub level: Level,
    pub message: String,
}

struct Queue {
    capturing: bool,
    records: VecDeque<Record>,
    dropped: u64,
}

static QUEUE: Mutex<Queue> = Mutex::new(Queue { capturing: false, records: VecDeque::new(), dropped: 0 });
static INIT: Once = Once::new();
static AT_FORK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn queue() -> MutexGuard<'static, Queue> {
    QUEUE.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    static HELD_OVER_FORK: RefCell<Option<MutexGuard<'static, Queue>>> = const { RefCell::new(None) };
}

// fork() copies only the forking thread: had an engine thread held the queue at that moment, the
// child would wait for it forever at its first log line. The forking thread takes the lock for
// the fork and both processes let go of it afterwards.
extern "C" fn before_fork() {
    let held = queue();
    HELD_OVER_FORK.with(|h| *h.borrow_mut() = Some(held));
}

extern "C" fn after_fork() {
    HELD_OVER_FORK.with(|h| drop(h.borrow_mut().take()));
}

/// Has the forking thread hold the queue over every fork (once per process).
/// Not a `Once`: a child forked while another thread ran its closure would wait for it forever.
pub(crate) fn guard_forks() {
    if AT_FORK.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    // SAFETY: the handlers only take and release a lock that the forking thread does not hold
    // (fork is never called from inside this module), and never unwind.
    unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork)) };
}

/// Installs the library's subscriber unless the process already has one (a Rust host such as
/// the command or a test). `INCIDENT_GATE_LOG` filters like `RUST_LOG`; the default is info.
pub fn init() {
    INIT.call_once(|| {
        guard_forks();
        let filter = tracing_subscriber::EnvFilter::try_from_env("INCIDENT_GATE_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::registry().with(filter).with(Lines).try_init();
    });
}

/// Keep records for `take` (true) or write them to stderr (false, the default). Switching back to
/// stderr writes out what was kept.
pub fn capture(on: bool) {
    init();
    let left = {
        let mut q = queue();
        q.capturing = on;
        if on {
            return;
        }
        take_locked(&mut q)
    };
    for r in left {
        to_stderr(r.level, "incident_gate", &r.message);
    }
}

/// The records kept since the last call, oldest first; a note leads when some were dropped.
pub fn take() -> Vec<Record> {
    take_locked(&mut queue())
}

fn take_locked(q: &mut Queue) -> Vec<Record> {
    let mut out = Vec::with_capacity(q.records.len() + 1);
    if q.dropped > 0 {
        let message = format!("{} log lines were dropped: they were not collected in time", q.dropped);
        out.push(Record { level: Level::WARN, message });
        q.dropped = 0;
    }
    out.extend(q.records.drain(..));
    out
}

/// Values in a log line as people write them (`1, 2, 3`), not as Rust's `{:?}` shows them.
pub fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// An optional value in a log line: the value, or `none`.
pub fn or_none<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "none".to_string(), |v| v.to_string())
}

fn to_stderr(level: Level, target: &str, message: &str) {
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
    eprintln!("{now} {level:>5} {target}: {message}");
}

/// One line per event: the message, then its other fields as `key=value`.
struct Lines;

#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for Lines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut text = Text::default();
        event.record(&mut text);
        let message = text.message + &text.fields;
        let level = *event.metadata().level();
        {
            let mut q = queue();
            if q.capturing {
                if q.records.len() >= CAPACITY {
                    q.records.pop_front();
                    q.dropped += 1;
                }
                q.records.push_back(Record { level, message });
                return;
            }
        }
        to_stderr(level, event.metadata().target(), &message);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_read_as_written_not_as_debug_output() {
        assert_eq!(super::list([3u64, 4]), "3, 4");
        assert_eq!(
            super::list(["incident 1".to_string(), "pull request git:2".to_string()]),
            "incident 1, pull request git:2"
        );
        assert_eq!(super::or_none(Some(600101u64)), "600101");
        assert_eq!(super::or_none(None::<u64>), "none");
    }
}
