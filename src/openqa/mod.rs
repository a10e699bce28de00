//! openQA: the job model and a thin typed REST client.

pub mod auth;
pub mod client;
pub mod model;
