-- Kafka messages the history service could not store as events. Idempotent by position.
CREATE TABLE IF NOT EXISTS history_dead_letters (
    id             BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    topic          VARCHAR(249)    NOT NULL,
    kafka_partition INT            NOT NULL,
    kafka_offset   BIGINT          NOT NULL,
    message_key    VARBINARY(1024) NULL,
    raw_payload    LONGBLOB        NULL,
    error          TEXT            NOT NULL,
    received_at    DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    UNIQUE KEY history_dead_letters_position (topic, kafka_partition, kafka_offset)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
