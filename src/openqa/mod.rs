//! openQA: the job model and a thin typed REST client.

pub mod model;
