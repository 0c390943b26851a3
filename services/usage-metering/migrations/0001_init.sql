-- One row per request, idempotent by request_id. Portable SQL (SQLite and
-- PostgreSQL): BIGINT counts and Unix epoch milliseconds, DOUBLE PRECISION money.

CREATE TABLE usage_events (
    request_id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    project_id TEXT,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    provider_model TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    estimated BOOLEAN NOT NULL,
    streamed BOOLEAN NOT NULL,
    status TEXT NOT NULL,
    http_status INTEGER NOT NULL,
    started_at BIGINT NOT NULL,
    latency_ms DOUBLE PRECISION NOT NULL,
    recorded_at BIGINT NOT NULL
);

CREATE INDEX usage_events_org_started ON usage_events (org_id, started_at);
