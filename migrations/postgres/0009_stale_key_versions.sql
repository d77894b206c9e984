-- Background maintenance asks every few seconds whether any record still has its data key
-- wrapped under an older key version (rewrap) or blind-index entries under an older index
-- version (re-index). Without these indexes each question scanned the whole table, a cost
-- that grew with the data. With them, "nothing left" is one index probe. New rows carry the
-- current version and time-ordered ids, so inserts land on the rightmost pages of each index.
-- IF NOT EXISTS: on a large database an operator may build them first without blocking writes
-- (CREATE INDEX CONCURRENTLY with these names, see docs/OPERATIONS.md), then upgrade.
CREATE INDEX IF NOT EXISTS customers_kek_version ON customers (kek_version, id);
CREATE INDEX IF NOT EXISTS blind_index_key_version ON blind_index (key_version, customer_id);
