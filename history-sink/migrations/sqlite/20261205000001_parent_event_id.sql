-- The event an edit continued from ("Continue from result"); NULL for a first edit and for
-- events written before the field existed.
ALTER TABLE history_events ADD COLUMN parent_event_id TEXT;
CREATE INDEX IF NOT EXISTS history_events_parent ON history_events (parent_event_id);
