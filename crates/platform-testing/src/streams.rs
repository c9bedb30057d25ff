//! Putting events on the platform's Redis streams as their producers do, for tests of consumers.

use platform_redis::messages::StripeEventMessage;
use platform_redis::streams::StreamProducer;
use platform_redis::{RedisClients, StreamName};

/// Appends Stripe events to the Stripe stream as webhook-ingest does.
///
/// # Panics
/// When Redis refuses an append.
pub async fn put_on_stripe_stream(redis: &RedisClients, events: &[StripeEventMessage]) {
    let producer = StreamProducer::new(redis, StreamName::StripeEvents, 10_000);
    for event in events {
        producer.append(event).await.expect("the event is appended");
    }
}
