//! The C boundary as a C caller sees it: the committed header is current, the shared library
//! exports exactly what the header declares, and tests/c/abi_test.c passes every mode against it.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target triple, for the `cc` crate (build.rs passes it).
const TARGET: &str = env!("IG_TARGET");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// target/debug, or wherever cargo put this test binary (in target/debug/deps).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// The directory holding the cdylib built for this test run: `cargo test` leaves it in deps/ next
/// to this test binary (only `cargo build` copies it up to target/debug).
fn lib_dir() -> PathBuf {
    let deps = target_dir().join("deps");
    let dir = if deps.join("libincident_gate.so").exists() { deps } else { target_dir() };
    assert!(dir.join("libincident_gate.so").exists(), "no libincident_gate.so in {}", dir.display());
    dir
}

fn cdylib() -> PathBuf {
    lib_dir().join("libincident_gate.so")
}

#[test]
fn committed_header_is_what_cbindgen_generates() {
    let generated = std::fs::read_to_string(Path::new(env!("OUT_DIR")).join("incident_gate.h")).unwrap();
    let committed = std::fs::read_to_string(root().join("include/incident_gate.h")).unwrap();
    assert!(
        generated == committed,
        "include/incident_gate.h is stale: run `cargo build` (outside CI it rewrites the header) and commit it"
    );
}

fn header_functions() -> BTreeSet<String> {
    let header = std::fs::read_to_string(root().join("include/incident_gate.h")).unwrap();
    header
        .lines()
        .filter(|l| !l.trim_start().starts_with("//") && l.contains('('))
        .filter_map(|l| {
            l.split('(').next()?.split_whitespace().last().map(|s| s.trim_start_matches('*').to_string())
        })
        .filter(|name| name.starts_with("ig_"))
        .collect()
}

#[test]
fn the_library_exports_exactly_the_header_functions() {
    let out =
        Command::new("nm").args(["-D", "--defined-only"]).arg(cdylib()).output().expect("nm (binutils)");
    assert!(out.status.success());
    let exported: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_addr, kind, name) = (f.next()?, f.next()?, f.next()?);
            (kind == "T").then(|| name.to_string())
        })
        .collect();
    let declared = header_functions();
    assert!(declared.len() >= 9, "header parse found {declared:?}");
    assert_eq!(exported, declared, "exported functions differ from the header's");
}

/// Compiled once per test run (parallel tests would race on the executable).
fn compile_c_test() -> PathBuf {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(compile).clone()
}

