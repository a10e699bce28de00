//! Fixtures shared by the tests of the library and of the command: one of each, and each one
//! cleans up when dropped, also when the test failed.
//!
//! - [`unique`]: names of exchanges, queues and prefixes no other test or run uses;
//! - [`amqp_url`], [`broker_addr`]: the shared RabbitMQ;
//! - [`broker::Broker`]: the test's own connection to it: declare, subscribe, publish, count consumers;
//! - [`Leftovers`]: deletes a test's exchanges and queues when dropped;
//! - [`proxy::Proxy`]: a TCP proxy the test can cut, stall and restore;
//! - [`review_changes`], [`review_change_requests`], [`approvals`]: what the IBS and Gitea simulators were asked to change;
//! - [`cli::run`], [`cli::command`]: the `incident-gate` command with a test's environment;
//! - [`keygen`]: SSH keys made by `ssh-keygen`, as IBS users make them;
//! - [`scenario`]: the openQA simulator with a maintenance scenario, a gate behind the C ABI
//!   ([`scenario::CGate`]), the broker's `incident.done` subscription and openQA-like publishing.

pub mod broker;
pub mod cli;
pub mod postgres;
pub mod proxy;
pub mod scenario;

use incident_gate_sim::gitea::{GiteaSim, SimComment};
use incident_gate_sim::obs::ObsSim;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An exchange, queue or prefix name no other test or test run uses.
pub fn unique(test: &str) -> String {
    format!("ig-test-{}-{test}", std::process::id())
}

/// The shared broker (`AMQP_URL` overrides 127.0.0.1:5672 guest/guest).
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Where `host:port` of an AMQP URL starts and ends.
pub fn authority(url: &str) -> (usize, usize) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let host_start = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    (host_start, end)
}

/// `host:port` of the shared broker.
pub fn broker_addr() -> String {
    let url = amqp_url();
    let (start, end) = authority(&url);
    let hostport = &url[start..end];
    if hostport.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        hostport.to_string()
    } else {
        format!("{hostport}:5672")
    }
}

/// Deletes the test's exchanges and queues when the test ends, also when it fails.
pub struct Leftovers {
    exchanges: Vec<String>,
    queues: Vec<String>,
}

impl Leftovers {
    pub fn new(exchanges: &[&str], queues: &[&str]) -> Leftovers {
        let own = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        Leftovers { exchanges: own(exchanges), queues: own(queues) }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let (exchanges, queues) = (std::mem::take(&mut self.exchanges), std::mem::take(&mut self.queues));
        // its own thread and runtime: drop cannot await, and the test's runtime may be unwinding
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                let url = amqp_url();
                let connect = Connection::connect(&url, ConnectionProperties::default());
                let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(10), connect).await else {
                    return;
                };
                let Ok(ch) = conn.create_channel().await else { return };
                for q in queues {
                    let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
                }
                for x in exchanges {
                    let _ = ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await;
                }
                let _ = conn.close(200, "".into()).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Review changes IBS accepted for request `rr`.
pub fn review_changes(obs: &ObsSim, rr: u64) -> usize {
    let path = format!("/request/{rr}");
    obs.received()
        .iter()
        .filter(|r| {
            r.method == "POST" && r.path == path && r.query.contains("changereviewstate") && r.status == 200
        })
        .count()
}

/// Review changes asked of IBS, for any request, whatever IBS answered: 0 means none was tried.
pub fn review_change_requests(obs: &ObsSim) -> usize {
    obs.received().iter().filter(|r| r.method == "POST" && r.query.contains("cmd=changereviewstate")).count()
}

/// `bot`'s approval comments on pull request `repo#pr` of the Gitea simulator for commit `sha`.
pub fn approvals(sim: &GiteaSim, repo: &str, pr: u64, bot: &str, sha: &str) -> Vec<SimComment> {
    sim.comments(repo, pr)
        .into_iter()
        .filter(|c| {
            c.body.starts_with(&format!("@{bot}: approved\n"))
                && c.body.ends_with(&format!("\nTested commit: {sha}"))
        })
        .collect()
}

/// A key made by `ssh-keygen -t <kind>` in `dir` (with `passphrase`, empty for none; RSA with
/// 3072 bits); the private key's path, the public one next to it as `.pub`.
pub fn keygen(dir: &Path, kind: &str, passphrase: &str) -> PathBuf {
    let path = dir.join(format!("id_{kind}"));
    let mut cmd = std::process::Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", passphrase, "-C", "test", "-f"]).arg(&path);
    if kind == "rsa" {
        cmd.args(["-b", "3072"]);
    }
    let out = cmd.output().expect("ssh-keygen must be installed (openssh)");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    path
}
