//! The `incident-gate` command as the tests run it: no configuration file from the environment,
//! warnings and errors only in its log unless a test asks for more.

use std::process::{Command, Output};

/// `bin` (the test's `env!("CARGO_BIN_EXE_incident-gate")`) with `env` added.
pub fn command(bin: &str, env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_remove("INCIDENT_GATE_CONFIG").env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `bin args` with `env` to its end.
pub fn run(bin: &str, args: &[&str], env: &[(&str, String)]) -> Output {
    command(bin, env).args(args).output().expect("incident-gate runs")
}
