//! Decisions: recorded once per identity, ordered by the evaluation ticket of what they saw.

use super::postgres::{lock_incident, Postgres};
use super::sqlite::{replace_relied, unfinished_ticket, Sqlite};
use super::{DecisionRow, DeliveryRow, Recorded, Sink, StoreError};
use crate::decision::Decision;
use crate::incident::Submission;
use rusqlite::{params, OptionalExtension};

pub(super) trait Decisions {
    /// `Store::record_decision`, with the decision's base key and without its notes.
    fn record_decision(
        &self,
        base: &str,
        d: &mut Decision,
        sinks: &[Sink],
        seen: i64,
        relied: &[(u64, u64)],
    ) -> Result<Recorded, StoreError>;
    fn is_latest(&self, incident: Submission, key: &str) -> Result<bool, StoreError>;
    fn latest_decision(&self, incident: Submission) -> Result<Option<Decision>, StoreError>;
    fn recent_decisions(&self, limit: usize) -> Result<Vec<DecisionRow>, StoreError>;
    fn decision_count(&self) -> Result<u64, StoreError>;
    fn prune(&self, cutoff: &str) -> Result<usize, StoreError>;
}

/// What `record_decision` does with what it read: stale, a repeat, or a new decision.
fn judge(latest: Option<(String, i64)>, unfinished: i64, base: &str, seen: i64) -> Option<Recorded> {
    // an evaluation that began later and found testing not finished outranks this one too
    if unfinished > seen {
        return Some(Recorded::Stale);
    }
    match latest {
        Some((_, newer)) if newer > seen => Some(Recorded::Stale),
        // the same verdict again, unless testing resumed in between: then the latest
        // decision's reports were withheld (`is_latest`), and this one is new
        Some((latest, latest_seen)) if latest == base && unfinished < latest_seen => Some(Recorded::Repeat),
        _ => None,
    }
}

/// The key of a new decision: its base, or salted when a decision of that base came before
/// (a verdict that came back), derived so that every process derives the same.
fn new_key(base: &str, taken: bool, earlier: i64) -> String {
    if taken {
        crate::decision::salted_key(base, earlier as u64)
    } else {
        base.to_string()
    }
}

fn body(d: &Decision) -> Result<String, StoreError> {
    serde_json::to_string(d).map_err(|e| StoreError(e.to_string()))
}

fn parse(body: Option<String>) -> Result<Option<Decision>, StoreError> {
    body.map(|b| serde_json::from_str(&b).map_err(|e| StoreError(e.to_string()))).transpose()
}

impl Decisions for Sqlite {
    fn record_decision(
        &self,
        base: &str,
        d: &mut Decision,
        sinks: &[Sink],
        seen: i64,
        relied: &[(u64, u64)],
    ) -> Result<Recorded, StoreError> {
        let incident = d.verdict.submission().store_key();
        // the write lock from the start: the latest decision read stays the latest until commit
        self.write(|tx| {
            let (latest, unfinished) = latest(tx, incident, "base")?;
            let recorded = match judge(latest, unfinished, base, seen) {
                Some(Recorded::Stale) => return Ok(Recorded::Stale),
                Some(recorded) => recorded,
                None => insert(tx, incident, base, d, sinks, seen)?,
            };
            tx.execute("DELETE FROM pending WHERE incident = ?1 AND ticket < ?2", params![incident, seen])?;
            replace_relied(tx, incident, relied)?;
            Ok(recorded)
        })
    }

    fn is_latest(&self, incident: Submission, key: &str) -> Result<bool, StoreError> {
        let incident = incident.store_key();
        let (latest, unfinished) = latest(&self.conn(), incident, "key")?;
        Ok(latest.is_some_and(|(latest, seen)| latest == key && unfinished < seen))
    }

    fn latest_decision(&self, incident: Submission) -> Result<Option<Decision>, StoreError> {
        let body: Option<String> = self
            .conn()
            .query_row(
                "SELECT body FROM decisions WHERE incident = ?1 ORDER BY rowid DESC LIMIT 1",
                [incident.store_key()],
                |r| r.get(0),
            )
            .optional()?;
        parse(body)
    }

