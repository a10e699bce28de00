//! The incidents page (`ig_gate_incidents`, `incident-gate status`): what each backend reads,
//! and the one place that turns it into states.

use super::decisions::pg_deliveries;
use super::postgres::Postgres;
use super::sqlite::Sqlite;
use super::{
    pending_state, DecisionHistory, DeliveryRow, IncidentList, IncidentQuery, IncidentRow, StoreError,
};
use crate::decision::Decision;
use crate::incident::Submission;
use std::time::UNIX_EPOCH;

/// An incident's latest decision, with its pending mark if it has one.
pub(super) struct Latest {
    key: String,
    incident: i64,
    request: Option<u64>,
    result: String,
    decided_at: String,
    pending_since: Option<i64>,
    waited: (Option<String>, Option<String>),
    deliveries: Vec<DeliveryRow>,
}

/// A pending incident without any decision.
pub(super) struct Undecided {
    incident: i64,
    since: i64,
    waited: (Option<String>, Option<String>),
}

/// One of an incident's decisions, for its history.
pub(super) struct Past {
    key: String,
    result: String,
    decided_at: String,
    body: String,
    deliveries: Vec<DeliveryRow>,
}

pub(super) trait Incidents {
    fn latest_decisions(&self) -> Result<Vec<Latest>, StoreError>;
    fn undecided(&self) -> Result<Vec<Undecided>, StoreError>;
    /// The incident's decisions, newest first, at most 50.
    fn history(&self, incident: Submission) -> Result<Vec<Past>, StoreError>;
}

pub(super) fn list<D: Incidents + ?Sized>(db: &D, q: &IncidentQuery) -> Result<IncidentList, StoreError> {
    let exactly = match (&q.submission, q.incident) {
        (Some(text), _) => Some(Submission::parse(text).ok_or_else(|| {
            StoreError(format!("not a submission: {text:?} (12345, ibs:12345 or git:124)"))
        })?),
        (None, incident) => incident.map(Submission::ibs),
    };
    let mut rows: Vec<IncidentRow> = Vec::new();
    for l in db.latest_decisions()? {
        let incident = Submission::from_store_key(l.incident);
        let d = l.deliveries;
        let decided_ms = humantime::parse_rfc3339(&l.decided_at)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let waiting = d.iter().find(|x| x.state == "queued");
        let result = l.result;
        // a failure reported while testing goes on shows as failed: that is what blocks
        let (state, why) = if l.pending_since.is_some_and(|s| s >= decided_ms) && result != "failed" {
            pending_state(l.waited)
        } else if let Some(w) = waiting {
            let why = match &w.outcome {
                Some(o) => format!("{} after {} attempt(s): {o}", w.sink, w.attempts),
                None => format!("{}: not delivered yet", w.sink),
            };
            ("delivery_pending".to_string(), Some(why))
        } else {
            // what IBS (or Gitea) was told, when it was
            let told = d.iter().rev().find(|x| x.sink != "amqp" && x.outcome.is_some());
            let reported = told.is_some_and(|x| x.state == "done");
            let state = if reported && result == "passed" { "reported" } else { result.as_str() };
            (state.to_string(), told.and_then(|x| x.outcome.clone()))
        };
        let updated = l.pending_since.unwrap_or(0).max(decided_ms);
        rows.push(IncidentRow {
            incident: incident.number,
            kind: incident.kind.as_str(),
            submission: incident.to_string(),
            request: l.request,
            state,
            why,
            result: Some(result),
            decided_at: Some(l.decided_at),
            updated_ms: updated,
            deliveries: d,
        });
    }
    for u in db.undecided()? {
        let incident = Submission::from_store_key(u.incident);
        let (state, why) = pending_state(u.waited);
        rows.push(IncidentRow {
            incident: incident.number,
            kind: incident.kind.as_str(),
            submission: incident.to_string(),
            request: None,
            state,
            why,
            result: None,
            decided_at: None,
            updated_ms: u.since,
            deliveries: Vec::new(),
        });
    }
    let mut counts = std::collections::BTreeMap::new();
    for r in &rows {
        *counts.entry(r.state.clone()).or_insert(0u64) += 1;
    }
    rows.retain(|r| {
        q.state.as_deref().is_none_or(|s| r.state == s || r.result.as_deref() == Some(s))
            && q.search.as_deref().is_none_or(|s| r.incident.to_string().contains(s))
            && exactly.is_none_or(|s| r.submission == s.to_string())
    });
    rows.sort_by(|a, b| b.updated_ms.cmp(&a.updated_ms).then(b.incident.cmp(&a.incident)));
    let total = rows.len() as u64;
    rows.truncate(q.limit.unwrap_or(200).clamp(1, 1000));
    let decisions = match exactly {
        Some(i) => Some(db.history(i)?.into_iter().map(history).collect()),
        None => None,
    };
    Ok(IncidentList { incidents: rows, total, states: counts, decisions })
}

