//! The PostgreSQL backend: the store's tables in a schema `incident_gate` of the database
//! `store_url` names, shared by every process on every host that names it.
//!
//! The store's interface is synchronous and is called from tokio tasks, from plain threads and
//! from forked children of openQA's workers. `postgres::Client` blocks on a runtime of its own,
//! which panics on a thread that runs tokio; so each call runs on a short-lived thread of its own
//! that borrows the connection. A forked child never uses its parent's connection (the socket is
//! the parent's session): it leaves it alone and connects anew.
//!
//! Guarantees across hosts come from the database: each check-then-write is one transaction,
//! serialised where it must be by transaction-scoped advisory locks (per incident for decisions,
//! per sink for taking due deliveries, one for catch-up), evaluation tickets come from a
//! sequence, and every time the store keeps (leases, backoff, "checked at") is the database's
//! clock, so hosts whose clocks differ agree on them.

use super::StoreError;
use postgres::{Client, Transaction};
use std::sync::Mutex;

/// The first key of every advisory lock the store takes ("IGat"): openQA's own database may
/// have other users of advisory locks.
const LOCK_CLASS: i32 = 0x4947_6174;
/// Second keys of `LOCK_CLASS` (incidents use `LOCK_CLASS + 1`).
pub(super) const LOCK_SCHEMA: i32 = 0;
pub(super) const LOCK_CATCHUP: i32 = 1;
/// Taking due deliveries of a sink: `LOCK_OUTBOX + sink`.
pub(super) const LOCK_OUTBOX: i32 = 10;

/// The schema's migrations, in order; the schema's version is how many of them ran.
const MIGRATIONS: &[&str] = &[
    // 1: the tables of the SQLite store, with ids where SQLite has rowids, a sequence for
    // evaluation tickets and the database's clock in ms
    "CREATE TABLE decisions (
        id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL UNIQUE, base TEXT NOT NULL, incident BIGINT NOT NULL,
        request BIGINT, result TEXT NOT NULL, decided_at TEXT NOT NULL, body TEXT NOT NULL,
        seen BIGINT NOT NULL DEFAULT 0);
     CREATE INDEX decisions_incident ON decisions(incident, id);
     CREATE TABLE outbox (
        id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, sink TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0,
        next_at BIGINT NOT NULL DEFAULT 0, lease_until BIGINT NOT NULL DEFAULT 0,
        outcome TEXT, UNIQUE(key, sink));
     CREATE INDEX outbox_due ON outbox(sink, state, next_at);
     CREATE TABLE pending (
        incident BIGINT PRIMARY KEY, since BIGINT NOT NULL, checked_at BIGINT NOT NULL,
        ticket BIGINT NOT NULL DEFAULT 0, wait_state TEXT, wait_why TEXT);
     CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
     CREATE SEQUENCE evaluation_ticket;
     CREATE TABLE relied_comments (
        comment_id BIGINT NOT NULL, incident BIGINT NOT NULL, job_id BIGINT NOT NULL,
        since BIGINT NOT NULL, checked_at BIGINT NOT NULL, PRIMARY KEY (comment_id, incident));
     CREATE INDEX relied_comments_incident ON relied_comments(incident);
     CREATE TABLE job_activity (incident BIGINT PRIMARY KEY, newest_job BIGINT NOT NULL, at BIGINT NOT NULL);
     CREATE TABLE finished_jobs (job_id BIGINT PRIMARY KEY, at BIGINT NOT NULL);
     CREATE TABLE catchup_jobs (id BIGINT PRIMARY KEY, final INTEGER NOT NULL, checked_at BIGINT NOT NULL);
     CREATE TABLE unfinished (incident BIGINT PRIMARY KEY, ticket BIGINT NOT NULL);
     CREATE TABLE scheduling (
        product BIGINT NOT NULL, incident BIGINT NOT NULL, status TEXT NOT NULL,
        since BIGINT NOT NULL, PRIMARY KEY (product, incident));
     CREATE FUNCTION now_ms() RETURNS BIGINT LANGUAGE sql VOLATILE
        AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;",
    // 2: a report waiting for the other side (`Delivery::Waiting`), not hurried by hook runs
    "ALTER TABLE outbox ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        // the database's own message (constraint, connection refused …), never the URL
        match e.as_db_error() {
            Some(db) => StoreError(format!("PostgreSQL: {}: {}", db.severity(), db.message())),
            None => StoreError(format!("PostgreSQL: {e}")),
        }
    }
}

