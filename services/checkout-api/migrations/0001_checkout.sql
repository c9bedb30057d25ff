-- checkout-api: checkout sessions written while Redis was unreachable (the Postgres tier of the
-- storage hierarchy), their counters, and the pricing data (coupons, delivery bands).

CREATE TABLE checkout_sessions (
    id          uuid PRIMARY KEY,
    -- The same JSON record Redis holds (camelCase), version included.
    record      jsonb       NOT NULL,
    -- Optimistic concurrency: an update names the version it read.
    version     bigint      NOT NULL,
    status      text        NOT NULL CHECK (status IN ('open', 'completed', 'failed')),
    -- Sliding: every read or update moves it to now() + the session TTL.
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX checkout_sessions_expires_at ON checkout_sessions (expires_at);

-- Counters of operations served by the Postgres tier; the statistics add them to Redis' hash.
CREATE TABLE checkout_stats (
    id               smallint PRIMARY KEY CHECK (id = 1),
    total_created    bigint NOT NULL DEFAULT 0,
    total_completed  bigint NOT NULL DEFAULT 0,
    total_failed     bigint NOT NULL DEFAULT 0,
    create_count     bigint NOT NULL DEFAULT 0,
    create_us        bigint NOT NULL DEFAULT 0,
    update_count     bigint NOT NULL DEFAULT 0,
    update_us        bigint NOT NULL DEFAULT 0
);
INSERT INTO checkout_stats (id) VALUES (1);

CREATE TABLE coupons (
    code             text PRIMARY KEY CHECK (code ~ '^[A-Z0-9_-]{1,32}$'),
    kind             text        NOT NULL CHECK (kind IN ('percent', 'amount')),
    -- Percent (1..100) or cents off.
    value            bigint      NOT NULL CHECK (value > 0 AND (kind <> 'percent' OR value <= 100)),
    min_order_cents  bigint      NOT NULL DEFAULT 0 CHECK (min_order_cents >= 0),
    expires_at       timestamptz,
    active           boolean     NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Delivery charge by distance: a distance d is charged by the band with the smallest
-- up_to_km >= d; beyond the last band there is no delivery.
CREATE TABLE delivery_bands (
    up_to_km      double precision PRIMARY KEY CHECK (up_to_km > 0 AND up_to_km < 'Infinity'),
    charge_cents  bigint NOT NULL CHECK (charge_cents >= 0)
);

-- Demo pricing, so `make run` has something to price with; admins replace it.
INSERT INTO coupons (code, kind, value, min_order_cents) VALUES
    ('WELCOME10', 'percent', 10, 0),
    ('SAVE5', 'amount', 500, 2000);
INSERT INTO delivery_bands (up_to_km, charge_cents) VALUES
    (5, 0),
    (10, 299),
    (25, 599),
    (50, 999);
