//! Catch-up from openQA: one at a time across every process of the store, and what it saw.

use super::postgres::{lock, now, Postgres, LOCK_CATCHUP};
use super::sqlite::Sqlite;
use super::{now_ms, CatchupEnd, CatchupStart, CatchupStatus, StoreError};
use rusqlite::{params, OptionalExtension};
use std::collections::HashSet;
use std::time::UNIX_EPOCH;

pub(super) trait Catchup {
    fn claim_catchup(&self, min_gap_ms: i64, lease_ms: i64) -> Result<Option<CatchupStart>, StoreError>;
    fn catchup_waiting(&self, limit: usize) -> Result<Vec<u64>, StoreError>;
    fn catchup_taken(&self, ids: &[u64]) -> Result<HashSet<u64>, StoreError>;
    fn finish_catchup(&self, end: &CatchupEnd) -> Result<(), StoreError>;
    fn catchup_status(&self) -> Result<CatchupStatus, StoreError>;
}

/// Whether a catch-up may start now: none holds the lease, none ended within `min_gap_ms`.
fn may_start(now: i64, lease: Option<i64>, last_run: Option<i64>, min_gap_ms: i64) -> bool {
    !(lease.is_some_and(|until| until > now) || last_run.is_some_and(|last| now - last < min_gap_ms))
}

fn unsigned(v: Option<i64>) -> Option<u64> {
    v.map(|v| v.max(0) as u64)
}

fn status(
    after_id: Option<i64>,
    waiting: i64,
    lowest: Option<i64>,
    newest_seen: Option<i64>,
    last_run: Option<i64>,
    last_requests: Option<i64>,
) -> CatchupStatus {
    let after_id = unsigned(after_id);
    let watermark = match (after_id, lowest) {
        (Some(a), Some(l)) => Some(a.min((l.max(1) - 1) as u64)),
        (a, _) => a,
    };
    let t = |ms: i64| {
        let at = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
        humantime::format_rfc3339_seconds(at).to_string()
    };
    CatchupStatus {
        after_id,
        watermark,
        waiting_jobs: waiting.max(0) as u64,
        newest_seen: unsigned(newest_seen),
        last_run_at: last_run.map(t),
        last_requests: unsigned(last_requests),
    }
}

fn ids(jobs: &[u64]) -> Vec<i64> {
    jobs.iter().map(|j| (*j).min(i64::MAX as u64) as i64).collect()
}

impl Catchup for Sqlite {
    fn claim_catchup(&self, min_gap_ms: i64, lease_ms: i64) -> Result<Option<CatchupStart>, StoreError> {
        let now = now_ms();
        self.write(|tx| {
            let get = |name: &str| -> Result<Option<i64>, rusqlite::Error> {
                tx.query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| r.get(0)).optional()
            };
            if !may_start(now, get("catchup_lease")?, get("catchup_last_run")?, min_gap_ms) {
                return Ok(None);
            }
            let start = CatchupStart {
                after_id: unsigned(get("catchup_after_id")?),
                newest_seen: unsigned(get("catchup_newest_seen")?),
            };
            tx.execute(
                "INSERT INTO counters (name, value) VALUES ('catchup_lease', ?1)
                 ON CONFLICT(name) DO UPDATE SET value = ?1",
                [now + lease_ms],
            )?;
            Ok(Some(start))
        })
    }

    fn catchup_waiting(&self, limit: usize) -> Result<Vec<u64>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id FROM catchup_jobs WHERE final = 0 ORDER BY checked_at, id LIMIT ?1")?;
        let rows = stmt.query_map([limit as i64], |r| r.get::<_, i64>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?.into_iter().map(|id| id as u64).collect())
    }

    fn catchup_taken(&self, ids: &[u64]) -> Result<HashSet<u64>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT 1 FROM catchup_jobs WHERE id = ?1 AND final = 1")?;
        let mut taken = HashSet::new();
        for id in ids {
            if stmt.exists([*id as i64])? {
                taken.insert(*id);
            }
        }
        Ok(taken)
    }

    fn finish_catchup(&self, end: &CatchupEnd) -> Result<(), StoreError> {
        let now = now_ms();
        self.write(|tx| {
            for id in &end.waiting {
                tx.execute(
                    "INSERT INTO catchup_jobs (id, final, checked_at) VALUES (?1, 0, ?2) ON CONFLICT(id) DO NOTHING",
                    params![*id as i64, now],
                )?;
            }
            for id in &end.still_waiting {
                tx.execute("UPDATE catchup_jobs SET checked_at = ?2 WHERE id = ?1", params![*id as i64, now])?;
            }
            for id in &end.ended {
                tx.execute(
                    "INSERT INTO catchup_jobs (id, final, checked_at) VALUES (?1, 1, ?2)
                     ON CONFLICT(id) DO UPDATE SET final = 1, checked_at = ?2",
                    params![*id as i64, now],
                )?;
            }
            for id in &end.gone {
                tx.execute("DELETE FROM catchup_jobs WHERE id = ?1", [*id as i64])?;
            }
            let set_max = |name: &str, value: Option<u64>| -> Result<(), rusqlite::Error> {
                if let Some(v) = value {
                    tx.execute(
                        "INSERT INTO counters (name, value) VALUES (?1, ?2)
                         ON CONFLICT(name) DO UPDATE SET value = MAX(value, ?2)",
                        params![name, v.min(i64::MAX as u64) as i64],
                    )?;
                }
                Ok(())
            };
            set_max("catchup_after_id", end.after_id)?;
            set_max("catchup_newest_seen", end.newest_seen)?;
            for (name, value) in
                [("catchup_lease", 0), ("catchup_last_run", now), ("catchup_last_requests", end.requests as i64)]
            {
                tx.execute(
                    "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = ?2",
                    params![name, value],
                )?;
            }
            // ended jobs below the bound are never looked at again: nothing to remember them for
            tx.execute(
                "DELETE FROM catchup_jobs WHERE final = 1
                 AND id <= (SELECT value FROM counters WHERE name = 'catchup_after_id')",
                [],
            )?;
            Ok(())
        })
    }

    fn catchup_status(&self) -> Result<CatchupStatus, StoreError> {
        let conn = self.conn();
        let get = |name: &str| -> Result<Option<i64>, rusqlite::Error> {
            conn.query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| r.get(0)).optional()
        };
        let (waiting, lowest): (i64, Option<i64>) =
            conn.query_row("SELECT COUNT(*), MIN(id) FROM catchup_jobs WHERE final = 0", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        Ok(status(
            get("catchup_after_id")?,
            waiting,
            lowest,
            get("catchup_newest_seen")?,
            get("catchup_last_run")?,
            get("catchup_last_requests")?,
        ))
    }
}

