//! The durable outbox: a decision's deliveries, leased to one process at a time.

use super::postgres::{lock, now, Postgres, LOCK_OUTBOX};
use super::sqlite::Sqlite;
use super::{backoff_ms, now_ms, Backlog, OutboxItem, Sink, StoreError, LEASE_S};
use crate::decision::Delivery;
use rusqlite::params;

pub(super) trait Outbox {
    fn take_due(&self, sink: Sink, limit: usize) -> Result<Vec<OutboxItem>, StoreError>;
    fn complete(&self, item: &OutboxItem, outcome: &Delivery) -> Result<(), StoreError>;
    fn expedite_queued(&self) -> Result<(), StoreError>;
    fn undelivered(&self) -> Result<u64, StoreError>;
    fn release(&self, item: &OutboxItem) -> Result<(), StoreError>;
    fn next_due_in(&self, sink: Sink) -> Result<Option<i64>, StoreError>;
    fn backlog(&self) -> Result<Backlog, StoreError>;
}

/// Due items of a sink, oldest first: not leased, no earlier item of the same decision still
/// queued, and (for a review service) no other item of the incident and sink leased. `?1`/`$1`
/// is the sink, `?2`/`$2` now.
const DUE: &str = "SELECT o.id, o.attempts, o.key, d.incident, d.body, o.outcome FROM outbox AS o
     JOIN decisions AS d ON d.key = o.key
     WHERE o.sink = $1 AND o.state = 'queued' AND o.next_at <= $2 AND o.lease_until <= $2
     AND NOT EXISTS (SELECT 1 FROM outbox AS earlier WHERE earlier.key = o.key
         AND earlier.id < o.id AND earlier.state = 'queued')
     AND (o.sink = 'amqp' OR NOT EXISTS (
         SELECT 1 FROM outbox AS busy JOIN decisions AS bd ON bd.key = busy.key
         WHERE busy.sink = o.sink AND busy.state = 'queued' AND busy.lease_until > $2
         AND busy.id != o.id AND bd.incident = d.incident))
     ORDER BY o.id";

/// When the next queued item of sink `$1` is due, as `MIN(GREATEST(…))` (SQLite spells it
/// `MAX` with several arguments).
const NEXT_DUE: &str =
    "SELECT MIN(GREATEST(o.next_at, o.lease_until, CASE WHEN o.sink != 'amqp' THEN COALESCE((
         SELECT MAX(busy.lease_until) FROM outbox AS busy JOIN decisions AS bd ON bd.key = busy.key
         WHERE busy.sink = o.sink AND busy.state = 'queued' AND busy.id != o.id
         AND bd.incident = d.incident), 0) ELSE 0 END))
     FROM outbox AS o JOIN decisions AS d ON d.key = o.key
     WHERE o.sink = $1 AND o.state = 'queued'
     AND NOT EXISTS (SELECT 1 FROM outbox AS earlier WHERE earlier.key = o.key
                     AND earlier.id < o.id AND earlier.state = 'queued')";

/// A due row: id, attempts, key, incident, body, the previous attempt's outcome.
type DueRow = (i64, u32, String, i64, String, Option<String>);

/// Chooses among the due rows (`DueRow`): at most `limit`, one per
/// incident for a review service; a body that no longer parses is given up with the reason.
fn choose(
    sink: Sink,
    limit: usize,
    lease_until: i64,
    rows: impl Iterator<Item = DueRow>,
) -> (Vec<OutboxItem>, Vec<(i64, String)>) {
    let mut items = Vec::new();
    let mut unreadable = Vec::new();
    let mut incidents = std::collections::HashSet::new();
    for (id, attempts, key, incident, body, last_outcome) in rows {
        if items.len() >= limit {
            break;
        }
        if sink.reports() && incidents.contains(&incident) {
            continue;
        }
        match serde_json::from_str(&body) {
            Ok(decision) => {
                incidents.insert(incident);
                items.push(OutboxItem { id, sink, attempts, decision, lease_until, last_outcome });
            }
            Err(e) => unreadable.push((id, format!("decision {key} is unreadable: {e}"))),
        }
    }
    // a body that does not parse now never will: failing the whole take for it would stop this
    // sink for good, so the item is given up (once, shown in status) and the rest go out
    for (_, why) in &unreadable {
        tracing::error!("{} outbox: {why}; not delivered", sink.as_str());
    }
    (items, unreadable)
}

