// The Node webhook handler webhook-ingest is measured against (scripts/bench/webhook-ingest.sh).
//
// The pattern of the original application's handler (`app/api/webhooks/stripe/route.ts`), with a
// durable row per event: `stripe.webhooks.constructEvent` checks the signature; a Redis GET of the
// event's dedup marker skips events already processed; an `INSERT … ON CONFLICT (event_id) DO
// NOTHING` into the same `webhook_events` table as webhook-ingest's (same migrations, raw body
// kept) on a pg Pool of 16; then the stream entry and the dedup marker in one MULTI. 200 JSON once
// all of it is done. One process (NODE_WORKERS > 1: that many cluster workers sharing the pool
// size).
//
// Environment: PORT, REDIS_URL, DATABASE_URL, WEBHOOK_SECRET; optional KEY_PREFIX (bench-node),
// PG_POOL_MAX (16), STREAM_MAX_LEN (1000000), TOLERANCE_SECS (86400), NODE_WORKERS (1).
'use strict';

const cluster = require('node:cluster');
const http = require('node:http');

const workers = Math.max(1, Number(process.env.NODE_WORKERS || 1));
if (cluster.isPrimary && workers > 1) {
  for (let i = 0; i < workers; i += 1) cluster.fork();
  cluster.on('exit', (worker, code) => {
    console.error(`worker ${worker.process.pid} exited with ${code}`);
    process.exitCode = 1;
  });
  process.on('SIGTERM', () => {
    for (const worker of Object.values(cluster.workers)) worker.kill('SIGTERM');
  });
} else {
  serve();
}

function serve() {
  const Stripe = require('stripe');
  const Redis = require('ioredis');
  const { Pool } = require('pg');

  const port = Number(process.env.PORT);
  const secret = process.env.WEBHOOK_SECRET;
  const prefix = process.env.KEY_PREFIX || 'bench-node';
  const poolMax = Math.ceil(Number(process.env.PG_POOL_MAX || 16) / workers);
  const streamMaxLen = String(process.env.STREAM_MAX_LEN || 1000000);
  const tolerance = Number(process.env.TOLERANCE_SECS || 86400);
  const bodyLimit = 1024 * 1024;
  const doneTtlMs = String(4 * 24 * 3600 * 1000);
  // Same layout as crates/platform-redis/src/keys.rs, under this handler's own prefix.
  const streamKey = `${prefix}:v1:stream:{streams}:stripe-events`;
  const dedupKey = (id) => `${prefix}:v1:webhook:{streams}:dedup:${id}`;

  // The key is never used: constructEvent checks the signature locally.
  const stripe = Stripe('sk_test_bench_unused');
  const redis = new Redis(process.env.REDIS_URL, { enableAutoPipelining: false });
  const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: poolMax });

  const insert = {
    name: 'insert_webhook_event',
    text: `INSERT INTO webhook_events
             (event_id, event_type, created, livemode, api_version, object_id, customer_id, status, raw)
           VALUES ($1, $2, $3, $4, $5, $6, $7, 'received', $8)
           ON CONFLICT (event_id) DO NOTHING`,
  };

  const reply = (res, status, body) => {
    const json = JSON.stringify(body);
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(json) });
    res.end(json);
  };

  async function handle(req, res, body) {
    let event;
    try {
      event = stripe.webhooks.constructEvent(body, req.headers['stripe-signature'], secret, tolerance);
    } catch (err) {
      return reply(res, 400, { error: err.message, code: 'invalid_signature' });
    }
    const key = dedupKey(event.id);
    if (await redis.get(key)) {
      return reply(res, 200, { received: true, duplicate: true });
    }
    const object = (event.data && event.data.object) || {};
    const raw = body.toString('utf8');
    await pool.query({
      ...insert,
      values: [
        event.id,
        event.type,
        event.created,
        Boolean(event.livemode),
        event.api_version || null,
        typeof object.id === 'string' ? object.id : null,
        typeof object.customer === 'string' ? object.customer : null,
        raw,
      ],
    });
    const message = JSON.stringify({
      eventId: event.id,
      eventType: event.type,
      created: event.created,
      livemode: Boolean(event.livemode),
      apiVersion: event.api_version || null,
      objectId: typeof object.id === 'string' ? object.id : null,
      customerId: typeof object.customer === 'string' ? object.customer : null,
      raw,
    });
    const results = await redis
      .multi()
      .xadd(streamKey, 'MAXLEN', '~', streamMaxLen, '*', 'v', '1', 'data', message)
      .set(key, 'done', 'PX', doneTtlMs)
      .exec();
    for (const [err] of results) if (err) throw err;
    return reply(res, 200, { received: true });
  }

  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/healthz') return reply(res, 200, { status: 'ok' });
    if (req.method !== 'POST' || req.url !== '/api/webhooks/stripe') {
      return reply(res, 404, { error: 'not found', code: 'not_found' });
    }
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > bodyLimit) {
        reply(res, 413, { error: 'body too large', code: 'payload_too_large' });
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (res.writableEnded) return;
      handle(req, res, Buffer.concat(chunks)).catch((err) => {
        console.error(`webhook failed: ${err.message}`);
        if (!res.headersSent) reply(res, 503, { error: 'unavailable', code: 'unavailable' });
      });
    });
  });
  server.keepAliveTimeout = 60000;
  server.listen(port, '127.0.0.1');

  const stop = () => {
    server.close(() => Promise.all([pool.end(), redis.quit()]).finally(() => process.exit(0)));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 1000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
