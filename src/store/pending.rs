//! Evaluation tickets, pending incidents (events heard, evaluations to come), unfinished
//! incidents (an evaluation found testing going on) and jobs events reported finished.

use super::postgres::{lock_incident, now, Postgres};
use super::sqlite::{current_ticket, Sqlite};
use super::{now_ms, StoreError};
use crate::incident::Submission;
use rusqlite::params;
use std::collections::HashSet;

pub(super) trait Pending {
    fn begin_evaluation(&self) -> Result<i64, StoreError>;
    fn note_unfinished(
        &self,
        incident: Submission,
        ticket: i64,
        state: &str,
        why: &str,
    ) -> Result<(), StoreError>;
    fn mark_pending_many(&self, incidents: &[Submission], finished: &[u64]) -> Result<(), StoreError>;
    fn settle_pending(&self, incident: Submission, ticket: i64) -> Result<(), StoreError>;
    fn reported_finished(&self, jobs: &[u64]) -> Result<HashSet<u64>, StoreError>;
    fn forget_finished_jobs(&self, older_than_ms: i64) -> Result<usize, StoreError>;
    fn claim_stale_pending(&self, older_than_ms: i64) -> Result<Vec<Submission>, StoreError>;
    fn pending(&self) -> Result<Vec<Submission>, StoreError>;
}

impl Pending for Sqlite {
    fn begin_evaluation(&self) -> Result<i64, StoreError> {
        Ok(self.conn().query_row(
            "INSERT INTO counters (name, value) VALUES ('evaluation', 1)
             ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
            [],
            |r| r.get(0),
        )?)
    }

    fn note_unfinished(
        &self,
        incident: Submission,
        ticket: i64,
        state: &str,
        why: &str,
    ) -> Result<(), StoreError> {
        let incident = incident.store_key();
        let now = now_ms();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO unfinished (incident, ticket) VALUES (?1, ?2)
                 ON CONFLICT(incident) DO UPDATE SET ticket = MAX(ticket, ?2)",
                params![incident, ticket],
            )?;
            let current = current_ticket(tx)?;
            tx.execute(
                "INSERT INTO pending (incident, since, checked_at, ticket, wait_state, wait_why)
                 VALUES (?1, ?2, ?2, ?3, ?4, ?5)
                 ON CONFLICT(incident) DO UPDATE SET checked_at = ?2, ticket = MAX(ticket, ?3),
                     wait_state = ?4, wait_why = ?5",
                params![incident, now, current, state, why],
            )?;
            Ok(())
        })
    }

    fn mark_pending_many(&self, incidents: &[Submission], finished: &[u64]) -> Result<(), StoreError> {
        let now = now_ms();
        self.write(|tx| {
            let ticket = current_ticket(tx)?;
            for incident in incidents {
                tx.execute(
                    "INSERT INTO pending (incident, since, checked_at, ticket) VALUES (?1, ?2, ?2, ?3)
                     ON CONFLICT(incident) DO UPDATE SET checked_at = ?2, ticket = MAX(ticket, ?3)",
                    params![incident.store_key(), now, ticket],
                )?;
            }
            for job in finished {
                tx.execute(
                    "INSERT INTO finished_jobs (job_id, at) VALUES (?1, ?2) ON CONFLICT(job_id) DO UPDATE SET at = ?2",
                    params![*job as i64, now],
                )?;
            }
            Ok(())
        })
    }

    fn settle_pending(&self, incident: Submission, ticket: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM pending WHERE incident = ?1 AND ticket <= ?2",
            params![incident.store_key(), ticket],
        )?;
        Ok(())
    }

    fn reported_finished(&self, jobs: &[u64]) -> Result<HashSet<u64>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT 1 FROM finished_jobs WHERE job_id = ?1")?;
        let mut done = HashSet::new();
        for job in jobs {
            if stmt.exists([*job as i64])? {
                done.insert(*job);
            }
        }
        Ok(done)
    }

    fn forget_finished_jobs(&self, older_than_ms: i64) -> Result<usize, StoreError> {
        Ok(self.conn().execute("DELETE FROM finished_jobs WHERE at < ?1", [now_ms() - older_than_ms])?)
    }

    fn claim_stale_pending(&self, older_than_ms: i64) -> Result<Vec<Submission>, StoreError> {
        let now = now_ms();
        let conn = self.conn();
        let mut stmt =
            conn.prepare("UPDATE pending SET checked_at = ?1 WHERE checked_at <= ?2 RETURNING incident")?;
        let rows = stmt.query_map([now, now - older_than_ms], |r| r.get::<_, i64>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?.into_iter().map(Submission::from_store_key).collect())
    }

    fn pending(&self) -> Result<Vec<Submission>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT incident FROM pending ORDER BY incident")?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?.into_iter().map(Submission::from_store_key).collect())
    }
}