/// The state, outcome and backoff a delivery's outcome leaves: (state, outcome, wait ms,
/// waiting). Done and final leave the outbox; retry, denied and waiting come back later (waiting
/// and denied after the delay they carry). `waiting`: a report waiting for the other side
/// (`Delivery::Waiting`), which hook runs do not hurry (`expedite_queued`).
fn after(item: &OutboxItem, outcome: &Delivery) -> (&'static str, String, i64, bool) {
    match outcome {
        Delivery::Done(msg) => ("done", msg.clone(), 0, false),
        Delivery::Final(msg) => ("final", msg.clone(), 0, false),
        Delivery::Denied(msg, wait) => ("queued", msg.clone(), *wait, false),
        Delivery::Waiting(msg, wait) => ("queued", msg.clone(), *wait, true),
        Delivery::Retry(msg) => ("queued", msg.clone(), backoff_ms(item.attempts), false),
    }
}

impl Outbox for Sqlite {
    fn take_due(&self, sink: Sink, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let now = now_ms();
        let lease_until = now + LEASE_S * 1000;
        self.write(|tx| {
            let (items, unreadable) = {
                let mut stmt = tx.prepare(&DUE.replace('$', "?"))?;
                let rows = stmt
                    .query_map(params![sink.as_str(), now], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                choose(sink, limit, lease_until, rows.into_iter())
            };
            for (id, why) in &unreadable {
                tx.execute(
                    "UPDATE outbox SET state = 'final', outcome = ?1, lease_until = 0 WHERE id = ?2",
                    params![why, id],
                )?;
            }
            for item in &items {
                tx.execute(
                    "UPDATE outbox SET lease_until = ?1 WHERE id = ?2",
                    params![lease_until, item.id],
                )?;
            }
            Ok(items)
        })
    }

    fn complete(&self, item: &OutboxItem, outcome: &Delivery) -> Result<(), StoreError> {
        let conn = self.conn();
        match after(item, outcome) {
            ("queued", msg, wait, waiting) => {
                // only while the lease is still ours: after it ran out another process may hold it
                conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1, next_at = ?1, lease_until = 0, outcome = ?2,
                     waiting = ?5 WHERE id = ?3 AND lease_until = ?4",
                    params![now_ms() + wait, msg, item.id, item.lease_until, waiting],
                )?;
            }
            (state, msg, _, _) => {
                conn.execute(
                    "UPDATE outbox SET state = ?1, outcome = ?2, attempts = attempts + 1, lease_until = 0
                     WHERE id = ?3",
                    params![state, msg, item.id],
                )?;
            }
        }
        Ok(())
    }

    fn expedite_queued(&self) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE outbox SET next_at = 0
             WHERE state = 'queued' AND waiting = 0 AND next_at > ?1 AND lease_until <= ?1",
            [now_ms()],
        )?;
        Ok(())
    }

    fn undelivered(&self) -> Result<u64, StoreError> {
        Ok(self.conn().query_row(UNDELIVERED, [], |r| r.get::<_, i64>(0))?.max(0) as u64)
    }

    fn release(&self, item: &OutboxItem) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE outbox SET lease_until = 0 WHERE id = ?1 AND state = 'queued' AND lease_until = ?2",
            params![item.id, item.lease_until],
        )?;
        Ok(())
    }

    fn next_due_in(&self, sink: Sink) -> Result<Option<i64>, StoreError> {
        let sql = NEXT_DUE.replace("GREATEST(", "MAX(").replace('$', "?");
        let next: Option<i64> = self.conn().query_row(&sql, [sink.as_str()], |r| r.get(0))?;
        Ok(next.map(|at| (at - now_ms()).max(0)))
    }

    fn backlog(&self) -> Result<Backlog, StoreError> {
        let conn = self.conn();
        let count = |sink: Sink| -> Result<u64, StoreError> {
            Ok(conn.query_row(
                "SELECT COUNT(*) FROM outbox WHERE sink = ?1 AND state = 'queued'",
                [sink.as_str()],
                |r| r.get::<_, i64>(0),
            )? as u64)
        };
        Ok(Backlog { amqp: count(Sink::Amqp)?, obs: count(Sink::Obs)?, gitea: count(Sink::Gitea)? })
    }
}