/// `url` with its password replaced: what status, logs and errors may show.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme) = url.find("://") {
        let rest = &url[scheme + 3..];
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                out = format!("{}{}:***{}", &url[..scheme + 3], &rest[..colon], &rest[at..]);
            }
        }
    }
    // a password given as a parameter (`?password=…`, or `password=…` of the key=value form)
    let mut shown = String::new();
    let mut rest = out.as_str();
    while let Some(i) = rest.find("password=") {
        let starts_word = i == 0 || matches!(rest.as_bytes()[i - 1], b'?' | b'&' | b' ');
        shown.push_str(&rest[..i + 9]);
        rest = &rest[i + 9..];
        if starts_word {
            let end = rest.find(['&', ' ']).unwrap_or(rest.len());
            shown.push_str("***");
            rest = &rest[end..];
        }
    }
    shown.push_str(rest);
    shown
}

struct Session {
    pid: u32,
    client: Client,
}

pub(super) struct Postgres {
    config: postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    shown: String,
    session: Mutex<Option<Session>>,
    /// The database could not be reached at the last call: said once in the log when it
    /// happens and once when it is back, not at every call in between.
    unreachable: std::sync::atomic::AtomicBool,
}

/// TLS as libpq does it for `sslmode=prefer` (its default, and what openQA's own DSN usually
/// leaves it at): encrypted when the server offers it, the server's certificate not checked (a
/// local server's is typically Debian's self-signed snakeoil, which failed every connection here).
/// `sslmode=require` checks it against the system's roots, stricter than libpq, which checks only
/// when `~/.postgresql/root.crt` exists.
fn tls(mode: postgres::config::SslMode) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError(format!("TLS: {e}")))?;
    let config = if mode == postgres::config::SslMode::Require {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(Unchecked(provider)))
            .with_no_client_auth()
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `sslmode=prefer`: any certificate, the handshake's signatures still verified.
#[derive(Debug)]
struct Unchecked(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl Postgres {
    /// Connects to `url` and creates or migrates the schema.
    pub(super) fn open(url: &str) -> Result<Postgres, StoreError> {
        let shown = redact(url);
        let mut config: postgres::Config =
            url.parse().map_err(|e| StoreError(format!("store_url {shown} is not a PostgreSQL URL: {e}")))?;
        if config.get_dbname().is_none() {
            return Err(StoreError(format!("store_url {shown} names no database")));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        config.application_name("incident-gate");
        // every statement names its tables unqualified: they are the schema's; the server's
        // notices ("already exists, skipping" at each start) are no news for the log
        config.options("-c search_path=incident_gate -c client_min_messages=warning");
        let pg = Postgres {
            tls: tls(config.get_ssl_mode())?,
            config,
            shown,
            session: Mutex::new(None),
            unreachable: std::sync::atomic::AtomicBool::new(false),
        };
        pg.with(migrate)?;
        Ok(pg)
    }

    /// The URL without its password.
    pub(super) fn shown(&self) -> &str {
        &self.shown
    }

    fn connect(&self) -> Result<Client, StoreError> {
        self.config
            .connect(self.tls.clone())
            .map_err(|e| StoreError(format!("cannot use {}: {}", self.shown, StoreError::from(e).0)))
    }

    /// Runs `f` with this process's connection (connecting first when it has none, or the one it
    /// has was its parent's) on a thread of its own. A connection that broke is dropped: the next
    /// call connects again.
    pub(super) fn with<R: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R, StoreError> + Send,
    ) -> Result<R, StoreError> {
        let mut guard = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let pid = std::process::id();
        if let Some(inherited) = guard.take_if(|s| s.pid != pid) {
            // the parent's session: closing it would end the parent's connection
            std::mem::forget(inherited);
        }
        let session: &mut Option<Session> = &mut guard;
        let (result, lost) = std::thread::scope(|s| {
            s.spawn(move || {
                if session.is_none() {
                    match self.connect() {
                        Ok(client) => *session = Some(Session { pid, client }),
                        Err(e) => return (Err(e), true),
                    }
                }
                let Some(open) = session.as_mut() else { unreachable!("connected above") };
                let result = f(&mut open.client);
                let lost = result.is_err() && open.client.is_closed();
                if lost {
                    *session = None;
                }
                (result, lost)
            })
            .join()
            .unwrap_or_else(|_| (Err(StoreError("a PostgreSQL call panicked".into())), false))
        });
        use std::sync::atomic::Ordering::Relaxed;
        match &result {
            Err(e) if lost && !self.unreachable.swap(true, Relaxed) => tracing::error!(
                "the store {} cannot be reached: {e}; nothing is decided, acknowledged or delivered \
                 until it is back",
                self.shown
            ),
            Ok(_) if self.unreachable.swap(false, Relaxed) => {
                tracing::warn!("the store {} is reachable again", self.shown)
            }
            _ => {}
        }
        result
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let session = self.session.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        match session {
            // closing says goodbye to the server, blocking on the client's runtime: not on a
            // thread that may run tokio
            Some(s) if s.pid == std::process::id() => {
                let _ = std::thread::spawn(move || drop(s)).join();
            }
            Some(inherited) => std::mem::forget(inherited),
            None => {}
        }
    }
}

/// Creates the schema or brings it to `SCHEMA_VERSION`, under a session advisory lock: several
/// processes starting at once migrate once. A schema newer than this build is refused.
fn migrate(c: &mut Client) -> Result<(), StoreError> {
    c.execute("SELECT pg_advisory_lock($1, $2)", &[&LOCK_CLASS, &LOCK_SCHEMA])?;
    let result = (|| {
        let mut tx = c.transaction()?;
        // CREATE SCHEMA needs the right to create in the database even when the schema exists:
        // a schema an administrator created for us is used as it is
        let exists: bool = tx
            .query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'incident_gate')", &[])?
            .get(0);
        if !exists {
            tx.batch_execute("CREATE SCHEMA incident_gate")?;
        }
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
        let version: i32 = match tx.query_opt("SELECT version FROM schema_version", &[])? {
            Some(row) => row.get(0),
            None => {
                tx.execute("INSERT INTO schema_version (version) VALUES (0)", &[])?;
                0
            }
        };
        if version > SCHEMA_VERSION {
            return Err(StoreError(format!(
                "the schema incident_gate is of version {version}, newer than this incident-gate \
                 knows ({SCHEMA_VERSION}): upgrade incident-gate"
            )));
        }
        for migration in &MIGRATIONS[version as usize..] {
            tx.batch_execute(migration)?;
        }
        tx.execute("UPDATE schema_version SET version = $1", &[&SCHEMA_VERSION])?;
        tx.commit()?;
        Ok(())
    })();
    let unlocked = c.execute("SELECT pg_advisory_unlock($1, $2)", &[&LOCK_CLASS, &LOCK_SCHEMA]);
    result?;
    unlocked?;
    Ok(())
}

