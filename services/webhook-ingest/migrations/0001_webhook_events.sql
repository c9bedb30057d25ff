-- The durable ledger of Stripe webhook deliveries: one row per event id, ever.
-- status: received (stored, not yet on the stream) -> streamed (on the stream as stream_id)
--         or ignored (type not in the allow-list: acknowledged and kept, never streamed).
-- raw is text, not jsonb: jsonb would re-serialise and lose the exact bytes Stripe signed.
CREATE TABLE webhook_events (
    event_id     text        PRIMARY KEY,
    event_type   text        NOT NULL,
    created      bigint      NOT NULL,
    livemode     boolean     NOT NULL,
    api_version  text,
    object_id    text,
    customer_id  text,
    status       text        NOT NULL CHECK (status IN ('received', 'streamed', 'ignored')),
    stream_id    text,
    deliveries   integer     NOT NULL DEFAULT 1,
    replays      integer     NOT NULL DEFAULT 0,
    received_at  timestamptz NOT NULL DEFAULT now(),
    streamed_at  timestamptz,
    raw          text        NOT NULL
);

CREATE INDEX webhook_events_received_at ON webhook_events (received_at DESC);
CREATE INDEX webhook_events_type_received_at ON webhook_events (event_type, received_at DESC);
