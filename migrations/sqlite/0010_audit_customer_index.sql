-- The access-log links leave the request's commit (docs/PERFORMANCE.md, "The soak").
--
-- Until now each event's links went straight into a table keyed by (customer_id, seq): one
-- random B-tree page per link in every audit group commit, about half of the pages the
-- request waited for. Now:
-- - `audit_event_customers` is keyed by (seq, customer_id): written with the events, in the
--   same synced commit, on the table's rightmost pages. It is the record verification checks
--   against the chain, and it answers for events the index below does not hold yet.
-- - `audit_customer_index` (the old table, renamed) is keyed by (customer_id, seq) for access
--   reports and `?customer=` searches. A background task fills it behind the writer in short
--   transactions, links sorted by customer (src/store/sqlite/links.rs), and moves
--   `audit_customer_index_state.through` forward in the same transaction: the index is
--   complete up to `through`, and a query takes events after it from `audit_event_customers`.
--   Verification checks the index against the chain too, up to `through`.
DROP TRIGGER audit_event_customers_no_update;
DROP TRIGGER audit_event_customers_no_delete;
DROP INDEX audit_event_customers_seq;
ALTER TABLE audit_event_customers RENAME TO audit_customer_index;
-- Verification reads the index a range of sequence numbers at a time.
CREATE INDEX audit_customer_index_seq ON audit_customer_index (seq);

CREATE TABLE audit_event_customers (
    seq         INTEGER NOT NULL,
    customer_id BLOB    NOT NULL,
    PRIMARY KEY (seq, customer_id)
) WITHOUT ROWID;
INSERT INTO audit_event_customers (seq, customer_id)
    SELECT seq, customer_id FROM audit_customer_index ORDER BY seq, customer_id;

CREATE TABLE audit_customer_index_state (
    id      INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    through INTEGER NOT NULL
);
INSERT INTO audit_customer_index_state (id, through) SELECT 1, seq FROM audit_head;

CREATE TRIGGER audit_event_customers_no_update BEFORE UPDATE ON audit_event_customers
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_event_customers_no_delete BEFORE DELETE ON audit_event_customers
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_customer_index_no_update BEFORE UPDATE ON audit_customer_index
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_customer_index_no_delete BEFORE DELETE ON audit_customer_index
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
-- The mark only moves forward.
CREATE TRIGGER audit_customer_index_state_forward BEFORE UPDATE ON audit_customer_index_state
WHEN NEW.through < OLD.through
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_customer_index_state_no_delete BEFORE DELETE ON audit_customer_index_state
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
