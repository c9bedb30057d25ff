//! Live updates published on a campaign's pub/sub channel from outside the donation consumer: the
//! `campaign_ended` update.

use platform_redis::messages::CampaignUpdate;
use platform_redis::pubsub;
use uuid::Uuid;

/// Publishes `campaign_ended` for a campaign (best effort: pub/sub has no replay anyway).
pub async fn announce_ended(redis: &platform_redis::RedisClients, campaign_id: Uuid) {
    let id = campaign_id.to_string();
    let channel = redis.keys().campaign_updates_channel(&id);
    let update = CampaignUpdate::CampaignEnded { campaign_id: id };
    if let Err(error) = pubsub::publish(&redis.primary(), &channel, &update).await {
        tracing::warn!(campaign_id = %campaign_id, %error, "campaign_ended not published");
    }
}
