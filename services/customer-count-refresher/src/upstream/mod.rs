//! Clients of external HTTP APIs: simPRO's invoice list, one page per call ([`simpro`]), and the
//! full walk over its pages that counts distinct customers ([`walk`]).

pub mod simpro;
pub mod walk;
