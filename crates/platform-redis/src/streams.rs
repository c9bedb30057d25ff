//! streams (in progress)