    fn recent_decisions(&self, limit: usize) -> Result<Vec<DecisionRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT key, incident, request, result, decided_at FROM decisions ORDER BY rowid DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            let submission = Submission::from_store_key(r.get(1)?);
            Ok(DecisionRow {
                key: r.get(0)?,
                incident: submission.number,
                kind: submission.kind,
                request: r.get::<_, Option<i64>>(2)?.map(|r| r as u64),
                result: r.get(3)?,
                decided_at: r.get(4)?,
                deliveries: Vec::new(),
            })
        })?;
        let mut out = rows.collect::<Result<Vec<_>, _>>()?;
        let mut stmt =
            conn.prepare("SELECT sink, state, attempts, outcome FROM outbox WHERE key = ?1 ORDER BY sink")?;
        for row in &mut out {
            let it = stmt.query_map([&row.key], |r| {
                Ok(DeliveryRow { sink: r.get(0)?, state: r.get(1)?, attempts: r.get(2)?, outcome: r.get(3)? })
            })?;
            row.deliveries = it.collect::<Result<_, _>>()?;
        }
        Ok(out)
    }

    fn decision_count(&self) -> Result<u64, StoreError> {
        Ok(self.conn().query_row("SELECT COUNT(*) FROM decisions", [], |r| r.get::<_, i64>(0))? as u64)
    }

    fn prune(&self, cutoff: &str) -> Result<usize, StoreError> {
        self.write(|tx| {
            let old = "SELECT d.key FROM decisions AS d WHERE d.decided_at < ?1
                 AND d.rowid < (SELECT MAX(l.rowid) FROM decisions AS l WHERE l.incident = d.incident)
                 AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.key = d.key AND o.state = 'queued')";
            tx.execute(&format!("DELETE FROM outbox WHERE key IN ({old})"), [cutoff])?;
            Ok(tx.execute(&format!("DELETE FROM decisions WHERE key IN ({old})"), [cutoff])?)
        })
    }
}

/// The newest decision of an incident (key or base, seen) and its unfinished ticket.
/// A new decision of the incident, its key made unique among its earlier ones; its outbox items
/// only if it was not there already.
fn insert(
    tx: &rusqlite::Connection,
    incident: i64,
    base: &str,
    d: &mut Decision,
    sinks: &[Sink],
    seen: i64,
) -> Result<Recorded, StoreError> {
    let earlier: i64 =
        tx.query_row("SELECT COUNT(*) FROM decisions WHERE incident = ?1", [incident], |r| r.get(0))?;
    let taken: bool =
        tx.query_row("SELECT EXISTS(SELECT 1 FROM decisions WHERE key = ?1)", [base], |r| r.get(0))?;
    d.key = new_key(base, taken, earlier);
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO decisions (key, base, incident, request, result, decided_at, body, seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            d.key,
            base,
            incident,
            d.verdict.request.map(|r| r as i64),
            d.verdict.result.as_str(),
            d.decided_at,
            body(d)?,
            seen
        ],
    )? == 1;
    if inserted {
        for sink in sinks {
            tx.execute("INSERT INTO outbox (key, sink) VALUES (?1, ?2)", params![d.key, sink.as_str()])?;
        }
    }
    Ok(if inserted { Recorded::New } else { Recorded::Repeat })
}

/// What `insert` is, on PostgreSQL.
fn pg_insert(
    tx: &mut postgres::Transaction<'_>,
    incident: i64,
    base: &str,
    d: &mut Decision,
    sinks: &[Sink],
    seen: i64,
) -> Result<Recorded, StoreError> {
    let earlier: i64 =
        tx.query_one("SELECT COUNT(*) FROM decisions WHERE incident = $1", &[&incident])?.get(0);
    let taken: bool = tx.query_one("SELECT EXISTS(SELECT 1 FROM decisions WHERE key = $1)", &[&base])?.get(0);
    d.key = new_key(base, taken, earlier);
    let request = d.verdict.request.map(|r| r as i64);
    let inserted = tx.execute(
        "INSERT INTO decisions (key, base, incident, request, result, decided_at, body, seen)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (key) DO NOTHING",
        &[&d.key, &base, &incident, &request, &d.verdict.result.as_str(), &d.decided_at, &body(d)?, &seen],
    )? == 1;
    if inserted {
        for sink in sinks {
            tx.execute("INSERT INTO outbox (key, sink) VALUES ($1, $2)", &[&d.key, &sink.as_str()])?;
        }
    }
    Ok(if inserted { Recorded::New } else { Recorded::Repeat })
}

