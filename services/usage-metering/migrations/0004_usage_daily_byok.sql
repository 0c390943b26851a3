-- What of each roll-up went through an org's own provider credential (BYOK):
-- metered like the rest, but billed to the org's own provider account.
ALTER TABLE usage_daily ADD COLUMN byok_requests BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_daily ADD COLUMN byok_cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0;

-- The BYOK events still stored (retention may have dropped older ones).
UPDATE usage_daily SET
    byok_requests = (SELECT COUNT(*) FROM usage_events e
        WHERE e.byok AND e.org_id = usage_daily.org_id
        AND COALESCE(e.project_id, '') = usage_daily.project_id
        AND e.key_id = usage_daily.key_id AND e.model = usage_daily.model
        AND (e.started_at / 86400000) * 86400000 = usage_daily.day),
    byok_cost_usd = (SELECT COALESCE(SUM(e.cost_usd), 0) FROM usage_events e
        WHERE e.byok AND e.org_id = usage_daily.org_id
        AND COALESCE(e.project_id, '') = usage_daily.project_id
        AND e.key_id = usage_daily.key_id AND e.model = usage_daily.model
        AND (e.started_at / 86400000) * 86400000 = usage_daily.day);
