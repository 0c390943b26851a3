-- Requests answered from the edge's response cache: metered (they count as
-- requests) at zero cost, with no upstream call. Portable SQL.
ALTER TABLE usage_events ADD COLUMN cache_hit BOOLEAN NOT NULL DEFAULT FALSE;
