//! What every cross-service test needs: a service's settings on the test's Redis, prefix and
//! database, and an app served on a free port until it is stopped.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use platform_service::Shutdown;
use platform_service::settings::ServiceSettings;
use tokio::task::JoinHandle;

/// The admin / service token of the default settings.
pub const ADMIN_TOKEN: &str = "dev-admin-token";

/// One app serving on a free port.
pub struct Running {
    pub base: String,
    pub shutdown: Shutdown,
    pub server: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops the app and waits (bounded) until it has drained.
    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.server).await;
    }
}

/// Serves a built app (a service's `build` result) in the background.
macro_rules! serve {
    ($app:expr) => {{
        let app = $app;
        common::Running {
            base: format!("http://127.0.0.1:{}", app.port()),
            shutdown: app.context().shutdown.clone(),
            server: tokio::spawn(app.run_until_stopped()),
        }
    }};
}
pub(crate) use serve;

/// Settings with port 0, one worker, the given Redis, key prefix and database, no rate limits,
/// then `extra` on top.
pub fn settings<S: ServiceSettings>(
    redis_url: &str,
    prefix: &str,
    database_url: &str,
    extra: &[(&str, &str)],
) -> S {
    let mut vars = HashMap::from([
        ("APP__HTTP__PORT".to_owned(), "0".to_owned()),
        ("APP__HTTP__WORKERS".to_owned(), "1".to_owned()),
        ("APP__REDIS__URL".to_owned(), redis_url.to_owned()),
        ("APP__REDIS__KEY_PREFIX".to_owned(), prefix.to_owned()),
        ("APP__DATABASE__URL".to_owned(), database_url.to_owned()),
        ("APP__RATE_LIMIT__ENABLED".to_owned(), "false".to_owned()),
    ]);
    vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    S::from_overrides(vars).unwrap()
}
