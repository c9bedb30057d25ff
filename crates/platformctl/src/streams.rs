//! `streams status` and `dlq list|redrive`: the consumer groups' backlogs and what they gave up on.

use std::fmt::Write as _;

use anyhow::Context as _;
use platform_redis::fred::prelude::*;
use platform_redis::streams::{dead_letters, group_lag};
use platform_redis::{RedisClients, StreamName};
use serde_json::json;

use crate::{Report, Settings, services};

fn stream(name: &str) -> anyhow::Result<StreamName> {
    StreamName::parse(name).with_context(|| {
        let known: Vec<&str> = StreamName::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown stream {name:?} (one of {})", known.join(", "))
    })
}

async fn connect(settings: &Settings) -> anyhow::Result<RedisClients> {
    Ok(RedisClients::connect(&settings.redis).await?)
}

/// Every configured stream's length and each of its groups' backlog. Fails (exit 1) when Redis
/// does not answer; a missing group is reported, not a failure (nothing was appended yet).
pub async fn status(settings: &Settings) -> anyhow::Result<Report> {
    let clients = connect(settings).await?;
    let mut text = String::new();
    let mut rows = Vec::new();
    let work = async {
        for stream in StreamName::ALL {
            let length: u64 = clients.primary().xlen(clients.keys().stream(stream)).await?;
            let _ = writeln!(text, "{stream}: {length} entries");
            let groups =
                settings.platformctl.groups.get(stream.as_str()).cloned().unwrap_or_default();
            for group in groups {
                let lag = group_lag(&clients, stream, &group).await?;
                let row = match lag {
                    None => {
                        let _ = writeln!(text, "  {group:<14} (no such group yet)");
                        json!({"stream": stream.as_str(), "group": group, "exists": false})
                    }
                    Some(lag) => {
                        let undelivered =
                            lag.undelivered.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
                        let oldest = lag.oldest_pending_idle.map(|d| d.as_secs_f64());
                        let _ = writeln!(
                            text,
                            "  {group:<14} lag {undelivered}, pending {}, oldest pending {}, dead letters {}",
                            lag.pending,
                            oldest.map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s")),
                            lag.dead_letters,
                        );
                        json!({"stream": stream.as_str(), "group": group, "exists": true,
                            "lag": lag.undelivered, "pending": lag.pending,
                            "oldestPendingSeconds": oldest, "deadLetters": lag.dead_letters})
                    }
                };
                rows.push(row);
            }
        }
        Ok::<(), platform_redis::RedisError>(())
    };
    let answered = tokio::time::timeout(settings.timeout(), work).await;
    clients.quit().await;
    match answered {
        Ok(Ok(())) => Ok(Report { ok: true, text, json: json!({"ok": true, "groups": rows}) }),
        Ok(Err(error)) => Ok(failed(format!("redis: {error}"))),
        Err(_) => Ok(failed(format!(
            "redis did not answer within {} ms",
            settings.platformctl.timeout_ms
        ))),
    }
}

fn failed(error: String) -> Report {
    Report {
        ok: false,
        text: format!("FAIL  {error}\n"),
        json: json!({"ok": false, "error": error}),
    }
}

/// The oldest `count` dead letters of `group` on `stream`.
pub async fn dlq_list(
    settings: &Settings,
    stream_name: &str,
    group: &str,
    count: u64,
) -> anyhow::Result<Report> {
    let stream = stream(stream_name)?;
    let clients = connect(settings).await?;
    let listed = tokio::time::timeout(
        settings.timeout(),
        dead_letters::list(&clients, stream, group, count),
    )
    .await;
    clients.quit().await;
    let letters = match listed {
        Ok(Ok(letters)) => letters,
        Ok(Err(error)) => return Ok(failed(format!("redis: {error}"))),
        Err(_) => return Ok(failed("redis did not answer in time".into())),
    };
    let mut text = format!("{} dead letters of {group} on {stream}\n", letters.len());
    for letter in &letters {
        let _ = writeln!(
            text,
            "{}  was {}  delivered {}  {}",
            letter.id, letter.original_id, letter.deliveries, letter.reason
        );
    }
    Ok(Report { ok: true, text, json: json!({"ok": true, "deadLetters": letters}) })
}

/// Puts dead letters back: `id` one, `None` every one. On a stream fed from an outbox
/// (stripe-events) a dead letter is replayed at its source, webhook-ingest, by its event id.
pub async fn dlq_redrive(
    settings: &Settings,
    stream_name: &str,
    group: &str,
    id: Option<&str>,
) -> anyhow::Result<Report> {
    let stream = stream(stream_name)?;
    if stream == StreamName::OrganisationEvents {
        anyhow::bail!(
            "organisation-events is appended from campaign-api's outbox: fix the cause and save the \
             organisation again (a new version) instead"
        );
    }
    let clients = connect(settings).await?;
    let letters = dead_letters::list(&clients, stream, group, 10_000).await?;
    let chosen: Vec<_> =
        letters.into_iter().filter(|letter| id.is_none_or(|id| letter.id == id)).collect();
    if chosen.is_empty() {
        clients.quit().await;
        return Ok(match id {
            Some(id) => {
                failed(format!("no dead letter {id} in {group}'s dead letters on {stream}"))
            }
            None => Report {
                ok: true,
                text: format!("nothing to redrive: {group} has no dead letters on {stream}\n"),
                json: json!({"ok": true, "redriven": []}),
            },
        });
    }
    let mut text = String::new();
    let mut rows = Vec::new();
    let mut ok = true;
    for letter in chosen {
        let outcome = if stream.fed_by_outbox() {
            replay_at_source(settings, &clients, stream, group, &letter).await
        } else {
            dead_letters::redrive(&clients, stream, group, &letter.id)
                .await
                .map_err(|e| e.to_string())
                .and_then(|new| new.ok_or_else(|| "gone meanwhile".to_owned()))
        };
        match outcome {
            Ok(new_id) => {
                let _ = writeln!(text, "redriven {} as {new_id}", letter.id);
                rows.push(json!({"id": letter.id, "ok": true, "newId": new_id}));
            }
            Err(error) => {
                ok = false;
                let _ = writeln!(text, "FAIL  {}: {error}", letter.id);
                rows.push(json!({"id": letter.id, "ok": false, "error": error}));
            }
        }
    }
    clients.quit().await;
    Ok(Report { ok, text, json: json!({"ok": ok, "redriven": rows}) })
}

/// A Stripe event's dead letter: replayed by webhook-ingest (its ledger appends it again), then
/// removed from the dead-letter stream.
async fn replay_at_source(
    settings: &Settings,
    clients: &RedisClients,
    stream: StreamName,
    group: &str,
    letter: &dead_letters::DeadLetter,
) -> Result<String, String> {
    let event_id = letter
        .data
        .as_deref()
        .and_then(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .and_then(|body| body["eventId"].as_str().map(str::to_owned))
        .ok_or("its body names no eventId to replay")?;
    let replayed =
        services::replay_webhook(settings, &event_id).await.map_err(|e| e.to_string())?;
    if !replayed.ok {
        return Err(replayed.text.trim().to_owned());
    }
    let key = clients.keys().dead_letter_stream(stream, group);
    let _: u64 = clients.primary().xdel(key, &letter.id).await.map_err(|e| e.to_string())?;
    Ok(format!("event {event_id} replayed by webhook-ingest"))
}
