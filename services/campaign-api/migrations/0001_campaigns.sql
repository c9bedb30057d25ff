-- campaign-api: organisations, their campaigns and the donations credited to them.

CREATE TABLE organisations (
    id          uuid PRIMARY KEY,
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    tier        text NOT NULL DEFAULT 'free' CHECK (tier IN ('free', 'starter', 'growth', 'enterprise')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE campaigns (
    id              uuid PRIMARY KEY,
    org_id          uuid NOT NULL REFERENCES organisations (id),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description     text NOT NULL DEFAULT '' CHECK (length(description) <= 5000),
    goal_cents      bigint NOT NULL CHECK (goal_cents > 0),
    raised_cents    bigint NOT NULL DEFAULT 0 CHECK (raised_cents >= 0),
    donation_count  bigint NOT NULL DEFAULT 0 CHECK (donation_count >= 0),
    starts_at       timestamptz NOT NULL,
    ends_at         timestamptz NOT NULL,
    disabled        boolean NOT NULL DEFAULT false,
    -- Soft delete: donations keep pointing at the campaign they were made to.
    deleted_at      timestamptz,
    -- Set by the lifecycle ticker once it has invalidated caches for the start / announced the end,
    -- so each transition is handled once across replicas (UPDATE ... RETURNING claims it).
    start_announced boolean NOT NULL DEFAULT false,
    end_announced   boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);

CREATE INDEX campaigns_active_by_org ON campaigns (org_id, starts_at) WHERE deleted_at IS NULL AND NOT disabled;
CREATE INDEX campaigns_pending_start ON campaigns (starts_at) WHERE NOT start_announced;
CREATE INDEX campaigns_pending_end ON campaigns (ends_at) WHERE NOT end_announced;

CREATE TABLE donations (
    payment_intent_id   text PRIMARY KEY,
    campaign_id         uuid NOT NULL REFERENCES campaigns (id),
    amount_cents        bigint NOT NULL CHECK (amount_cents > 0),
    currency            text NOT NULL,
    -- The campaign's totals right after this donation and whether it crossed the goal: what the
    -- live update says, reproducible when the stream entry is redelivered.
    raised_after_cents  bigint NOT NULL,
    count_after         bigint NOT NULL,
    goal_crossed        boolean NOT NULL,
    stripe_event_id     text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX donations_by_campaign ON donations (campaign_id, created_at);
