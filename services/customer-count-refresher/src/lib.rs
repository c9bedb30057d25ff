//! customer-count-refresher
