//! Simulators of the services incident-gate talks to, for tests and `incident-gate demo`.

pub mod obs;
