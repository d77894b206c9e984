-- The disclosure gate (docs/AUTHORIZATION.md, docs/AUDIT.md).

-- Separation of duties, enforced by the database: a principal may hold unrevoked, unexpired
-- grants of one duty only. SQLite serialises writers, so the check cannot be raced.
ALTER TABLE grants ADD COLUMN duty TEXT NOT NULL DEFAULT '';
UPDATE grants SET duty = CASE role
    WHEN 'admin' THEN 'administration'
    WHEN 'local_admin' THEN 'administration'
    WHEN 'security_officer' THEN 'audit'
    ELSE 'data' END;
CREATE TRIGGER grants_one_duty BEFORE INSERT ON grants
WHEN EXISTS (
    SELECT 1 FROM grants g
    WHERE g.principal = NEW.principal AND g.duty <> NEW.duty AND g.revoked_at IS NULL
      AND (g.expires_at IS NULL OR julianday(g.expires_at) > julianday(NEW.created_at))
)
BEGIN SELECT RAISE(ABORT, 'separation_of_duties'); END;

-- Who acted from where, and over what: the regions that scope an officer's view of the audit,
-- the proxy hop, and the ids asked for but not disclosed. All covered by the chain.
ALTER TABLE audit_events ADD COLUMN actor_region TEXT;
ALTER TABLE audit_events ADD COLUMN subject_region TEXT;
ALTER TABLE audit_events ADD COLUMN proxy TEXT;
ALTER TABLE audit_events ADD COLUMN undisclosed_ids TEXT;
-- Not indexed: an officer's scope filters the scan by sequence number like the other unindexed
-- filters (action, outcome), and two more B-tree inserts per event cost the write path ~10 µs
-- of CPU per audited read (measured: docs/PERFORMANCE.md).

-- Alerts: what raised them, and the region of the principal they concern.
ALTER TABLE audit_alerts ADD COLUMN kind TEXT NOT NULL DEFAULT 'bulk_access';
ALTER TABLE audit_alerts ADD COLUMN region TEXT;

-- The event-to-customer links behind access logs are append-only too (and verified against
-- the chain by `audit verify`).
CREATE TRIGGER audit_event_customers_no_update BEFORE UPDATE ON audit_event_customers
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_event_customers_no_delete BEFORE DELETE ON audit_event_customers
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;

-- Per-principal budgets (reveals, searches, search misses), counted per minute so that every
-- instance sharing the database charges the same count.
CREATE TABLE budget_usage (
    principal TEXT    NOT NULL,
    budget    TEXT    NOT NULL,
    bucket    INTEGER NOT NULL,   -- unix minute
    used      INTEGER NOT NULL,
    PRIMARY KEY (principal, budget, bucket)
) WITHOUT ROWID;

-- Each instance's count of distinct customers shown to each principal (the bulk-access guard),
-- published every second so that instances add up each other's counts.
CREATE TABLE guard_counts (
    instance   TEXT    NOT NULL,
    principal  TEXT    NOT NULL,
    customers  INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,   -- unix seconds
    PRIMARY KEY (instance, principal)
) WITHOUT ROWID;
