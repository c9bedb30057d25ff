//! usage-meter
