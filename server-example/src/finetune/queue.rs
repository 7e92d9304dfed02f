//! The job queue in SQL (`finetune_jobs`): SQLite in the data folder by default, MySQL or
//! MariaDB for replicas (see [`crate::db`]).
//!
//! Each row keeps the job's JSON status and, in columns, what the queue decides on: the state
//! (authoritative over the JSON's), the claim and its lease. A replica claims a job with one
//! atomic statement (a conditional `UPDATE` in SQLite; `SELECT … FOR UPDATE SKIP LOCKED` and
//! an `UPDATE` in one transaction in MySQL), writes progress only while its claim token is
//! still the row's, and renews the lease by heartbeat. Leases are times in the database's
//! clock, so replicas whose clocks disagree still agree on when one has run out.

use std::time::Duration;

use uuid::Uuid;

use super::status::{JobState, JobStatus};
use crate::db::{on_db, Db};

/// Now, in seconds since the Unix epoch, in SQLite's clock.
const SQLITE_NOW: &str = "((julianday('now') - 2440587.5) * 86400.0)";

/// A job a replica holds.
pub(super) struct Claim {
    /// The job's status, `running`.
    pub(super) status: JobStatus,
    /// The token every later write of this replica must match.
    pub(super) token: Uuid,
    /// A cancel was asked for before the claim (the previous replica died first).
    pub(super) cancel: bool,
}

/// What a heartbeat found.
pub(super) enum Beat {
    /// The claim is still ours; `cancel`: someone asked for the job to stop.
    Held {
        /// A cancel was asked for, on any replica.
        cancel: bool,
    },
    /// Another replica has the job now (our lease ran out), or it is gone.
    Lost,
}

/// The fine-tune jobs of every replica that shares the database.
pub struct JobQueue {
    db: Db,
}

/// The JSON status with the row's state, which is the one that counts.
fn decode(json: &str, state: &str) -> Result<JobStatus, sqlx::Error> {
    let bad = |e: Box<dyn std::error::Error + Send + Sync>| sqlx::Error::Decode(e);
    let mut status: JobStatus = serde_json::from_str(json).map_err(|e| bad(Box::new(e)))?;
    status.state = serde_json::from_value(state.into()).map_err(|e| bad(Box::new(e)))?;
    Ok(status)
}

/// A transaction the database rolled back to break a deadlock (SQLSTATE 40001).
fn is_deadlock(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "40001")
}

fn encode(status: &JobStatus) -> String {
    serde_json::to_string(status).expect("a job status serialises")
}

impl JobQueue {
    /// Opens the job database at `url` (`sqlite:PATH` or `mysql://…`).
    pub async fn open(url: &str) -> Result<Self, String> {
        Ok(Self {
            db: Db::open(url).await?,
        })
    }

