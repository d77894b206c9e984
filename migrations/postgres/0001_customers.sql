-- Customer records. Every sensitive value lives sealed in customer_fields; this table holds
-- only routing and lifecycle data and the record's wrapped data key.
CREATE TABLE customers (
    id          UUID        NOT NULL PRIMARY KEY,      -- UUIDv7
    region      TEXT        NOT NULL,                  -- GB/T 2260 city code
    kind        TEXT        NOT NULL CHECK (kind IN ('individual', 'enterprise')),
    vip_level   SMALLINT    NOT NULL DEFAULT 0 CHECK (vip_level BETWEEN 0 AND 9),
    status      TEXT        NOT NULL CHECK (status IN ('active', 'dormant', 'closed', 'restricted')),
    version     BIGINT      NOT NULL CHECK (version >= 1),
    kek_version BIGINT      NOT NULL,
    wrapped_key BYTEA       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX customers_region ON customers (region, id);

CREATE TABLE customer_fields (
    customer_id UUID  NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    field       TEXT  NOT NULL,
    sealed      BYTEA NOT NULL,                        -- AES-256-GCM envelope, see crypto::envelope
    PRIMARY KEY (customer_id, field)
);
