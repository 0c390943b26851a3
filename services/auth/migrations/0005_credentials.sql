-- Orgs' own provider credentials (BYOK). Portable SQL (SQLite and PostgreSQL).
-- The secrets are only ever stored sealed: AES-256-GCM under a key derived
-- from the master key, bound to (org_id, name, type).
CREATE TABLE provider_credentials (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    -- JSON object text of the non-secret settings (base_url, region, ...).
    settings TEXT NOT NULL,
    -- base64 of nonce (12 bytes) || sealed JSON of the secrets || tag.
    ciphertext TEXT NOT NULL,
    -- The sealing key's fingerprint (8 hex characters), to pick the key on
    -- reading and find the rows a rotation must re-encrypt.
    key_version TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);