    /// Adds a queued job unless its user already has `max_active` queued or running;
    /// `false` then. One statement, so that two uploads cannot both take the last place.
    pub(super) async fn insert(
        &self,
        status: &JobStatus,
        max_active: usize,
    ) -> Result<bool, sqlx::Error> {
        const SQL: &str = "INSERT INTO finetune_jobs (job_id, user_id, state, status) \
            SELECT ?, ?, ?, ? FROM (SELECT 1 AS one) AS admit WHERE \
            (SELECT COUNT(*) FROM finetune_jobs WHERE user_id = ? \
             AND state IN ('queued', 'running')) < ?";
        let mut tries = 0;
        loop {
            let done = on_db!(&self.db, p => sqlx::query(SQL)
                .bind(status.job_id.to_string())
                .bind(&status.user_id)
                .bind(status.state.as_str())
                .bind(encode(status))
                .bind(&status.user_id)
                .bind(max_active as i64)
                .execute(p)
                .await
                .map(|r| r.rows_affected()));
            match done {
                Ok(rows) => return Ok(rows == 1),
                // Two uploads of one user at once can deadlock on MySQL's range locks; one
                // of them is rolled back and goes again.
                Err(e) if is_deadlock(&e) && tries < 3 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// A job left by an earlier version on disk, kept as it was (a running one becomes
    /// claimable at once); `false` when the id is already known.
    pub(super) async fn import(&self, status: &JobStatus) -> Result<bool, sqlx::Error> {
        let ignore = match self.db {
            Db::Sqlite(_) => "OR IGNORE",
            #[cfg(feature = "mysql")]
            Db::MySql(_) => "IGNORE",
        };
        let sql = format!(
            "INSERT {ignore} INTO finetune_jobs (job_id, user_id, state, status) \
             VALUES (?, ?, ?, ?)"
        );
        let done = on_db!(&self.db, p => sqlx::query(&sql)
            .bind(status.job_id.to_string())
            .bind(&status.user_id)
            .bind(status.state.as_str())
            .bind(encode(status))
            .execute(p)
            .await?
            .rows_affected());
        Ok(done == 1)
    }

    /// Job `id`'s status.
    pub(super) async fn get(&self, id: Uuid) -> Result<Option<JobStatus>, sqlx::Error> {
        const SQL: &str = "SELECT status, state FROM finetune_jobs WHERE job_id = ?";
        let row: Option<(String, String)> = on_db!(&self.db, p => sqlx::query_as(SQL)
            .bind(id.to_string())
            .fetch_optional(p)
            .await?);
        row.map(|(json, state)| decode(&json, &state)).transpose()
    }

    /// Every job, oldest first (ids are UUIDv7, whose text sorts by time); only `user`'s,
    /// or only those in `state`, when given.
    pub(super) async fn list(
        &self,
        user: Option<&str>,
        state: Option<JobState>,
    ) -> Result<Vec<JobStatus>, sqlx::Error> {
        const SQL: &str = "SELECT status, state FROM finetune_jobs \
            WHERE (? IS NULL OR user_id = ?) AND (? IS NULL OR state = ?) ORDER BY job_id";
        let state = state.map(JobState::as_str);
        let rows: Vec<(String, String)> = on_db!(&self.db, p => sqlx::query_as(SQL)
            .bind(user)
            .bind(user)
            .bind(state)
            .bind(state)
            .fetch_all(p)
            .await?);
        rows.iter()
            .map(|(json, state)| decode(json, state))
            .collect()
    }

    /// Jobs of `user` that are queued or running.
    pub(super) async fn active(&self, user: &str) -> Result<usize, sqlx::Error> {
        const SQL: &str = "SELECT COUNT(*) FROM finetune_jobs \
            WHERE user_id = ? AND state IN ('queued', 'running')";
        let n: i64 = on_db!(&self.db, p => sqlx::query_scalar(SQL).bind(user).fetch_one(p).await?);
        Ok(n as usize)
    }

    /// Claims the next job for `replica` for `lease`: a running job whose replica stopped
    /// (its lease ran out or was given up) first, so that it resumes before new work starts,
    /// then the oldest queued one.
    pub(super) async fn claim(
        &self,
        replica: &str,
        lease: Duration,
    ) -> Result<Option<Claim>, sqlx::Error> {
        let token = Uuid::now_v7();
        let row: Option<(String, String, bool)> = match &self.db {
            Db::Sqlite(p) => {
                // One statement, run under SQLite's write lock: two processes cannot both
                // claim a row.
                let claimable = format!(
                    "state = 'queued' OR (state = 'running' \
                     AND (lease_until IS NULL OR lease_until < {SQLITE_NOW}))"
                );
                let sql = format!(
                    "UPDATE finetune_jobs SET state = 'running', claim_token = ?, \
                     claimed_by = ?, lease_until = {SQLITE_NOW} + ?, claims = claims + 1, \
                     updated_at = {SQLITE_NOW} \
                     WHERE job_id = (SELECT job_id FROM finetune_jobs WHERE {claimable} \
                     ORDER BY CASE state WHEN 'running' THEN 0 ELSE 1 END, job_id LIMIT 1) \
                     AND ({claimable}) \
                     RETURNING status, state, cancel_requested"
                );
                sqlx::query_as(&sql)
                    .bind(token.to_string())
                    .bind(replica)
                    .bind(lease.as_secs_f64())
                    .fetch_optional(p)
                    .await?
            }
            #[cfg(feature = "mysql")]
            Db::MySql(p) => {
                let mut tx = p.begin().await?;
                // Rows another replica is claiming right now are skipped, not waited for.
                let id: Option<String> = sqlx::query_scalar(
                    "SELECT job_id FROM finetune_jobs WHERE state = 'queued' \
                     OR (state = 'running' AND (lease_until IS NULL OR lease_until < NOW(6))) \
                     ORDER BY CASE state WHEN 'running' THEN 0 ELSE 1 END, job_id LIMIT 1 \
                     FOR UPDATE SKIP LOCKED",
                )
                .fetch_optional(&mut *tx)
                .await?;
                let Some(id) = id else {
                    tx.rollback().await?;
                    return Ok(None);
                };
                sqlx::query(
                    "UPDATE finetune_jobs SET state = 'running', claim_token = ?, \
                     claimed_by = ?, lease_until = NOW(6) + INTERVAL ? MICROSECOND, \
                     claims = claims + 1, updated_at = NOW(6) WHERE job_id = ?",
                )
                .bind(token.to_string())
                .bind(replica)
                .bind(lease.as_micros() as i64)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
                let row = sqlx::query_as(
                    "SELECT status, state, cancel_requested FROM finetune_jobs \
                     WHERE job_id = ?",
                )
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                row
            }
        };
        row.map(|(json, state, cancel)| {
            Ok(Claim {
                status: decode(&json, &state)?,
                token,
                cancel,
            })
        })
        .transpose()
    }

    /// Renews the lease of a claim for another `lease`, and says whether a cancel was asked.
    pub(super) async fn heartbeat(
        &self,
        id: Uuid,
        token: Uuid,
        lease: Duration,
    ) -> Result<Beat, sqlx::Error> {
        let (id, token) = (id.to_string(), token.to_string());
        let renewed = match &self.db {
            Db::Sqlite(p) => {
                let sql = format!(
                    "UPDATE finetune_jobs SET lease_until = {SQLITE_NOW} + ? \
                     WHERE job_id = ? AND claim_token = ?"
                );
                sqlx::query(&sql)
                    .bind(lease.as_secs_f64())
                    .bind(&id)
                    .bind(&token)
                    .execute(p)
                    .await?
                    .rows_affected()
            }
            // The lease always moves on (microseconds), so a held claim is one changed row.
            #[cfg(feature = "mysql")]
            Db::MySql(p) => sqlx::query(
                "UPDATE finetune_jobs SET lease_until = NOW(6) + INTERVAL ? MICROSECOND \
                 WHERE job_id = ? AND claim_token = ?",
            )
            .bind(lease.as_micros() as i64)
            .bind(&id)
            .bind(&token)
            .execute(p)
            .await?
            .rows_affected(),
        };
        if renewed == 0 {
            return Ok(Beat::Lost);
        }
        const SQL: &str =
            "SELECT cancel_requested FROM finetune_jobs WHERE job_id = ? AND claim_token = ?";
        let cancel: Option<bool> = on_db!(&self.db, p => sqlx::query_scalar(SQL)
            .bind(&id)
            .bind(&token)
            .fetch_optional(p)
            .await?);
        Ok(match cancel {
            Some(cancel) => Beat::Held { cancel },
            None => Beat::Lost,
        })
    }

    /// Writes a claimed job's status (a final state ends the claim), and says whether a
    /// cancel was asked; [`Beat::Lost`] when the claim is no longer ours (nothing is written).
    pub(super) async fn save(&self, token: Uuid, status: &JobStatus) -> Result<Beat, sqlx::Error> {
        let now = match self.db {
            Db::Sqlite(_) => SQLITE_NOW,
            #[cfg(feature = "mysql")]
            Db::MySql(_) => "NOW(6)",
        };
        let sql = format!(
            "UPDATE finetune_jobs SET status = ?, state = ?, updated_at = {now}, \
             claim_token = CASE WHEN ? THEN NULL ELSE claim_token END, \
             lease_until = CASE WHEN ? THEN NULL ELSE lease_until END \
             WHERE job_id = ? AND claim_token = ?"
        );
        let over = status.state.is_over();
        let id = status.job_id.to_string();
        let done = on_db!(&self.db, p => sqlx::query(&sql)
            .bind(encode(status))
            .bind(status.state.as_str())
            .bind(over)
            .bind(over)
            .bind(&id)
            .bind(token.to_string())
            .execute(p)
            .await?
            .rows_affected());
        if done == 0 {
            return Ok(Beat::Lost);
        }
        const SQL: &str = "SELECT cancel_requested FROM finetune_jobs WHERE job_id = ?";
        let cancel: bool = on_db!(&self.db, p => sqlx::query_scalar(SQL)
            .bind(&id)
            .fetch_one(p)
            .await?);
        Ok(Beat::Held { cancel })
    }

    /// Gives a claim up: the job stays `running`, and the next replica to look (this one
    /// restarted included) resumes it, at once, or after `retry_in` (a job whose files
    /// could not be fetched waits, so that it does not hold up the queued ones).
    pub(super) async fn release(
        &self,
        id: Uuid,
        token: Uuid,
        retry_in: Option<Duration>,
    ) -> Result<(), sqlx::Error> {
        let lease = match (&self.db, retry_in) {
            (_, None) => "NULL".to_owned(),
            (Db::Sqlite(_), Some(d)) => format!("{SQLITE_NOW} + {}", d.as_secs_f64()),
            #[cfg(feature = "mysql")]
            (Db::MySql(_), Some(d)) => format!("NOW(6) + INTERVAL {} MICROSECOND", d.as_micros()),
        };
        let sql = format!(
            "UPDATE finetune_jobs SET claim_token = NULL, lease_until = {lease} \
             WHERE job_id = ? AND claim_token = ?"
        );
        on_db!(&self.db, p => {
            sqlx::query(&sql)
                .bind(id.to_string())
                .bind(token.to_string())
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// Cancels a job that no replica has claimed; `false` when it is no longer queued.
    pub(super) async fn cancel_queued(&self, status: &JobStatus) -> Result<bool, sqlx::Error> {
        const SQL: &str = "UPDATE finetune_jobs SET state = 'cancelled', status = ? \
            WHERE job_id = ? AND state = 'queued'";
        let done = on_db!(&self.db, p => sqlx::query(SQL)
            .bind(encode(status))
            .bind(status.job_id.to_string())
            .execute(p)
            .await?
            .rows_affected());
        Ok(done == 1)
    }

    /// Asks whichever replica runs job `id` to stop it (seen at its next heartbeat).
    pub(super) async fn request_cancel(&self, id: Uuid) -> Result<(), sqlx::Error> {
        const SQL: &str = "UPDATE finetune_jobs SET cancel_requested = 1 \
            WHERE job_id = ? AND state = 'running'";
        on_db!(&self.db, p => {
            sqlx::query(SQL).bind(id.to_string()).execute(p).await?;
        });
        Ok(())
    }

    /// Removes a job that is over; `false` when it is not (or not there).
    pub(super) async fn delete(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        const SQL: &str = "DELETE FROM finetune_jobs \
            WHERE job_id = ? AND state IN ('done', 'failed', 'cancelled')";
        let done = on_db!(&self.db, p => sqlx::query(SQL)
            .bind(id.to_string())
            .execute(p)
            .await?
            .rows_affected());
        Ok(done == 1)
    }
}
