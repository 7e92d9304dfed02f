-- Who owns each kept image (server-example's owner index); the table an earlier version
-- created in `image-owners.db` by itself, so that file migrates as it is.
CREATE TABLE IF NOT EXISTS image_owners (
    image_key TEXT NOT NULL,
    user_id   TEXT NOT NULL,
    PRIMARY KEY (image_key, user_id)
) WITHOUT ROWID;