fn compile() -> PathBuf {
    let out = target_dir().join("abi_test");
    let compiler =
        cc::Build::new().cargo_metadata(false).opt_level(0).target(TARGET).host(TARGET).get_compiler();
    let status = compiler
        .to_command()
        .args(["-std=c11", "-D_DEFAULT_SOURCE", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(root().join("tests/c/abi_test.c"))
        .arg("-o")
        .arg(&out)
        .arg("-L")
        .arg(lib_dir())
        .arg(format!("-Wl,-rpath,{}", lib_dir().display()))
        .arg("-lincident_gate")
        .status()
        .expect("the C compiler runs");
    assert!(status.success(), "tests/c/abi_test.c does not compile against the header");
    out
}

/// Runs one mode of the C program; answers its stdout and stderr (the library logs there).
fn run_c(mode: &str, config: &serde_json::Value, extra: &[String]) -> (String, String) {
    let exe = compile_c_test();
    // cargo's LD_LIBRARY_PATH names target/debug before deps/: it would load the library the last
    // `cargo build` left there instead of the one built for this run, which the rpath names
    let out = Command::new(exe)
        .env_remove("LD_LIBRARY_PATH")
        .arg(mode)
        .arg(config.to_string())
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "abi_test {mode} failed:\n{stdout}\n{stderr}");
    assert!(!stdout.contains("not ok"), "{stdout}");
    assert!(stdout.matches("ok - ").count() >= 3, "too few checks ran:\n{stdout}");
    (stdout, stderr.to_string())
}

#[test]
fn bad_input_gets_a_status_and_a_message() {
    let state = tempfile::tempdir().unwrap();
    let (out, _) = run_c("bad-input", &common::gate_config("http://127.0.0.1:9", state.path()), &[]);
    assert!(out.contains("new(unknown key)"), "{out}");
}

#[test]
fn a_full_queue_is_a_status_and_counted() {
    let state = tempfile::tempdir().unwrap();
    // nothing listens on port 9: the engine keeps retrying the first events, the queue fills
    let mut cfg = common::gate_config("http://127.0.0.1:9", state.path());
    cfg["queue_capacity"] = 3.into();
    run_c("queue-full", &cfg, &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn happy_path_and_fork_then_use() {
    let sim = common::OpenQa::start().await;
    let (incident, jobs) = sim.finished_incident(4242, 3, "passed").await;
    let state = tempfile::tempdir().unwrap();
    let cfg = common::gate_config(&sim.url(), state.path());
    let mut args = vec![incident.to_string()];
    args.extend(jobs.iter().map(|j| j.to_string()));
    let cfg2 = cfg.clone();
    let args2 = args.clone();
    tokio::task::spawn_blocking(move || {
        let (out, _) = run_c("happy", &cfg2, &args2);
        assert!(out.contains("verdict passed"), "{out}");
        let (out, _) = run_c("fork", &cfg2, &args2);
        assert!(out.contains("ok - the forked child succeeded"), "{out}");
        assert!(out.contains("ok - forked child: verdict passed"), "{out}");
        assert!(out.contains("ok - parent after fork: verdict passed"), "{out}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_by_openqa_is_its_own_status_not_unavailable() {
    let sim = common::OpenQa::start().await;
    let (incident, jobs) = sim.finished_incident(4545, 2, "passed").await;
    sim.sim.refuse_job(jobs[1], 403, "Job is not visible to you");
    let state = tempfile::tempdir().unwrap();
    let cfg = common::gate_config(&sim.url(), state.path());
    let unreachable = common::gate_config("http://127.0.0.1:9", state.path());
    tokio::task::spawn_blocking(move || {
        let (out, _) = run_c("refused", &cfg, &[unreachable.to_string(), incident.to_string()]);
        assert!(out.contains("ok - evaluate (a job refused): status 12"), "{out}");
        assert!(out.contains("ok - evaluate (openQA unreachable): status 10"), "{out}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_errors_never_show_secrets() {
    let sim = common::OpenQa::start().await;
    // a decision is taken, and its deliveries fail: the AMQP and IBS error paths run and log
    let (incident, jobs) = sim.finished_incident(4343, 2, "passed").await;
    let state = tempfile::tempdir().unwrap();
    let mut cfg = common::gate_config(&sim.url(), state.path());
    cfg["openqa_api_key"] = "0123456789ABCDEF".into();
    cfg["openqa_api_secret"] = "S3cr3t-openQA-8f2a".into();
    cfg["publish_amqp"] = true.into();
    cfg["report_obs"] = true.into();
    cfg["obs_url"] = "http://127.0.0.1:9".into();
    cfg["obs_user"] = "bot".into();
    cfg["obs_password"] = "S3cr3t-obs-77x".into();
    cfg["amqp_url"] = "amqp://gate:S3cr3t-amqp-q9@127.0.0.1:9/%2f".into();
    let secrets: Vec<String> =
        ["S3cr3t-openQA-8f2a", "S3cr3t-obs-77x", "S3cr3t-amqp-q9"].map(String::from).to_vec();
    // the same secrets, openQA's in its URL too, and nothing answering there
    let elsewhere = tempfile::tempdir().unwrap();
    let mut unreachable = cfg.clone();
    unreachable["openqa_url"] = "http://gate:S3cr3t-openQA-8f2a@127.0.0.1:9".into();
    unreachable["state_dir"] = elsewhere.path().display().to_string().into();
    let mut args = vec![incident.to_string(), jobs[0].to_string(), unreachable.to_string()];
    args.extend(secrets.iter().cloned());
    let (stdout, stderr) = tokio::task::spawn_blocking(move || run_c("secrets", &cfg, &args)).await.unwrap();
    assert!(stdout.contains("AMQP"), "the failed delivery shows in the status: {stdout}");
    assert!(stderr.contains("amqp://gate:<redacted>@127.0.0.1:9"), "the log names the broker: {stderr}");
    for secret in ["S3cr3t-openQA-8f2a", "S3cr3t-obs-77x", "S3cr3t-amqp-q9"] {
        assert!(!stderr.contains(secret), "{secret} in the log: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_callback_gets_every_line_on_the_callers_thread() {
    let sim = common::OpenQa::start().await;
    let (incident, jobs) = sim.finished_incident(4444, 2, "passed").await;
    let state = tempfile::tempdir().unwrap();
    let cfg = common::gate_config(&sim.url(), state.path());
    // root may write anywhere, but not into /proc: the engine cannot open its database there
    let unusable = common::gate_config(&sim.url(), std::path::Path::new("/proc/self"));
    let mut args = vec![unusable.to_string(), incident.to_string()];
    args.extend(jobs.iter().map(|j| j.to_string()));
    let (_, stderr) = tokio::task::spawn_blocking(move || run_c("log", &cfg, &args)).await.unwrap();
    assert!(!stderr.contains("incident 4444"), "with a callback nothing goes to stderr: {stderr}");
}
