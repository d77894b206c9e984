-- The customer-keyed index of the access log moves to a file of its own beside the database
-- (`<file>-audit-index`, src/store/sqlite/links.rs): its random pages held the one writer a
-- fifth of its time under load and were synced with every audit commit. The index is derived
-- from `audit_event_customers`, which stays; the new file starts empty and is filled from the
-- links in the background, and until it has caught up, customer queries of the access log read
-- the links after its mark unindexed (correct, slower on a large log).
DROP TRIGGER audit_customer_index_no_update;
DROP TRIGGER audit_customer_index_no_delete;
DROP TRIGGER audit_customer_index_state_forward;
DROP TRIGGER audit_customer_index_state_no_delete;
DROP TABLE audit_customer_index;
DROP TABLE audit_customer_index_state;
