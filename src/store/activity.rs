//! What evaluations wait on besides jobs finishing: the newest job of an incident (the quiet
//! period), scheduled products still creating jobs, and the `acceptable_for` comments a decision
//! relied on (whose deletion must re-evaluate it).

use super::decisions::pg_replace_relied;
use super::postgres::Postgres;
use super::sqlite::{replace_relied, Sqlite};
use super::{now_ms, StoreError};
use crate::incident::Submission;
use rusqlite::{params, OptionalExtension};

pub(super) trait Activity {
    fn note_job(&self, incident: Submission, job: u64, created: bool) -> Result<(), StoreError>;
    fn last_job_at(&self, incident: Submission) -> Result<Option<i64>, StoreError>;
    fn note_product(&self, product: u64, incidents: &[Submission], status: &str) -> Result<(), StoreError>;
    fn scheduling_products(&self, incident: Submission) -> Result<Vec<(u64, i64)>, StoreError>;
    fn set_relied_comments(&self, incident: Submission, comments: &[(u64, u64)]) -> Result<(), StoreError>;
    fn incidents_relying_on(&self, comments: &[u64]) -> Result<Vec<Submission>, StoreError>;
    fn claim_relied_comments(
        &self,
        older_than_ms: i64,
        limit: usize,
    ) -> Result<Vec<(u64, Submission, u64)>, StoreError>;
}

/// A scheduled product of this status is done creating jobs: nothing to wait for or keep.
fn scheduled(status: &str) -> bool {
    !matches!(status, "added" | "scheduling")
}

impl Activity for Sqlite {
    fn note_job(&self, incident: Submission, job: u64, created: bool) -> Result<(), StoreError> {
        // an evaluation notes every job it sees: only a newer job than any noted restarts the
        // clock; a creation event always does
        self.conn().execute(
            "INSERT INTO job_activity (incident, newest_job, at) VALUES (?1, ?2, ?3)
             ON CONFLICT(incident) DO UPDATE SET newest_job = max(newest_job, ?2), at = ?3
             WHERE ?4 OR ?2 > newest_job",
            params![incident.store_key(), job as i64, now_ms(), created],
        )?;
        Ok(())
    }

