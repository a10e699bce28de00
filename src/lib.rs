//! incident-gate: decides from openQA job events whether an incident's tests are finished and what
//! the verdict is, publishes an "incident done" AMQP event and reports to IBS.
//! See ../shared/DESIGN.md for the architecture; `ffi` is the C ABI the openQA plugin uses.

pub mod amqp;
pub mod catchup;
pub mod config;
pub mod decision;
pub mod engine;
pub mod events;
pub mod ffi;
pub mod gate;
pub mod gitea;
pub mod incident;
pub mod log;
pub mod metrics;
pub mod obs;
pub mod openqa;
pub mod outbox;
pub mod store;
pub mod verdict;
