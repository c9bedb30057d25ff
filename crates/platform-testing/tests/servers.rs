//! The harness starts real servers that answer, and isolates tests from each other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use platform_testing::{PostgresServer, RedisServer, unique_prefix};
use sqlx::Connection;

#[test]
fn redis_server_answers_and_comes_back_after_restart() {
    // Arrange
    let server = RedisServer::start().unwrap();
    let port = server.port();

    // Act
    server.stop();
    let refused = std::net::TcpStream::connect(("127.0.0.1", port)).is_err();
    server.restart().unwrap();

    // Assert
    assert!(refused, "a stopped server must refuse connections");
    assert_eq!(server.port(), port);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
}

#[tokio::test]
async fn each_test_database_is_empty_and_separate() {
    // Arrange
    let cluster = PostgresServer::shared();
    let first = cluster.create_database().await.unwrap();
    let second = cluster.create_database().await.unwrap();
    let mut a = sqlx::PgConnection::connect(&first.url).await.unwrap();
    let mut b = sqlx::PgConnection::connect(&second.url).await.unwrap();

    // Act
    sqlx::query("CREATE TABLE only_in_first (id int)").execute(&mut a).await.unwrap();
    let in_second: Option<String> = sqlx::query_scalar("SELECT to_regclass('only_in_first')::text")
        .fetch_one(&mut b)
        .await
        .unwrap();

    // Assert
    assert_ne!(first.name, second.name);
    assert_eq!(in_second, None);
}

#[test]
fn prefixes_are_unique_per_call() {
    assert_ne!(unique_prefix("x"), unique_prefix("x"));
}
