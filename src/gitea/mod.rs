//! Gitea pull requests (SLE 16 / SLFO, DESIGN section 4b): a typed API client, the comment texts
//! and the reporter that approves or comments according to the review policy.

pub mod client;
pub mod report;
pub mod reporter;

pub use client::{GiteaClient, GiteaError, RetryPolicy};
pub use reporter::{deliver, deliver_checked, PrReport};
