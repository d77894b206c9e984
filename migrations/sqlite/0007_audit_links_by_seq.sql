-- Verification reads the access-log links page by page in sequence order
-- (`WHERE seq BETWEEN ? AND ?`). The table is keyed by (customer_id, seq) for the customer
-- access report, so without this index every page scanned the whole table: verification grew
-- with the square of the log (70k events/s at 1.7e5 events, far worse at 1e6). Sequence
-- numbers only grow, so each insert lands on the index's rightmost page.
CREATE INDEX audit_event_customers_seq ON audit_event_customers (seq);
