//! One running service for a test: the real app built from its settings, on port 0, against the
//! binary's shared Redis and a database of its own, with clients to reach and inspect it.
//!
//! A service's tests describe the service once ([`TestService`]: its settings type, its `build`,
//! its test defaults) and start it with [`TestApp::builder`]. Variables are layered: the common
//! ones here (free port, two workers, Redis, prefix, database), then the service's
//! [`TestService::VARS`], then the test's own [`TestAppBuilder::var`]s.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use actix_web::web;
use platform_redis::{RedisClients, RedisSettings};
use platform_service::AppContext;
use platform_service::settings::ServiceSettings;
use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::{PostgresServer, RedisServer, unique_prefix};

/// What the harness needs to know of a service; each service's tests implement it on a unit type.
pub trait TestService {
    type Settings: ServiceSettings;
    /// What the service's `build` returns.
    type App: Send + 'static;
    /// `APP__…` variables every test of this service runs with (on top of the common ones).
    const VARS: &'static [(&'static str, &'static str)] = &[];
    /// Whether the service has a Postgres database (then each app gets one of its own).
    const DATABASE: bool = true;

    fn build(settings: Self::Settings) -> impl Future<Output = anyhow::Result<Self::App>>;
    fn port(app: &Self::App) -> u16;
    fn context(app: &Self::App) -> web::Data<AppContext>;
    fn serve(app: Self::App) -> impl Future<Output = std::io::Result<()>> + Send + 'static;
}

/// How long [`TestApp::stop`] waits for the app to drain.
const DRAIN: Duration = Duration::from_secs(30);

/// A service serving on a free port until stopped or dropped.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub http: reqwest::Client,
    /// Clients under the app's key prefix, to inspect or prepare what the app keeps in Redis.
    pub redis: RedisClients,
    pub prefix: String,
    pub context: web::Data<AppContext>,
    database: Option<(String, PgPool)>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApp").field("base", &self.base).field("prefix", &self.prefix).finish()
    }
}

impl TestApp {
    /// A builder for an app of the test named `test` (the name goes into its key prefix).
    pub fn builder(test: &str) -> TestAppBuilder {
        TestAppBuilder {
            test: test.to_owned(),
            redis_url: None,
            prefix: None,
            database_url: None,
            vars: HashMap::new(),
            http: None,
        }
    }

    /// The app's database pool (a pool of the test's own, not the app's).
    ///
    /// # Panics
    /// When the service has no database.
    pub fn db(&self) -> &PgPool {
        &self.database.as_ref().expect("this service has no database").1
    }

    /// The URL of the app's database.
    ///
    /// # Panics
    /// When the service has no database.
    pub fn database_url(&self) -> &str {
        &self.database.as_ref().expect("this service has no database").0
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the app and waits (bounded) until it has drained.
    pub async fn stop(mut self) {
        self.context.shutdown.trigger();
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(DRAIN, server).await;
        }
    }

    /// Stops the app and returns how its server ended.
    ///
    /// # Panics
    /// When the app was stopped already.
    pub async fn stop_and_join(mut self) -> std::io::Result<()> {
        self.context.shutdown.trigger();
        let server = self.server.take().expect("the app is running");
        server.await.map_err(std::io::Error::other)?
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.context.shutdown.trigger();
    }
}

/// Where and how a [`TestApp`] runs; see [`TestApp::builder`].
#[derive(Debug)]
pub struct TestAppBuilder {
    test: String,
    redis_url: Option<String>,
    prefix: Option<String>,
    database_url: Option<String>,
    vars: HashMap<String, String>,
    http: Option<reqwest::ClientBuilder>,
}

impl TestAppBuilder {
    /// Redis at `url` instead of the binary's shared server (a private or cluster one).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// This key prefix instead of a new one (a second replica of another app).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// This database instead of a new one (a second replica of another app).
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// One `APP__…` variable, winning over every default.
    pub fn var(mut self, key: &str, value: impl Into<String>) -> Self {
        self.vars.insert(key.to_owned(), value.into());
        self
    }

    /// Several `APP__…` variables, as [`TestAppBuilder::var`].
    pub fn vars(mut self, vars: &[(&str, &str)]) -> Self {
        self.vars.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        self
    }

    /// How the client the test talks to the app with is built (e.g. not following redirects).
    pub fn http(mut self, client: reqwest::ClientBuilder) -> Self {
        self.http = Some(client);
        self
    }

    /// Fills in the Redis URL, prefix and database (creating one if needed) and returns every
    /// variable the app of `S` would run with: for a service started some other way (its binary).
    ///
    /// # Panics
    /// When no database can be created.
    pub async fn env<S: TestService>(&mut self) -> HashMap<String, String> {
        let redis_url = self.redis_url.get_or_insert_with(|| RedisServer::shared().url()).clone();
        let prefix = self.prefix.get_or_insert_with(|| unique_prefix(&self.test)).clone();
        let mut vars: HashMap<String, String> = [
            ("APP__HTTP__PORT", "0".to_owned()),
            ("APP__HTTP__WORKERS", "2".to_owned()),
            ("APP__REDIS__URL", redis_url),
            ("APP__REDIS__KEY_PREFIX", prefix),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if S::DATABASE {
            if self.database_url.is_none() {
                let database = PostgresServer::shared().create_database().await;
                self.database_url = Some(database.expect("a test database").url);
            }
            vars.insert(
                "APP__DATABASE__URL".to_owned(),
                self.database_url.clone().unwrap_or_default(),
            );
        }
        vars.extend(S::VARS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        vars.extend(self.vars.clone());
        vars
    }

    /// Builds the app of `S` and serves it in the background.
    ///
    /// # Panics
    /// When the settings are refused or the app does not build: the test cannot go on.
    pub async fn spawn<S: TestService>(mut self) -> TestApp {
        let vars = self.env::<S>().await;
        // The test's own clients go where the app goes (a variable may point it elsewhere).
        let redis_url = vars["APP__REDIS__URL"].clone();
        let prefix = vars["APP__REDIS__KEY_PREFIX"].clone();
        let database_url = vars.get("APP__DATABASE__URL").cloned();
        let settings = S::Settings::from_overrides(vars).expect("the test settings are valid");
        let app = S::build(settings).await.expect("the app builds");
        let base = format!("http://127.0.0.1:{}", S::port(&app));
        let context = S::context(&app);
        let server = tokio::spawn(S::serve(app));
        let redis = RedisClients::connect(&RedisSettings::for_url(&redis_url, &prefix))
            .await
            .expect("the test's Redis clients connect");
        let database = match database_url {
            Some(url) => {
                let pool = PgPool::connect(&url).await.expect("the test's pool connects");
                Some((url, pool))
            }
            None => None,
        };
        // Built after the app, which installs the TLS provider reqwest needs.
        let http =
            self.http.take().unwrap_or_else(http_client).build().expect("a test HTTP client");
        TestApp { base, http, redis, prefix, context, database, server: Some(server) }
    }
}

/// The HTTP client tests talk to apps with. Idle connections are dropped after a second, well
/// before the server's keep-alive (5 s) closes them: otherwise a request sent just as the server
/// closes a pooled connection fails with an incomplete message.
pub fn http_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(1))
}
