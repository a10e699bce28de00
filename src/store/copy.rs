//! `incident-gate store copy --to <url>`: a state directory's store (SQLite) into PostgreSQL.
//!
//! Idempotent: a second copy of the same state directory adds nothing. A target holding a
//! decision the state directory does not have is refused (it is another store's, and merging
//! two stores' tickets and leases would break what each promised).

use super::postgres::{lock, Postgres, LOCK_SCHEMA};
use super::sqlite::Sqlite;
use super::StoreError;
use std::path::Path;

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Copied {
    pub decisions: u64,
    pub outbox: u64,
    pub pending: u64,
    /// Rows of the other tables (unfinished marks, relied-on comments, job activity, reported
    /// jobs, catch-up jobs, scheduled products, counters).
    pub other: u64,
}

type Row = Vec<Option<Value>>;

#[derive(Debug, Clone)]
enum Value {
    Int(i64),
    Text(String),
}

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Int(v) if *ty == postgres::types::Type::INT4 => (*v as i32).to_sql(ty, out),
            Value::Int(v) => v.to_sql(ty, out),
            Value::Text(v) => v.to_sql(ty, out),
        }
    }
    fn accepts(ty: &postgres::types::Type) -> bool {
        <i64 as postgres::types::ToSql>::accepts(ty)
            || <i32 as postgres::types::ToSql>::accepts(ty)
            || <String as postgres::types::ToSql>::accepts(ty)
    }
    postgres::types::to_sql_checked!();
}

fn read(db: &Sqlite, sql: &str) -> Result<Vec<Row>, StoreError> {
    let conn = db.conn();
    let mut stmt = conn.prepare(sql)?;
    let n = stmt.column_count();
    let rows = stmt.query_map([], |r| {
        (0..n)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => None,
                    rusqlite::types::ValueRef::Integer(v) => Some(Value::Int(v)),
                    rusqlite::types::ValueRef::Real(v) => Some(Value::Int(v as i64)),
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        Some(Value::Text(String::from_utf8_lossy(t).into_owned()))
                    }
                })
            })
            .collect::<Result<Row, rusqlite::Error>>()
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// (table, columns, the SQLite query that reads them in order, conflict target)
const TABLES: &[(&str, &str, &str)] = &[
    (
        "decisions",
        "key, base, incident, request, result, decided_at, body, seen",
        "SELECT key, base, incident, request, result, decided_at, body, seen FROM decisions ORDER BY rowid",
    ),
    (
        "outbox",
        "key, sink, state, attempts, next_at, outcome, waiting",
        "SELECT key, sink, state, attempts, next_at, outcome, waiting FROM outbox ORDER BY id",
    ),
    (
        "pending",
        "incident, since, checked_at, ticket, wait_state, wait_why",
        "SELECT incident, since, checked_at, ticket, wait_state, wait_why FROM pending",
    ),
    ("unfinished", "incident, ticket", "SELECT incident, ticket FROM unfinished"),
    (
        "relied_comments",
        "comment_id, incident, job_id, since, checked_at",
        "SELECT comment_id, incident, job_id, since, checked_at FROM relied_comments",
    ),
    ("job_activity", "incident, newest_job, at", "SELECT incident, newest_job, at FROM job_activity"),
    ("finished_jobs", "job_id, at", "SELECT job_id, at FROM finished_jobs"),
    ("catchup_jobs", "id, final, checked_at", "SELECT id, final, checked_at FROM catchup_jobs"),
    (
        "scheduling",
        "product, incident, status, since",
        "SELECT product, incident, status, since FROM scheduling",
    ),
    (
        "counters",
        "name, value",
        "SELECT name, value FROM counters WHERE name NOT IN ('evaluation', 'catchup_lease', 'opened')",
    ),
];

/// Copies the store of `state_dir` into the PostgreSQL store `to` (created or migrated first).
pub fn copy(state_dir: &Path, to: &str) -> Result<Copied, StoreError> {
    if !state_dir.join("incident-gate.sqlite").exists() {
        return Err(StoreError(format!("{} holds no store (incident-gate.sqlite)", state_dir.display())));
    }
    let from = Sqlite::open(state_dir)?;
    let mut source = Vec::new();
    for (table, columns, query) in TABLES {
        source.push((*table, *columns, read(&from, query)?));
    }
    let keys: std::collections::HashSet<String> = source[0]
        .2
        .iter()
        .filter_map(|r| match r.first() {
            Some(Some(Value::Text(k))) => Some(k.clone()),
            _ => None,
        })
        .collect();
    let ticket: i64 = from.conn().query_row(
        "SELECT COALESCE(MAX(value), 0) FROM counters WHERE name = 'evaluation'",
        [],
        |r| r.get(0),
    )?;
    let to = Postgres::open(to)?;
    let shown = to.shown().to_string();
    to.with(|c| {
        let mut tx = c.transaction()?;
        // no process migrates or copies meanwhile
        lock(&mut tx, LOCK_SCHEMA)?;
        let theirs: Vec<String> =
            tx.query("SELECT key FROM decisions", &[])?.iter().map(|r| r.get(0)).collect();
        if let Some(other) = theirs.iter().find(|k| !keys.contains(*k)) {
            return Err(StoreError(format!(
                "{shown} holds data of another store (decision {other} is not in {}): not copied",
                state_dir.display()
            )));
        }
        let mut copied = Copied::default();
        for (table, columns, rows) in &source {
            let n = columns.split(',').count();
            let params: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
            let sql = format!(
                "INSERT INTO {table} ({columns}) VALUES ({}) ON CONFLICT DO NOTHING",
                params.join(", ")
            );
            let stmt = tx.prepare(&sql)?;
            let mut added = 0;
            for row in rows {
                let values: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    row.iter().map(|v| v as &(dyn postgres::types::ToSql + Sync)).collect();
                added += tx.execute(&stmt, &values)?;
            }
            match *table {
                "decisions" => copied.decisions = added,
                "outbox" => copied.outbox = added,
                "pending" => copied.pending = added,
                _ => copied.other += added,
            }
        }
        // tickets to come must outrank every copied one
        tx.execute(
            "SELECT setval('evaluation_ticket', GREATEST($1::BIGINT,
                 (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM evaluation_ticket), 1))",
            &[&ticket],
        )?;
        tx.commit()?;
        Ok(copied)
    })
}
