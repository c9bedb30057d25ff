//! `[stripe]`: the Stripe settings (the client, the checkout URLs, locks and the event consumer).

pub mod settings;

pub use settings::StripeSettings;
