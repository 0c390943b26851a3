-- Key roles, names and metadata, and per-scope policies (org, project, key).
-- Portable SQL (SQLite and PostgreSQL).
ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'member';
ALTER TABLE api_keys ADD COLUMN name TEXT;
-- JSON object text of string keys and values.
ALTER TABLE api_keys ADD COLUMN metadata TEXT;

CREATE TABLE policies (
    scope TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    -- The policy as JSON text (the admin API's shape).
    body TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (scope, scope_id)
);

CREATE INDEX policies_org_id ON policies (org_id);
