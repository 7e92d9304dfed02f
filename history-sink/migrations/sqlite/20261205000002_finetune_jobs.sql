-- Fine-tune jobs (server-example's finetune queue); see the MySQL migration. Leases are
-- seconds since the Unix epoch in the database's clock (julianday('now')).
CREATE TABLE IF NOT EXISTS finetune_jobs (
    job_id           TEXT    NOT NULL PRIMARY KEY,
    user_id          TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    claim_token      TEXT,
    claimed_by       TEXT,
    lease_until      REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    claims           INTEGER NOT NULL DEFAULT 0,
    updated_at       REAL    NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);

CREATE INDEX IF NOT EXISTS finetune_jobs_state ON finetune_jobs (state, job_id);
CREATE INDEX IF NOT EXISTS finetune_jobs_user  ON finetune_jobs (user_id, job_id);
