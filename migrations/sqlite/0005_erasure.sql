-- What is left of an erased customer: that it existed, where, when and by whom it was erased.
-- Its data key, ciphertexts and blind-index entries are gone (crypto-shredding).
CREATE TABLE customer_tombstones (
    id        BLOB NOT NULL PRIMARY KEY,
    region    TEXT NOT NULL,
    erased_at TEXT NOT NULL,
    erased_by TEXT NOT NULL,
    reason    TEXT NOT NULL
);
