//! The test files' fixtures, from testkit/ (one of each for the library's and the command's tests).
#![allow(unused_imports)]
#![allow(dead_code)]

pub use testkit::scenario::*;

/// The store a test runs on: SQLite in the test's state directory, or PostgreSQL in a database
/// of its own on the machine's server (`IG_TEST_POSTGRES` names another), dropped afterwards,
/// also when the test fails.
pub struct TestStore {
    postgres: Option<testkit::postgres::TempDatabase>,
}

impl TestStore {
    pub fn sqlite() -> TestStore {
        TestStore { postgres: None }
    }

    pub fn postgres() -> TestStore {
        TestStore { postgres: Some(testkit::postgres::TempDatabase::new("ig_test")) }
    }

    /// `store_url`: empty for SQLite.
    pub fn url(&self) -> String {
        self.postgres.as_ref().map(|db| db.url()).unwrap_or_default()
    }

    /// `gate_config` on this store.
    pub fn gate_config(&self, openqa: &str, state: &std::path::Path) -> serde_json::Value {
        let mut config = gate_config(openqa, state);
        config["store_url"] = self.url().into();
        config
    }
}

/// Runs each named `async fn name(store: &TestStore)` once per store backend, as tests
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                super::$name(&super::common::TestStore::sqlite()).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                super::$name(&super::common::TestStore::postgres()).await
            })*
        }
    };
}
