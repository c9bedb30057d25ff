-- Organisations as learned from campaign-api's organisation stream: the newest version of each
-- (what quota checks use) and every version with the time it took effect (what bills use: the
-- tier in force at the end of the billed month). Applying a version twice changes nothing.
CREATE TABLE organisations (
    org_id                  text        PRIMARY KEY,
    slug                    text        NOT NULL,
    name                    text        NOT NULL,
    tier                    text        NOT NULL,
    api_requests_per_minute integer,
    included                jsonb       NOT NULL DEFAULT '{}'::jsonb,
    version                 bigint      NOT NULL,
    changed_at              timestamptz NOT NULL,
    learned_at              timestamptz NOT NULL DEFAULT now(),
    -- Campaigns running now, as campaign-api last counted them (at active_campaigns_at).
    active_campaigns        bigint,
    active_campaigns_at     timestamptz
);

CREATE TABLE organisation_versions (
    org_id     text        NOT NULL,
    version    bigint      NOT NULL,
    tier       text        NOT NULL,
    included   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    changed_at timestamptz NOT NULL,
    PRIMARY KEY (org_id, version)
);
CREATE INDEX organisation_versions_by_time ON organisation_versions (org_id, changed_at);
