//! ratelimit (in progress)
