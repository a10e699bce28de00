//! IBS/OBS: SSH-signature auth, osc configuration, a typed client, the report texts and the
//! reporter that turns a decision into review changes and comments (DESIGN section 3).

pub mod client;
pub mod oscrc;
pub mod report;
pub mod reporter;
pub mod sshsig;
pub mod xml;

pub use client::{CheckState, Credentials, ObsClient, ObsComment, ObsError, Request, Review, ReviewDecision};
pub use reporter::{deliver, deliver_checked};
