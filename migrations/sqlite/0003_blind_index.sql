-- Blind indexes: keyed HMAC-SHA256 digests of normalised searchable values (never an unkeyed
-- hash, never the value). Exact match only.
CREATE TABLE blind_index (
    field       TEXT    NOT NULL,
    digest      BLOB    NOT NULL,
    customer_id BLOB    NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    key_version INTEGER NOT NULL,
    PRIMARY KEY (field, digest, customer_id)
) WITHOUT ROWID;
CREATE INDEX blind_index_customer ON blind_index (customer_id);
