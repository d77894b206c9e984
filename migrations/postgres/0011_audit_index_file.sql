-- The SQLite store moved the customer-keyed access-log index out of its database into a file of
-- its own (its pages held the one writer a fifth of its time under load). PostgreSQL keeps one
-- table, written with the events (see 0010). Same numbering on both databases.
COMMENT ON TABLE audit_event_customers IS
    'Which events concern which customer: access reports and ?customer= searches; the only copy on PostgreSQL, checked against the chain by audit verify.';
