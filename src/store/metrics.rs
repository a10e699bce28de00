//! What the metrics are made of (`crate::metrics`): one read of the store, and the counters only
//! the engine sees (`count`).

use super::postgres::Postgres;
use super::sqlite::Sqlite;
use super::{DecisionCount, MetricsRead, Sink, SinkRead, StoreError};
use crate::incident::Kind;
use rusqlite::{params, OptionalExtension};

pub(super) trait Metrics {
    fn count(&self, name: &str, n: i64) -> Result<(), StoreError>;
    fn metrics_read(&self, window: usize) -> Result<MetricsRead, StoreError>;
}

/// Decisions by kind (IBS incidents have positive numbers, Gitea pull requests negative ones)
/// and result.
const DECISIONS: &str = "SELECT incident < 0, result, COUNT(*) FROM decisions GROUP BY 1, 2 ORDER BY 1, 2";

fn kind(gitea: bool) -> Kind {
    if gitea {
        Kind::Gitea
    } else {
        Kind::Ibs
    }
}

fn count_u64(n: i64) -> u64 {
    n.max(0) as u64
}

/// The id every incident job up to which ended: the lowest job still waited on, less one, or
/// what catch-up looked at.
fn watermark(after_id: u64, lowest_waiting: Option<i64>) -> u64 {
    lowest_waiting.map_or(after_id, |l| after_id.min((l.max(1) - 1) as u64))
}

impl Metrics for Sqlite {
    fn count(&self, name: &str, n: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO counters (name, value) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET value = value + ?2",
            params![name, n],
        )?;
        Ok(())
    }

    fn metrics_read(&self, window: usize) -> Result<MetricsRead, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut m = MetricsRead::default();
        {
            let mut stmt = tx.prepare(DECISIONS)?;
            let rows = stmt.query_map([], |r| {
                Ok(DecisionCount { kind: kind(r.get(0)?), result: r.get(1)?, count: count_u64(r.get(2)?) })
            })?;
            m.decisions = rows.collect::<Result<_, _>>()?;
            let counter = |name: &str| -> rusqlite::Result<u64> {
                Ok(count_u64(
                    tx.query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| r.get(0))
                        .optional()?
                        .unwrap_or(0),
                ))
            };
            m.evaluations = counter("evaluation")?;
            m.openqa_refused = counter("openqa_refused")?;
            (m.waiting, m.oldest_waiting_since_ms) =
                tx.query_row("SELECT COUNT(*), MIN(since) FROM pending", [], |r| {
                    Ok((count_u64(r.get(0)?), r.get(1)?))
                })?;
            let mut stmt = tx.prepare(
                "SELECT COUNT(*), MIN(d.decided_at), COALESCE(SUM(o.outcome LIKE '%' || ?2 || '%'), 0)
                 FROM outbox AS o JOIN decisions AS d ON d.key = o.key WHERE o.sink = ?1 AND o.state = 'queued'",
            )?;
            for sink in [Sink::Amqp, Sink::Obs, Sink::Gitea] {
                let (queued, oldest, denied) = stmt
                    .query_row(params![sink.as_str(), crate::decision::CREDENTIALS_REFUSED], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get::<_, i64>(2)?))
                    })?;
                m.sinks.push(SinkRead {
                    sink,
                    queued: count_u64(queued),
                    oldest_decided_at: oldest,
                    credentials_refused: count_u64(denied),
                });
            }
            m.newest_seen = counter("catchup_newest_seen")?;
            let after_id = counter("catchup_after_id")?;
            let lowest: Option<i64> =
                tx.query_row("SELECT MIN(id) FROM catchup_jobs WHERE final = 0", [], |r| r.get(0))?;
            m.watermark = watermark(after_id, lowest);
            let mut stmt = tx.prepare(
                "SELECT decided_at, json_extract(body, '$.last_job_end') FROM decisions
                 ORDER BY rowid DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([window as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            m.recent = rows.collect::<Result<_, _>>()?;
        }
        tx.commit()?;
        Ok(m)
    }
}

impl Metrics for Postgres {
    fn count(&self, name: &str, n: i64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO counters (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = counters.value + EXCLUDED.value",
                &[&name, &n],
            )?;
            Ok(())
        })
    }

    fn metrics_read(&self, window: usize) -> Result<MetricsRead, StoreError> {
        self.with(|c| {
            // one snapshot: the figures agree with each other
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let decisions = tx
                .query(DECISIONS, &[])?
                .iter()
                .map(|r| DecisionCount { kind: kind(r.get(0)), result: r.get(1), count: count_u64(r.get(2)) })
                .collect();
            let mut m = MetricsRead { decisions, ..Default::default() };
            let counter = |tx: &mut postgres::Transaction<'_>, name: &str| -> Result<u64, StoreError> {
                let value: Option<i64> =
                    tx.query_opt("SELECT value FROM counters WHERE name = $1", &[&name])?.map(|r| r.get(0));
                Ok(count_u64(value.unwrap_or(0)))
            };
            // evaluation tickets come from a sequence here, not from a counter
            m.evaluations = count_u64(super::pending::pg_current_ticket(&mut tx)?);
            m.openqa_refused = counter(&mut tx, "openqa_refused")?;
            let row = tx.query_one("SELECT COUNT(*), MIN(since) FROM pending", &[])?;
            (m.waiting, m.oldest_waiting_since_ms) = (count_u64(row.get(0)), row.get(1));
            let stmt = tx.prepare(
                "SELECT COUNT(*), MIN(d.decided_at),
                        COALESCE(SUM(CASE WHEN o.outcome LIKE '%' || $2 || '%' THEN 1 ELSE 0 END), 0)
                 FROM outbox AS o JOIN decisions AS d ON d.key = o.key WHERE o.sink = $1 AND o.state = 'queued'",
            )?;
            for sink in [Sink::Amqp, Sink::Obs, Sink::Gitea] {
                let row = tx.query_one(&stmt, &[&sink.as_str(), &crate::decision::CREDENTIALS_REFUSED])?;
                m.sinks.push(SinkRead {
                    sink,
                    queued: count_u64(row.get(0)),
                    oldest_decided_at: row.get(1),
                    credentials_refused: count_u64(row.get(2)),
                });
            }
            m.newest_seen = counter(&mut tx, "catchup_newest_seen")?;
            let after_id = counter(&mut tx, "catchup_after_id")?;
            let lowest: Option<i64> =
                tx.query_one("SELECT MIN(id) FROM catchup_jobs WHERE final = 0", &[])?.get(0);
            m.watermark = watermark(after_id, lowest);
            m.recent = tx
                .query(
                    "SELECT decided_at, body::jsonb ->> 'last_job_end' FROM decisions ORDER BY id DESC LIMIT $1",
                    &[&(window as i64)],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            tx.commit()?;
            Ok(m)
        })
    }
}
