//! platformctl: the operators' command line. Each command reads the services' layered
//! configuration ([`Settings`]), does one thing against Redis or a service's admin API, and
//! answers a [`Report`]: text or JSON, and whether it succeeded (the exit code). Secrets never
//! appear in a report: Redis addresses are shown without credentials, tokens not at all.

pub mod redis;
pub mod services;
pub mod streams;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Parser, Subcommand};
use platform_redis::RedisSettings;
use platform_service::settings::AuthSettings;
use serde::Deserialize;

/// The embedded defaults of platformctl's own section.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// What platformctl reads of the layered configuration: the shared `[redis]` and `[auth]`
/// sections, as a service would use them, and `[platformctl]`. Other sections are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub redis: RedisSettings,
    pub auth: AuthSettings,
    pub platformctl: CtlSettings,
}

/// `[platformctl]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtlSettings {
    pub webhook_ingest_url: String,
    pub usage_meter_url: String,
    pub timeout_ms: u64,
    /// Stream name → its consumer groups.
    pub groups: BTreeMap<String, Vec<String>>,
}

impl Settings {
    /// The layered configuration, as the services load theirs.
    pub fn load() -> anyhow::Result<Self> {
        let settings: Self = platform_service::settings::load(DEFAULTS)?;
        settings.redis.validate()?;
        Ok(settings)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.platformctl.timeout_ms.max(1))
    }
}

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "platformctl",
    version,
    about = "Operate the platform: Redis, streams, dead letters, webhooks, usage"
)]
pub struct Cli {
    /// Print the report as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Redis roles: configuration and connectivity, or health.
    #[command(subcommand)]
    Redis(RedisCommand),
    /// Streams and their consumer groups.
    #[command(subcommand)]
    Streams(StreamsCommand),
    /// Dead-lettered stream entries.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Stripe webhooks recorded by webhook-ingest.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// usage-meter.
    #[command(subcommand)]
    Usage(UsageCommand),
}

#[derive(Debug, Subcommand)]
pub enum RedisCommand {
    /// Every Redis role reachable, with its version, eviction policy and persistence.
    Check,
    /// Every Redis role's latency, memory, clients and keys.
    Health,
}

#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// Length of each stream; lag, pending entries, oldest pending age and dead letters per group.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// The oldest dead letters of a group.
    List {
        /// stripe-events, usage-events or organisation-events.
        stream: String,
        group: String,
        #[arg(long, default_value_t = 20)]
        count: u64,
    },
    /// Appends dead letters to their stream again and removes them from the dead-letter stream.
    Redrive {
        stream: String,
        group: String,
        /// One dead letter, by its id in the dead-letter stream.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        id: Option<String>,
        /// Every dead letter of the group.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Appends a recorded Stripe event to the stream again (webhook-ingest's replay).
    Replay { event_id: String },
}

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Copies usage-meter's changed counters to Postgres now.
    Flush,
}

/// What a command found or did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Whether the command succeeded (exit code 0) or found a problem (exit code 1).
    pub ok: bool,
    pub text: String,
    pub json: serde_json::Value,
}

/// Runs one command.
pub async fn run(settings: &Settings, command: &Command) -> anyhow::Result<Report> {
    match command {
        Command::Redis(RedisCommand::Check) => redis::check(settings).await,
        Command::Redis(RedisCommand::Health) => redis::health(settings).await,
        Command::Streams(StreamsCommand::Status) => streams::status(settings).await,
        Command::Dlq(DlqCommand::List { stream, group, count }) => {
            streams::dlq_list(settings, stream, group, *count).await
        }
        Command::Dlq(DlqCommand::Redrive { stream, group, id, all: _ }) => {
            streams::dlq_redrive(settings, stream, group, id.as_deref()).await
        }
        Command::Webhooks(WebhooksCommand::Replay { event_id }) => {
            services::replay_webhook(settings, event_id).await
        }
        Command::Usage(UsageCommand::Flush) => services::flush_usage(settings).await,
    }
}
