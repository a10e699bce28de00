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

#[derive(Parser)]
#[command(name = "incident-gate", version, about, after_help = cli::EXIT_CODES)]
struct Args {
    /// INI file with an [incident_gate] section (openqa.ini works). Default: $INCIDENT_GATE_CONFIG,
    /// then /etc/openqa/openqa.ini if it has the section. INCIDENT_GATE_<KEY> variables override it.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Log level filter (also RUST_LOG); default info, warn for the demo (it narrates itself).
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Standalone service: consume openQA's job events from AMQP, decide, publish and report.
    Listen,
    /// For openQA's job_done_hook_*: evaluate the job's incidents, act, exit with a verdict code.
    Hook {
        /// The openQA job id openQA passes to the hook script.
        job_id: u64,
    },
    /// Explain an incident's verdict: every relevant job and why it counts. No side effects.
    Check {
        incident: u64,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What the state directory holds: recent decisions, pending incidents, outbox backlog.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run the openQA and IBS simulators on loopback for development (one JSON line with the URLs).
    Sim {
        #[arg(long, default_value_t = 0)]
        openqa_port: u16,
        #[arg(long, default_value_t = 0)]
        obs_port: u16,
        /// Answer like this openQA: `upstream`, or `debian12` (4.6.1674490999: no
        /// `job_settings/jobs?value=`, no bulk comment routes).
        #[arg(long, default_value = "upstream")]
        openqa_flavor: String,
    },
    /// A simulated maintenance day on the simulators and the local RabbitMQ, step by step.
    Demo,
    /// Measure the C ABI call cost, end-to-end latency and a synthetic openQA day.
    Bench {
        /// Scale of the synthetic day (1.0 = 300 incidents x 40 jobs + 10 aggregates x 400 jobs).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let quiet = matches!(args.command, Command::Demo | Command::Bench { .. });
        let default = if quiet { "warn" } else { "info" };
        tracing_subscriber::EnvFilter::new(args.log.as_deref().unwrap_or(default))
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("incident-gate: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let needs_config = !matches!(args.command, Command::Sim { .. } | Command::Demo | Command::Bench { .. });
    let config = if needs_config {
        match cli::load_config(args.config.as_deref()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("incident-gate: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    } else {
        None
    };
    let code = runtime.block_on(async move {
        match args.command {
            Command::Listen => cli::listen(core(config)?).await,
            Command::Hook { job_id } => cli::hook(core(config)?, job_id).await,
            Command::Check { incident, json } => cli::check(core(config)?, incident, json).await,
            Command::Status { json } => cli::status(core(config)?, json),
            Command::Sim { openqa_port, obs_port, openqa_flavor } => {
                cli::sim(openqa_port, obs_port, &openqa_flavor).await
            }
            Command::Demo => cli::demo().await,
            Command::Bench { scale } => cli::bench(scale).await,
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

fn core(config: Option<Config>) -> Result<Arc<Core>, String> {
    let config = config.ok_or("no configuration")?;
    Core::new(Arc::new(config)).map(Arc::new).map_err(|e| e.to_string())
}
