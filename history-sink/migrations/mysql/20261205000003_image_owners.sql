-- Who owns each kept image (server-example's owner index), so that replicas sharing this
-- database agree on who may read `/images/{key}`. Two users who upload the same bytes share
-- the key, and each owns it. Keys are lowercase hex and an extension, read back as text;
-- user ids are compared exactly.
CREATE TABLE IF NOT EXISTS image_owners (
    image_key VARCHAR(128) CHARACTER SET ascii COLLATE ascii_general_ci NOT NULL,
    user_id   VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    PRIMARY KEY (image_key, user_id),
    KEY image_owners_user (user_id)
) ENGINE = InnoDB;
