-- Orgs, projects and API keys. Portable SQL (SQLite and PostgreSQL): TEXT ids,
-- BIGINT Unix epoch milliseconds, no engine-specific syntax.

CREATE TABLE orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

-- key_hash is HMAC-SHA256 of the key under a key derived from the master key,
-- as hex; the key itself is never stored.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    project_id TEXT REFERENCES projects (id),
    key_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    expires_at BIGINT
);

CREATE INDEX api_keys_org_id ON api_keys (org_id);
