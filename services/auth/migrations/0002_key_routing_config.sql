-- The routing config a key's requests use when they name none.
ALTER TABLE api_keys ADD COLUMN routing_config TEXT;
