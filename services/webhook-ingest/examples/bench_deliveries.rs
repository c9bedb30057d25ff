//! Pre-signs webhook deliveries for `scripts/bench/webhook-ingest.sh` (wrk's Lua has no HMAC).
//!
//! `bench_deliveries <out-prefix> <count> <secret> <timestamp>` writes `<out-prefix>.template`
//! (the `payment_intent.succeeded` fixture, Stripe's pretty-printed bytes, with `__EVENT_ID__` where
//! the id goes) and `<out-prefix>.lines` (`<event id>\t<Stripe-Signature>` per line, each signed
//! over the template with that id filled in).

use std::io::{BufWriter, Write};

use webhook_ingest::domain::signature::sign_header;

const FIXTURE: &str = include_str!("../tests/fixtures/stripe/events/payment_intent.succeeded.json");
const PLACEHOLDER: &str = "__EVENT_ID__";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, out, count, secret, timestamp] = args.as_slice() else {
        anyhow::bail!("usage: bench_deliveries <out-prefix> <count> <secret> <timestamp>");
    };
    let count: usize = count.parse()?;
    let timestamp: i64 = timestamp.parse()?;
    let template = FIXTURE.replacen("evt_000000000000000000000000", PLACEHOLDER, 1);
    std::fs::write(format!("{out}.template"), &template)?;
    let run = std::process::id();
    let mut lines = BufWriter::new(std::fs::File::create(format!("{out}.lines"))?);
    for n in 0..count {
        let id = format!("evt_bench_{run}_{n:08}");
        let body = template.replacen(PLACEHOLDER, &id, 1);
        writeln!(lines, "{id}\t{}", sign_header(secret, timestamp, body.as_bytes()))?;
    }
    lines.flush()?;
    Ok(())
}
