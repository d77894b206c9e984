-- The access audit: one row per event, hash-chained (see src/audit/chain.rs). Append-only:
-- triggers refuse UPDATE, DELETE and TRUNCATE; docs/AUDIT.md sets up a service role that holds
-- only SELECT and INSERT on these tables.
CREATE TABLE audit_events (
    seq           BIGINT      NOT NULL PRIMARY KEY,
    time          TIMESTAMPTZ NOT NULL,
    request_id    TEXT        NOT NULL,
    principal     TEXT,
    grant_id      UUID,
    action        TEXT        NOT NULL,
    customer_ids  TEXT        NOT NULL,
    fields        TEXT        NOT NULL,
    purpose       TEXT,
    justification TEXT,
    query         TEXT,
    outcome       TEXT        NOT NULL,
    status        INTEGER     NOT NULL,
    client        TEXT,
    user_agent    TEXT,
    chain_hash    BYTEA       NOT NULL
);
CREATE INDEX audit_events_principal ON audit_events (principal, seq);
CREATE INDEX audit_events_time ON audit_events (time);

CREATE TABLE audit_event_customers (
    customer_id UUID   NOT NULL,
    seq         BIGINT NOT NULL,
    PRIMARY KEY (customer_id, seq)
);

CREATE TABLE audit_head (
    id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq        BIGINT  NOT NULL,
    chain_hash BYTEA   NOT NULL
);
INSERT INTO audit_head (id, seq, chain_hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

CREATE TABLE audit_checkpoints (
    seq        BIGINT      NOT NULL PRIMARY KEY,
    chain_hash BYTEA       NOT NULL,
    time       TIMESTAMPTZ NOT NULL,
    key_id     TEXT        NOT NULL,
    signature  BYTEA       NOT NULL
);

CREATE TABLE audit_alerts (
    id                 UUID        NOT NULL PRIMARY KEY,
    principal          TEXT        NOT NULL,
    raised_at          TIMESTAMPTZ NOT NULL,
    distinct_customers INTEGER     NOT NULL,
    window_seconds     INTEGER     NOT NULL,
    cleared_at         TIMESTAMPTZ,
    cleared_by         TEXT
);
CREATE INDEX audit_alerts_principal ON audit_alerts (principal);

CREATE FUNCTION custodia_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only (% on %)', TG_OP, TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION custodia_audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION custodia_audit_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION custodia_audit_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION custodia_audit_append_only();
