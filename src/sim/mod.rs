//! Simulators of the services incident-gate talks to (openQA, OBS/IBS), for the tests, the Perl
//! tests and `incident-gate demo`.

pub mod obs;
pub mod openqa;
