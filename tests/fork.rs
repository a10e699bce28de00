//! The plugin evaluates verdicts in a fork of an openQA worker whose engine threads keep logging
//! and writing the store: a forked child must never find a lock held by a thread that did not
//! come along.

use std::time::{Duration, Instant};

/// The child's exit status, or None when it gave no answer within `patience` (then killed).
fn wait_for_child(pid: libc::pid_t, patience: Duration) -> Option<i32> {
    let deadline = Instant::now() + patience;
    let mut status = 0;
    loop {
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            return Some(status);
        }
        if Instant::now() > deadline {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn exited_0(status: i32) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

#[test]
fn a_child_forked_while_threads_log_can_log() {
    incident_gate::log::capture(true);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loggers: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tracing::info!("engine thread {t} logs");
                }
            })
        })
        .collect();
    // each fork is a chance to copy the queue's lock held; the count, not a time budget, sets
    // how many chances the bug gets
    let (mut forks, mut hung) = (0, 0);
    while forks < 1000 {
        // SAFETY: the child only logs through the library and leaves with _exit
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let _ = incident_gate::log::take();
            tracing::info!("the child logs");
            let kept = incident_gate::log::take().len();
            unsafe { libc::_exit(if kept > 0 { 0 } else { 2 }) };
        }
        forks += 1;
        match wait_for_child(pid, Duration::from_secs(2)) {
            Some(status) => assert!(exited_0(status), "child status {status}"),
            None => hung += 1,
        }
        let _ = incident_gate::log::take();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    loggers.into_iter().for_each(|l| l.join().unwrap());
    assert_eq!(hung, 0, "{hung} of {forks} children hung at their first log line");
}

/// SQLite keeps process-wide locks of its own (its VFS's, the file's lock mutex): a child forked
/// while an engine thread was inside SQLite must still open the state directory and read it (the
/// plugin's verdict route opens the store in a fork of a worker whose engine keeps writing).
#[test]
fn a_child_forked_while_threads_use_the_store_can_use_it() {
    let dir = tempfile::tempdir().unwrap();
    // the worker's own store, opened before its engine's threads start (as the plugin's gate does)
    let _store = incident_gate::store::Store::open(dir.path()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|t| {
            let (stop, path) = (stop.clone(), dir.path().to_path_buf());
            std::thread::spawn(move || {
                let store = incident_gate::store::Store::open(&path).unwrap();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let incident = incident_gate::incident::Submission::ibs(1000 * t + n % 50);
                    store.mark_pending(incident).unwrap();
                    // busy as an engine is, not a loop that holds SQLite's write lock all the time
                    // (a child starved of it would fail for that, not for the fork)
                    std::thread::sleep(Duration::from_micros(200));
                    // a store opened and closed now and then, as evaluations of the page do
                    if n % 20 == 0 {
                        drop(incident_gate::store::Store::open(&path).unwrap());
                    }
                }
            })
        })
        .collect();
    let (mut forks, mut hung) = (0, 0);
    while forks < 300 {
        // SAFETY: the child only opens and reads the store and leaves with _exit
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let read = incident_gate::store::Store::open(dir.path()).and_then(|s| s.pending());
            if let Err(e) = read {
                // the test's output capture is the parent's: the error goes to a file it reads
                let _ =
                    std::fs::write(dir.path().join(format!("child-{}", std::process::id())), e.to_string());
                unsafe { libc::_exit(2) };
            }
            unsafe { libc::_exit(0) };
        }
        forks += 1;
        // longer than SQLite's busy timeout (10 s): a child that waited for a lock in vain
        // answers an error, one that waits for a mutex no thread will release never answers
        match wait_for_child(pid, Duration::from_secs(30)) {
            Some(status) => {
                let why =
                    std::fs::read_to_string(dir.path().join(format!("child-{pid}"))).unwrap_or_default();
                assert!(exited_0(status), "child status {status}: {why}");
            }
            None => hung += 1,
        }
        if hung > 0 {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writers.into_iter().for_each(|w| w.join().unwrap());
    assert_eq!(hung, 0, "{hung} of {forks} children hung in the store");
}
