-- Customer records. Every sensitive value lives sealed in customer_fields; this table holds
-- only routing and lifecycle data and the record's wrapped data key.
CREATE TABLE customers (
    id          BLOB    NOT NULL PRIMARY KEY,          -- UUIDv7, 16 bytes
    region      TEXT    NOT NULL,                      -- GB/T 2260 city code
    kind        TEXT    NOT NULL CHECK (kind IN ('individual', 'enterprise')),
    vip_level   INTEGER NOT NULL DEFAULT 0 CHECK (vip_level BETWEEN 0 AND 9),
    status      TEXT    NOT NULL CHECK (status IN ('active', 'dormant', 'closed', 'restricted')),
    version     INTEGER NOT NULL CHECK (version >= 1),
    kek_version INTEGER NOT NULL,
    wrapped_key BLOB    NOT NULL,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);
CREATE INDEX customers_region ON customers (region, id);

CREATE TABLE customer_fields (
    customer_id BLOB NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    field       TEXT NOT NULL,
    sealed      BLOB NOT NULL,                         -- AES-256-GCM envelope, see crypto::envelope
    PRIMARY KEY (customer_id, field)
) WITHOUT ROWID;
