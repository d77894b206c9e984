-- The SQLite store moved the customer-keyed access-log index behind its writer (its commits
-- append whole pages, and the random page per link was half of every audit group commit).
-- PostgreSQL keeps one table, written with the events: its WAL carries row records, not
-- pages, so the index's insert costs a record, not a page. Same numbering on both databases.
COMMENT ON TABLE audit_event_customers IS
    'Which events concern which customer: access reports and ?customer= searches; checked against the chain by audit verify.';