/// Queued deliveries not waiting for the other side (`Store::undelivered`).
const UNDELIVERED: &str = "SELECT COUNT(*) FROM outbox WHERE state = 'queued' AND waiting = 0";

fn sink_lock(sink: Sink) -> i32 {
    LOCK_OUTBOX
        + match sink {
            Sink::Amqp => 0,
            Sink::Obs => 1,
            Sink::Gitea => 2,
        }
}

impl Outbox for Postgres {
    fn take_due(&self, sink: Sink, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            // one take of a sink at a time on every host: "no other item of the incident leased"
            // stays true until this take's leases are written
            lock(&mut tx, sink_lock(sink))?;
            let now = now(&mut tx)?;
            let lease_until = now + LEASE_S * 1000;
            let rows = tx.query(DUE, &[&sink.as_str(), &now])?;
            let (items, unreadable) = choose(
                sink,
                limit,
                lease_until,
                rows.iter().map(|r| {
                    (r.get(0), r.get::<_, i32>(1).max(0) as u32, r.get(2), r.get(3), r.get(4), r.get(5))
                }),
            );
            for (id, why) in &unreadable {
                tx.execute(
                    "UPDATE outbox SET state = 'final', outcome = $1, lease_until = 0 WHERE id = $2",
                    &[why, id],
                )?;
            }
            let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
            tx.execute("UPDATE outbox SET lease_until = $1 WHERE id = ANY($2)", &[&lease_until, &ids])?;
            tx.commit()?;
            Ok(items)
        })
    }

    fn complete(&self, item: &OutboxItem, outcome: &Delivery) -> Result<(), StoreError> {
        let (state, msg, wait, waiting) = after(item, outcome);
        let waiting = waiting as i32;
        self.with(|c| {
            if state == "queued" {
                c.execute(
                    "UPDATE outbox SET attempts = attempts + 1, next_at = now_ms() + $1, lease_until = 0,
                     outcome = $2, waiting = $5 WHERE id = $3 AND lease_until = $4",
                    &[&wait, &msg, &item.id, &item.lease_until, &waiting],
                )?;
            } else {
                c.execute(
                    "UPDATE outbox SET state = $1, outcome = $2, attempts = attempts + 1, lease_until = 0
                     WHERE id = $3",
                    &[&state, &msg, &item.id],
                )?;
            }
            Ok(())
        })
    }

    fn expedite_queued(&self) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "WITH n AS (SELECT now_ms() AS now) UPDATE outbox SET next_at = 0 FROM n
                 WHERE state = 'queued' AND waiting = 0 AND next_at > n.now AND lease_until <= n.now",
                &[],
            )?;
            Ok(())
        })
    }

    fn undelivered(&self) -> Result<u64, StoreError> {
        self.with(|c| Ok(c.query_one(UNDELIVERED, &[])?.get::<_, i64>(0).max(0) as u64))
    }

    fn release(&self, item: &OutboxItem) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET lease_until = 0 WHERE id = $1 AND state = 'queued' AND lease_until = $2",
                &[&item.id, &item.lease_until],
            )?;
            Ok(())
        })
    }

    fn next_due_in(&self, sink: Sink) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            let row = c.query_one(&format!("SELECT ({NEXT_DUE}), now_ms()"), &[&sink.as_str()])?;
            let (next, now): (Option<i64>, i64) = (row.get(0), row.get(1));
            Ok(next.map(|at| (at - now).max(0)))
        })
    }

    fn backlog(&self) -> Result<Backlog, StoreError> {
        self.with(|c| {
            let mut count = |sink: Sink| -> Result<u64, StoreError> {
                Ok(c.query_one(
                    "SELECT COUNT(*) FROM outbox WHERE sink = $1 AND state = 'queued'",
                    &[&sink.as_str()],
                )?
                .get::<_, i64>(0) as u64)
            };
            Ok(Backlog { amqp: count(Sink::Amqp)?, obs: count(Sink::Obs)?, gitea: count(Sink::Gitea)? })
        })
    }
}