fn history(p: Past) -> DecisionHistory {
    let decision: Option<Decision> = serde_json::from_str(&p.body).ok();
    DecisionHistory {
        key: p.key,
        result: p.result,
        decided_at: p.decided_at,
        request: decision.as_ref().and_then(|d| d.verdict.request),
        jobs: decision.as_ref().map(|d| d.verdict.jobs.clone()),
        contacts: decision.as_ref().map(|d| d.contacts.clone()).unwrap_or_default(),
        blocking: decision.map(|d| d.verdict.blocking).unwrap_or_default(),
        deliveries: p.deliveries,
    }
}

/// The outbox rows of one decision, for `deliveries` prepared as
/// `SELECT sink, state, attempts, outcome FROM outbox WHERE key = ?1 ORDER BY id`.
fn delivery_rows(
    deliveries: &mut rusqlite::Statement<'_>,
    key: &str,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let rows = deliveries.query_map([key], |r| {
        Ok(DeliveryRow { sink: r.get(0)?, state: r.get(1)?, attempts: r.get(2)?, outcome: r.get(3)? })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

const DELIVERIES: &str = "SELECT sink, state, attempts, outcome FROM outbox WHERE key = ?1 ORDER BY id";

impl Incidents for Sqlite {
    fn latest_decisions(&self) -> Result<Vec<Latest>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT d.key, d.incident, d.request, d.result, d.decided_at, p.since, p.wait_state, p.wait_why
             FROM decisions AS d
             LEFT JOIN pending AS p ON p.incident = d.incident
             WHERE d.rowid IN (SELECT MAX(rowid) FROM decisions GROUP BY incident)",
        )?;
        let mut deliveries = conn.prepare(DELIVERIES)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Latest {
                    key: r.get(0)?,
                    incident: r.get(1)?,
                    request: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                    result: r.get(3)?,
                    decided_at: r.get(4)?,
                    pending_since: r.get(5)?,
                    waited: (r.get(6)?, r.get(7)?),
                    deliveries: Vec::new(),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|mut l| {
                l.deliveries = delivery_rows(&mut deliveries, &l.key)?;
                Ok(l)
            })
            .collect()
    }

    fn undecided(&self) -> Result<Vec<Undecided>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT incident, since, wait_state, wait_why FROM pending
             WHERE incident NOT IN (SELECT incident FROM decisions)",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Undecided { incident: r.get(0)?, since: r.get(1)?, waited: (r.get(2)?, r.get(3)?) })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn history(&self, incident: Submission) -> Result<Vec<Past>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT key, result, decided_at, body FROM decisions WHERE incident = ?1 ORDER BY rowid DESC LIMIT 50",
        )?;
        let mut deliveries = conn.prepare(DELIVERIES)?;
        let rows = stmt
            .query_map([incident.store_key()], |r| {
                Ok(Past {
                    key: r.get(0)?,
                    result: r.get(1)?,
                    decided_at: r.get(2)?,
                    body: r.get(3)?,
                    deliveries: Vec::new(),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|mut p| {
                p.deliveries = delivery_rows(&mut deliveries, &p.key)?;
                Ok(p)
            })
            .collect()
    }
}

impl Incidents for Postgres {
    fn latest_decisions(&self) -> Result<Vec<Latest>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT d.key, d.incident, d.request, d.result, d.decided_at, p.since, p.wait_state, p.wait_why
                 FROM decisions AS d
                 LEFT JOIN pending AS p ON p.incident = d.incident
                 WHERE d.id IN (SELECT MAX(id) FROM decisions GROUP BY incident)",
                &[],
            )?;
            let mut out = Vec::new();
            for r in rows {
                let key: String = r.get(0);
                let deliveries = pg_deliveries(c, &key, "id")?;
                out.push(Latest {
                    key,
                    incident: r.get(1),
                    request: r.get::<_, Option<i64>>(2).map(|v| v as u64),
                    result: r.get(3),
                    decided_at: r.get(4),
                    pending_since: r.get(5),
                    waited: (r.get(6), r.get(7)),
                    deliveries,
                });
            }
            Ok(out)
        })
    }

    fn undecided(&self) -> Result<Vec<Undecided>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT incident, since, wait_state, wait_why FROM pending
                 WHERE incident NOT IN (SELECT incident FROM decisions)",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| Undecided { incident: r.get(0), since: r.get(1), waited: (r.get(2), r.get(3)) })
                .collect())
        })
    }

    fn history(&self, incident: Submission) -> Result<Vec<Past>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT key, result, decided_at, body FROM decisions WHERE incident = $1 ORDER BY id DESC LIMIT 50",
                &[&incident.store_key()],
            )?;
            let mut out = Vec::new();
            for r in rows {
                let key: String = r.get(0);
                let deliveries = pg_deliveries(c, &key, "id")?;
                out.push(Past { key, result: r.get(1), decided_at: r.get(2), body: r.get(3), deliveries });
            }
            Ok(out)
        })
    }
}
