//! Commands that call a service's admin API with the service token: `webhooks replay`,
//! `usage flush`.

use secrecy::ExposeSecret;
use serde_json::json;

use crate::{Report, Settings};

/// POSTs to `url` with the service token; the report carries the service's JSON answer.
async fn post(settings: &Settings, url: String) -> anyhow::Result<Report> {
    platform_service::telemetry::install_crypto_provider();
    let http = reqwest::Client::builder().timeout(settings.timeout()).build()?;
    let answer =
        http.post(&url).bearer_auth(settings.auth.admin_token.expose_secret()).send().await;
    let response = match answer {
        Ok(response) => response,
        Err(error) => {
            let error = format!("{url}: {error}");
            return Ok(Report {
                ok: false,
                text: format!("FAIL  {error}\n"),
                json: json!({"ok": false, "error": error}),
            });
        }
    };
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    let ok = status.is_success();
    let text = if ok { format!("ok    {body}\n") } else { format!("FAIL  {status}: {body}\n") };
    Ok(Report { ok, text, json: json!({"ok": ok, "status": status.as_u16(), "answer": body}) })
}

/// webhook-ingest appends the recorded event `event_id` to the Stripe stream again.
pub async fn replay_webhook(settings: &Settings, event_id: &str) -> anyhow::Result<Report> {
    let base = settings.platformctl.webhook_ingest_url.trim_end_matches('/');
    let mut url = reqwest::Url::parse(&format!("{base}/api/admin/webhooks/events/"))?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("webhook_ingest_url cannot take a path"))?
        .pop_if_empty()
        .extend([event_id, "replay"]);
    post(settings, url.to_string()).await
}

/// usage-meter copies its changed counters to Postgres now.
pub async fn flush_usage(settings: &Settings) -> anyhow::Result<Report> {
    let base = settings.platformctl.usage_meter_url.trim_end_matches('/');
    post(settings, format!("{base}/internal/usage/flush")).await
}