fn pg_get(c: &mut impl postgres::GenericClient, name: &str) -> Result<Option<i64>, StoreError> {
    Ok(c.query_opt("SELECT value FROM counters WHERE name = $1", &[&name])?.map(|r| r.get(0)))
}

impl Catchup for Postgres {
    fn claim_catchup(&self, min_gap_ms: i64, lease_ms: i64) -> Result<Option<CatchupStart>, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            lock(&mut tx, LOCK_CATCHUP)?;
            let now = now(&mut tx)?;
            let (lease, last) = (pg_get(&mut tx, "catchup_lease")?, pg_get(&mut tx, "catchup_last_run")?);
            if !may_start(now, lease, last, min_gap_ms) {
                return Ok(None);
            }
            let start = CatchupStart {
                after_id: unsigned(pg_get(&mut tx, "catchup_after_id")?),
                newest_seen: unsigned(pg_get(&mut tx, "catchup_newest_seen")?),
            };
            tx.execute(
                "INSERT INTO counters (name, value) VALUES ('catchup_lease', $1)
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                &[&(now + lease_ms)],
            )?;
            tx.commit()?;
            Ok(Some(start))
        })
    }

    fn catchup_waiting(&self, limit: usize) -> Result<Vec<u64>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT id FROM catchup_jobs WHERE final = 0 ORDER BY checked_at, id LIMIT $1",
                &[&(limit as i64)],
            )?;
            Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
        })
    }

    fn catchup_taken(&self, jobs: &[u64]) -> Result<HashSet<u64>, StoreError> {
        let jobs = ids(jobs);
        self.with(|c| {
            let rows = c.query("SELECT id FROM catchup_jobs WHERE id = ANY($1) AND final = 1", &[&jobs])?;
            Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
        })
    }

    fn finish_catchup(&self, end: &CatchupEnd) -> Result<(), StoreError> {
        let (waiting, still, ended, gone) =
            (ids(&end.waiting), ids(&end.still_waiting), ids(&end.ended), ids(&end.gone));
        self.with(|c| {
            let mut tx = c.transaction()?;
            lock(&mut tx, LOCK_CATCHUP)?;
            let now = now(&mut tx)?;
            tx.execute(
                "INSERT INTO catchup_jobs (id, final, checked_at) SELECT DISTINCT i, 0, $2::BIGINT
                 FROM unnest($1::BIGINT[]) AS i ON CONFLICT (id) DO NOTHING",
                &[&waiting, &now],
            )?;
            tx.execute("UPDATE catchup_jobs SET checked_at = $2 WHERE id = ANY($1)", &[&still, &now])?;
            tx.execute(
                "INSERT INTO catchup_jobs (id, final, checked_at) SELECT DISTINCT i, 1, $2::BIGINT
                 FROM unnest($1::BIGINT[]) AS i
                 ON CONFLICT (id) DO UPDATE SET final = 1, checked_at = EXCLUDED.checked_at",
                &[&ended, &now],
            )?;
            tx.execute("DELETE FROM catchup_jobs WHERE id = ANY($1)", &[&gone])?;
            for (name, value) in
                [("catchup_after_id", end.after_id), ("catchup_newest_seen", end.newest_seen)]
            {
                if let Some(v) = value {
                    tx.execute(
                        "INSERT INTO counters (name, value) VALUES ($1, $2)
                         ON CONFLICT (name) DO UPDATE SET value = GREATEST(counters.value, EXCLUDED.value)",
                        &[&name, &(v.min(i64::MAX as u64) as i64)],
                    )?;
                }
            }
            for (name, value) in [
                ("catchup_lease", 0),
                ("catchup_last_run", now),
                ("catchup_last_requests", end.requests as i64),
            ] {
                tx.execute(
                    "INSERT INTO counters (name, value) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                    &[&name, &value],
                )?;
            }
            tx.execute(
                "DELETE FROM catchup_jobs WHERE final = 1
                 AND id <= (SELECT value FROM counters WHERE name = 'catchup_after_id')",
                &[],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn catchup_status(&self) -> Result<CatchupStatus, StoreError> {
        self.with(|c| {
            let row = c.query_one("SELECT COUNT(*), MIN(id) FROM catchup_jobs WHERE final = 0", &[])?;
            Ok(status(
                pg_get(c, "catchup_after_id")?,
                row.get(0),
                row.get(1),
                pg_get(c, "catchup_newest_seen")?,
                pg_get(c, "catchup_last_run")?,
                pg_get(c, "catchup_last_requests")?,
            ))
        })
    }
}
