-- Retries without duplicates (docs/API.md, "Idempotency-Key"). A write that carries an
-- Idempotency-Key stores the key, a digest of its request and its outcome in the same
-- transaction as the write and its audit event; a retry with the same key and request gets
-- that outcome back instead of applying the write again. Keys are per principal and expire.
-- The outcome holds identifiers and versions, never field values.
CREATE TABLE idempotency_keys (
    principal   TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    outcome     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
