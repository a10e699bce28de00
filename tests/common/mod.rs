//! The test files' fixtures, from testkit/ (one of each for the library's and the command's tests).
#![allow(unused_imports)]

pub use testkit::scenario::*;
