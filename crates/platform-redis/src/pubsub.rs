//! pubsub (in progress)
