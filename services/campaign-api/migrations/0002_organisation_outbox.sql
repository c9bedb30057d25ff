-- Organisations carry per-organisation overrides of their tier and a version that grows with
-- every change; each change (and each campaign created) is written to organisation_outbox in the
-- same transaction, and the relay appends the rows to the organisation stream as `<seq>-0`.
ALTER TABLE organisations
    ADD COLUMN api_requests_per_minute integer CHECK (api_requests_per_minute > 0),
    ADD COLUMN included jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(included) = 'object'),
    ADD COLUMN version bigint NOT NULL DEFAULT 1,
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

-- An admin create retried with the same Idempotency-Key returns the campaign it created.
ALTER TABLE campaigns
    ADD COLUMN idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    ADD COLUMN request_fingerprint text;
CREATE UNIQUE INDEX campaigns_by_idempotency_key ON campaigns (org_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- seq: the row's place on the stream. Writers take their transaction id before their seq (the
-- relay's gap rule), which the organisation or campaign write of the same transaction already did.
CREATE SEQUENCE organisation_outbox_seq;
CREATE TABLE organisation_outbox (
    seq         bigint      PRIMARY KEY,
    data        text        NOT NULL,
    traceparent text,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- The relay's durable position per stream: every row up to relayed_seq was appended at least once.
CREATE TABLE stream_relay (
    stream      text        PRIMARY KEY,
    relayed_seq bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Per consumer group: every entry up to seq was acknowledged by the group. After Redis lost the
-- stream, the relay refills it from the lowest of these.
CREATE TABLE stream_group_checkpoints (
    stream     text        NOT NULL,
    group_name text        NOT NULL,
    seq        bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, group_name)
);

-- Organisations that exist already are published once, as they are.
INSERT INTO organisation_outbox (seq, data)
SELECT nextval('organisation_outbox_seq'),
       json_build_object('type', 'organisation_changed', 'orgId', id, 'slug', slug, 'name', name,
                         'tier', tier, 'version', version,
                         'changedAt', to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                         'overrides', json_build_object())::text
FROM (SELECT * FROM organisations ORDER BY created_at, id) AS o;
