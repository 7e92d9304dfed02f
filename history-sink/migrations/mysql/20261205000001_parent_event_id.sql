-- The event an edit continued from ("Continue from result"); NULL for a first edit and for
-- events written before the field existed.
ALTER TABLE history_events
    ADD COLUMN parent_event_id BINARY(16) NULL,
    ADD KEY history_events_parent (parent_event_id);