    fn last_job_at(&self, incident: Submission) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT at FROM job_activity WHERE incident = ?1", [incident.store_key()], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn note_product(&self, product: u64, incidents: &[Submission], status: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        if scheduled(status) {
            conn.execute("DELETE FROM scheduling WHERE product = ?1", [product as i64])?;
            return Ok(());
        }
        for incident in incidents {
            conn.execute(
                "INSERT INTO scheduling (product, incident, status, since) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(product, incident) DO UPDATE SET status = ?3",
                params![product as i64, incident.store_key(), status, now_ms()],
            )?;
        }
        Ok(())
    }

    fn scheduling_products(&self, incident: Submission) -> Result<Vec<(u64, i64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT product, since FROM scheduling WHERE incident = ?1 AND status IN ('added', 'scheduling')
             ORDER BY product",
        )?;
        let rows = stmt
            .query_map([incident.store_key()], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn set_relied_comments(&self, incident: Submission, comments: &[(u64, u64)]) -> Result<(), StoreError> {
        self.write(|tx| Ok(replace_relied(tx, incident.store_key(), comments)?))
    }

    fn incidents_relying_on(&self, comments: &[u64]) -> Result<Vec<Submission>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT incident FROM relied_comments WHERE comment_id = ?1")?;
        let mut incidents = Vec::new();
        for c in comments {
            let rows = stmt.query_map([*c as i64], |r| r.get::<_, i64>(0))?;
            for row in rows {
                incidents.push(Submission::from_store_key(row?));
            }
        }
        Ok(incidents)
    }

    fn claim_relied_comments(
        &self,
        older_than_ms: i64,
        limit: usize,
    ) -> Result<Vec<(u64, Submission, u64)>, StoreError> {
        let now = now_ms();
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "UPDATE relied_comments SET checked_at = ?1 WHERE rowid IN (
                SELECT rowid FROM relied_comments WHERE checked_at <= ?2 ORDER BY checked_at LIMIT ?3)
             RETURNING comment_id, incident, job_id",
        )?;
        let rows = stmt.query_map(params![now, now - older_than_ms, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                Submission::from_store_key(r.get(1)?),
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

impl Activity for Postgres {
    fn note_job(&self, incident: Submission, job: u64, created: bool) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO job_activity AS a (incident, newest_job, at) VALUES ($1, $2, now_ms())
                 ON CONFLICT (incident) DO UPDATE
                 SET newest_job = GREATEST(a.newest_job, EXCLUDED.newest_job), at = EXCLUDED.at
                 WHERE $3 OR EXCLUDED.newest_job > a.newest_job",
                &[&incident.store_key(), &(job as i64), &created],
            )?;
            Ok(())
        })
    }

    fn last_job_at(&self, incident: Submission) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            Ok(c.query_opt("SELECT at FROM job_activity WHERE incident = $1", &[&incident.store_key()])?
                .map(|r| r.get(0)))
        })
    }

    fn note_product(&self, product: u64, incidents: &[Submission], status: &str) -> Result<(), StoreError> {
        let product = product as i64;
        let keys: Vec<i64> = incidents.iter().map(|i| i.store_key()).collect();
        self.with(|c| {
            if scheduled(status) {
                c.execute("DELETE FROM scheduling WHERE product = $1", &[&product])?;
                return Ok(());
            }
            c.execute(
                "INSERT INTO scheduling (product, incident, status, since)
                 SELECT DISTINCT $1::BIGINT, i, $3::TEXT, now_ms() FROM unnest($2::BIGINT[]) AS i
                 ON CONFLICT (product, incident) DO UPDATE SET status = EXCLUDED.status",
                &[&product, &keys, &status],
            )?;
            Ok(())
        })
    }

    fn scheduling_products(&self, incident: Submission) -> Result<Vec<(u64, i64)>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT product, since FROM scheduling WHERE incident = $1 AND status IN ('added', 'scheduling')
                 ORDER BY product",
                &[&incident.store_key()],
            )?;
            Ok(rows.iter().map(|r| (r.get::<_, i64>(0) as u64, r.get(1))).collect())
        })
    }

    fn set_relied_comments(&self, incident: Submission, comments: &[(u64, u64)]) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            pg_replace_relied(&mut tx, incident.store_key(), comments)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn incidents_relying_on(&self, comments: &[u64]) -> Result<Vec<Submission>, StoreError> {
        let ids: Vec<i64> = comments.iter().map(|c| *c as i64).collect();
        self.with(|c| {
            let rows = c.query("SELECT incident FROM relied_comments WHERE comment_id = ANY($1)", &[&ids])?;
            Ok(rows.iter().map(|r| Submission::from_store_key(r.get(0))).collect())
        })
    }

    fn claim_relied_comments(
        &self,
        older_than_ms: i64,
        limit: usize,
    ) -> Result<Vec<(u64, Submission, u64)>, StoreError> {
        self.with(|c| {
            // rows another process is claiming are skipped, not waited for
            let rows = c.query(
                "WITH n AS (SELECT now_ms() AS now)
                 UPDATE relied_comments AS r SET checked_at = n.now FROM n
                 WHERE (r.comment_id, r.incident) IN (
                    SELECT comment_id, incident FROM relied_comments, n AS m
                    WHERE checked_at <= m.now - $1 ORDER BY checked_at LIMIT $2 FOR UPDATE OF relied_comments SKIP LOCKED)
                 RETURNING r.comment_id, r.incident, r.job_id",
                &[&older_than_ms, &(limit as i64)],
            )?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, i64>(0) as u64, Submission::from_store_key(r.get(1)), r.get::<_, i64>(2) as u64))
                .collect())
        })
    }
}
