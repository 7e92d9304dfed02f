-- History events: one column per event field plus the raw JSON; idempotent by event_id.
CREATE TABLE IF NOT EXISTS history_events (
    event_id       BINARY(16)        NOT NULL,  -- UUIDv7 bytes (sorts by time)
    schema_version SMALLINT UNSIGNED NOT NULL,
    kind           ENUM('inpaint', 'finetune', 'upload') NOT NULL,
    user_id        VARCHAR(128)      NOT NULL,
    occurred_at    DATETIME(3)       NOT NULL,  -- UTC
    original_uri   VARCHAR(1024)     NULL,
    mask_uri       VARCHAR(1024)     NULL,
    result_uri     VARCHAR(1024)     NULL,
    width          INT UNSIGNED      NULL,
    height         INT UNSIGNED      NULL,
    hole_ratio     DOUBLE            NULL,
    model_id       VARCHAR(255)      NULL,
    model_version  VARCHAR(255)      NULL,
    strategy       VARCHAR(255)      NULL,
    device         VARCHAR(255)      NULL,
    latency_ms     BIGINT UNSIGNED   NULL,
    status         ENUM('ok', 'error') NOT NULL,
    error_message  TEXT              NULL,
    raw_json       LONGTEXT          NOT NULL,
    recorded_at    DATETIME(3)       NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (event_id),
    KEY history_events_user_time (user_id, occurred_at, event_id),
    KEY history_events_kind_time (kind, occurred_at, event_id),
    KEY history_events_time (occurred_at, event_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
