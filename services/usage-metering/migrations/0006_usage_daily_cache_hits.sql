-- How many of each roll-up's requests the edge answered from its response
-- cache (no upstream call, no cost).
ALTER TABLE usage_daily ADD COLUMN cache_hits BIGINT NOT NULL DEFAULT 0;

-- The hits still stored (retention may have dropped older ones).
UPDATE usage_daily SET
    cache_hits = (SELECT COUNT(*) FROM usage_events e
        WHERE e.cache_hit AND e.org_id = usage_daily.org_id
        AND COALESCE(e.project_id, '') = usage_daily.project_id
        AND e.key_id = usage_daily.key_id AND e.model = usage_daily.model
        AND (e.started_at / 86400000) * 86400000 = usage_daily.day);