/// Holds the advisory lock `key` until the transaction ends.
pub(super) fn lock(tx: &mut Transaction<'_>, key: i32) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_CLASS, &key])?;
    Ok(())
}

/// Holds the incident's advisory lock until the transaction ends: the decisions and
/// unfinished marks of one incident are written one transaction at a time.
pub(super) fn lock_incident(tx: &mut Transaction<'_>, incident: i64) -> Result<(), StoreError> {
    let key = (incident ^ (incident >> 32)) as i32;
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&(LOCK_CLASS + 1), &key])?;
    Ok(())
}

/// The database's clock, ms since the epoch.
pub(super) fn now(tx: &mut Transaction<'_>) -> Result<i64, StoreError> {
    Ok(tx.query_one("SELECT now_ms()", &[])?.get(0))
}

impl super::Backend for Postgres {
    fn check_writable(&self) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO counters (name, value) VALUES ('opened', 1)
                 ON CONFLICT (name) DO UPDATE SET value = counters.value + 1",
                &[],
            )?;
            Ok(())
        })
    }

    #[cfg(test)]
    fn execute_for_test(&self, sql: &str) -> Result<(), StoreError> {
        self.with(|c| Ok(c.batch_execute(sql)?))
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn a_password_is_never_shown() {
        assert_eq!(
            redact("postgresql://ig:s3cret@db.example:5432/openqa?sslmode=require"),
            "postgresql://ig:***@db.example:5432/openqa?sslmode=require"
        );
        assert_eq!(redact("postgresql://ig@db/openqa"), "postgresql://ig@db/openqa");
        assert_eq!(
            redact("postgresql://db/openqa?user=ig&password=s3cret&sslmode=disable"),
            "postgresql://db/openqa?user=ig&password=***&sslmode=disable"
        );
        assert_eq!(redact("host=db password=s3cret dbname=openqa"), "host=db password=*** dbname=openqa");
    }
}
