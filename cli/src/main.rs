//! The `incident-gate` command: the same core as the openQA plugin, as a standalone AMQP listener,
//! a hook for openQA's `job_done_hook_*`, an explain tool, and a demo on built-in simulators.

use clap::{Parser, Subcommand};
use incident_gate::config::Config;
use incident_gate::engine::Core;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

mod cli;

/// Exit codes, documented in `--help` and the README.
const EXIT_USAGE: u8 = 2;
const EXIT_UNAVAILABLE: u8 = 3;
/// A day: longer than any sensible hook timeout, far below what overflows a deadline.
const MAX_BUDGET_S: u64 = 86_400;

#[derive(Parser)]
#[command(name = "incident-gate", version, about, after_help = cli::EXIT_CODES)]
struct Args {
    /// Log level filter, e.g. `debug` or `incident_gate=debug,warn` (RUST_LOG overrides it).
    /// Default: info; warn for demo and bench, which narrate themselves.
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Where the commands that act on a real openQA read their configuration.
#[derive(clap::Args)]
struct ConfigArg {
    /// INI file with an [incident_gate] section (openqa.ini works). Default: $INCIDENT_GATE_CONFIG,
    /// then /etc/openqa/openqa.ini if it has the section. INCIDENT_GATE_<KEY> variables override
    /// single keys.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Standalone service: consume openQA's job events from AMQP, decide, publish and report.
    Listen {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// For openQA's job_done_hook_*: evaluate the job's incidents, act, exit with a verdict code.
    Hook {
        /// The openQA job id openQA passes to the hook script.
        job_id: u64,
        /// Exit with this code instead of 3 (unavailable, deliveries still queued) and 4 (pending):
        /// openQA's GRU runs the hook again later on OPENQA_JOB_DONE_HOOK_SKIP_RC (default 142).
        #[arg(long, value_name = "RC")]
        skip_rc: Option<u8>,
        /// Seconds to spend delivering what is due before exiting (keep it under openQA's
        /// OPENQA_JOB_DONE_HOOK_TIMEOUT, default 5m). At most 86400.
        // bounded: the run's deadline is now + budget, which a huge value overflows
        #[arg(long, value_name = "SECONDS", default_value_t = 60,
              value_parser = clap::value_parser!(u64).range(0..=MAX_BUDGET_S))]
        budget: u64,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Explain an incident's verdict: every relevant job and why it counts. No side effects.
    Check {
        /// The submission: an incident number (12345 for SUSE:Maintenance:12345, also `ibs:12345`)
        /// or a Gitea pull request (`git:124`).
        #[arg(value_parser = parse_submission)]
        incident: incident_gate::incident::Submission,
        /// Print the verdict as JSON (the document ig_gate_evaluate returns).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// What the state directory holds: recent decisions, pending incidents, outbox backlog.
    Status {
        /// Print it as JSON.
        #[arg(long, conflicts_with = "influx")]
        json: bool,
        /// Print the metrics in InfluxDB line protocol, as the plugin serves them on
        /// /admin/influxdb/incident_gate (for telegraf's exec input; docs/monitoring.md).
        #[arg(long)]
        influx: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The store itself.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Run the openQA and IBS simulators (and, with --gitea, Gitea) on loopback for development (one JSON line with the URLs).
    Sim {
        /// Port of the openQA simulator on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 0, value_name = "PORT")]
        openqa_port: u16,
        /// Port of the IBS simulator on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 0, value_name = "PORT")]
        obs_port: u16,
        /// Answer like this openQA: `upstream`, or `debian12` (4.6.1674490999: no
        /// `job_settings/jobs?value=`, no bulk comment routes).
        #[arg(long, default_value = "upstream")]
        openqa_flavor: String,
        /// Also run the Gitea simulator (`gitea`, `gitea_token`, `gitea_user` in the JSON line) and
        /// a control listener (`gitea_control`) to create pull requests and push to them.
        #[arg(long)]
        gitea: bool,
    },
    /// A simulated maintenance day on the simulators and the local RabbitMQ ($AMQP_URL), step by step.
    Demo,
    /// Measure the C ABI call cost, end-to-end latency and a synthetic openQA day.
    Bench {
        /// Scale of the synthetic day (1.0 = 300 incidents x 40 jobs + 10 aggregates x 400 jobs).
        #[arg(long, default_value_t = 1.0, value_name = "FACTOR")]
        scale: f64,
        /// Also measure latency and the day with the store in this PostgreSQL database, side by
        /// side with SQLite. Its name must start with `incident_gate_bench`: the schema
        /// incident_gate in it is emptied before each run.
        #[arg(long, value_name = "URL")]
        store_url: Option<String>,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// Copy the state directory's store (decisions, outbox, pending work) into PostgreSQL, for
    /// `store_url`. Idempotent; refuses a target that holds another store's data. Stop every
    /// process using the state directory first.
    Copy {
        /// The PostgreSQL store: postgresql://user[:password]@host[:port]/db[?sslmode=…]
        #[arg(long, value_name = "URL")]
        to: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

impl Command {
    fn config(&self) -> Option<&ConfigArg> {
        match self {
            Command::Listen { config }
            | Command::Hook { config, .. }
            | Command::Check { config, .. }
            | Command::Status { config, .. } => Some(config),
            Command::Sim { .. } | Command::Demo | Command::Bench { .. } | Command::Store { .. } => None,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let quiet = matches!(args.command, Command::Demo | Command::Bench { .. });
        let default = if quiet { "warn" } else { "info" };
        tracing_subscriber::EnvFilter::new(args.log.as_deref().unwrap_or(default))
    });
    // colour codes only for a person at a terminal, not in the journal or a log file
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("incident-gate: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    // Everything local (the configuration, the state directory and its database) is checked here:
    // a mistake there is the operator's to fix (2), not a reason to retry later (3).
    let core = match args.command.config() {
        Some(arg) => {
            let _entered = runtime.enter();
            match cli::load_config(arg.config.as_deref()).and_then(core) {
                Ok(core) => Some(core),
                Err(e) => {
                    eprintln!("incident-gate: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            }
        }
        None => None,
    };
    let code = runtime.block_on(async move {
        let core = || core.ok_or_else(|| "no configuration".to_string());
        match args.command {
            Command::Listen { .. } => cli::listen(core()?).await,
            Command::Hook { job_id, skip_rc, budget, .. } => {
                let code = cli::hook(core()?, job_id, std::time::Duration::from_secs(budget)).await;
                let code = code.unwrap_or_else(|e| {
                    eprintln!("incident-gate: {e}");
                    EXIT_UNAVAILABLE
                });
                Ok(match skip_rc {
                    Some(rc) if code == EXIT_UNAVAILABLE || code == cli::EXIT_PENDING => rc,
                    _ => code,
                })
            }
            Command::Check { incident, json, .. } => cli::check(core()?, incident, json).await,
            Command::Status { json, influx, .. } => cli::status(core()?, json, influx),
            Command::Sim { openqa_port, obs_port, openqa_flavor, gitea } => {
                cli::sim(openqa_port, obs_port, &openqa_flavor, gitea).await
            }
            Command::Store { action: StoreAction::Copy { to, config } } => {
                cli::store_copy(config.config.as_deref(), &to)
            }
            Command::Demo => cli::demo().await,
            Command::Bench { scale, store_url } => cli::bench(scale, store_url.as_deref()).await,
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match code {
        Ok(c) => ExitCode::from(c),
        Err(e) => {
            eprintln!("incident-gate: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

fn core(config: Config) -> Result<Arc<Core>, String> {
    Core::new(Arc::new(config)).map(Arc::new).map_err(|e| e.to_string())
}

fn parse_submission(text: &str) -> Result<incident_gate::incident::Submission, String> {
    incident_gate::incident::Submission::parse(text).ok_or_else(|| {
        format!("{text:?} is neither an incident number (12345, ibs:12345) nor a pull request (git:124)")
    })
}
