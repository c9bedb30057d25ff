-- Durable monthly copy of the Redis usage counters: bills outlive Redis' 90-day TTL and data loss.
CREATE TABLE IF NOT EXISTS usage_monthly (
    org_id     TEXT        NOT NULL,
    month      TEXT        NOT NULL,  -- YYYY-MM (UTC)
    metric     TEXT        NOT NULL,
    value      BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, month, metric)
);

-- Top consumers of one metric in one month when Redis no longer has the sorted set.
CREATE INDEX IF NOT EXISTS usage_monthly_top ON usage_monthly (month, metric, value DESC);