/// The ticket of the newest evaluation begun so far, 0 before any (the sequence's value is
/// outside transactions: every session sees the newest at once).
pub(super) fn pg_current_ticket(tx: &mut postgres::Transaction<'_>) -> Result<i64, StoreError> {
    Ok(tx
        .query_one("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM evaluation_ticket", &[])?
        .get(0))
}

fn ids(jobs: &[u64]) -> Vec<i64> {
    jobs.iter().map(|j| (*j).min(i64::MAX as u64) as i64).collect()
}

impl Pending for Postgres {
    fn begin_evaluation(&self) -> Result<i64, StoreError> {
        self.with(|c| Ok(c.query_one("SELECT nextval('evaluation_ticket')", &[])?.get(0)))
    }

    fn note_unfinished(
        &self,
        incident: Submission,
        ticket: i64,
        state: &str,
        why: &str,
    ) -> Result<(), StoreError> {
        let incident = incident.store_key();
        self.with(|c| {
            let mut tx = c.transaction()?;
            lock_incident(&mut tx, incident)?;
            tx.execute(
                "INSERT INTO unfinished (incident, ticket) VALUES ($1, $2)
                 ON CONFLICT (incident) DO UPDATE SET ticket = GREATEST(unfinished.ticket, EXCLUDED.ticket)",
                &[&incident, &ticket],
            )?;
            let current = pg_current_ticket(&mut tx)?;
            tx.execute(
                "INSERT INTO pending (incident, since, checked_at, ticket, wait_state, wait_why)
                 VALUES ($1, now_ms(), now_ms(), $2, $3, $4)
                 ON CONFLICT (incident) DO UPDATE SET checked_at = EXCLUDED.checked_at,
                     ticket = GREATEST(pending.ticket, EXCLUDED.ticket),
                     wait_state = EXCLUDED.wait_state, wait_why = EXCLUDED.wait_why",
                &[&incident, &current, &state, &why],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn mark_pending_many(&self, incidents: &[Submission], finished: &[u64]) -> Result<(), StoreError> {
        let keys: Vec<i64> = incidents.iter().map(|i| i.store_key()).collect();
        let finished = ids(finished);
        self.with(|c| {
            let mut tx = c.transaction()?;
            let ticket = pg_current_ticket(&mut tx)?;
            let now = now(&mut tx)?;
            tx.execute(
                "INSERT INTO pending (incident, since, checked_at, ticket)
                 SELECT DISTINCT i, $2::BIGINT, $2::BIGINT, $3::BIGINT FROM unnest($1::BIGINT[]) AS i
                 ON CONFLICT (incident) DO UPDATE SET checked_at = EXCLUDED.checked_at,
                     ticket = GREATEST(pending.ticket, EXCLUDED.ticket)",
                &[&keys, &now, &ticket],
            )?;
            tx.execute(
                "INSERT INTO finished_jobs (job_id, at) SELECT DISTINCT j, $2::BIGINT FROM unnest($1::BIGINT[]) AS j
                 ON CONFLICT (job_id) DO UPDATE SET at = EXCLUDED.at",
                &[&finished, &now],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn settle_pending(&self, incident: Submission, ticket: i64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM pending WHERE incident = $1 AND ticket <= $2",
                &[&incident.store_key(), &ticket],
            )?;
            Ok(())
        })
    }

    fn reported_finished(&self, jobs: &[u64]) -> Result<HashSet<u64>, StoreError> {
        let jobs = ids(jobs);
        self.with(|c| {
            let rows = c.query("SELECT job_id FROM finished_jobs WHERE job_id = ANY($1)", &[&jobs])?;
            Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
        })
    }

    fn forget_finished_jobs(&self, older_than_ms: i64) -> Result<usize, StoreError> {
        self.with(|c| {
            Ok(c.execute("DELETE FROM finished_jobs WHERE at < now_ms() - $1", &[&older_than_ms])? as usize)
        })
    }

    fn claim_stale_pending(&self, older_than_ms: i64) -> Result<Vec<Submission>, StoreError> {
        self.with(|c| {
            // a row another process claims at the same time is read again once that commits,
            // and is no longer stale then
            let rows = c.query(
                "WITH n AS (SELECT now_ms() AS now)
                 UPDATE pending SET checked_at = n.now FROM n WHERE checked_at <= n.now - $1
                 RETURNING incident",
                &[&older_than_ms],
            )?;
            Ok(rows.iter().map(|r| Submission::from_store_key(r.get(0))).collect())
        })
    }

    fn pending(&self) -> Result<Vec<Submission>, StoreError> {
        self.with(|c| {
            let rows = c.query("SELECT incident FROM pending ORDER BY incident", &[])?;
            Ok(rows.iter().map(|r| Submission::from_store_key(r.get(0))).collect())
        })
    }
}
