//! A database of its own for one test on the machine's PostgreSQL (`IG_TEST_POSTGRES` names
//! another server), dropped when the fixture is, also when the test failed.

use std::sync::atomic::{AtomicU32, Ordering};

pub struct TempDatabase {
    server: String,
    name: String,
}

fn admin(server: &str) -> postgres::Client {
    postgres::Client::connect(&format!("{server}/postgres"), postgres::NoTls)
        .unwrap_or_else(|e| panic!("the tests need PostgreSQL at {server} (IG_TEST_POSTGRES): {e}"))
}

/// Runs `sql` on the server's `postgres` database, on a thread of its own: the sync client must
/// not run on a tokio thread.
fn admin_execute(server: &str, sql: String) -> Result<(), String> {
    let server = server.to_string();
    std::thread::spawn(move || admin(&server).batch_execute(&sql).map_err(|e| e.to_string()))
        .join()
        .map_err(|_| "the PostgreSQL admin thread panicked".to_string())?
}

impl TempDatabase {
    /// A new database named `<prefix>_<pid>_<n>_<nanos>`.
    pub fn new(prefix: &str) -> TempDatabase {
        static N: AtomicU32 = AtomicU32::new(0);
        let server = std::env::var("IG_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432".to_string());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("{prefix}_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        if let Err(e) = admin_execute(&server, format!("CREATE DATABASE {name}")) {
            panic!("cannot create the test database {name}: {e}");
        }
        TempDatabase { server, name }
    }

    /// The first row's first two columns (as text) of `sql`, run by an administrator.
    pub fn admin_query(&self, sql: &str) -> (String, String) {
        let (server, sql) = (self.server.clone(), sql.to_string());
        std::thread::spawn(move || {
            let row = admin(&server).query_one(&sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let text = |i: usize| row.get::<_, Option<String>>(i).unwrap_or_default();
            (text(0), text(1))
        })
        .join()
        .unwrap_or_else(|_| panic!("the PostgreSQL admin query panicked"))
    }

    /// Its URL, as `store_url` takes it.
    pub fn url(&self) -> String {
        format!("{}/{}?sslmode=disable", self.server, self.name)
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        if let Err(e) =
            admin_execute(&self.server, format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
        {
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}
