//! Simulators of the external services, for the tests, the Perl tests and `incident-gate demo`.

pub mod openqa;
