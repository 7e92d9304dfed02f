-- Fine-tune jobs, shared by every model-tier replica (server-example's finetune queue).
-- `status` is the job's JSON status as the API answers it; `state` repeats its state for the
-- queue's queries. A replica claims a job by setting `claim_token` and a lease measured in
-- the database's clock; a job whose lease runs out goes back to the queue.
-- Columns that are read back are not `_bin` (sqlx reads those as bytes); `user_id` is only
-- compared, and compared exactly.
CREATE TABLE IF NOT EXISTS finetune_jobs (
    job_id           CHAR(36)     CHARACTER SET ascii COLLATE ascii_general_ci NOT NULL PRIMARY KEY,
    user_id          VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    state            VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_general_ci NOT NULL,
    status           LONGTEXT     CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL,
    claim_token      CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NULL,
    claimed_by       VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NULL,
    lease_until      DATETIME(6)  NULL,
    cancel_requested TINYINT(1)   NOT NULL DEFAULT 0,
    claims           INT          NOT NULL DEFAULT 0,
    updated_at       DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY finetune_jobs_state (state, job_id),
    KEY finetune_jobs_user (user_id, job_id)
) ENGINE = InnoDB;
