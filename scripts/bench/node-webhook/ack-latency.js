// Time from a webhook's 200 to its entry on the Stripe stream (scripts/bench/webhook-ingest.sh).
//
// Sends COUNT freshly signed unique deliveries at RATE per second (paced, not a load test) and
// notes when each 200 arrives; a second Redis connection waits on the stream with XREAD BLOCK and
// notes when each event's entry arrives. Both clocks are this process's, so the difference is the
// delay a consumer blocked on the stream sees after the acknowledgement: negative when the entry
// is appended before the answer. Also prints the entry id's own time (Redis' clock, 1 ms
// resolution) minus the ack.
//
// Environment: TARGET (the webhook URL), REDIS_URL, STREAM_KEY, TEMPLATE (body file with
// __EVENT_ID__ where the id goes), SECRET; optional COUNT (200), RATE (50), WAIT_MS (5000: how
// long after the last 200 an entry may still arrive), QUIET_MAX_MS (30000: how long to wait first
// for the stream to stop growing, e.g. a relay still draining an earlier run), LABEL.
// Last line: `ack_to_stream label=… sent=… ok=… seen=… missing=… p50_ms=… p99_ms=… …`.
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const { performance } = require('node:perf_hooks');
const Stripe = require('stripe');
const Redis = require('ioredis');

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is required`);
  return value;
};
const target = env('TARGET');
const streamKey = env('STREAM_KEY');
const secret = env('SECRET');
const count = Number(env('COUNT', 200));
const rate = Number(env('RATE', 50));
const waitMs = Number(env('WAIT_MS', 5000));
const quietMaxMs = Number(env('QUIET_MAX_MS', 30000));
const label = env('LABEL', 'service');

// Wall-clock milliseconds with sub-millisecond resolution, comparable with stream entry ids.
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

function eventIdOf(fields) {
  for (let i = 0; i + 1 < fields.length; i += 2) {
    if (fields[i] !== 'data') continue;
    try {
      const data = JSON.parse(fields[i + 1]);
      return data.eventId ?? data.event_id ?? null;
    } catch {
      return null;
    }
  }
  return null;
}

async function lastEntryId(redis) {
  const last = await redis.xrevrange(streamKey, '+', '-', 'COUNT', 1);
  return last.length ? last[0][0] : '0-0';
}

async function main() {
  const template = fs.readFileSync(env('TEMPLATE'), 'utf8');
  const [head, tail] = template.split('__EVENT_ID__');
  const stripe = Stripe('sk_test_bench_unused');
  const timestamp = Math.floor(Date.now() / 1000);
  const deliveries = [];
  for (let n = 0; n < count; n += 1) {
    const id = `evt_ack_${label.replace(/[^A-Za-z0-9]/g, '')}_${process.pid}_${n}`;
    const body = head + id + tail;
    deliveries.push({ id, body, signature: stripe.webhooks.generateTestHeaderString({ payload: body, secret, timestamp }) });
  }
  const wanted = new Set(deliveries.map((d) => d.id));

  const redis = new Redis(env('REDIS_URL'));
  // An earlier load run may still be reaching the stream (a relay draining its backlog): start
  // once the stream's last entry id holds still for a second.
  const quietDeadline = now() + quietMaxMs;
  let cursor = await lastEntryId(redis);
  for (;;) {
    await sleep(1000);
    const latest = await lastEntryId(redis);
    if (latest === cursor) break;
    cursor = latest;
    if (now() > quietDeadline) {
      console.log(`stream still growing after ${quietMaxMs} ms; measuring anyway`);
      break;
    }
  }

  const arrivals = new Map();
  let reading = true;
  const reader = (async () => {
    while (reading) {
      const reply = await redis.xread('COUNT', 1000, 'BLOCK', 200, 'STREAMS', streamKey, cursor);
      const at = now();
      if (!reply) continue;
      for (const [, entries] of reply) {
        for (const [entryId, fields] of entries) {
          cursor = entryId;
          const eventId = eventIdOf(fields);
          if (eventId && wanted.has(eventId) && !arrivals.has(eventId)) {
            arrivals.set(eventId, { at });
          }
        }
      }
    }
  })();
  await sleep(100); // the first XREAD is blocking before the first request goes out

  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  const post = ({ id, body, signature }) =>
    new Promise((resolve) => {
      const sent = now();
      const req = http.request(target, {
        method: 'POST',
        agent,
        headers: {
          'Content-Type': 'application/json',
          'Content-Length': Buffer.byteLength(body),
          'Stripe-Signature': signature,
        },
      }, (res) => {
        const acked = now();
        res.resume();
        res.on('end', () => resolve({ id, status: res.statusCode, sent, acked }));
      });
      req.on('error', (err) => resolve({ id, status: 0, sent, acked: now(), error: err.message }));
      req.end(body);
    });

  const start = now();
  const pending = [];
  for (let n = 0; n < count; n += 1) {
    await sleep(start + (n * 1000) / rate - now());
    pending.push(post(deliveries[n]));
  }
  const answers = await Promise.all(pending);
  agent.destroy();
  const ok = answers.filter((a) => a.status === 200);
  const lastAck = Math.max(...answers.map((a) => a.acked));
  while (ok.some((a) => !arrivals.has(a.id)) && now() < lastAck + waitMs) await sleep(20);
  reading = false;
  await reader;
  redis.disconnect();

  const toStream = [];
  for (const a of ok) {
    const arrival = arrivals.get(a.id);
    if (!arrival) continue;
    toStream.push(arrival.at - a.acked);
  }
  const http200 = ok.map((a) => a.acked - a.sent);
  for (const list of [toStream, http200]) list.sort((x, y) => x - y);
  const f = (v) => (Number.isFinite(v) ? v.toFixed(2) : 'nan');
  const errors = answers.filter((a) => a.status !== 200);
  if (errors.length) {
    console.log(`${errors.length} answers were not 200 (first: ${errors[0].status} ${errors[0].error ?? ''})`);
  }
  console.log([
    'ack_to_stream',
    `label=${label}`,
    `sent=${answers.length}`,
    `ok=${ok.length}`,
    `seen=${toStream.length}`,
    `missing=${ok.length - toStream.length}`,
    `p50_ms=${f(percentile(toStream, 50))}`,
    `p90_ms=${f(percentile(toStream, 90))}`,
    `p99_ms=${f(percentile(toStream, 99))}`,
    `min_ms=${f(toStream[0])}`,
    `max_ms=${f(toStream[toStream.length - 1])}`,
    `http_p50_ms=${f(percentile(http200, 50))}`,
    `http_p99_ms=${f(percentile(http200, 99))}`,
  ].join(' '));
}

main().catch((err) => {
  console.error(`ack-latency: ${err.stack || err}`);
  process.exit(1);
});
