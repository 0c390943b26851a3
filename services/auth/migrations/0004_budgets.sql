-- The spend ledger: per scope, budget period and period start, what was
-- spent and what is reserved by requests in flight. Portable SQL.
CREATE TABLE budget_ledger (
    scope TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    period TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    spent_usd DOUBLE PRECISION NOT NULL,
    reserved_usd DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (scope, scope_id, period, period_start)
);

-- One row per request holding a reservation, until it is settled.
CREATE TABLE budget_reservations (
    request_id TEXT PRIMARY KEY,
    -- JSON text: [[scope, scope_id, period, period_start], ...]
    entries TEXT NOT NULL,
    amount_usd DOUBLE PRECISION NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX budget_reservations_created_at ON budget_reservations (created_at);
