//! RabbitMQ: publishing `incident.done` with publisher confirms, and consuming openQA's own job
//! and comment messages for the standalone mode.

pub mod listen;
pub mod publish;
