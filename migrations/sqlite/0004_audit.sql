-- The access audit: one row per event, hash-chained (see src/audit/chain.rs). Append-only: no
-- code path updates or deletes these rows.
CREATE TABLE audit_events (
    seq           INTEGER NOT NULL PRIMARY KEY,
    time          TEXT    NOT NULL,
    request_id    TEXT    NOT NULL,
    principal     TEXT,
    grant_id      BLOB,
    action        TEXT    NOT NULL,
    customer_ids  TEXT    NOT NULL,   -- JSON array of ids
    fields        TEXT    NOT NULL,   -- JSON array of [field, view]
    purpose       TEXT,
    justification TEXT,
    query         TEXT,               -- blind-index digests and filters, never values
    outcome       TEXT    NOT NULL,
    status        INTEGER NOT NULL,
    client        TEXT,
    user_agent    TEXT,
    chain_hash    BLOB    NOT NULL
);
CREATE INDEX audit_events_principal ON audit_events (principal, seq);
CREATE INDEX audit_events_time ON audit_events (time);

-- Which events concern which customer (search index of the audit; not part of the chain).
CREATE TABLE audit_event_customers (
    customer_id BLOB    NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (customer_id, seq)
) WITHOUT ROWID;

-- The chain head; the row lock on it orders appends from every instance.
CREATE TABLE audit_head (
    id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq        INTEGER NOT NULL,
    chain_hash BLOB    NOT NULL
);
INSERT INTO audit_head (id, seq, chain_hash) VALUES (1, 0, zeroblob(32));

CREATE TABLE audit_checkpoints (
    seq        INTEGER NOT NULL PRIMARY KEY,
    chain_hash BLOB    NOT NULL,
    time       TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    signature  BLOB    NOT NULL
);

-- Bulk-access alerts: an open alert blocks the principal's data requests until cleared.
CREATE TABLE audit_alerts (
    id                 BLOB    NOT NULL PRIMARY KEY,
    principal          TEXT    NOT NULL,
    raised_at          TEXT    NOT NULL,
    distinct_customers INTEGER NOT NULL,
    window_seconds     INTEGER NOT NULL,
    cleared_at         TEXT,
    cleared_by         TEXT
);
CREATE INDEX audit_alerts_principal ON audit_alerts (principal);

-- Append-only, enforced by the database as well.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
