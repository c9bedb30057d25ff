//! lock (in progress)
