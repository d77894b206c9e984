-- Blind indexes: keyed HMAC-SHA256 digests of normalised searchable values (never an unkeyed
-- hash, never the value). Exact match only.
CREATE TABLE blind_index (
    field       TEXT    NOT NULL,
    digest      BYTEA   NOT NULL,
    customer_id UUID    NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    key_version INTEGER NOT NULL,
    PRIMARY KEY (field, digest, customer_id)
);
CREATE INDEX blind_index_customer ON blind_index (customer_id);
