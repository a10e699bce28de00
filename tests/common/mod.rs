//! The test files' fixtures, from testkit/ (one of each for the library's and the command's tests).
#![allow(unused_imports)]
#![allow(dead_code)]

pub use testkit::scenario::*;

/// The store a test runs on: SQLite in the test's state directory, or PostgreSQL in a database
/// of its own on the machine's server (`IG_TEST_POSTGRES` names another), dropped afterwards,
/// also when the test fails.
pub struct TestStore {
    postgres: Option<(String, String)>,
}

fn pg_admin(server: &str) -> postgres::Client {
    postgres::Client::connect(&format!("{server}/postgres"), postgres::NoTls)
        .unwrap_or_else(|e| panic!("the tests need PostgreSQL at {server} (IG_TEST_POSTGRES): {e}"))
}

impl TestStore {
    pub fn sqlite() -> TestStore {
        TestStore { postgres: None }
    }

    pub fn postgres() -> TestStore {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let server = std::env::var("IG_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432".to_string());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("ig_test_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let (s, n) = (server.clone(), name.clone());
        // a thread of its own: the sync client must not run on a tokio thread
        std::thread::spawn(move || pg_admin(&s).batch_execute(&format!("CREATE DATABASE {n}")).unwrap())
            .join()
            .unwrap();
        TestStore { postgres: Some((server, name)) }
    }

    /// `store_url`: empty for SQLite.
    pub fn url(&self) -> String {
        match &self.postgres {
            Some((server, name)) => format!("{server}/{name}?sslmode=disable"),
            None => String::new(),
        }
    }

    /// `gate_config` on this store.
    pub fn gate_config(&self, openqa: &str, state: &std::path::Path) -> serde_json::Value {
        let mut config = gate_config(openqa, state);
        config["store_url"] = self.url().into();
        config
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Some((server, name)) = self.postgres.take() {
            let dropped = std::thread::spawn(move || {
                pg_admin(&server).batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            })
            .join();
            if !matches!(dropped, Ok(Ok(()))) {
                eprintln!("could not drop a test database");
            }
        }
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
