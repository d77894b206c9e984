-- Background maintenance asks every few seconds whether any record still has its data key
-- wrapped under an older key version (rewrap) or blind-index entries under an older index
-- version (re-index). Without these indexes each question scanned the whole table: at 2e6
-- customers the two scans cost about 7 s of CPU, every 5 s, and grew with the data (a 30-minute
-- soak lost its throughput and latency to them). With them, "nothing left" is one index probe.
-- New rows carry the current version and time-ordered ids, so inserts land on the rightmost
-- pages of each index.
CREATE INDEX customers_kek_version ON customers (kek_version, id);
CREATE INDEX blind_index_key_version ON blind_index (key_version, customer_id);
