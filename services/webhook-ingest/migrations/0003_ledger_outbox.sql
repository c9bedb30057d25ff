-- The ledger becomes the outbox of the Stripe stream (src/relay.rs).
-- seq: the row's place in the stream; the relay appends it as entry `<seq>-0`. Every row gets one,
--      ignored and unprocessable rows too, so the relay can tell a sequence gap from a row it skips.
-- status: received (to be relayed; relayed once seq <= stream_relay.relayed_seq), ignored (type
--      outside the allow-list), unprocessable (authentic but against the event contract, with
--      reason); streamed is what earlier versions wrote after appending themselves.
-- traceparent: the request's W3C trace context, carried onto the stream entry.
CREATE SEQUENCE webhook_events_seq;
ALTER TABLE webhook_events
    ADD COLUMN seq bigint,
    ADD COLUMN reason text,
    ADD COLUMN traceparent text;
ALTER TABLE webhook_events DROP CONSTRAINT webhook_events_status_check;
ALTER TABLE webhook_events ADD CONSTRAINT webhook_events_status_check
    CHECK (status IN ('received', 'streamed', 'ignored', 'unprocessable'));
-- Rows an earlier version stored but never appended are relayed like new ones.
UPDATE webhook_events SET seq = s.seq
FROM (SELECT event_id, nextval('webhook_events_seq') AS seq
      FROM webhook_events WHERE status = 'received' ORDER BY received_at, event_id) AS s
WHERE webhook_events.event_id = s.event_id;
ALTER TABLE webhook_events ALTER COLUMN seq SET DEFAULT nextval('webhook_events_seq');
CREATE UNIQUE INDEX webhook_events_by_seq ON webhook_events (seq);

-- The relay's durable position per stream: every row up to relayed_seq was appended at least once.
CREATE TABLE stream_relay (
    stream      text        PRIMARY KEY,
    relayed_seq bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Per consumer group: every entry up to seq was acknowledged by the group. After Redis lost the
-- stream, the relay refills it from the lowest of these, not from the start of the ledger.
CREATE TABLE stream_group_checkpoints (
    stream     text        NOT NULL,
    group_name text        NOT NULL,
    seq        bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, group_name)
);
