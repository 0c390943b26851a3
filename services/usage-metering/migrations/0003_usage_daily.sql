-- Daily roll-ups per (UTC day, org, project, key, model), upserted in the same
-- transaction as the events they count; kept when the request log expires.
-- (Version 2 is left to the usage_events `byok` column.)

CREATE TABLE usage_daily (
    -- UTC day start, Unix epoch milliseconds.
    day BIGINT NOT NULL,
    org_id TEXT NOT NULL,
    -- '' when the request had no project.
    project_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    requests BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (day, org_id, project_id, key_id, model)
);

-- Queries are always one org's, over a range of days.
CREATE INDEX usage_daily_org_day ON usage_daily (org_id, day);

-- Retention deletes the oldest events in batches, by started_at alone.
CREATE INDEX usage_events_started ON usage_events (started_at);

-- The events already stored, rolled up once.
INSERT INTO usage_daily (day, org_id, project_id, key_id, model, requests, input_tokens,
    output_tokens, cached_tokens, reasoning_tokens, cost_usd)
SELECT (started_at / 86400000) * 86400000, org_id, COALESCE(project_id, ''), key_id, model,
    COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), SUM(reasoning_tokens),
    SUM(cost_usd)
FROM usage_events
GROUP BY (started_at / 86400000) * 86400000, org_id, COALESCE(project_id, ''), key_id, model;
