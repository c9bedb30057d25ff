//! Who is calling: a trusted service (the admin / service bearer token), a signed-in user or a
//! guest (the session cookie, resolved by `routes::user_sessions::caller`), or nobody. It decides
//! which user a checkout is for and whose Stripe state a request may read; a `userId` in a
//! request body counts only for a service caller.

use crate::error::CheckoutError;

/// The identity a request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The service token: may act for any user.
    Service,
    /// A user session (the front end logged this user in).
    User(String),
    /// A guest session.
    Guest,
    /// No token, no (live) session cookie.
    Anonymous,
}

impl Caller {
    pub fn is_service(&self) -> bool {
        matches!(self, Caller::Service)
    }

    /// The user a request acts for: a service caller's `body_user_id`, a signed-in user's own id,
    /// nobody for guests and anonymous callers (whatever their body says).
    pub fn acting_user(&self, body_user_id: Option<&str>) -> Option<String> {
        match self {
            Caller::Service => body_user_id.map(str::to_owned),
            Caller::User(user_id) => Some(user_id.clone()),
            Caller::Guest | Caller::Anonymous => None,
        }
    }

    /// Whether this caller may read the Stripe state of `user_id`: the service, or that user's
    /// own session. No session at all is 401 `no_session`; someone else's is 403 `forbidden`.
    pub fn may_read_user(&self, user_id: &str) -> Result<(), CheckoutError> {
        match self {
            Caller::Service => Ok(()),
            Caller::User(own) if own == user_id => Ok(()),
            Caller::User(_) | Caller::Guest => {
                Err(CheckoutError::Forbidden("This Stripe state belongs to another user"))
            }
            Caller::Anonymous => Err(CheckoutError::NoSession),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_service_caller_acts_for_the_user_its_body_names() {
        let user = Caller::User("u1".into());
        assert_eq!(Caller::Service.acting_user(Some("u9")), Some("u9".into()));
        assert_eq!(user.acting_user(Some("u9")), Some("u1".into()));
        assert_eq!(Caller::Guest.acting_user(Some("u9")), None);
        assert_eq!(Caller::Anonymous.acting_user(Some("u9")), None);
    }

    #[test]
    fn stripe_state_is_readable_by_its_user_and_the_service_only() {
        let code = |caller: Caller| caller.may_read_user("u1").err().map(|e| e.code());
        assert_eq!(code(Caller::Service), None);
        assert_eq!(code(Caller::User("u1".into())), None);
        assert_eq!(code(Caller::User("u2".into())), Some("forbidden"));
        assert_eq!(code(Caller::Guest), Some("forbidden"));
        assert_eq!(code(Caller::Anonymous), Some("no_session"));
    }
}
