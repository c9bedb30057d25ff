-- Event time (ms) of a gauge's value (storage_used), so a restore into Redis keeps the latest
-- reading winning; NULL for counters.
ALTER TABLE usage_monthly ADD COLUMN IF NOT EXISTS at_ms BIGINT;

-- The restore reads the months that can still receive events, page by page.
CREATE INDEX IF NOT EXISTS usage_monthly_by_month ON usage_monthly (month, org_id, metric);

-- The largest flush sequence committed (`epoch << 32 | flushes`, as in Redis). Redis holding a
-- smaller one, or none, lost data since; a restore moves it to the next epoch, so a flush read
-- before the loss can no longer commit.
CREATE TABLE IF NOT EXISTS usage_flush_state (
    id  SMALLINT PRIMARY KEY CHECK (id = 1),
    seq BIGINT   NOT NULL
);
INSERT INTO usage_flush_state (id, seq) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;

-- Idempotency keys of durable metrics (usage.durable_idempotency_metrics) whose counts are in
-- usage_monthly; restored into Redis with the counters. Kept for idempotency_window_secs.
CREATE TABLE IF NOT EXISTS usage_idempotency_marks (
    org_id     TEXT        NOT NULL,
    key        TEXT        NOT NULL,
    counted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, key)
);
CREATE INDEX IF NOT EXISTS usage_idempotency_marks_age ON usage_idempotency_marks (counted_at);
