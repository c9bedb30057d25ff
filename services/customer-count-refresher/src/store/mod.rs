//! Redis access: the count with its fenced write, its reads and the shared refresh status
//! ([`count`]), and the real-time mode's live id set, walk marker and staging set
//! ([`realtime`]).

pub mod count;
pub mod realtime;