/// `column` (`key` or `base`) and `seen` of the incident's latest decision, and its unfinished
/// evaluation's ticket (0 if none).
fn latest(
    conn: &rusqlite::Connection,
    incident: i64,
    column: &str,
) -> Result<(Option<(String, i64)>, i64), StoreError> {
    let latest = conn
        .query_row(
            &format!("SELECT {column}, seen FROM decisions WHERE incident = ?1 ORDER BY rowid DESC LIMIT 1"),
            [incident],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok((latest, unfinished_ticket(conn, incident)?))
}

/// What `latest` is, on PostgreSQL.
fn pg_latest(
    c: &mut impl postgres::GenericClient,
    incident: i64,
    column: &str,
) -> Result<(Option<(String, i64)>, i64), StoreError> {
    let latest = c
        .query_opt(
            &format!("SELECT {column}, seen FROM decisions WHERE incident = $1 ORDER BY id DESC LIMIT 1"),
            &[&incident],
        )?
        .map(|r| (r.get(0), r.get(1)));
    let unfinished = c
        .query_opt("SELECT ticket FROM unfinished WHERE incident = $1", &[&incident])?
        .map_or(0, |r| r.get(0));
    Ok((latest, unfinished))
}

pub(super) fn pg_replace_relied(
    tx: &mut postgres::Transaction<'_>,
    incident: i64,
    comments: &[(u64, u64)],
) -> Result<(), StoreError> {
    tx.execute("DELETE FROM relied_comments WHERE incident = $1", &[&incident])?;
    let (ids, jobs): (Vec<i64>, Vec<i64>) = comments.iter().map(|(c, j)| (*c as i64, *j as i64)).unzip();
    if !ids.is_empty() {
        tx.execute(
            "INSERT INTO relied_comments (comment_id, incident, job_id, since, checked_at)
             SELECT c, $2, j, now_ms(), now_ms() FROM unnest($1::BIGINT[], $3::BIGINT[]) AS t(c, j)
             ON CONFLICT DO NOTHING",
            &[&ids, &incident, &jobs],
        )?;
    }
    Ok(())
}

impl Decisions for Postgres {
    fn record_decision(
        &self,
        base: &str,
        d: &mut Decision,
        sinks: &[Sink],
        seen: i64,
        relied: &[(u64, u64)],
    ) -> Result<Recorded, StoreError> {
        let incident = d.verdict.submission().store_key();
        self.with(|c| {
            let mut tx = c.transaction()?;
            // one transaction of the incident at a time: what it reads stays true until it commits
            lock_incident(&mut tx, incident)?;
            let (latest, unfinished) = pg_latest(&mut tx, incident, "base")?;
            let recorded = match judge(latest, unfinished, base, seen) {
                Some(Recorded::Stale) => return Ok(Recorded::Stale),
                Some(recorded) => recorded,
                None => pg_insert(&mut tx, incident, base, d, sinks, seen)?,
            };
            tx.execute("DELETE FROM pending WHERE incident = $1 AND ticket < $2", &[&incident, &seen])?;
            pg_replace_relied(&mut tx, incident, relied)?;
            tx.commit()?;
            Ok(recorded)
        })
    }

    fn is_latest(&self, incident: Submission, key: &str) -> Result<bool, StoreError> {
        let incident = incident.store_key();
        self.with(|c| {
            // one snapshot for both reads
            let mut tx =
                c.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start()?;
            let (latest, unfinished) = pg_latest(&mut tx, incident, "key")?;
            tx.commit()?;
            Ok(latest.is_some_and(|(latest, seen)| latest == key && unfinished < seen))
        })
    }

    fn latest_decision(&self, incident: Submission) -> Result<Option<Decision>, StoreError> {
        let body = self.with(|c| {
            Ok(c.query_opt(
                "SELECT body FROM decisions WHERE incident = $1 ORDER BY id DESC LIMIT 1",
                &[&incident.store_key()],
            )?
            .map(|r| r.get::<_, String>(0)))
        })?;
        parse(body)
    }

    fn recent_decisions(&self, limit: usize) -> Result<Vec<DecisionRow>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT key, incident, request, result, decided_at FROM decisions ORDER BY id DESC LIMIT $1",
                &[&(limit as i64)],
            )?;
            let mut out = Vec::new();
            for r in rows {
                let submission = Submission::from_store_key(r.get(1));
                let key: String = r.get(0);
                let deliveries = pg_deliveries(c, &key, "sink")?;
                out.push(DecisionRow {
                    key,
                    incident: submission.number,
                    kind: submission.kind,
                    request: r.get::<_, Option<i64>>(2).map(|r| r as u64),
                    result: r.get(3),
                    decided_at: r.get(4),
                    deliveries,
                });
            }
            Ok(out)
        })
    }

    fn decision_count(&self) -> Result<u64, StoreError> {
        self.with(|c| Ok(c.query_one("SELECT COUNT(*) FROM decisions", &[])?.get::<_, i64>(0) as u64))
    }

    fn prune(&self, cutoff: &str) -> Result<usize, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let old = "SELECT d.key FROM decisions AS d WHERE d.decided_at < $1
                 AND d.id < (SELECT MAX(l.id) FROM decisions AS l WHERE l.incident = d.incident)
                 AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.key = d.key AND o.state = 'queued')";
            tx.execute(&format!("DELETE FROM outbox WHERE key IN ({old})"), &[&cutoff])?;
            let removed = tx.execute(&format!("DELETE FROM decisions WHERE key IN ({old})"), &[&cutoff])?;
            tx.commit()?;
            Ok(removed as usize)
        })
    }
}

/// The outbox rows of one decision, ordered by `order` (`id` or `sink`).
pub(super) fn pg_deliveries(
    c: &mut impl postgres::GenericClient,
    key: &str,
    order: &str,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let rows = c.query(
        &format!("SELECT sink, state, attempts, outcome FROM outbox WHERE key = $1 ORDER BY {order}"),
        &[&key],
    )?;
    Ok(rows
        .iter()
        .map(|r| DeliveryRow {
            sink: r.get(0),
            state: r.get(1),
            attempts: r.get::<_, i32>(2).max(0) as u32,
            outcome: r.get(3),
        })
        .collect())
}
