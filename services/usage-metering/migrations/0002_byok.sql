-- Usage served through an org's own provider credential (BYOK): metered,
-- but billed to the org's own provider account. Portable SQL.
ALTER TABLE usage_events ADD COLUMN byok BOOLEAN NOT NULL DEFAULT FALSE;
