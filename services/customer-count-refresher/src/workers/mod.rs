//! Background tasks: the in-process refresh schedule ([`scheduler`]).

pub mod scheduler;
