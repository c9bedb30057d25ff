//! The relay's durable state in the service's Postgres: its position per stream
//! (`stream_relay`) and every consumer group's checkpoint (`stream_group_checkpoints`). Each
//! service with an outbox creates both tables in its own migrations.

use sqlx::PgPool;

/// The relay's durable position on `stream` (0 before its first append).
pub async fn relayed_seq(db: &PgPool, stream: &str) -> Result<i64, sqlx::Error> {
    let seq: Option<i64> =
        sqlx::query_scalar("SELECT relayed_seq FROM stream_relay WHERE stream = $1")
            .bind(stream)
            .fetch_optional(db)
            .await?;
    Ok(seq.unwrap_or(0))
}

/// Moves the relay's durable position forward (never back). Not waited for on disk: a position a
/// crash loses is only older, and the stream's own last id covers the difference.
pub async fn save_relayed_seq(db: &PgPool, stream: &str, seq: i64) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO stream_relay (stream, relayed_seq) VALUES ($1, $2)
         ON CONFLICT (stream) DO UPDATE
         SET relayed_seq = GREATEST(stream_relay.relayed_seq, EXCLUDED.relayed_seq), updated_at = now()",
    )
    .bind(stream)
    .bind(seq)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Stores the groups' checkpoints (each only moves forward) and returns every group's durable
/// checkpoint, those Redis no longer knows included.
pub async fn save_checkpoints(
    db: &PgPool,
    stream: &str,
    groups: &[(String, i64)],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let (names, seqs): (Vec<&str>, Vec<i64>) =
        groups.iter().map(|(name, seq)| (name.as_str(), *seq)).unzip();
    let mut tx = db.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO stream_group_checkpoints (stream, group_name, seq)
         SELECT $1, * FROM UNNEST($2::text[], $3::int8[])
         ON CONFLICT (stream, group_name) DO UPDATE
         SET seq = GREATEST(stream_group_checkpoints.seq, EXCLUDED.seq), updated_at = now()",
    )
    .bind(stream)
    .bind(&names)
    .bind(&seqs)
    .execute(&mut *tx)
    .await?;
    let all = sqlx::query_as(
        "SELECT group_name, seq FROM stream_group_checkpoints WHERE stream = $1 ORDER BY group_name",
    )
    .bind(stream)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(all)
}

/// The highest value `sequence` has handed out (0 before the first). `sequence` is a constant
/// of the calling outbox, never input.
pub async fn sequence_top(db: &PgPool, sequence: &'static str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}"
    )))
    .fetch_one(db)
    .await
}
