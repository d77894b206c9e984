-- Grants: principal holds role at region node until expires_at; revoked_at disables it and,
-- through parent_id, every grant delegated under it. Liveness is computed from the chain.
CREATE TABLE grants (
    id          BLOB NOT NULL PRIMARY KEY,
    principal   TEXT NOT NULL,
    role        TEXT NOT NULL,
    region      TEXT NOT NULL,
    granted_by  TEXT NOT NULL,
    parent_id   BLOB REFERENCES grants (id),
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    revoked_at  TEXT,
    revoked_by  TEXT,
    -- Only the bootstrap grant may be without expiry.
    CHECK (parent_id IS NULL OR expires_at IS NOT NULL)
);
CREATE INDEX grants_principal ON grants (principal);
CREATE INDEX grants_region ON grants (region, id);
-- At most one live root (bootstrap) grant.
CREATE UNIQUE INDEX grants_single_root ON grants (role) WHERE parent_id IS NULL AND revoked_at IS NULL;

-- Tokens of a principal issued at or before not_before are refused.
CREATE TABLE token_revocations (
    principal  TEXT NOT NULL PRIMARY KEY,
    not_before TEXT NOT NULL
);

-- Bumped in the same transaction as every grant or revocation change; instances poll it.
CREATE TABLE authz_epoch (
    id    INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO authz_epoch (id, value) VALUES (1, 0);
