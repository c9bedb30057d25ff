//! User and guest sessions as data: the record a session cookie points at (the kind, the userId
//! the trusted front end named at login, timestamps: nothing sensitive), where it is held, and
//! the rules for ids and user ids.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::CheckoutError;

/// Guest or signed-in user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    Guest,
    User,
}

/// What is stored for one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserSession {
    pub kind: SessionKind,
    pub user_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Where a session is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Held {
    Redis,
    Memory,
}

/// The response body of the session routes (never the id: it lives in the HttpOnly cookie).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserSessionView {
    #[serde(flatten)]
    pub session: UserSession,
    pub store: Held,
}

/// 64 hex characters (two v4 UUIDs: 244 random bits).
pub fn new_id() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Ids this service could have issued; anything else is not looked up.
pub fn valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a userId named at login.
pub fn check_user_id(user_id: &str) -> Result<(), CheckoutError> {
    if user_id.trim().is_empty() || user_id.len() > 200 || user_id.chars().any(char::is_control) {
        return Err(CheckoutError::invalid(
            "invalid_user_id",
            "userId must be 1 to 200 bytes without control characters",
        ));
    }
    Ok(())
}
